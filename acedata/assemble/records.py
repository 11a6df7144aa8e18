"""What travels between assemble's waves: scratch table schemas, pair metadata, sample records.

Pairs, instructions, reviews and image-index rows keep their own Arrow columns through the
shuffles (plus `key` for bucketing and `src`/`row`, the input order, so "the first table
wins" holds without the driver). Everything planned after the join — chain metadata,
frontier items, samples — is one JSON text per row (`rec`): small, self-contained records
that a later wave reads without any other lookup.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from acedata.lcu import PairMeta, stable_hash
from acedata.schemas import PAIRS, REVIEWS

T2I_PREFIX = "t2i:"
SPLITS = {"train": "lcu", "validation": "lcu_validation"}

PAIR_COLUMNS = [
    "pair_id", "source_id", "target_id", "task", "subtask", "mask_id", "extra_input_ids", "set_id",
    "sim_pass1", "score_pass2", "scores", "parent_pair_id", "provenance",
]
INSTR_COLUMNS = ["pair_id", "variant", "instruction", "method", "model", "provenance"]

# input order of a row: `src` = table index << 32 | shard index, `row` = row within the shard
_ORDER = [pa.field("key", pa.string()), pa.field("src", pa.int64()), pa.field("row", pa.int64())]
PAIR_ROWS = pa.schema([*_ORDER, *(PAIRS.field(c) for c in PAIR_COLUMNS)])
INSTR_ROWS = pa.schema([*_ORDER, pa.field("pair_id", pa.string()), pa.field("variant", pa.int32()),
                        *(pa.field(c, pa.string()) for c in INSTR_COLUMNS[2:])])
REVIEW_ROWS = pa.schema([_ORDER[0], *REVIEWS])
IMAGE_REQUESTS = pa.schema([pa.field("key", pa.string()), pa.field("pair_id", pa.string())])  # key: image_id
IMAGE_SIZES = pa.schema([*_ORDER, pa.field("width", pa.int32()), pa.field("height", pa.int32())])  # key: image_id
# key: pair_id; width/height null when no images table holds the image
IMAGE_ANSWERS = pa.schema([pa.field("key", pa.string()), pa.field("image_id", pa.string()),
                           pa.field("found", pa.bool_()), pa.field("width", pa.int32()),
                           pa.field("height", pa.int32())])
RECORDS = pa.schema([pa.field("key", pa.string()), pa.field("rec", pa.string())])
# samples by their first image (key); the label wave reads the id, kind and the images whose bytes
# the row needs (inputs, targets, masks) without decoding `rec`
SAMPLES = pa.schema([pa.field("key", pa.string()), pa.field("sample_id", pa.string()), pa.field("kind", pa.string()),
                     pa.field("rec", pa.string()), pa.field("images", pa.list_(pa.string()))])
EDGES = pa.schema([pa.field("key", pa.string()), pa.field("nbr", pa.string())])  # key: image id (node)
ORDERED = pa.schema([pa.field("h", pa.uint64()), pa.field("sample_id", pa.string()), pa.field("rec", pa.string())])


def meta(r: dict[str, Any]) -> PairMeta:
    """The planning view of a pair row."""
    return PairMeta(
        r["pair_id"], r["source_id"], r["target_id"], r["task"], r["subtask"], r["mask_id"],
        list(r["extra_input_ids"] or []), r["set_id"], r["parent_pair_id"],
    )


def mined(p: PairMeta) -> bool:
    """A mined pair: its history is a path through its set (never a synthesis parent)."""
    return p.set_id is not None and p.task == "natural_edit" and p.parent_pair_id is None


def set_key(set_id: int, image_id: str) -> str:
    """Where the mined pairs of a set ending at `image_id` meet (`ChainIndex.into`)."""
    return f"s:{set_id}:{image_id}"


def predecessor_key(p: PairMeta) -> str | None:
    """The chain key holding the candidates for the CU before `p` (None: `p` starts every chain)."""
    if p.parent_pair_id is not None:
        return "p:" + p.parent_pair_id
    if p.set_id is not None and p.task == "natural_edit":
        return set_key(p.set_id, p.source_id)
    return None


def choose(variants: list[int], pid: str, salt: str, one: bool, seed: int) -> list[int]:
    """The instruction variants a sample uses: all, or one picked by a seeded hash."""
    if not one:
        return variants
    return [variants[stable_hash(seed, salt, pid) % len(variants)]]


def sample_id(chain: list[str], variants: list[int]) -> str:
    key = "|".join(f"{q}#{v}" for q, v in zip(chain, variants))
    return stable_hash(key, "sample").to_bytes(8, "big").hex() + stable_hash("sample", key).to_bytes(8, "big").hex()


def sample_images(s: dict[str, Any]) -> list[str]:
    """Every input and target image of a sample record (masks excluded)."""
    if "t2i" in s:
        return [s["t2i"]]
    out: list[str] = []
    for q in s["chain"]:
        p = s["pairs"][q]
        out.extend([p["source_id"], *(p["extra_input_ids"] or []), p["target_id"]])
    return out


def bytes_needed(s: dict[str, Any]) -> list[str]:
    """Every image whose bytes the sample's row holds: inputs, targets and masks."""
    masks = [p["mask_id"] for p in s["pairs"].values() if p["mask_id"]]
    return [*sample_images(s), *masks]


