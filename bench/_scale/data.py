"""Inputs for bench/scale.py, generated (and cached) deterministically.

- JPEG photos of realistic sizes (~460-980 px long side): 256 bases made from the photographs
  that ship with scikit-image / scikit-learn (random crops, scales, flips, colour jitter), each
  photo a cheap variation of one base (offset, flip, gain, an index stamp: distinct pixels),
  ~8 ms per photo, cached on disk (10^5 photos: ~6 GB, ~7 min on 2 cores);
- embeddings tables with the structure of `acedata.mining.synthetic.bulk` (fine groups inside
  coarse directions), written in blocks of 2^18 rows so 10^7 rows never sit in memory;
- pairs / instructions / images tables for assembling at metadata scale (tiny image payloads:
  assemble copies bytes, it does not decode them), with a share of edit chains.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from acedata.schemas import schema_for

# --- JPEG photos ---------------------------------------------------------------------------

_BASES: list[Image.Image] | None = None


def _bases() -> list[Image.Image]:
    global _BASES
    if _BASES is None:
        import skimage
        import sklearn

        paths = sorted(glob.glob(os.path.join(os.path.dirname(skimage.__file__), "data", "*.png"))
                       + glob.glob(os.path.join(os.path.dirname(skimage.__file__), "data", "*.jpg"))
                       + glob.glob(os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "*.jpg")))
        out = []
        for p in paths:
            try:
                im = Image.open(p)
                im.load()
            except OSError:
                continue
            if im.mode == "RGB" and min(im.size) >= 256:
                out.append(im)
        if not out:
            raise RuntimeError("no photographs found in the scikit-image / scikit-learn installs")
        _BASES = out
    return _BASES


def photo(i: int, seed: int = 0) -> bytes:
    """Photo number i: a jittered crop of a base photo, long side 512-1024 px, JPEG q 70-95."""
    rng = np.random.default_rng([seed, i])
    bases = _bases()
    im = bases[int(rng.integers(len(bases)))]
    w, h = im.size
    f = rng.uniform(0.5, 1.0)
    cw, ch = int(w * f * rng.uniform(0.8, 1.0)), int(h * f * rng.uniform(0.8, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = im.crop((x, y, x + cw, y + ch))
    long_side = int(rng.integers(512, 1025))
    s = long_side / max(out.size)
    out = out.resize((max(64, round(out.width * s)), max(64, round(out.height * s))), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.8, 1.2)))
    out = ImageEnhance.Color(out).enhance(float(rng.uniform(0.7, 1.3)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.8, 1.2)))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(70, 96)))
    return buf.getvalue()


# Fast variants for 10^4-10^5 photos: a few hundred decoded bases (made once per process by
# `photo`), each photo a cheap numpy variation of one (crop offset, flip, per-channel gain, an
# index stamp that makes every file distinct in pixels) and one JPEG encode: ~4x cheaper than
# `photo`, which resamples and enhances a full image per file.

N_BASES = 256
PAD = 48  # bases are this much larger than the photos cut from them: room for the crop offset
_VARIANT_BASES: list[np.ndarray] | None = None


def _variant_bases() -> list[np.ndarray]:
    global _VARIANT_BASES
    if _VARIANT_BASES is None:
        out = []
        for b in range(N_BASES):
            im = Image.open(io.BytesIO(photo(b, seed=7)))
            out.append(np.asarray(im.convert("RGB")))
        _VARIANT_BASES = out
    return _VARIANT_BASES


def variant(i: int, seed: int = 0) -> bytes:
    """Photo number i of the fast corpus: JPEG, long side ~464-976 px, distinct pixels per i."""
    rng = np.random.default_rng([seed, i, 1])
    base = _variant_bases()[i % N_BASES]
    h, w = base.shape[:2]
    y, x = int(rng.integers(0, PAD + 1)), int(rng.integers(0, PAD + 1))
    a = base[y : y + h - PAD, x : x + w - PAD]
    if rng.random() < 0.5:
        a = a[:, ::-1]
    a = a.copy()
    # the index in 8x8 blocks along the top row (24 bits, black/white): two files never share pixels
    for bit in range(24):
        a[0:8, 8 * bit : 8 * bit + 8] = 255 if (i >> bit) & 1 else 0
    gain = rng.uniform(0.85, 1.15, 3)
    lut = [min(255, int(v * g)) for g in gain for v in range(256)]  # Pillow's point(): per-channel LUT
    buf = io.BytesIO()
    Image.fromarray(a).point(lut).save(buf, "JPEG", quality=int(rng.integers(70, 96)))
    return buf.getvalue()


def photo_name(i: int) -> str:
    """Path of photo i inside the cache and a corpus: 10^4 files per folder."""
    return f"d{i // 10_000:03d}/img{i:07d}.jpg"


def _write_photos(args: tuple[str, list[int]]) -> int:
    d, idx = args
    for i in idx:
        p = os.path.join(d, photo_name(i))
        if not os.path.exists(p):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = p + ".tmp"
            with open(tmp, "wb") as f:
                f.write(variant(i))
            os.replace(tmp, p)
    return len(idx)


CACHE_VERSION = "photos-v2"  # bump when `variant` changes: the cache holds its output


def photo_cache(cache: str, n: int, procs: int = 2) -> str:
    """Make sure photos 0..n-1 exist under cache/photos-v2 (generated once, kept); returns that folder."""
    d = os.path.join(cache, CACHE_VERSION)
    os.makedirs(d, exist_ok=True)
    missing = [i for i in range(n) if not os.path.exists(os.path.join(d, photo_name(i)))]
    if missing:
        chunks = [(d, missing[s : s + 1000]) for s in range(0, len(missing), 1000)]
        with ProcessPoolExecutor(procs) as ex:
            list(ex.map(_write_photos, chunks))
    return d


def corpus(photos: str, n: int, dest: str) -> str:
    """A folder of n hard links into the photo cache (ingest does not follow symlinks); copies
    when the cache is on another filesystem."""
    for i in range(n):
        name = photo_name(i)
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.exists(target):
            continue
        try:
            os.link(os.path.join(photos, name), target)
        except OSError:
            shutil.copyfile(os.path.join(photos, name), target)
    return dest


def corpus_bytes(photos: str, n: int) -> int:
    return sum(os.path.getsize(os.path.join(photos, photo_name(i))) for i in range(n))


# --- embeddings ----------------------------------------------------------------------------

BLOCK = 1 << 20  # rows per metadata shard
EMB_BLOCK = 1 << 18  # rows per embeddings shard: 2^18 x 768 float32 while generating = 0.8 GB


def embeddings(path: str, n: int, d: int = 768, per_cluster: int = 1000, seed: int = 0) -> str:
    """n unit vectors (float16) in shards of 2^18 rows, ~per_cluster rows per coarse direction."""
    from acedata.mining.synthetic import bulk

    os.makedirs(path, exist_ok=True)
    schema = schema_for("embeddings", dim=d)
    for b, s in enumerate(range(0, n, EMB_BLOCK)):
        m = min(EMB_BLOCK, n - s)
        x = bulk(m, d, n_coarse=max(1, m // per_cluster), seed=seed * 1000 + b)
        ids = pa.array([f"img{i:09d}" for i in range(s, s + m)])
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float16()), d)
        t = pa.Table.from_arrays([ids, emb, pa.array(["bench-synthetic"] * m)], schema=schema)
        pq.write_table(t, os.path.join(path, f"part-{b:05d}.parquet"), row_group_size=65_536)
    return path


# --- assemble inputs -----------------------------------------------------------------------

TASKS = [("natural_edit", "general"), ("low_level", "grayscale"), ("controllable", "canny"),
         ("repainting", "inpainting"), ("low_level", "mosaic")]


def assemble_inputs(root: str, n: int, pairs_per_image: float = 0.7, chain_share: float = 0.3,
                    payload: int = 256, seed: int = 0) -> dict[str, str]:
    """images (n rows), pairs (~pairs_per_image * n) and one template instruction per pair.

    A `chain_share` of synthetic pairs edits the target of the previous pair (parent_pair_id),
    so multi-turn history chains exist. Written in blocks of 2^20 images.
    """
    rng = np.random.default_rng(seed)
    out = {t: os.path.join(root, t) for t in ("images", "pairs", "instructions")}
    for p in out.values():
        os.makedirs(p, exist_ok=True)
    raw = rng.integers(0, 256, payload, dtype=np.uint8).tobytes()
    for b, s in enumerate(range(0, n, BLOCK)):
        m = min(BLOCK, n - s)
        ids = [f"img{i:09d}" for i in range(s, s + m)]
        sizes = rng.choice([512, 640, 768, 1024], size=(m, 2))
        img = {
            "image_id": ids, "source_uri": [f"bench://{i}" for i in ids],
            "width": sizes[:, 0].astype(np.int32), "height": sizes[:, 1].astype(np.int32),
            "format": ["JPEG"] * m, "image": [{"bytes": raw, "path": None}] * m, "kind": ["image"] * m,
        }
        _write(out["images"], b, img, "images")
        k = int(m * pairs_per_image)
        src = rng.integers(0, m, k)
        tgt = (src + 1 + rng.integers(0, 7, k)) % m  # a neighbour id: inside one "group" of 8
        task = rng.integers(0, len(TASKS), k)
        pids = [f"p{s + j:010d}" for j in range(k)]
        # chains: pair j continues pair j-1 when both are synthetic and the coin says so
        chain = (rng.random(k) < chain_share) & (task > 0)
        chain[0] = False
        parent = [pids[j - 1] if chain[j] else None for j in range(k)]
        src_ids = [ids[src[j]] if not chain[j] else None for j in range(k)]
        tgt_ids = [ids[t] for t in tgt]
        for j in range(k):  # a chained edit starts from its parent's target
            if chain[j]:
                src_ids[j] = tgt_ids[j - 1]
        pairs = {
            "pair_id": pids, "source_id": src_ids, "target_id": tgt_ids,
            "task": [TASKS[t][0] for t in task], "subtask": [TASKS[t][1] for t in task],
            "set_id": (src // 8).astype(np.int64), "sim_pass1": rng.uniform(0.8, 0.95, k).astype(np.float32),
            "parent_pair_id": parent, "provenance": ['{"stage": "bench"}'] * k,
        }
        _write(out["pairs"], b, pairs, "pairs")
        ins = {"pair_id": pids, "variant": np.zeros(k, np.int32),
               "instruction": [f"Edit {{image}}: apply {TASKS[t][1]} number {j}." for j, t in enumerate(task)],
               "method": ["template"] * k}
        _write(out["instructions"], b, ins, "instructions")
    return out


def _write(folder: str, b: int, cols: dict, table: str) -> None:
    schema = schema_for(table)
    n = len(next(iter(cols.values())))
    arrays = [pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema]
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), os.path.join(folder, f"part-{b:05d}.parquet"),
                   row_group_size=65_536)
