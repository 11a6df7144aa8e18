"""An async client for OpenAI-compatible chat completions (what `vllm serve` exposes).

Built on the official `openai` client with its own retries switched off (`max_retries=0`),
so there is one retry policy, here, explicit and observable: bounded concurrency (a
semaphore), a timeout per request, and retries with exponential backoff and jitter on
what the wire can cause only: 429, 5xx, timeouts, dropped connections and bodies cut
off mid-JSON (a `Retry-After` header is honoured, capped). Client errors (400, 401,
404 ...) are not retried. Every served request ends in a `ChatResult`: text, or an
error code. A programming error (a TypeError in our own code, say) is not an endpoint
failure: it is neither retried nor turned into a result, it propagates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from acedata.config import Strict

# The HTTP layer under the openai client logs every request at INFO; keep run logs readable.
for _name in ("httpx", "httpx2", "openai"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


class EndpointConfig(Strict):
    """One served model: where it is, how to call it, how to sample."""

    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1 (backend http); unused by backend ray_vllm
    model: str  # the served model name
    api_key_env: str | None = None  # name of the environment variable holding the key (never the key)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(0.5, ge=0)  # first retry delay; doubles each retry
    backoff_max_s: float = Field(8.0, ge=0)
    concurrency: int = Field(8, ge=1)  # requests in flight per worker
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = Field(128, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)  # server-specific sampling knobs
    # How to ask for JSON: OpenAI `response_format` json_schema, vLLM's `guided_json`, or by prompt only.
    structured_output: Literal["json_schema", "guided_json", "none"] = "json_schema"

    def api_key(self) -> str:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                return key
        return "EMPTY"  # vLLM / transformers serve accept any key unless started with one


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)  # per-request overrides (response_format, ...)


@dataclass
class ChatResult:
    text: str | None
    error: str | None = None  # timeout | connection | http_429 | http_5xx | http_4xx | bad_response
    detail: str = ""
    attempts: int = 0
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _retry_after(headers: Any) -> float | None:
    """The server's `Retry-After` in seconds (the delta-seconds form; an HTTP date is ignored)."""
    value = (headers.get("retry-after") or "").strip()
    return float(value) if re.fullmatch(r"\d+(\.\d+)?", value) else None


def _classify(exc: Exception) -> tuple[str, bool, float | None] | None:
    """(error code, retryable, server-suggested delay) for an endpoint failure; None for anything
    else (a bug on our side), which the caller re-raises."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return "http_429", True, _retry_after(exc.response.headers)
        if status >= 500:
            return "http_5xx", True, _retry_after(exc.response.headers)
        return f"http_{status}", False, None
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError)):
        return "bad_response", True, None  # a body cut off mid-JSON, or not the completions shape
    if isinstance(exc, openai.OpenAIError):
        return "error", False, None
    return None


class ChatClient:
    """Send many chat requests to one endpoint; results come back in request order."""

    def __init__(self, cfg: EndpointConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self._rng = rng or random.Random(0)
        self.stats = {"requests": 0, "retries": 0, "failed": 0}

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        c = self.cfg
        body: dict[str, Any] = {
            "model": c.model, "messages": req.messages, "temperature": c.temperature, "top_p": c.top_p,
            "max_tokens": c.max_tokens,
        }
        if c.stop:
            body["stop"] = c.stop
        if c.seed is not None:
            body["seed"] = c.seed
        extra = dict(c.extra_body)
        params = dict(req.params)
        extra.update(params.pop("extra_body", {}))
        body.update(params)
        if extra:
            body["extra_body"] = extra
        return body

    async def _one(self, client: Any, sem: asyncio.Semaphore, req: ChatRequest) -> ChatResult:
        c = self.cfg
        attempt = 0
        code, detail = "error", ""
        async with sem:
            t0 = time.perf_counter()  # latency from send, not from queueing behind the semaphore
            while True:
                attempt += 1
                self.stats["requests"] += 1
                try:
                    resp = await client.chat.completions.create(**self._body(req))
                except Exception as e:
                    verdict = _classify(e)
                    if verdict is None:
                        raise  # our bug, not the endpoint's: surface it
                    code, retryable, hint = verdict
                    detail = f"{type(e).__name__}: {str(e)[:200]}"
                else:
                    if not resp.choices:  # a well-formed reply with nothing in it: asking again won't help
                        return self._failed("bad_response", "no choices in the reply", attempt, t0)
                    message = resp.choices[0].message
                    text = message.content if message is not None else None
                    return ChatResult(text or "", None, "", attempt, time.perf_counter() - t0)
                if not retryable or attempt > c.max_retries:
                    break
                self.stats["retries"] += 1
                delay = min(c.backoff_max_s, c.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + self._rng.random() / 2  # jitter: spread retries of many requests
                if hint is not None:
                    delay = min(max(delay, hint), c.backoff_max_s)
                await asyncio.sleep(delay)
        return self._failed(code, detail, attempt, t0)

    def _failed(self, code: str, detail: str, attempts: int, t0: float) -> ChatResult:
        self.stats["failed"] += 1
        return ChatResult(None, code, detail, attempts, time.perf_counter() - t0)

    async def acomplete_many(self, requests: list[ChatRequest]) -> list[ChatResult]:
        from openai import AsyncOpenAI

        sem = asyncio.Semaphore(self.cfg.concurrency)
        # A fresh client per call: its connection pool belongs to this event loop.
        async with AsyncOpenAI(base_url=self.cfg.base_url, api_key=self.cfg.api_key(), max_retries=0,
                               timeout=self.cfg.timeout_s) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    def complete_many(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Synchronous entry point for stage code (runs its own event loop)."""
        if not requests:
            return []
        return run_sync(self.acomplete_many(requests))


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion, also from a thread that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]
