"""Benchmark: `acedata stats` (polars lazy scans, projection pushdown) vs a pandas full load.

Generates an LCU table (metadata columns as the assembler writes them, tiny image payloads in
every image cell), then answers the same questions both ways, each in a fresh child process so
peak memory (ru_maxrss) is its own: counts and shares per task/subtask, turns per sample,
width/height/aspect/megapixel quantiles and aspect bins, instruction length and distinct ratio,
per-score counts/means/quantiles. The answers are checked equal before the ratios are printed.

    .venv/bin/python bench/stats.py            # 1M rows (about 3 minutes on 2 busy cores)
    .venv/bin/python bench/stats.py --full     # 10M rows, as the issue names
    .venv/bin/python bench/stats.py --rows 200000 --keep DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

TASKS = [
    ("natural_edit", "general"), ("repainting", "inpainting"), ("repainting", "outpainting"),
    ("controllable", "canny"), ("controllable", "depth"), ("low_level", "grayscale"),
    ("element_editing", "remove"), ("semantic_editing", "style"), ("reference_generation", "subject"),
    ("layer_editing", "fusion"), ("text_to_image", "caption"),
]
SIZES = np.array([[512, 512], [640, 480], [480, 640], [1024, 576], [768, 1024], [1024, 1024], [300, 700]])
SCORE_NAMES = ["ssim", "clip_dir", "sim_pass1"]


# --- data ------------------------------------------------------------------------------


def _cells(payloads: pa.Array) -> pa.StructArray:
    return pa.StructArray.from_arrays([payloads, pa.nulls(len(payloads), pa.string())], names=["bytes", "path"])


def _payloads(rng: np.random.Generator, n: int, size: int) -> pa.Array:
    raw = rng.integers(0, 256, n * size, dtype=np.uint8).tobytes()
    offsets = pa.array(np.arange(0, (n + 1) * size, size, dtype=np.int32))
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets.buffers()[1], pa.py_buffer(raw)])


def _list(lengths: np.ndarray, values: pa.Array) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def make_chunk(n: int, seed: int, payload: int, schema: pa.Schema) -> pa.Table:
    """n LCU rows built column-wise (vectorised: millions of rows in seconds)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, len(TASKS), n)
    task = np.array([x[0] for x in TASKS], dtype=object)[t]
    sub = np.array([x[1] for x in TASKS], dtype=object)[t]
    t2i = task == "text_to_image"
    turns = np.where(t2i, 1, rng.choice([1, 1, 1, 2, 3], n)).astype(np.int32)
    n_in = np.where(t2i, 0, 1)
    wh = SIZES[rng.integers(0, len(SIZES), n)]
    words = rng.integers(3, 25, n)
    vocab = rng.integers(0, 50_000, n)  # ~50k distinct instruction texts
    instr = [f"change {{image}} variant {v} " + "word " * int(k) for v, k in zip(vocab, words)]
    n_hist = turns - 1
    n_hist_cus = int(n_hist.sum())
    mask = rng.random(int(n_in.sum())) < 0.3
    inp_images = _cells(_payloads(rng, int(n_in.sum()), payload))
    inp_masks = _cells(_payloads(rng, int(n_in.sum()), payload))
    inp_masks = pa.StructArray.from_arrays(inp_masks.flatten(), names=["bytes", "path"], mask=pa.array(~mask))
    inputs = _list(n_in, pa.StructArray.from_arrays([inp_images, inp_masks], names=["image", "mask"]))
    h_inputs = _list(np.ones(n_hist_cus, dtype=np.int32), pa.StructArray.from_arrays(
        [_cells(_payloads(rng, n_hist_cus, payload)), pa.nulls(n_hist_cus, schema.field("target").type)],
        names=["image", "mask"]))
    history = _list(n_hist, pa.StructArray.from_arrays(
        [pa.array(["earlier {image} edit"] * n_hist_cus), h_inputs, _cells(_payloads(rng, n_hist_cus, payload))],
        names=["instruction", "inputs", "target"]))
    n_scores = rng.integers(0, len(SCORE_NAMES) + 1, n)
    total = int(n_scores.sum())
    starts = np.concatenate([[0], np.cumsum(n_scores)[:-1]])
    name_idx = np.arange(total) - np.repeat(starts, n_scores)
    scores = _list(n_scores, pa.StructArray.from_arrays(
        [pa.array(np.array(SCORE_NAMES, dtype=object)[name_idx]), pa.array(rng.random(total).astype(np.float32))],
        names=["name", "value"]))
    cols = {
        "sample_id": pa.array([f"{seed:04d}-{i:08d}" for i in range(n)]),
        "task": pa.array(task), "subtask": pa.array(sub), "instruction": pa.array(instr),
        "inputs": inputs, "target": _cells(_payloads(rng, n, payload)), "history": history,
        "num_turns": pa.array(turns), "width": pa.array(wh[:, 0].astype(np.int32)),
        "height": pa.array(wh[:, 1].astype(np.int32)),
        "instruction_method": pa.array(np.where(rng.random(n) < 0.6, "template", "llm_rewrite").astype(object)),
        "pair_id": pa.array([f"p{seed}-{i}" for i in range(n)]),
        "source_ids": _list(n_in, pa.array([f"img{i}" for i in range(int(n_in.sum()))])),
        "scores": scores, "provenance": pa.array(['{"stage": "bench"}'] * n),
    }
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def generate(path: str, rows: int, payload: int, chunk: int = 250_000) -> None:
    from acedata import shards
    from acedata.schemas import schema_for

    schema = schema_for("lcu")
    w = shards.ShardWriter(path, schema, unit="bench", max_rows=1_000_000, max_bytes=1 << 30)
    for i, start in enumerate(range(0, rows, chunk)):
        w.write(make_chunk(min(chunk, rows - start), i, payload, schema))
    w.commit()
    shards.finalize_manifest(path, schema, table="lcu")


