"""Latent / text-embedding cache: LCU rows encoded once by the frozen VAE and text encoder.

A cache is the folder the `encode_cache` stage writes (e.g. RUN/encode_cache):

    encoded/               Parquet table, one row per LCU row: the target latent and each condition
                           frame's latent (float16, with shapes) and latent-size mask, and the text
                           embedding of every CU instruction of the row (float16, with lengths)
    encoders.safetensors   the indicator embeddings and the empty-instruction embedding (CFG dropout)
    cache.json             the LCU stream units (shard, row group, rows) in stream order, which
                           `encoded` unit holds each, the encoders' weights ids and the data settings

With `data.cache: PATH` the trainer streams this table instead of the LCU shards, in the same
order with the same CFG-dropout draws as `LCUStream` (units and rows are recorded by position),
and loads neither the VAE nor the text encoder. The images are resized exactly as the loader
would (token budget, max side), so a cache only fits configs with the same data settings.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from acemodel import files
from acemodel.cache_schema import ENCODED, ENCODERS, META, SETTINGS, TABLE, unit_id  # noqa: F401 - re-exported
from acemodel.config import DataConfig, TrainConfig
from acemodel.data import LCUStream, RowGroup, row_inputs, row_target
from acemodel.dit import INDICATORS

_NUMPY = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}

def tensor_cell(t: torch.Tensor, dtype: str) -> dict:
    """A tensor as {dtype, shape, raw little-endian bytes}; bfloat16 is stored via its uint16 bits."""
    t = t.detach().cpu().contiguous()
    if dtype == "bfloat16":
        data = t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    else:
        data = t.numpy().astype(_NUMPY[dtype]).tobytes()
    return {"dtype": dtype, "shape": list(t.shape), "data": data}


def cell_tensor(cell: dict | None) -> torch.Tensor | None:
    if cell is None:
        return None
    if cell["dtype"] == "bfloat16":
        t = torch.from_numpy(np.frombuffer(cell["data"], np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.frombuffer(cell["data"], _NUMPY[cell["dtype"]]).copy())
    return t.reshape(cell["shape"])


def encode_rows(rows: list[dict], units: list[int], row_ids: list[int], data: DataConfig, text, vae,
                batch_size: int = 8, storage: str = "float16") -> list[dict]:
    """Cache rows for LCU rows: resize as the loader does, VAE-encode every image (same-size images
    batched), text-encode every CU instruction. `text`/`vae` are acemodel.encoders objects."""
    from acemodel.encoders import downsample_mask

    images, per_row = [], []
    for row in rows:
        target = row_target(row, data)
        inputs = row_inputs(row, data)
        per_row.append((len(images), inputs))
        images += [target] + [x.image for x in inputs]
    latents = vae.encode_batch(images, batch_size)
    instructions = [[h["instruction"] for h in r.get("history") or []] + [r["instruction"]] for r in rows]
    flat = sorted({t for ins in instructions for t in ins})
    emb: dict[str, torch.Tensor] = {}
    for k in range(0, len(flat), batch_size):
        chunk = flat[k: k + batch_size]
        emb.update(zip(chunk, text.encode(chunk)))
    out = []
    for row, u, r, (first, inputs), ins in zip(rows, units, row_ids, per_row, instructions):
        frames = []
        for j, x in enumerate(inputs):
            z = latents[first + 1 + j]
            m = None if x.mask is None else downsample_mask(x.mask, z.shape[-2:]).to(torch.uint8)
            frames.append({"latent": tensor_cell(z, storage), "mask": None if m is None else tensor_cell(m, "uint8"),
                           "turn": x.turn})
        out.append({
            "sample_id": row.get("sample_id", ""), "task": row.get("task"), "unit": u, "row": r,
            "target": tensor_cell(latents[first], storage), "frames": frames,
            "texts": [tensor_cell(emb[t], storage) for t in ins], "text_lengths": [emb[t].shape[0] for t in ins],
            "instructions": ins,
        })
    return out


def encoder_tensors(text) -> dict[str, torch.Tensor]:
    """What training needs from the text encoder besides the instructions (kept in fp32)."""
    return {"indicators": text.indicator_embeddings(INDICATORS).float().cpu().contiguous(),
            "empty_text": text.encode([""])[0].float().cpu().contiguous()}


def _exists(uri: str) -> bool:
    return files.exists(uri)


def _read_bytes(uri: str) -> bytes:
    return files.read_bytes(uri)


def cache_root(path: str) -> str:
    """The cache folder (local path or URI), given it or its `encoded` table."""
    path = path.rstrip("/")
    if not _exists(posixpath.join(path, META)) and posixpath.basename(path) == TABLE:
        path = posixpath.dirname(path)
    return path


def read_meta(path: str) -> dict:
    from acemodel.errors import UserError

    root = cache_root(path)
    if not _exists(posixpath.join(root, META)) or not _exists(posixpath.join(root, ENCODERS)):
        raise UserError(f"no encode cache at {path!r} (expected {META} and {ENCODERS}); "
                        "build one with the data CLI's `encode-cache CONFIG --data LCU --out DIR`")
    return json.loads(_read_bytes(posixpath.join(root, META)))


def read_encoder_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(_read_bytes(posixpath.join(cache_root(path), ENCODERS)))


def check_compatible(meta: dict, cfg: TrainConfig, path: str) -> None:
    """A cache is only valid for the encoders and data settings it was built with."""
    from acemodel.errors import UserError

    want = {**{k: getattr(cfg.data, k) for k in SETTINGS},
            "text_encoder": cfg.text_encoder.model_dump(mode="json"), "vae": cfg.vae.model_dump(mode="json")}
    have = {k: meta["settings"].get(k) for k in want}
    diff = [f"{k}: cache {have[k]!r} vs config {want[k]!r}" for k in want if have[k] != want[k]]
    if diff:
        raise UserError(f"encode cache {path} does not match the training config ({'; '.join(diff)}); "
                        "rebuild it with this config")


@dataclass
class CachedSample:
    """A Sample whose images and instructions are already encoded (frame 0 = the target)."""

    target: torch.Tensor  # (C, h, w) latent
    frames: list[torch.Tensor] = field(default_factory=list)  # (C+1, h, w) latent ⊕ mask per condition frame
    texts: list[torch.Tensor] = field(default_factory=list)  # (L, D) per frame, frame 0 first
    sample_id: str = ""
    task: str = ""


class CachedLCUStream(LCUStream):
    """LCUStream over a cache: same units, same order, same CFG-dropout draws; no image decoding."""

    def __init__(self, cache: str, cfg: DataConfig, seed: int = 0, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1) -> None:
        self.root = cache_root(cache)
        meta = read_meta(self.root)
        self.table = posixpath.join(self.root, TABLE)
        self._unit_ids = [u["id"] for u in meta["units"]]
        self.empty_text = read_encoder_tensors(self.root)["empty_text"]
        units = [RowGroup(u["shard"], u["row_group"], u["rows"]) for u in meta["units"]]
        self._layout(units, cfg, seed, rank * num_workers + worker, world_size * num_workers)

    def _read_unit(self, u: int) -> list[dict]:
        frag = files.unit_fragment(self.table, self._unit_ids[u])
        parts = [files.open_parquet(posixpath.join(self.table, s["file"])).read() for s in frag["shards"]]
        rows = pa.concat_tables(parts).to_pylist() if parts else []
        return sorted(rows, key=lambda r: r["row"])

    def _sample(self, row: dict, drop_instruction: bool) -> CachedSample:
        texts = [cell_tensor(c) for c in row["texts"]]
        if drop_instruction:
            texts[-1] = self.empty_text
        frames = []
        for fr in row["frames"]:
            z = cell_tensor(fr["latent"])
            m = cell_tensor(fr["mask"])
            m = torch.ones(1, *z.shape[-2:], dtype=z.dtype) if m is None else m.to(z.dtype)
            frames.append(torch.cat([z, m]))
        frame_texts = [texts[-1]] + [texts[fr["turn"]] for fr in row["frames"]]
        return CachedSample(cell_tensor(row["target"]), frames, frame_texts, row["sample_id"], row.get("task") or "")


class CachedEncoders:
    """The trainer's encoder interface, served from a cache: no VAE or text encoder is loaded."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        path = cfg.data.cache
        meta = read_meta(path)
        check_compatible(meta, cfg, path)
        self.tensors = read_encoder_tensors(path)
        self.device = device
        self.text_dim = int(self.tensors["indicators"].shape[1])
        self.text_weights_id, self.vae_weights_id = meta["text_encoder"], meta["vae"]

    def indicator_embeddings(self) -> torch.Tensor:
        return self.tensors["indicators"]

    def stream(self, cfg: TrainConfig, rank: int, world_size: int) -> CachedLCUStream:
        return CachedLCUStream(cfg.data.cache, cfg.data, cfg.seed, rank, world_size)

    def encode(self, samples: list[CachedSample]):
        """(target latents, condition frames, per-frame texts), fp32 on the device."""
        dev = self.device
        x0s = [s.target.to(dev, torch.float32) for s in samples]
        conds = [[f.to(dev, torch.float32) for f in s.frames] for s in samples]
        texts = [[t.to(dev, torch.float32) for t in s.texts] for s in samples]
        return x0s, conds, texts
