"""Watch the Parquet rows a driver reads (test helper): the cluster planner, stats, the funnel.

`DriverReads(monkeypatch)` marks the time spent in `Cluster.plan / next_wave / finish` as driver
time; while it runs, a row read of a Parquet file (`ParquetFile.read`, `read_row_group(s)`,
`iter_batches`) outside the sample scratch raises, and `rows` counts the rows read inside it.
Footers stay readable. Files are told apart by the URI `shards.open_parquet` opened them from.
"""

from __future__ import annotations

import contextlib

import pyarrow.parquet as pq

from acedata import shards
from acedata.mining import sample
from acedata.stages import cluster


class DriverReads:
    def __init__(self, monkeypatch, methods: tuple[str, ...] = ("plan", "next_wave", "finish")) -> None:
        self.depth = 0  # > 0 while a driver method runs
        self.rows = 0  # rows the driver read (all of them scratch)
        opened = shards.open_parquet

        def tag(uri, **options):
            pf = opened(uri, **options)
            pf._acedata_uri = uri
            return pf

        monkeypatch.setattr(shards, "open_parquet", tag)
        for name in ("read", "read_row_group", "read_row_groups"):
            monkeypatch.setattr(pq.ParquetFile, name, self._guarded(name, getattr(pq.ParquetFile, name)))
        monkeypatch.setattr(pq.ParquetFile, "iter_batches", self._guarded_batches(pq.ParquetFile.iter_batches))
        for name in methods:
            monkeypatch.setattr(cluster.Cluster, name, self._driver(getattr(cluster.Cluster, name)))

    @property
    def driver(self) -> bool:
        return self.depth > 0

    def _check(self, pf, name: str) -> None:
        uri = getattr(pf, "_acedata_uri", "")
        if f"/{sample.SCRATCH}/" not in uri:
            raise AssertionError(f"the driver read rows of {uri or 'an untracked file'} ({name})")

    def _guarded(self, name, fn):
        def wrapper(pf, *a, **kw):
            if not self.driver:
                return fn(pf, *a, **kw)
            self._check(pf, name)
            got = fn(pf, *a, **kw)
            self.rows += got.num_rows
            return got
        return wrapper

    def _guarded_batches(self, fn):
        def wrapper(pf, *a, **kw):
            if self.driver:  # checked when opened and again on each batch read while the driver runs
                self._check(pf, "iter_batches")
            return self._counted(pf, fn(pf, *a, **kw))
        return wrapper

    def _counted(self, pf, batches):
        for b in batches:
            if self.driver:
                self._check(pf, "iter_batches")
                self.rows += b.num_rows
            yield b

    def _driver(self, fn):
        def wrapper(stage, *a, **kw):
            self.depth += 1
            try:
                return fn(stage, *a, **kw)
            finally:
                self.depth -= 1
        return wrapper

    def as_worker(self, fn):
        """`fn` with driver time suspended: a partial task run in-process is the worker's side."""
        def wrapper(*a, **kw):
            self.depth -= 1
            try:
                return fn(*a, **kw)
            finally:
                self.depth += 1
        return wrapper

    def forbid_on_driver(self, monkeypatch, targets) -> None:
        """Each (module, name) function raises when called in driver time (whole-table readers)."""
        for mod, name in targets:
            fn = getattr(mod, name)

            def wrapped(*a, _fn=fn, **kw):
                assert not self.driver, f"the driver called {_fn.__name__}"
                return _fn(*a, **kw)
            monkeypatch.setattr(mod, name, wrapped)

    @contextlib.contextmanager
    def on_driver(self):
        """Driver time for the block: a whole command whose driver side is under test."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
