"""Run one command in a child process and measure it per pipeline stage.

A sampler thread walks the child's process tree (the driver and every descendant: the embedded
Ray's raylet, GCS and workers) every `interval` seconds and reads RUN/_status.json to learn the
stage in progress. Each sample's CPU-time deltas and RSS go to that stage, so one `acedata run`
yields per-stage CPU seconds, driver peak RSS and worker peak RSS (the largest single worker).
CPU seconds (not wall) are the cost measure: on a shared machine they move far less with other
load than wall time does. RUSAGE_CHILDREN cross-checks the total and the largest process.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from typing import Any

import psutil

STARTUP = "_startup"  # before the first stage (interpreter, imports, Ray start) and after the last


def _stage_of(status_path: str | None, default: str) -> str:
    if not status_path:
        return default
    try:
        with open(status_path, encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, ValueError):
        return STARTUP
    return body.get("stage") or STARTUP


def _rounded(stages: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in stages.items()}


def _sample_tree(root: psutil.Process, s: dict[str, float], last_cpu: dict[int, float]
                 ) -> tuple[list[psutil.Process], float]:
    """One sample of the process tree under `root`: CPU since the last sample and peak RSS
    added to the stage figures `s`; returns the tree and its summed RSS (MiB)."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = []
    total_rss = 0.0
    for p in tree:
        try:
            t = p.cpu_times()
            rss = p.memory_info().rss / 2**20
        except psutil.Error:
            continue
        cpu = t.user + t.system
        total_rss += rss
        s["cpu_s"] += cpu - last_cpu.get(p.pid, 0.0)
        last_cpu[p.pid] = cpu
        if p.pid == root.pid:
            s["driver_peak_mib"] = max(s["driver_peak_mib"], rss)
            continue
        # worker: the largest other process (Ray workers, raylet, GCS, dashboard);
        # ray_worker: Ray's task/actor processes only (named "ray::<task>")
        s["worker_peak_mib"] = max(s["worker_peak_mib"], rss)
        try:
            if p.name().startswith("ray::"):
                s["ray_worker_peak_mib"] = max(s["ray_worker_peak_mib"], rss)
        except psutil.Error:
            pass
    return tree, total_rss


def measure(argv: list[str], env: dict[str, str], log: str, status_path: str | None = None,
            stage: str = "command", interval: float = 0.2, rss_limit_mib: float | None = None,
            progress: str | None = None, progress_every: float = 10.0) -> dict[str, Any]:
    """Run argv; return {rc, wall_s, cpu_total_s, maxrss_mib, stages: {name: {cpu_s, sampled_wall_s,
    driver/worker peak}}}.

    rss_limit_mib: stop the child's process tree when its summed RSS passes this (a shared machine
    must not meet the OOM killer); the result then has rc -9 and `over_rss_limit`. progress: a file
    rewritten every `progress_every` s with the per-stage figures so far (what a run stopped early still tells).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    over: list[float] = []
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        stages: dict[str, dict[str, float]] = {}
        last_cpu: dict[int, float] = {}
        done = threading.Event()

        def sample() -> None:
            last_write = time.perf_counter()
            while not done.is_set():
                name = _stage_of(status_path, stage)
                s = stages.setdefault(name, {"cpu_s": 0.0, "sampled_wall_s": 0.0, "driver_peak_mib": 0.0,
                                             "worker_peak_mib": 0.0, "ray_worker_peak_mib": 0.0,
                                             "tree_peak_mib": 0.0})
                s["sampled_wall_s"] += interval
                tree, total_rss = _sample_tree(root, s, last_cpu)
                s["tree_peak_mib"] = max(s["tree_peak_mib"], total_rss)
                if rss_limit_mib and total_rss > rss_limit_mib and not over:
                    over.append(total_rss)
                    _kill_tree(tree)
                if progress and time.perf_counter() - last_write > progress_every:
                    last_write = time.perf_counter()
                    _write_json(progress, {"argv": argv, "elapsed_s": round(last_write - t0, 1),
                                           "stage": name, "stages": _rounded(stages)})
                done.wait(interval)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        done.set()
        th.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "rc": rc, "wall_s": round(wall, 3), "cpu_total_s": round(cpu_total, 3),
        "sampled_cpu_s": round(sum(s["cpu_s"] for s in stages.values()), 3),
        # the largest resident set of any process in the tree that was waited for (Linux: KiB)
        "maxrss_mib": round(after.ru_maxrss / 1024, 1),
        "stages": _rounded(stages),
        **({"over_rss_limit": {"limit_mib": rss_limit_mib, "tree_mib": round(over[0], 1)}} if over else {}),
    }


def _kill_tree(tree: list[psutil.Process]) -> None:
    """Stop the processes this run started (the child and its descendants), by PID."""
    for p in reversed(tree):
        try:
            p.kill()
        except psutil.Error:
            pass


def _write_json(path: str, body: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
    os.replace(tmp, path)


def tree_bytes(path: str) -> int:
    """Bytes of every file under path (a table folder)."""
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total
