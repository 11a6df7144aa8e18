"""Assemble's CPU and memory per unit kind, in one process: where the cost per row grows with N.

Runs the assemble stage of `bench/scale.py --only meta` (same generated tables and settings) with its
waves driven here, every unit in this process, and prints per unit kind (scan, images, join,
chain, star, components, label, build): units, CPU seconds, CPU ms per item (item = one image of
the generated tables, as scale.py prices), the largest unit's CPU, and the largest unit's peak RSS
(VmHWM reset before each unit, so it is this process's peak during that unit: the interpreter's
baseline included). Every wave before `build` runs in full; "plan" sums scan .. label, "bytes+rows"
the waves that bring image bytes (locate, read) and build, the cost that was the build's alone
when build units read their images through the shared reader.

The build wave can be sampled: `--sample-build K` runs K evenly spaced build units (deterministic)
and extrapolates the wave from them; `--profile` prints a cProfile of the sampled units;
`--reader-baseline` builds them again through the shared image reader (how build units read image
bytes before the fetch waves), in this process, and checks the rows are equal.
A plan is kept
under WORK/run-N with its build units (`build-units.json`), so `--build-only` samples build units
again (say, after changing rows.py) without planning again.

    python bench/assemble_units.py --n 1e6 --work /work/scale-run/asm-x --sample-build 8 [--profile]
    python bench/assemble_units.py --n 1e7 --work DIR --build-only --sample-build 8

The tables are made once per N under WORK/in-N (10^7: ~35 s, ~0.4 GB).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import time
from collections import defaultdict
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FETCH = ("locate", "read")  # the waves that bring image bytes to the build units (acedata/assemble/fetch.py)
CONFIG = {"max_history": 3, "validation_fraction": 0.1, "rows_per_unit": 5000, "seed": 0, "dataset_card": False}


def _hwm_reset() -> None:
    try:  # Linux: "5" resets this process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def inputs_for(work: str, n: int) -> dict[str, str]:
    from _scale import data as scale_data

    root = os.path.join(work, f"in-{n}")
    done = os.path.join(root, "done")
    if os.path.exists(done):
        return {t: os.path.join(root, t) for t in ("images", "pairs", "instructions")}
    shutil.rmtree(root, ignore_errors=True)
    out = scale_data.assemble_inputs(root, n)
    open(done, "w").close()
    return out


def make_stage(inputs: dict[str, str], run_dir: str) -> Any:
    from acedata.stage import RunContext
    from acedata.stages.assemble import Assemble, AssembleConfig

    cfg = AssembleConfig(name="assemble", inputs=inputs, **CONFIG)
    tables = {k: [v] for k, v in inputs.items()}
    return Assemble(cfg, RunContext(run_dir, os.path.join(run_dir, "assemble"), tables))


class Tally:
    def __init__(self) -> None:
        self.by: dict[str, dict[str, float]] = defaultdict(lambda: {"units": 0, "cpu_s": 0.0, "max_cpu_s": 0.0,
                                                                   "max_rss_mib": 0.0, "rows": 0})

    def run(self, stage: Any, unit: Any, prof: cProfile.Profile | None = None) -> dict[str, int]:
        from acedata.runtime import execute_unit

        _hwm_reset()
        t = time.process_time()
        if prof is not None:
            prof.enable()
        counts = execute_unit(stage, unit)
        if prof is not None:
            prof.disable()
        cpu = time.process_time() - t
        s = self.by[unit.payload["op"]]
        s["units"] += 1
        s["cpu_s"] += cpu
        s["max_cpu_s"] = max(s["max_cpu_s"], cpu)
        s["max_rss_mib"] = max(s["max_rss_mib"], _hwm_mib())
        s["rows"] += sum(counts.get(k, 0) for k in ("single_turn", "multi_turn", "t2i"))
        return counts


def plan(stage: Any, tally: Tally, run_dir: str) -> list[Any]:
    """Every wave before `build`, in full; returns the build wave's units (also saved)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    units, wave = stage.plan(), 0
    while units and units[0].payload["op"] != "build":
        counts: dict[str, int] = defaultdict(int)
        for u in units:
            for k, v in tally.run(stage, u).items():
                counts[k] += v
        units = stage.next_wave(wave, dict(counts))
        wave += 1
    with open(os.path.join(run_dir, "build-units.json"), "w", encoding="utf-8") as f:
        json.dump([{"id": u.id, "payload": u.payload} for u in units], f)
    return units


