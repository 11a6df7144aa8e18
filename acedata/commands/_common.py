"""Helpers shared by commands: printing run summaries."""

from __future__ import annotations

import json
from typing import Any

HEADLINE = {"inputs", "pairs_in", "candidates", "multi_turn", "single_turn", "templates_only", "final_sets"}


def print_run(run: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(run, indent=1))
        return
    print(f"run {run['name']!r} -> {run['out']}  ({run['seconds']} s)")
    for s in run["stages"]:
        all_counts = s.get("counts", {})
        # The headline counts: inputs and the tables a stage wrote; the rest stay in _run.json.
        main = {k: v for k, v in all_counts.items() if k in HEADLINE or k in run.get("tables", {})}
        counts = ", ".join(f"{k}={v}" for k, v in sorted(main.items()))
        if len(main) < len(all_counts):
            counts += f"  (+{len(all_counts) - len(main)} more in _run.json)"
        state = "skipped (complete)" if s.get("skipped") else f"{s.get('seconds', 0)} s"
        print(f"  {s['name']:<14} {state:<20} {counts}")
        if s.get("mode"):
            print(f"  {'':<14} {s['mode']}")
