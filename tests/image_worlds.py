"""Small image sources on disk for the kept / image index tests, and a byte snapshot of a folder.

- `tar_source`: one tar of two images, to ingest twice under one source_uri;
- `ingest_copied`: 12 images copied into two more sources, ingested in units of 2 files;
- `tree_bytes`: every file under a folder, to compare what two builds wrote.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile

from PIL import Image

from acedata.images import encode
from acedata.pipeline import run_stages
from acedata.stages.ingest import IngestConfig


def jpeg(color) -> bytes:
    return encode(Image.new("RGB", (64, 48), color), "JPEG")


def tar_source(d) -> str:
    """A folder holding one tar of two images: given alone and as its folder, the tar's members
    have one source_uri (`.../00000.tar#0001`) in both sources."""
    src = os.path.join(str(d), "src")
    os.makedirs(src)
    with tarfile.open(os.path.join(src, "00000.tar"), "w") as tar:
        for key, color in (("0001", (200, 0, 0)), ("0002", (0, 200, 0))):
            data = jpeg(color)
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return src


def ingest_copied(tmp_path) -> str:
    """12 images in folder a, again in folder b and (every other one) in a tar c.tar of the same
    files, ingested in units of 2 files; returns the run folder (its `ingest/images`)."""
    a = tmp_path / "a"
    a.mkdir()
    for i in range(12):
        (a / f"im{i:02d}.jpg").write_bytes(jpeg((20 * i, 255 - 20 * i, 7 * i)))
    shutil.copytree(a, tmp_path / "b")
    with tarfile.open(tmp_path / "c.tar", "w") as tar:
        for i in range(0, 12, 2):
            tar.add(a / f"im{i:02d}.jpg", f"{i:04d}.jpg")
    out = str(tmp_path / "run")
    run_stages([IngestConfig(name="ingest", sources=[str(a), str(tmp_path / "b"), str(tmp_path / "c.tar")],
                             files_per_unit=2)], out, executor="local")
    return out


def tree_bytes(root: str) -> dict[str, bytes]:
    """Every file under `root` (relative name -> bytes)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out
