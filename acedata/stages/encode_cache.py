"""Encode cache: LCU shards -> `encoded` (VAE latents and text-encoder states, computed once).

A model stage: each actor loads the frozen VAE and text encoder once (`setup`); a work unit is one
LCU row group, so the cache keeps the LCU stream's units and row order and the trainer
(`data.cache: RUN/encode_cache`) replays the very same sample order and CFG-dropout draws.
Images are resized exactly as the trainer's loader would (token budget, max side), latents and
text states are stored as float16 tensors with their shapes (acemodel.cache). One extra unit
writes `encoders.safetensors` (indicator and empty-instruction embeddings); `finish` writes
`cache.json` with the unit list and the settings the cache is valid for.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pyarrow as pa
from acemodel.cache_schema import ENCODED, ENCODERS, META, SETTINGS, TABLE, unit_id
from acemodel.config import EncoderSpec
from pydantic import Field

from acedata import storage
from acedata.config import StageConfig
from acedata.schemas import QUARANTINE
from acedata.stage import Stage, UnitResult, WorkUnit, register

ENCODERS_UNIT = "encoders"


class EncodeCacheConfig(StageConfig):
    text_encoder: EncoderSpec = Field(default_factory=lambda: EncoderSpec(name="google/t5-v1_1-xxl"))
    vae: EncoderSpec = Field(default_factory=lambda: EncoderSpec(name="stabilityai/sd-vae-ft-mse"))
    # must equal the training config's data settings (checked when training reads the cache)
    token_budget: int = Field(1024, ge=1)
    max_side: int = Field(1024, ge=16)
    text_tokens: int = Field(120, ge=1)
    storage: Literal["float16", "bfloat16", "float32"] = "float16"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # encoders' compute dtype (bf16 for T5-XXL on GPU)
    batch_size: int = Field(8, ge=1)  # same-size images per VAE forward; instructions per text forward
    device: str = "auto"


def _data_config(c: EncodeCacheConfig):
    from acemodel.config import DataConfig

    return DataConfig(token_budget=c.token_budget, max_side=c.max_side, text_tokens=c.text_tokens)


@register
class EncodeCache(Stage):
    kind = "encode_cache"
    Config = EncodeCacheConfig
    outputs = {TABLE: ENCODED, "quarantine": QUARANTINE}
    uses_model = True

    def _units(self):
        from acemodel.data import lcu_units

        return lcu_units(self.ctx.input("lcu"))

    def plan(self) -> list[WorkUnit]:
        c: EncodeCacheConfig = self.config
        for spec in (c.text_encoder, c.vae):  # a missing model fails here, not in every actor
            if not spec.random_init:
                from acedata.models import ModelSpec, resolve_local

                resolve_local(ModelSpec(name=spec.name, path=spec.path))
        units = [WorkUnit(unit_id(i), {"index": i, "shard": u.shard, "row_group": u.group})
                 for i, u in enumerate(self._units())]
        return [WorkUnit(ENCODERS_UNIT, {})] + units

    def setup(self) -> None:
        from acemodel.encoders import VAE, TextEncoder
        from acemodel.train import DTYPES

        from acedata.models import pick_device

        c: EncodeCacheConfig = self.config
        dev, dtype = pick_device(c.device), DTYPES[c.precision]
        self.text = TextEncoder(c.text_encoder, c.text_tokens, dev, dtype=dtype)
        self.vae = VAE(c.vae, dev, dtype=dtype, cache_size=0)

    def process(self, unit: WorkUnit) -> UnitResult:
        from acemodel.cache import encode_rows

        if unit.id == ENCODERS_UNIT:
            self._write_encoder_tensors()
            return UnitResult({TABLE: ENCODED.empty_table(), "quarantine": QUARANTINE.empty_table()}, {})
        from acemodel.data import LCUStream

        from acedata.shards import open_parquet

        c: EncodeCacheConfig = self.config
        p, data = unit.payload, _data_config(c)
        rows = open_parquet(p["shard"]).read_row_group(p["row_group"], columns=LCUStream.COLUMNS).to_pylist()

        def encode(idx: list[int]) -> list[dict]:
            return encode_rows([rows[r] for r in idx], [p["index"]] * len(idx), idx, data, self.text, self.vae,
                               c.batch_size, c.storage)

        bad = []
        try:
            out = encode(list(range(len(rows))))
        except Exception:  # noqa: BLE001 - retry row by row: the failing rows are quarantined, the rest cached
            out = []
            for r, row in enumerate(rows):
                try:
                    out += encode([r])
                except Exception as e:  # noqa: BLE001
                    bad.append({"source_uri": f"{p['shard']}#{p['row_group']}:{r}", "stage": "encode_cache",
                                "reason": "encode_error", "detail": f"{type(e).__name__}: {str(e)[:200]}",
                                "item_id": row.get("sample_id")})
        tables = {TABLE: pa.Table.from_pylist(out, ENCODED), "quarantine": pa.Table.from_pylist(bad, QUARANTINE)}
        return UnitResult(tables, {"inputs": len(rows)})

    def _write_encoder_tensors(self) -> None:
        from acemodel.cache import encoder_tensors
        from safetensors.torch import save

        from acedata import shards

        fs, d = shards.resolve(self.ctx.stage_dir)
        fs.create_dir(d, recursive=True)
        shards.write_bytes_atomic(fs, f"{d}/{ENCODERS}", save(encoder_tensors(self.text)))

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        from acedata import shards

        c: EncodeCacheConfig = self.config
        units = self._units()
        meta = {
            "units": [{"id": unit_id(i), "shard": u.shard, "row_group": u.group, "rows": u.rows}
                      for i, u in enumerate(units)],
            "settings": {**{k: getattr(c, k) for k in SETTINGS}, "text_encoder": c.text_encoder.model_dump(mode="json"),
                         "vae": c.vae.model_dump(mode="json")},
            "text_encoder": c.text_encoder.weights_id, "vae": c.vae.weights_id, "storage": c.storage,
        }
        fs, d = shards.resolve(self.ctx.stage_dir)
        shards.write_bytes_atomic(fs, f"{d}/{META}", json.dumps(meta, indent=1).encode())
        cached, quarantined = shards.count_rows(self.ctx.out(TABLE)), shards.count_rows(self.ctx.out("quarantine"))
        counts.update(encoded=cached, quarantine=quarantined)
        if cached + quarantined != counts.get("inputs", 0):
            raise RuntimeError(f"encode_cache lost rows: inputs {counts.get('inputs')} != {cached}+{quarantined}")
        return {"cache": storage.absolute(self.ctx.stage_dir)}
