"""bench/scale.py's result file: merging runs by (kind, n), and what unfinished runs leave behind."""

from __future__ import annotations

import glob
import json
import os
import platform
import time
from typing import Any

from _scale.measure import STARTUP
from _scale.report import report_incomplete


def merge(path: str, runs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Replace (kind, n) entries of an existing result file; keep the others. Incomplete runs go
    to `incomplete` (kept for the record, never priced)."""
    body: dict[str, Any] = {"runs": []}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    done = [r for r in runs if "incomplete" not in r]
    new = {(r["kind"], r["n"]) for r in done}
    body["runs"] = [r for r in body.get("runs", []) if (r["kind"], r["n"]) not in new] + done
    failed = [r for r in runs if "incomplete" in r]
    body["incomplete"] = [r for r in body.get("incomplete", []) if (r["kind"], r["n"]) not in new | {
        (x["kind"], x["n"]) for x in failed}] + failed
    body["machines"] = [m for m in body.get("machines", []) if m.get("started") != meta["started"]] + [meta]
    body["host"] = meta["host"]
    return body


def partial_stages(sampled: dict[str, Any], run_dir: str | None) -> dict[str, Any]:
    """Per-stage sampler figures joined with RUN/_status.json (wall, counts, units done): for the
    stage that was running, `done_fraction` = units done / units, so CPU per item can still be
    estimated over the finished share (`cpu_s_per_item_done` needs n: see `salvage`)."""
    status: dict[str, Any] = {}
    if run_dir and os.path.exists(os.path.join(run_dir, "_status.json")):
        with open(os.path.join(run_dir, "_status.json"), encoding="utf-8") as f:
            status = {s["name"]: s for s in json.load(f).get("stages", [])}
    out = {}
    for name, st in sampled.items():
        if name == STARTUP:
            continue
        s = status.get(name, {})
        rec = {**st, "wall_s": s.get("seconds"), "counts": s.get("counts", {}), "state": s.get("state")}
        if s.get("state") != "succeeded" and s.get("units"):
            rec["done_fraction"] = s.get("units_done", 0) / s["units"]
        out[name] = rec
    return out


def salvage(work: str, out: str) -> None:
    """Record the runs in WORK that never finished (stopped, killed, machine lost) from their
    progress files and _status.json, under `incomplete` of OUT (never priced)."""
    runs = []
    for prog in sorted(glob.glob(os.path.join(work, "images-*.progress.json"))):
        n = int(os.path.basename(prog).split("-")[1].split(".")[0])
        run_dir = os.path.join(work, f"images-{n}")
        if os.path.exists(os.path.join(run_dir, "_run.json")):
            continue  # finished: the harness recorded it
        with open(prog, encoding="utf-8") as f:
            p = json.load(f)
        stages = partial_stages(p["stages"], run_dir)
        for st in stages.values():
            frac = st.get("done_fraction")
            if frac:
                st["cpu_s_per_item_done"] = st["cpu_s"] / (n * frac)
        runs.append({"kind": "images", "n": n, "incomplete": f"stopped after {p['elapsed_s']:.0f} s in {p['stage']}",
                     "wall_s": p["elapsed_s"], "cpu_total_s": None,
                     "startup": p["stages"].get(STARTUP, {}), "stages": stages})
    if not runs:
        raise SystemExit(f"no unfinished image runs in {work}")
    body = merge(out, runs, {"host": platform.node() or "host", "started": time.time(), "salvaged": work})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
    report_incomplete(body)
