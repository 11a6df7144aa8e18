"""Streaming loader over LCU shards (the `lcu` table the data platform assembles).

Work is split into (shard, row group) units. Each epoch the unit order is shuffled with a
seed-derived permutation, units are dealt to ranks and then to loader workers round-robin, and
rows inside a unit are shuffled with a per-(epoch, unit) permutation — so the stream is a pure
function of (seed, epoch, rank, world, worker) and a position (epoch, unit cursor, row cursor)
resumes it exactly. Images keep their aspect ratio and are resized to fit a patch-token budget.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from acemodel.config import DataConfig
from acemodel.files import list_shards, resolve

PIXELS_PER_TOKEN_SIDE = 16  # VAE /8 x patch 2


@dataclass
class Frame:
    image: torch.Tensor  # (3, H, W) in [-1, 1]
    mask: torch.Tensor | None  # (1, H, W) in {0, 1}; None = whole image
    instruction: str  # the instruction of the CU this frame belongs to


@dataclass
class Sample:
    target: torch.Tensor  # (3, H, W) in [-1, 1]
    instruction: str  # current instruction (may be blanked by CFG dropout)
    conditions: list[Frame] = field(default_factory=list)  # history inputs first, then current inputs
    sample_id: str = ""
    task: str = ""

    def frame_instructions(self) -> list[str]:
        """Instruction each frame cross-attends to; frame 0 (target) uses the current one."""
        return [self.instruction] + [f.instruction for f in self.conditions]


@dataclass(frozen=True)
class RowGroup:
    """The stream's unit of work: one Parquet row group of one LCU shard."""

    shard: str
    group: int
    rows: int  # rows in the group (from the footer)


@dataclass
class RowInput:
    """One condition image of an LCU row, decoded and resized, before it meets its instruction."""

    image: torch.Tensor  # (3, H, W) in [-1, 1]
    mask: torch.Tensor | None  # (1, H, W) in {0, 1}; None = whole image
    turn: int  # index into the row's instructions: history oldest first, current last