# --- the two ways of answering -----------------------------------------------------------

QS = (0.05, 0.25, 0.5, 0.75, 0.95)
ASPECT_EDGES = [0.0, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, np.inf]


def answers_polars(path: str) -> dict:
    from acedata.stats import compute

    res = compute(path, with_funnel=False, histograms=False)
    return {
        "rows": res["rows"],
        "groups": sorted([g["task"], g["subtask"], g["count"]] for g in res["groups"]),
        "turns": sorted([t["num_turns"], t["count"]] for t in res["turns"]),
        "width": res["resolution"]["width"], "height": res["resolution"]["height"],
        "aspect": res["aspect"]["ratio"], "aspect_bins": [b["count"] for b in res["aspect"]["bins"]],
        "chars": res["instructions"]["chars"], "distinct": res["instructions"]["distinct"],
        "scores": sorted([s["name"], s["count"], s["mean"], s["p50"]] for s in res["scores"]),
        "approximate": res.get("approximate", {}),
    }


def _qstats(s) -> dict:
    out = {"min": float(s.min()), "mean": float(s.mean())}
    out.update({f"p{round(q * 100)}": float(s.quantile(q, interpolation="nearest")) for q in QS})
    out["max"] = float(s.max())
    return out


def answers_pandas(path: str) -> dict:
    import pandas as pd

    from acedata import shards

    df = pd.concat([pd.read_parquet(f) for f in shards.list_shards(path)], ignore_index=True)  # full load
    groups = df.groupby(["task", "subtask"]).size()
    aspect = df["width"].astype(float) / df["height"].astype(float)
    scores = df["scores"].explode().dropna()
    sdf = pd.DataFrame({"name": [s["name"] for s in scores], "value": [float(s["value"]) for s in scores]})
    by_name = sdf.groupby("name")["value"]
    return {
        "rows": len(df),
        "groups": sorted([t, s, int(c)] for (t, s), c in groups.items()),
        "turns": sorted([int(k), int(c)] for k, c in df["num_turns"].value_counts().items()),
        "width": _qstats(df["width"]), "height": _qstats(df["height"]), "aspect": _qstats(aspect),
        "aspect_bins": np.histogram(aspect, bins=ASPECT_EDGES)[0].tolist(),
        "chars": _qstats(df["instruction"].str.len()), "distinct": int(df["instruction"].nunique()),
        "scores": sorted([k, int(by_name.count()[k]), float(by_name.mean()[k]),
                          float(by_name.quantile(0.5, interpolation="nearest")[k])] for k in by_name.groups),
    }


