"""Fetch image bytes by `image_id` from one or more images tables.

Builds an index (image_id -> shard, row) from the `image_id` column alone, then
reads only the rows asked for, shard by shard. Rows listed as duplicates
(`acedata.kept`) are not indexed, so every id resolves to its kept copy.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from acedata import shards
from acedata.kept import dropped_uris, keep_mask


class ImageStore:
    def __init__(self, tables: list[str]) -> None:
        self._where: dict[str, tuple[str, int]] = {}
        dropped = dropped_uris(tables)
        for t in tables:
            for shard in shards.list_shards(t):
                pf = shards.open_parquet(shard)
                cols = ["image_id", "source_uri"] if dropped and "source_uri" in pf.schema_arrow.names else ["image_id"]
                t_ids = pf.read(columns=cols)
                mask = keep_mask(t_ids.column("source_uri"), t_ids.column("image_id"), dropped) if len(cols) == 2 else None
                keep = mask.to_pylist() if mask is not None else None
                for i, image_id in enumerate(t_ids.column("image_id").to_pylist()):
                    if keep is None or keep[i]:
                        self._where.setdefault(image_id, (shard, i))

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def rows(self, image_ids: list[str], columns: list[str] | None = None) -> dict[str, dict]:
        """Rows (as dicts) for the ids present; missing ids are left out."""
        by_shard: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for image_id in set(image_ids):
            if image_id in self._where:
                shard, row = self._where[image_id]
                by_shard[shard].append((row, image_id))
        out: dict[str, dict] = {}
        for shard, wanted in by_shard.items():
            table = shards.open_parquet(shard).read(columns=columns)
            rows = table.take(pa.array([r for r, _ in wanted]))
            for (_, image_id), row in zip(wanted, rows.to_pylist()):
                out[image_id] = row
        return out

    def image_bytes(self, image_ids: list[str]) -> dict[str, bytes]:
        rows = self.rows(image_ids, columns=["image_id", "image"])
        return {k: v["image"]["bytes"] for k, v in rows.items()}


