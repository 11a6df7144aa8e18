"""The encode cache's Parquet schema and file names (pyarrow only, so pipeline discovery stays light)."""

from __future__ import annotations

import pyarrow as pa

TABLE = "encoded"
META = "cache.json"
ENCODERS = "encoders.safetensors"
SETTINGS = ("token_budget", "max_side", "text_tokens")  # DataConfig fields a cache depends on

TENSOR = pa.struct([("dtype", pa.string()), ("shape", pa.list_(pa.int32())), ("data", pa.binary())])
FRAME = pa.struct([("latent", TENSOR), ("mask", TENSOR), ("turn", pa.int32())])
ENCODED = pa.schema([
    pa.field("sample_id", pa.string(), False),
    pa.field("task", pa.string()),
    pa.field("unit", pa.int32(), False),  # index of the LCU (shard, row group) in cache.json units
    pa.field("row", pa.int32(), False),  # row inside that row group
    pa.field("target", TENSOR),  # (C, h, w) scaled VAE latent
    pa.field("frames", pa.list_(FRAME)),  # condition frames in model order; mask null = all ones
    pa.field("texts", pa.list_(TENSOR)),  # (L_i, D) per CU instruction: history oldest first, current last
    pa.field("text_lengths", pa.list_(pa.int32())),
    pa.field("instructions", pa.list_(pa.string())),
])


def unit_id(index: int) -> str:
    return f"g{index:06d}"