def measure(method: str, path: str) -> None:
    """Child process: answer once, print answers, seconds and this process's peak RSS."""
    cap = float(os.environ.get("BENCH_MEM_CAP_GB", "0"))
    if cap > 0:  # fail with MemoryError rather than wake the OOM killer on a shared machine
        resource.setrlimit(resource.RLIMIT_AS, (int(cap * 2**30), int(cap * 2**30)))
    t0 = time.perf_counter()
    ans = (answers_polars if method == "polars" else answers_pandas)(path)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"answers": ans, "seconds": secs, "peak_bytes": peak}))


def _available_gb() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        info = {line.split(":")[0]: line.split()[1] for line in f}
    return int(info["MemAvailable"]) / 2**20


def run_child(method: str, path: str, cap_gb: float = 0.0) -> dict:
    env = {**os.environ, "BENCH_MEM_CAP_GB": str(cap_gb)}
    p = subprocess.run([sys.executable, __file__, "--measure", method, path], capture_output=True, text=True,
                       check=False, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1], "rc": p.returncode}
    return json.loads(p.stdout.strip().splitlines()[-1])


def same(a, b, tol: float = 1e-3) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))
    return a == b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--full", action="store_true", help="10M rows")
    ap.add_argument("--payload", type=int, default=48, help="bytes per image cell")
    ap.add_argument("--keep", help="write the table here and keep it")
    ap.add_argument("--pandas-cap-gb", type=float, default=0.0,
                    help="address-space cap for the pandas child (default 70%% of available memory)")
    ap.add_argument("--measure", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(*args.measure)
        return 0
    rows = 10_000_000 if args.full else args.rows
    root = args.keep or tempfile.mkdtemp(prefix="bench-stats-")
    path = os.path.join(root, "lcu")
    try:
        t0 = time.perf_counter()
        if not os.path.exists(os.path.join(path, "_manifest.json")):
            generate(path, rows, args.payload)
        from acedata import shards

        m = shards.read_manifest(path)
        print(f"LCU table: {m['rows']:,} rows, {len(m['shards'])} shards, {m['bytes'] / 1e6:,.0f} MB on disk "
              f"(generated in {time.perf_counter() - t0:.0f} s)")
        pol = run_child("polars", path)
        print(f"acedata stats (polars lazy):  {pol['seconds']:8.2f} s  peak RSS {pol['peak_bytes'] / 1e9:6.2f} GB")
        cap = args.pandas_cap_gb or round(0.7 * _available_gb(), 1)
        pan = run_child("pandas", path, cap)
        if "error" in pan:
            print(f"pandas full load: FAILED under a {cap} GB address-space cap ({pan['error']}, rc {pan['rc']}); "
                  f"polars answered in {pol['peak_bytes'] / 1e9:.2f} GB peak")
            return 1
        print(f"pandas full load:             {pan['seconds']:8.2f} s  peak RSS {pan['peak_bytes'] / 1e9:6.2f} GB")
        approx = pol["answers"].pop("approximate", {})
        if "instructions.distinct" in approx:  # a HyperLogLog estimate: within 4 standard errors
            got, want = pol["answers"].pop("distinct"), pan["answers"].pop("distinct")
            err = approx["instructions.distinct"]["std_error"]
            print(f"distinct instructions: {got:,} estimated, {want:,} exact ({got / want - 1:+.2%}; "
                  f"standard error {err:.2%})")
            if abs(got - want) > 4 * err * want:
                print("distinct estimate outside 4 standard errors")
                return 1
        if not same(pol["answers"], pan["answers"]):
            print("answers differ:\n polars", json.dumps(pol["answers"])[:2000], "\n pandas",
                  json.dumps(pan["answers"])[:2000])
            return 1
        print("answers identical (counts exact, statistics within 1e-3; score quantiles from log buckets "
              "are within 0.1% relative)")
        print(f"speed-up {pan['seconds'] / pol['seconds']:.1f}x, "
              f"peak memory ratio {pan['peak_bytes'] / pol['peak_bytes']:.1f}x (pandas / polars)")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
