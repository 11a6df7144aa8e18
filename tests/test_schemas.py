"""Schema round trips: every table opens with pyarrow, polars and `datasets`."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from acedata import schemas, shards
from acedata.images import encode, image_cell


def _png(color: tuple[int, int, int], size=(40, 30)) -> bytes:
    return encode(Image.new("RGB", size, color), "PNG")


def _lcu_rows() -> list[dict]:
    a, b, c = _png((255, 0, 0)), _png((0, 255, 0)), _png((0, 0, 255))
    mask = encode(Image.new("L", (40, 30), 255), "PNG")
    return [
        {
            "sample_id": "s1",
            "task": "repainting",
            "subtask": "inpainting",
            "instruction": "fill the masked area of {image}",
            "inputs": [{"image": image_cell(a), "mask": image_cell(mask)}],
            "target": image_cell(b),
            "history": [],
            "num_turns": 1,
            "width": 40,
            "height": 30,
            "scores": [{"name": "ssim", "value": 0.5}],
        },
        {
            "sample_id": "s2",
            "task": "semantic_editing",
            "subtask": "style",
            "instruction": "make {image} look like a pencil drawing",
            "inputs": [{"image": image_cell(b), "mask": None}],
            "target": image_cell(c),
            "history": [
                {"instruction": "turn {image0} green", "inputs": [{"image": image_cell(a), "mask": None}],
                 "target": image_cell(b)}
            ],
            "num_turns": 2,
            "width": 40,
            "height": 30,
        },
        {
            "sample_id": "s3",
            "task": "text_to_image",
            "subtask": "caption",
            "instruction": "a blue square",
            "inputs": [],
            "target": image_cell(c),
            "history": [],
            "num_turns": 1,
        },
    ]


def test_every_table_schema_has_hf_features_and_version():
    for name in [*schemas.TABLES, "embeddings"]:
        s = schemas.schema_for(name, dim=8)
        assert b"huggingface" in s.metadata
        assert s.metadata[b"acedata.schema_version"] == schemas.SCHEMA_VERSION.encode()


def test_lcu_round_trip_pyarrow_polars_datasets(tmp_path):
    schema = schemas.schema_for("lcu")
    table = schemas.conform(__import__("pyarrow").Table.from_pylist(_lcu_rows(), schemas.LCU), schema)
    d = str(tmp_path / "lcu")
    shards.write_table(d, table, schema)

    back = shards.read_table(d)
    assert back.num_rows == 3
    assert back.column("history").to_pylist()[1][0]["instruction"] == "turn {image0} green"
    assert back.schema.field("target").type == schemas.IMAGE

    df = pl.scan_parquet(f"{d}/*.parquet").select("task", "num_turns").collect()
    assert df.sort("task")["task"].to_list() == ["repainting", "semantic_editing", "text_to_image"]

    import datasets

    ds = datasets.load_dataset("parquet", data_files=shards.list_shards(d), split="train")
    row = ds[0]
    assert isinstance(row["target"], Image.Image) and row["target"].size == (40, 30)
    assert isinstance(row["inputs"][0]["image"], Image.Image)
    assert isinstance(row["inputs"][0]["mask"], Image.Image)
    hist = ds[1]["history"][0]
    assert isinstance(hist["target"], Image.Image)
    assert np.asarray(hist["target"])[0, 0].tolist() == [0, 255, 0]
    assert ds[2]["inputs"] == []


def test_images_and_embeddings_round_trip(tmp_path):
    import pyarrow as pa

    img = _png((10, 20, 30))
    t = pa.Table.from_pylist(
        [{"image_id": "x", "source_uri": "mem://x", "width": 40, "height": 30, "image": image_cell(img)}],
        schemas.IMAGES,
    )
    shards.write_table(str(tmp_path / "images"), schemas.conform(t, schemas.IMAGES), schemas.schema_for("images"))
    import datasets

    ds = datasets.load_dataset("parquet", data_files=shards.list_shards(str(tmp_path / "images")), split="train")
    assert ds[0]["image"].getpixel((0, 0)) == (10, 20, 30)

    emb_schema = schemas.schema_for("embeddings", dim=4)
    e = pa.table(
        {"image_id": ["x"], "embedding": pa.array([[0.5, 0.5, 0.5, 0.5]], pa.list_(pa.float16(), 4)), "model": ["m"]},
        schema=emb_schema,
    )
    shards.write_table(str(tmp_path / "emb"), e, emb_schema)
    back = pl.read_parquet(shards.list_shards(str(tmp_path / "emb"))[0])
    assert back["embedding"].to_list()[0] == pytest.approx([0.5] * 4)


def test_conform_rejects_unknown_and_missing_required_columns():
    import pyarrow as pa

    with pytest.raises(ValueError, match="not in schema"):
        schemas.conform(pa.table({"image_id": ["a"], "typo": [1]}), schemas.CLUSTERS)
    with pytest.raises(ValueError, match="required column"):
        schemas.conform(pa.table({"image_id": ["a"]}), schemas.CLUSTERS)


def test_parquet_metadata_readable_without_datasets(tmp_path):
    import pyarrow as pa

    d = str(tmp_path / "q")
    t = pa.Table.from_pylist([{"source_uri": "a", "stage": "ingest", "reason": "empty"}], schemas.QUARANTINE)
    shards.write_table(d, t, schemas.schema_for("quarantine"))
    md = pq.read_schema(shards.list_shards(d)[0]).metadata
    assert b"huggingface" in md

