"""Every table a run writes opens with `datasets.load_dataset("parquet", ...)` with images decoded."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pytest

from acedata import shards
from acedata.commands.validate import survey
from acedata.demo_data import build
from acedata.pipeline import run_pipeline
from acedata.schemas import IMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP = ("chelsea", "coffee", "astronaut")


def _has_image(t: pa.DataType) -> bool:
    if t == IMAGE:
        return True
    if pa.types.is_struct(t):
        return any(_has_image(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_image(t.value_type)
    return False


def _images_in(value, feature) -> list:
    """The decoded values of every Image feature inside one row's value."""
    import datasets

    if value is None:
        return []
    if isinstance(feature, datasets.Image):
        return [value]
    if isinstance(feature, dict):
        return [x for k, f in feature.items() for x in _images_in(value.get(k), f)]
    inner = getattr(feature, "feature", None)
    if inner is not None:
        if isinstance(value, dict):  # datasets shows a list of structs as a struct of lists
            return [x for k, f in inner.items() for v in value.get(k) or [] for x in _images_in(v, f)]
        return [x for v in value for x in _images_in(v, inner)]
    return []


@pytest.mark.slow
def test_every_table_of_a_run_decodes_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    out = tmp_path / "run"
    build(str(out / "corpus"), variants=3, seed=0)
    for name in os.listdir(out / "corpus"):
        if os.path.isdir(out / "corpus" / name) and name not in KEEP:
            shutil.rmtree(out / "corpus" / name)
    run_pipeline(os.path.join(ROOT, "pipelines", "demo.yaml"), str(out), executor="local")
    fs, root = shards.resolve(str(out))
    tables = survey(fs, root).tables
    assert len(tables) >= 10
    checked = set()
    for table in tables:
        files = shards.list_shards(table)
        if not files:
            continue
        schema = shards.open_parquet(files[0]).schema_arrow
        image_cols = [f.name for f in schema if _has_image(f.type)]
        if not image_cols:
            continue
        ds = datasets.load_dataset("parquet", data_files=files, split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
        for col in image_cols:
            assert "Image(" in repr(ds.features[col]), f"{table}: {col} is {ds.features[col]}"
            decoded = [im for row in ds.select(range(min(3, len(ds)))) for im in _images_in(row[col], ds.features[col])]
            assert all(isinstance(im, Image.Image) for im in decoded), f"{table}: {col}"
        checked.add(table.rsplit("/", 2)[-2] + "/" + table.rsplit("/", 1)[-1])
    assert {"ingest/images", "synthesize/images", "assemble/lcu"} <= checked, checked
