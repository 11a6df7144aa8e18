"""Embed: images -> `embeddings` (L2-normalised float16 SigLIP image features).

A model stage: Ray runs it as an actor pool and each actor loads the model once
(`setup`). Inside a unit, decoding and preprocessing run on a thread pool, several
batches ahead of the model (`prefetch_batches`), so the forward pass never waits on
PIL: decode/resize release the GIL and torch runs the forward outside it too.
Rows that do not decode go to `quarantine`; rows whose `kind` is not listed
(masks, condition maps) are skipped and counted.
"""

from __future__ import annotations

import json
import posixpath
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import Field

from acedata import shards
from acedata.config import StageConfig, run_only
from acedata.images import open_rgb
from acedata.kept import Kept
from acedata.mining.vectors import first_row, fixed_list, read_unit, row_group_units
from acedata.models import ModelSpec
from acedata.schemas import QUARANTINE, embeddings_schema, schema_for
from acedata.stage import Stage, UnitResult, WorkUnit, register

DEFAULT_MODEL = "ViT-SO400M-14-SigLIP-384"


class EmbedConfig(StageConfig):
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name=DEFAULT_MODEL))
    batch_size: int = Field(64, ge=1)
    images_per_unit: int = Field(2048, ge=1)
    decode_threads: int = run_only(4, ge=1)
    prefetch_batches: int = run_only(4, ge=1)  # batches decoded ahead of the model
    kinds: list[str] = Field(default_factory=lambda: ["image"])  # rows with a null kind count as images


def prepare_batch(rows: list[dict[str, Any]], preprocess) -> tuple[Any, list[str], list[dict[str, Any]]]:
    """Decode + preprocess one batch: (tensor or None, ids in tensor order, quarantine rows)."""
    import torch

    tensors, ids, bad = [], [], []
    for r in rows:
        try:
            tensors.append(preprocess(open_rgb(r["image"]["bytes"])))
            ids.append(r["image_id"])
        except Exception as e:  # noqa: BLE001 - any decoder failure quarantines the row, never the unit
            bad.append({"source_uri": r.get("source_uri") or r["image_id"], "stage": "embed",
                        "reason": "decode_error", "detail": f"{type(e).__name__}: {str(e)[:200]}",
                        "item_id": r["image_id"]})
    return (torch.stack(tensors) if tensors else None), ids, bad


@register
class Embed(Stage):
    kind = "embed"
    Config = EmbedConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"embeddings": embeddings_schema(1), "quarantine": QUARANTINE}
    uses_model = True

    _dim: int | None = None
    _kept: Kept | None = None

    def output_schema(self, table: str) -> pa.Schema:
        if table == "embeddings":
            return schema_for("embeddings", dim=self._dim or self._dim_without_model())
        return self.outputs[table]

    def _dim_without_model(self) -> int:
        """The driver never loads the model: take the width from written shards, else the config."""
        out = self.ctx.out("embeddings")
        fs, d = shards.resolve(out)
        if shards.exists(fs, d):
            for info in fs.get_file_info(pafs.FileSelector(d)):
                name = posixpath.basename(info.path)
                if name.endswith(".parquet") and not name.startswith((".", "_")):
                    return shards.open_parquet(posixpath.join(out, name)).schema_arrow.field("embedding").type.list_size
        import open_clip

        from acedata.models.siglip import register_tiny

        register_tiny()
        cfg = open_clip.get_model_config(self.config.model.name.removeprefix("hf-hub:").split("/")[-1])
        return int(cfg["embed_dim"]) if cfg else 1

    def plan(self) -> list[WorkUnit]:
        from acedata.models.siglip import check_available

        check_available(self.config.model)  # a missing model fails here, not in every actor
        tables = self.ctx.input("images")
        return [WorkUnit(uid, p) for uid, p in row_group_units(tables, self.config.images_per_unit)]

    def setup(self) -> None:
        from acedata.models.siglip import load_image_embedder

        self.embedder = load_image_embedder(self.config.model)
        self._dim = self.embedder.dim
        self._pool = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="embed-decode")

    def embed_batches(self, rows: list[dict[str, Any]]):
        """Yield (ids, embeddings fp16, quarantine) per batch, decoding ahead of the model."""
        import torch

        c: EmbedConfig = self.config
        e = self.embedder
        batches = [rows[i : i + c.batch_size] for i in range(0, len(rows), c.batch_size)]
        ahead = max(c.prefetch_batches, c.decode_threads)
        pending: deque = deque()
        it = iter(batches)
        for b in it:
            pending.append(self._pool.submit(prepare_batch, b, e.preprocess))
            if len(pending) >= ahead:
                break
        while pending:
            x, ids, bad = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self._pool.submit(prepare_batch, nxt, e.preprocess))
            if x is None:
                yield ids, np.zeros((0, e.dim), np.float16), bad
                continue
            with torch.inference_mode():
                f = e.model.encode_image(x.to(e.device, e.dtype, non_blocking=True))
                f = torch.nn.functional.normalize(f.float(), dim=-1)
            yield ids, f.to(torch.float16).cpu().numpy(), bad

    def process(self, unit: WorkUnit) -> UnitResult:
        table = read_unit(unit.payload, ["image_id", "source_uri", "image", "kind"])
        if self._kept is None:  # copies ingest listed as duplicates: each image_id is embedded once
            self._kept = Kept(self.ctx.input("images"))  # looked up for this unit's shard only
        listed = table.num_rows
        table = self._kept.filter(unit.payload["shard"], table, first_row(unit.payload))
        kinds = set(self.config.kinds)
        rows = [r for r in table.to_pylist() if (r["kind"] or "image") in kinds]
        all_ids: list[str] = []
        vecs: list[np.ndarray] = []
        bad: list[dict[str, Any]] = []
        for ids, v, q in self.embed_batches(rows):
            all_ids.extend(ids)
            vecs.append(v)
            bad.extend(q)
        dim = self.embedder.dim
        x = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float16)
        emb = pa.table(
            {"image_id": pa.array(all_ids, pa.string()), "embedding": fixed_list(x),
             "model": pa.array([self.embedder.model_id] * len(all_ids), pa.string())}
        )
        return UnitResult(
            {"embeddings": emb, "quarantine": pa.Table.from_pylist(bad, QUARANTINE)},
            {"inputs": len(rows), "skipped_kind": table.num_rows - len(rows),
             "skipped_duplicate": listed - table.num_rows},
        )

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        total = counts.get("embeddings", 0) + counts.get("quarantine", 0)
        if total != counts.get("inputs", 0):
            raise RuntimeError(f"embed lost rows: inputs {counts.get('inputs')} != {total}")
        return {"model": json.loads(self.config.model.model_dump_json())["name"],
                "random_init": self.config.model.random_init}
