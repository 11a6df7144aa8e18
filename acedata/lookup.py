"""Fetch image rows by `image_id` from one or more images tables.

A thin wrapper kept for its callers: the work is done by `acedata.image_index.ImageReader`
(the tables' image index, row-group reads, an LRU of decoded groups), shared per process.
"""

from __future__ import annotations

from acedata.image_index import ImageReader, shared_reader


class ImageStore:
    def __init__(self, tables: list[str]) -> None:
        self.reader: ImageReader = shared_reader(tables)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.reader

    def __len__(self) -> int:
        return len(self.reader)

    def rows(self, image_ids: list[str], columns: list[str] | None = None) -> dict[str, dict]:
        """Rows (as dicts) for the ids present; missing ids are left out."""
        return self.reader.rows(image_ids, columns or ("image_id", "image"), missing="skip")

    def image_bytes(self, image_ids: list[str]) -> dict[str, bytes]:
        return self.reader.image_bytes(image_ids, missing="skip")