def fit_size(w: int, h: int, token_budget: int, max_side: int, mult: int = PIXELS_PER_TOKEN_SIDE) -> tuple[int, int]:
    """Aspect-preserving size, multiples of `mult`, with (w/mult)*(h/mult) <= token_budget."""
    scale = min(1.0, math.sqrt(token_budget * mult * mult / (w * h)), max_side / max(w, h))
    tw, th = max(mult, int(w * scale) // mult * mult), max(mult, int(h * scale) // mult * mult)
    while (tw // mult) * (th // mult) > token_budget:  # rounding can only have shrunk; guard anyway
        tw, th = (tw - mult, th) if tw >= th else (tw, th - mult)
    return tw, th


def to_tensor(im: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    im = im.convert("RGB").resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def mask_tensor(im: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    im = im.convert("L").resize(size, Image.NEAREST)
    return torch.from_numpy((np.asarray(im) > 127).astype(np.float32))[None]


def _open(cell: dict | None) -> Image.Image | None:
    if not cell or cell.get("bytes") is None:
        return None
    im = Image.open(io.BytesIO(cell["bytes"]))
    im.load()
    return im


def _rng(*key) -> np.random.Generator:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def row_inputs(row: dict, cfg: DataConfig) -> list[RowInput]:
    """A row's condition frames in model order: history CUs' inputs first, then the current CU's."""
    out = []
    turns = [h["inputs"] for h in row.get("history") or []] + [row.get("inputs")]
    for turn, cu_inputs in enumerate(turns):
        for inp in cu_inputs or []:
            im = _open(inp.get("image"))
            if im is None:
                continue
            s = fit_size(*im.size, cfg.token_budget, cfg.max_side)
            m = _open(inp.get("mask"))
            out.append(RowInput(to_tensor(im, s), mask_tensor(m, s) if m is not None else None, turn))
    return out


def row_target(row: dict, cfg: DataConfig) -> torch.Tensor:
    target = _open(row["target"])
    return to_tensor(target, fit_size(*target.size, cfg.token_budget, cfg.max_side))


def row_to_sample(row: dict, cfg: DataConfig, drop_instruction: bool) -> Sample:
    cur = "" if drop_instruction else row["instruction"]
    instructions = [h["instruction"] for h in row.get("history") or []] + [cur]
    conds = [Frame(x.image, x.mask, instructions[x.turn]) for x in row_inputs(row, cfg)]
    return Sample(row_target(row, cfg), cur, conds, row.get("sample_id", ""), row.get("task", ""))


def lcu_units(data: str | list[str]) -> list[RowGroup]:
    """The stream's units: every row group of the sorted shards of `data`."""
    from acemodel.errors import UserError

    paths = [data] if isinstance(data, str) else list(data)
    try:
        shards = sorted(s for p in paths for s in list_shards(p))
    except FileNotFoundError as e:
        raise UserError(f"{e}; point --data at an lcu table directory or .parquet files") from None
    if not shards:
        raise UserError(f"no LCU shards under {paths}; point --data at an lcu table directory or .parquet files")
    units: list[RowGroup] = []
    for s in shards:
        fs, p = resolve(s)
        with fs.open_input_file(p) as f:
            md = pq.ParquetFile(f).metadata
            units += [RowGroup(s, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
    return units


class LCUStream:
    """Infinite (epoch after epoch) deterministic stream of Samples for one rank/worker."""

    COLUMNS = ["sample_id", "task", "instruction", "inputs", "target", "history"]

    def __init__(self, data: str | list[str], cfg: DataConfig, seed: int = 0, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1) -> None:
        self._layout(lcu_units(data), cfg, seed, rank * num_workers + worker, world_size * num_workers)

    def _layout(self, units: list[RowGroup], cfg: DataConfig, seed: int, slot: int, slots: int) -> None:
        self.units, self.cfg, self.seed = units, cfg, seed
        self.slot, self.slots = slot, slots
        if len(self.units) < self.slots:
            raise ValueError(f"{len(self.units)} row groups cannot feed {self.slots} rank x worker slots")
        self.epoch, self.unit_pos, self.row_pos = 0, 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "unit_pos": self.unit_pos, "row_pos": self.row_pos, "seed": self.seed,
                "slot": self.slot, "slots": self.slots}

    def load_state_dict(self, state: dict) -> None:
        if (state["slot"], state["slots"], state["seed"]) != (self.slot, self.slots, self.seed):
            raise ValueError("loader state belongs to another rank/worker layout or seed")
        self.epoch, self.unit_pos, self.row_pos = state["epoch"], state["unit_pos"], state["row_pos"]

    def _my_units(self, epoch: int) -> list[int]:
        order = _rng(self.seed, "units", epoch).permutation(len(self.units)) if self.cfg.shuffle else \
            np.arange(len(self.units))
        mine = order[self.slot:: self.slots]
        # equal counts for every slot, so distributed ranks step in lockstep
        return [int(u) for u in mine[: len(self.units) // self.slots]]

    def _read_unit(self, u: int) -> list[dict]:
        unit = self.units[u]
        fs, p = resolve(unit.shard)
        with fs.open_input_file(p) as f:
            return pq.ParquetFile(f).read_row_group(unit.group, columns=self.COLUMNS).to_pylist()

    def _sample(self, row: dict, drop_instruction: bool):
        return row_to_sample(row, self.cfg, drop_instruction)

    def __iter__(self) -> Iterator[Sample]:
        while True:
            units = self._my_units(self.epoch)
            while self.unit_pos < len(units):
                u = units[self.unit_pos]
                rows = self._read_unit(u)
                order = _rng(self.seed, "rows", self.epoch, u).permutation(len(rows)) if self.cfg.shuffle else \
                    np.arange(len(rows))
                while self.row_pos < len(rows):
                    r = int(order[self.row_pos])
                    drop = _rng(self.seed, "cfg", self.epoch, u, r).random() < self.cfg.cfg_dropout
                    self.row_pos += 1  # advance first: a saved state points past what was yielded
                    yield self._sample(rows[r], drop)
                self.unit_pos, self.row_pos = self.unit_pos + 1, 0
            self.epoch, self.unit_pos = self.epoch + 1, 0

    def batches(self, batch_size: int) -> Iterator[list[Sample]]:
        it = iter(self)
        while True:
            yield [next(it) for _ in range(batch_size)]


class TorchLCUDataset(torch.utils.data.IterableDataset):
    """For torch DataLoader workers: each worker streams its own slot of the same layout."""

    def __init__(self, data, cfg: DataConfig, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.args = (data, cfg, seed, rank, world_size)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        data, cfg, seed, rank, world = self.args
        return iter(LCUStream(data, cfg, seed, rank, world, wid, n))
