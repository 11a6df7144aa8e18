"""Helpers shared by commands: printing run summaries."""

from __future__ import annotations

import json
from typing import Any


def print_run(run: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(run, indent=1))
        return
    print(f"run {run['name']!r} -> {run['out']}  ({run['seconds']} s)")
    for s in run["stages"]:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(s.get("counts", {}).items()))
        state = "skipped (complete)" if s.get("skipped") else f"{s.get('seconds', 0)} s"
        print(f"  {s['name']:<14} {state:<20} {counts}")