def kind_of(s: dict[str, Any]) -> str:
    """Which count a sample adds to: t2i, single_turn or multi_turn."""
    return "t2i" if "t2i" in s else "multi_turn" if len(s["chain"]) > 1 else "single_turn"


def split_of(root: str, fraction: float, seed: int) -> str:
    """A connected group of images (named by its smallest image id) goes wholly to one split."""
    if fraction <= 0:
        return "train"
    return "validation" if stable_hash(seed, "split", root) % (1 << 32) < int(fraction * (1 << 32)) else "train"


def shuffle_hash(seed: int, sid: str) -> int:
    """A sample's place in the seeded global shuffle (ties broken by sample_id)."""
    return stable_hash(seed, "shuffle", sid)


def range_bucket(h: int, n: int) -> int:
    """Bucket of a 64-bit hash by range, so buckets in order hold the hashes in order."""
    return (h * n) >> 64


def pair_record(row: dict[str, Any], ok: list[int], rows: dict[int, dict[str, Any]],
                sizes: dict[str, list]) -> dict[str, Any]:
    """A usable pair as chains and samples carry it: its row, good variants, their texts, target size."""
    return {"pair": row, "ok": ok, "instr": {str(v): rows[v] for v in ok}, "size": sizes[row["target_id"]]}


def make_sample(chain: list[dict[str, Any]], variants: list[int]) -> dict[str, Any]:
    """A sample from pair records (oldest first, current last) and the variant of each."""
    ids = [r["pair"]["pair_id"] for r in chain]
    return {"sample_id": sample_id(ids, variants), "chain": ids, "variants": variants,
            "pairs": {r["pair"]["pair_id"]: r["pair"] for r in chain},
            "instructions": {q: {str(v): r["instr"][str(v)]} for q, r, v in zip(ids, chain, variants)},
            "size": chain[-1]["size"]}


def caption_sample(pid: str, variant: int, row: dict[str, Any], size: list) -> dict[str, Any]:
    """A text-to-image sample: a caption of one image, no inputs."""
    return {"sample_id": sample_id([pid], [variant]), "t2i": pid[len(T2I_PREFIX):], "chain": [pid],
            "variants": [variant], "pairs": {}, "instructions": {pid: {str(variant): row}}, "size": size}


def dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))


def sample_table(samples: list[dict[str, Any]]) -> pa.Table:
    return pa.table({"key": [sample_images(s)[0] for s in samples], "sample_id": [s["sample_id"] for s in samples],
                     "kind": [kind_of(s) for s in samples], "rec": [dumps(s) for s in samples],
                     "images": [sorted(set(bytes_needed(s))) for s in samples]}, schema=SAMPLES)


def records(keys: list[str], recs: list[dict[str, Any]]) -> pa.Table:
    return pa.table({"key": pa.array(keys, pa.string()), "rec": pa.array([dumps(r) for r in recs], pa.string())},
                    schema=RECORDS)
