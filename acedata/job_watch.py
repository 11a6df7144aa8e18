"""Watching Ray jobs: list, status (Ray's state plus the run's own status lines), logs, stop, wait."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

from acedata.job_connect import _call, client

STATUS_PREFIX = "ACEDATA-STATUS "  # a submitted pipeline prints its run status on lines starting so
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def list_jobs(address: str | None = None) -> list[dict[str, Any]]:
    jobs = _call(client(address).list_jobs)
    rows = [_job_row(j) for j in jobs]
    return sorted(rows, key=lambda r: r.get("start_time") or 0, reverse=True)


def _job_row(info) -> dict[str, Any]:
    return {
        "job_id": info.submission_id or info.job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "metadata": info.metadata or {},
        "start_time": info.start_time,
        "end_time": info.end_time,
    }


def last_status(text: str) -> dict[str, Any] | None:
    """The last run status a pipeline job printed in its log."""
    for line in reversed(text.splitlines()):
        i = line.find(STATUS_PREFIX)
        if i >= 0:
            try:
                return json.loads(line[i + len(STATUS_PREFIX):])
            except ValueError:
                continue  # a line cut short; an earlier one will do
    return None


def _status_file(out: str) -> dict[str, Any] | None:
    """`OUT/_status.json` when this machine can read the output location."""
    from acedata import shards
    from acedata.pipeline import STATUS

    try:
        fs, d = shards.resolve(out)
        path = f"{d.rstrip('/')}/{STATUS}"
        return shards.read_json(fs, path) if shards.exists(fs, path) else None
    except Exception:  # noqa: BLE001 - unreachable storage just means "not from here"
        return None


def job_status(job_id: str, address: str | None = None) -> dict[str, Any]:
    """Ray's job state plus the run's stage-level status (from the job log, else OUT/_status.json)."""
    c = client(address)
    row = _job_row(_call(c.get_job_info, job_id))
    run = last_status(_call(c.get_job_logs, job_id))
    out = row["metadata"].get("out")
    if run is None and out and row["metadata"].get("acedata") == "pipeline":
        run = _status_file(out)  # e.g. logs rotated away; only then touch the output storage
    row["run"] = run
    return row


def job_logs(job_id: str, address: str | None = None) -> str:
    return _call(client(address).get_job_logs, job_id)


def follow_logs(job_id: str, address: str | None = None) -> Iterator[str]:
    """Yield log chunks as the job writes them, until it ends."""
    c = client(address)
    _call(c.get_job_info, job_id)
    agen = c.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def stop_job(job_id: str, address: str | None = None, wait: float = 60.0) -> str:
    """Ask the cluster to stop the job and wait (up to `wait` s) for it to end; returns its state."""
    c = client(address)
    _call(c.stop_job, job_id)
    return wait_for(job_id, address, timeout=wait, poll=0.5, _client=c)


def wait_for(job_id: str, address: str | None = None, timeout: float = 3600.0, poll: float = 2.0,
             _client=None) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or `timeout`); returns the state."""
    c = _client or client(address)
    deadline = time.time() + timeout
    while True:
        state = str(getattr(s := _call(c.get_job_status, job_id), "value", s))
        if state in TERMINAL or time.time() >= deadline:
            return state
        time.sleep(poll)