def sample(units: list[Any], k: int) -> list[Any]:
    if k <= 0 or k >= len(units):
        return list(units)
    return [units[(2 * i + 1) * len(units) // (2 * k)] for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=float, required=True, help="images in the generated tables")
    ap.add_argument("--work", required=True)
    ap.add_argument("--sample-build", type=int, default=0, help="build units to run (0: all)")
    ap.add_argument("--build-only", action="store_true", help="reuse the plan under WORK/run-N")
    ap.add_argument("--profile", action="store_true", help="cProfile the sampled build units")
    ap.add_argument("--reader-baseline", action="store_true",
                    help="rebuild the sampled units through the shared image reader too (the old way), same rows")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    from acedata.stage import WorkUnit

    n = int(args.n)
    inputs = inputs_for(args.work, n)
    run_dir = os.path.join(args.work, f"run-{n}")
    stage = make_stage(inputs, run_dir)
    tally = Tally()
    if args.build_only:
        with open(os.path.join(run_dir, "build-units.json"), encoding="utf-8") as f:
            units = [WorkUnit(u["id"], u["payload"]) for u in json.load(f)]
    else:
        units = plan(stage, tally, run_dir)
    picked = sample(units, args.sample_build)
    prof = cProfile.Profile() if args.profile else None
    for u in picked:
        tally.run(stage, u, prof)
    if args.reader_baseline:
        reader_baseline(stage, picked)
    report(n, tally, len(units), args.json)
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())


def reader_baseline(stage: Any, picked: list[Any]) -> None:
    """The sampled build units again, twice each, committing nothing: from the fetched bytes (as the
    stage does) and through the shared image reader (how build units got their bytes before the
    fetch waves: every unit reads the row groups holding its images). Rows must be equal."""
    from acedata.assemble import fetch, rows, split
    from acedata.assemble.records import ORDERED, bytes_needed
    from acedata.image_index import shared_reader
    from acedata.shuffle import read_bucket

    scratch = stage.scratch()
    _hwm_reset()
    t = time.process_time()
    reader = shared_reader(stage.ctx.input("images"))
    print(f"reader baseline: image reader open {time.process_time() - t:.1f} CPU s, peak {_hwm_mib():.0f} MiB "
          "(once per build worker process)")
    cpu = {"fetched": 0.0, "reader": 0.0}
    peak = {"fetched": 0.0, "reader": 0.0}
    n_rows = 0
    for u in picked:
        where, b = split.out_dir(scratch, u.payload["split"]), u.payload["bucket"]
        _hwm_reset()
        t = time.process_time()
        new, _ = rows.build(where, b, fetch.fetched(scratch, u.payload["split"], b))
        cpu["fetched"] += time.process_time() - t
        peak["fetched"] = max(peak["fetched"], _hwm_mib())
        _hwm_reset()
        t = time.process_time()
        recs = read_bucket(where, b, schema=ORDERED).column("rec").to_pylist()
        wanted = sorted({i for r in recs for i in bytes_needed(json.loads(r))})
        old, _ = rows.build(where, b, reader.image_bytes(wanted))
        cpu["reader"] += time.process_time() - t
        peak["reader"] = max(peak["reader"], _hwm_mib())
        if not new.equals(old):
            raise SystemExit(f"unit {u.id}: rows from fetched bytes differ from the reader's")
        n_rows += new.num_rows
    for k, c in cpu.items():
        print(f"  build {k:>8}: {1000 * c / max(1, n_rows):.3f} CPU ms per LCU row ({n_rows:,} rows, equal), "
              f"peak {peak[k]:.0f} MiB")


def report(n: int, tally: Tally, build_units: int, path: str | None) -> None:
    print(f"N = {n:,}  (CPU ms per item = CPU s x 1000 / N; build extrapolated to its {build_units} units)")
    print(f"{'unit kind':<12} {'units':>6} {'CPU s':>9} {'ms/item':>8} {'max unit s':>10} {'max RSS MiB':>11}")
    plan_s = fetch_s = 0.0
    out: dict[str, Any] = {"n": n, "kinds": {}}
    for op, s in tally.by.items():
        cpu = s["cpu_s"]
        if op == "build":
            out["build_rows_sampled"] = s["rows"]
            out["build_ms_per_row"] = 1000 * cpu / max(1, s["rows"])
            cpu = cpu * build_units / max(1, s["units"])
            fetch_s += cpu
        elif op in FETCH:
            fetch_s += cpu
        else:
            plan_s += cpu
        out["kinds"][op] = {**s, "ms_per_item": 1000 * cpu / n}
        print(f"{op:<12} {s['units']:>6.0f} {cpu:>9.1f} {1000 * cpu / n:>8.3f} {s['max_cpu_s']:>10.2f} "
              f"{s['max_rss_mib']:>11.0f}")
    if plan_s:
        print(f"{'plan':<12} {'':>6} {plan_s:>9.1f} {1000 * plan_s / n:>8.3f}   (scan .. label)")
    print(f"{'bytes+rows':<12} {'':>6} {fetch_s:>9.1f} {1000 * fetch_s / n:>8.3f}   (locate, read, build)")
    if "build_ms_per_row" in out:
        print(f"build: {out['build_ms_per_row']:.3f} CPU ms per LCU row over {out['build_rows_sampled']:,} sampled rows")
    out["plan_ms_per_item"] = 1000 * plan_s / n
    out["bytes_rows_ms_per_item"] = 1000 * fetch_s / n
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
