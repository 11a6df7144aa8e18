"""LLM rewrites of template instructions, each distinct from all earlier versions.

Rewrites are requested in rounds: every pair that still needs one has one request in
flight per round (so the prompt can list the versions written so far and what was just
rejected), and all pairs of a round go out together through the client's bounded
concurrency. A candidate is accepted only if it passes, in order: not empty, not a
refusal, mostly words, length bounds, exactly the template's image indicators, not a
normalised duplicate of an earlier version or attempt, on topic (embedding similarity to
the template >= sim_min) and distinct (similarity to every accepted version <= sim_max).
Everything rejected is kept with its reason; the template always stays as variant 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from pydantic import Field

from acedata.config import Strict
from acedata.instruct.client import ChatRequest, ChatResult
from acedata.instruct.templates import indicators_in

REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:'|no)t|i cannot|as an ai|i'm unable|i am unable|cannot help|"
    r"can't help|not able to)\b",
    re.IGNORECASE,
)
_PREFIX = re.compile(r"^(?:rewritten|new|revised|paraphrased)?\s*(?:instruction|version|rewrite)\s*\d*\s*[:\-]\s*", re.IGNORECASE)

REWRITE_SYSTEM = (
    "You rewrite instructions for an image-editing model. Keep the meaning, change the wording. "
    "Image placeholders such as {image}, {image1} and {image2} must appear exactly as given. "
    "Answer with the new instruction only, on one line."
)
REWRITE_USER = (
    "Instruction: {instruction}\n"
    "Versions already written (yours must differ from every one):\n{earlier}\n"
    "{rejected}"
    "Write one new version."
)


class RewriteConfig(Strict):
    k: int = Field(3, ge=0)  # accepted rewrites wanted per instruction
    max_attempts: int = Field(8, ge=1)  # requests per instruction, all rewrites together
    sim_max: float = Field(0.9, gt=0, le=1)  # cosine above this to any accepted version: too similar
    sim_min: float = Field(0.5, ge=-1, lt=1)  # cosine below this to the template: off topic
    min_chars: int = 8
    max_chars: int = 400
    min_word_ratio: float = 0.7  # share of letters/spaces/punctuation a real sentence has
    system_prompt: str = REWRITE_SYSTEM
    user_prompt: str = REWRITE_USER  # {instruction}, {earlier}, {rejected}


class Generator(Protocol):
    def complete_many(self, requests: list[ChatRequest]) -> list[ChatResult]: ...


class Embedder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class RewriteState:
    template: str
    accepted: list[str] = field(default_factory=list)  # rewrites, in acceptance order
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (text, reason)
    attempts: int = 0
    seen: set[str] = field(default_factory=set)  # normalised texts of every version and attempt
    vectors: list[np.ndarray] = field(default_factory=list)  # embeddings of template + accepted


def normalise(text: str) -> str:
    """Case, punctuation and whitespace folded; indicators kept."""
    t = re.sub(r"\{image\d*\}", lambda m: m.group(0).replace("{", " <").replace("}", "> "), text.lower())
    t = re.sub(r"[^\w<> ]+", " ", t)
    return " ".join(t.split())


def clean_reply(text: str | None) -> str:
    """The instruction inside a model reply: first non-empty line, no label, no quotes."""
    if not text:
        return ""
    for line in text.strip().splitlines():
        line = _PREFIX.sub("", line.strip()).strip().strip('"“”\'`').strip()
        if line:
            return line
    return ""


def cheap_check(text: str, template: str, cfg: RewriteConfig) -> str | None:
    """A rejection reason from the text alone, or None."""
    if not text:
        return "empty"
    if REFUSAL.search(text):
        return "refused"
    words = sum(ch.isalpha() or ch.isspace() or ch in "{}.,:;!?'\"-()0123456789" for ch in text)
    if words / len(text) < cfg.min_word_ratio or not re.search(r"[A-Za-z]{2,}", text):
        return "malformed"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    want, got = set(indicators_in(template)), set(indicators_in(text))
    if want - got:
        return "indicator_dropped"
    if got - want:
        return "indicator_invented"
    return None


def _prompt(st: RewriteState, cfg: RewriteConfig) -> list[dict[str, str]]:
    earlier = "\n".join(f"- {t}" for t in [st.template, *st.accepted])
    recent = st.rejected[-3:]
    rejected = ""
    if recent:
        rejected = "Rejected attempts (do not repeat them):\n" + "\n".join(
            f"x {t or '(empty)'} [{r}]" for t, r in recent) + "\n"
    user = cfg.user_prompt.format(instruction=st.template, earlier=earlier, rejected=rejected)
    return [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user}]


def rewrite_all(templates: list[str], gen: Generator, embedder: Embedder, cfg: RewriteConfig) -> list[RewriteState]:
    """Up to `cfg.k` accepted rewrites for every template; requests of a round go out together."""
    states = [RewriteState(t) for t in templates]
    if cfg.k == 0:
        return states
    base = embedder.encode(templates)
    for st, v in zip(states, base):
        st.vectors.append(v)
        st.seen.add(normalise(st.template))
    while True:
        active = [s for s in states if len(s.accepted) < cfg.k and s.attempts < cfg.max_attempts]
        if not active:
            return states
        replies = gen.complete_many([ChatRequest(_prompt(s, cfg)) for s in active])
        if all(not r.ok for r in replies):
            # The endpoint is down for everyone (after the client's own retries): stop asking.
            for st, res in zip(active, replies):
                st.rejected.append(("", f"request_{res.error}"))
                st.attempts = cfg.max_attempts
            return states
        pending: list[tuple[RewriteState, str]] = []
        for st, res in zip(active, replies):
            st.attempts += 1
            if not res.ok:
                st.rejected.append(("", f"request_{res.error}"))
                continue
            text = clean_reply(res.text)
            reason = cheap_check(text, st.template, cfg)
            if reason is None and normalise(text) in st.seen:
                reason = "duplicate"
            if reason:
                st.rejected.append((text if text else (res.text or "")[:200], reason))
                if text:
                    st.seen.add(normalise(text))
                continue
            pending.append((st, text))
        if not pending:
            continue
        vecs = embedder.encode([t for _, t in pending])
        for (st, text), v in zip(pending, vecs):
            st.seen.add(normalise(text))
            sims = np.array([float(v @ u) for u in st.vectors])
            if sims[0] < cfg.sim_min:
                st.rejected.append((text, f"off_topic({sims[0]:.2f})"))
            elif sims.max() > cfg.sim_max:
                st.rejected.append((text, f"too_similar({sims.max():.2f})"))
            else:
                st.accepted.append(text)
                st.vectors.append(v)
