"""The shuffle's cost per item at the fan-out of assemble's label -> build waves, old layout vs new.

Both the writers (label units, one per image bucket) and the buckets (output units) of that
shuffle grow with the run, so a fixed cost per (writer, bucket) piece grows as rows^2. This runs
K writers of the real size (rows per label unit) into the real bucket count, then reads R
buckets from them, in two layouts in this process, interleaved:

    old  one Parquet file per (writer, bucket): `DIR/b00042/<writer>.parquet` (before acedata/shuffle.py
         wrote one file per writer; kept here as the baseline)
    new  acedata.shuffle: one file per writer, each bucket an Arrow IPC stream behind an offset index

and prices the whole wave pair from them: W writers x (CPU per writer) + B buckets x W x (CPU per
piece read), per item (N), for the shapes `bench/assemble_units.py` measured (W = image buckets,
B = output units, rows per writer = samples / W). Rows are random bucket numbers and a `rec` string
of about the sample records' size.

    python bench/shuffle_fanout.py [--writers 3] [--reads 30] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import posixpath
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileSelector, FileType, LocalFileSystem

from acedata import shuffle

# N -> (image buckets = label writers, output units, sample rows) as assemble_units.py ran them
SHAPES = {10**5: (4, 18, 86_000), 10**6: (31, 176, 868_000), 10**7: (310, 1756, 8_660_000)}
REC_BYTES = 1200


def old_write(table: pa.Table, buckets: np.ndarray, root: str, writer: str) -> None:
    fs = LocalFileSystem()
    order = np.argsort(buckets, kind="stable")
    starts = np.flatnonzero(np.diff(buckets[order])) + 1
    for rows in np.split(order, starts):
        d = posixpath.join(root, f"b{int(buckets[rows[0]]):05d}")
        fs.create_dir(d, recursive=True)
        pq.write_table(table.take(pa.array(rows)), posixpath.join(d, f"{writer}.parquet"), filesystem=fs,
                       compression="none")


def old_read(root: str, b: int) -> int:
    fs = LocalFileSystem()
    d = posixpath.join(root, f"b{b:05d}")
    if not os.path.isdir(d):
        return 0
    files = sorted(i.path for i in fs.get_file_info(FileSelector(d)) if i.type == FileType.File)
    n = 0
    for path in files:
        with fs.open_input_file(path) as f:
            n += pq.ParquetFile(f).read().num_rows
    return n


def new_read(root: str, b: int) -> int:
    return shuffle.read_bucket(root, b, schema=pa.schema([("h", pa.int64()), ("rec", pa.string())])).num_rows


def measure(n: int, k: int, r: int, reps: int, tmp: str) -> dict[str, float]:
    w_all, b_all, samples = SHAPES[n]
    per_writer = samples // w_all
    rng = np.random.default_rng(0)
    rec = "x" * REC_BYTES
    tables = [(pa.table({"h": rng.integers(0, 2**62, per_writer), "rec": [rec] * per_writer}),
               rng.integers(0, b_all, per_writer)) for _ in range(k)]
    reads = sorted(set(np.linspace(0, b_all - 1, min(r, b_all)).astype(int).tolist()))
    cpu: dict[str, float] = {}
    for rep in range(reps):  # interleaved; the least CPU of the repeats (the machine is shared)
        for name, write, read in (("old", old_write, old_read), ("new", shuffle.write_parts, new_read)):
            root = os.path.join(tmp, f"{name}-{n}")
            t = time.process_time()
            for i, (tab, bk) in enumerate(tables):
                write(tab, bk, root, f"label-{i:05d}")
            w = (time.process_time() - t) / k
            t = time.process_time()
            got = sum(read(root, b) for b in reads)
            r_ = (time.process_time() - t) / (len(reads) * k)
            assert got == sum(int(np.isin(bk, reads).sum()) for _, bk in tables)
            shutil.rmtree(root)
            if rep == 0 or w < cpu[f"{name}_write_per_writer"]:
                cpu[f"{name}_write_per_writer"] = w
            if rep == 0 or r_ < cpu[f"{name}_read_per_piece"]:
                cpu[f"{name}_read_per_piece"] = r_
    for name in ("old", "new"):
        total = w_all * cpu[f"{name}_write_per_writer"] + b_all * w_all * cpu[f"{name}_read_per_piece"]
        cpu[f"{name}_ms_per_item"] = 1000 * total / n
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=3, help="writers run per shape (K)")
    ap.add_argument("--reads", type=int, default=30, help="buckets read per shape (R)")
    ap.add_argument("--reps", type=int, default=3, help="repeats; the least CPU of each is kept")
    args = ap.parse_args()
    print(f"{'N':>10} {'W':>4} {'B':>5} {'layout':>6} {'ms/writer':>10} {'us/piece read':>13} {'ms/item':>8}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        measure(10**5, 1, 2, 1, tmp)  # warm up both layouts (first-use costs of the readers and writers)
        for n, (w_all, b_all, _) in SHAPES.items():
            c = measure(n, args.writers, args.reads, args.reps, tmp)
            for name in ("old", "new"):
                print(f"{n:>10,} {w_all:>4} {b_all:>5} {name:>6} {1000 * c[f'{name}_write_per_writer']:>10.1f} "
                      f"{1e6 * c[f'{name}_read_per_piece']:>13.1f} {c[f'{name}_ms_per_item']:>8.4f}")
            print(f"{'':>10} new / old per item: {c['new_ms_per_item'] / c['old_ms_per_item']:.2f}")


if __name__ == "__main__":
    main()
