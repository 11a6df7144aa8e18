"""Codecs per image kind (acedata.codecs) and the synthesize stage's one decode per source per unit."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from acedata import shards
from acedata.codecs import encode_kind
from acedata.images import open_mask, open_rgb, pixel_id
from acedata.pipeline import run_stages
from acedata.schemas import PAIRS
from acedata.stages.ingest import IngestConfig
from acedata.stages.synthesize import SynthesizeConfig


def _rng_image(h: int, w: int, mode: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    base = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, channels), dtype=np.uint8)
    a = np.kron(base, np.ones((4, 4, 1), np.uint8))[:h, :w] ^ rng.integers(0, 8, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(np.ascontiguousarray(a), mode)


def test_masks_are_one_bit_png_and_round_trip_exactly():
    m = np.zeros((61, 83), np.uint8)
    m[10:40, 5:70] = 255
    data, fmt = encode_kind(Image.fromarray(m, "L"), "mask")
    stored = Image.open(io.BytesIO(data))
    assert fmt == "PNG" == stored.format and stored.mode == "1"
    back = np.asarray(open_mask(data))
    assert np.array_equal(back, m) and pixel_id(Image.fromarray(back, "L")) == pixel_id(Image.fromarray(m, "L"))
    # a mask that is not binary (soft edges) keeps every value: 8-bit PNG
    soft = m.copy()
    soft[20, 20] = 77
    data, fmt = encode_kind(Image.fromarray(soft, "L"), "mask")
    assert fmt == "PNG" and Image.open(io.BytesIO(data)).mode == "L" and np.array_equal(np.asarray(open_mask(data)), soft)


@pytest.mark.parametrize("kind", ["image", "condition"])
def test_photos_maps_and_layers_are_lossless_webp(kind):
    for im in (_rng_image(70, 90, "RGB"), _rng_image(64, 48, "RGBA", 1)):
        if im.mode == "RGBA":  # colour under fully transparent pixels must survive too (exact)
            a = np.array(im)
            a[:10, :, 3] = 0
            im = Image.fromarray(a, "RGBA")
        data, fmt = encode_kind(im, kind)
        back = Image.open(io.BytesIO(data))
        assert fmt == "WEBP" == back.format and back.mode == im.mode
        assert np.array_equal(np.asarray(back), np.asarray(im))
        assert pixel_id(back) == pixel_id(im)


def test_png_where_webp_cannot_hold_the_image():
    wide = Image.new("RGB", (16400, 2), (10, 200, 30))  # WebP's limit is 16383 px a side
    data, fmt = encode_kind(wide, "image")
    assert fmt == "PNG" and np.array_equal(np.asarray(open_rgb(data)), np.asarray(wide))
    gray = Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8), "L")
    data, fmt = encode_kind(gray, "condition")  # WebP has no one-channel mode: it would come back RGB
    assert fmt == "PNG" and Image.open(io.BytesIO(data)).mode == "L"


@pytest.fixture(scope="module")
def ingested(demo_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("codecs"))
    run_stages([IngestConfig(name="ingest", sources=[demo_corpus])], out, executor="local")
    return f"{out}/ingest/images"


def test_stored_images_decode_to_their_ids_in_the_named_container(ingested, tmp_path):
    cfg = SynthesizeConfig(name="s", synthesizers=["grayscale", "segmentation", "inpaint_box", "layers"],
                           max_images=4, max_side=96, chain_fraction=0.0, inputs={"images": ingested})
    run_stages([cfg], str(tmp_path), executor="local")
    rows = shards.read_table(str(tmp_path / "s" / "images")).to_pylist()
    assert {r["kind"] for r in rows} == {"image", "mask", "condition"}
    for r in rows:
        data = r["image"]["bytes"]
        stored = Image.open(io.BytesIO(data))
        assert stored.format == r["format"], r["kind"]
        if r["kind"] == "mask":
            assert r["format"] == "PNG" and stored.mode == "1"
            pixels = open_mask(data)
        else:
            assert r["format"] == "WEBP"
            pixels = stored.convert("RGBA") if stored.mode == "RGBA" else open_rgb(data)
        assert pixel_id(pixels) == r["image_id"], (r["kind"], r["format"])  # lossless: the id names what decodes


def test_each_source_is_decoded_once_per_unit(ingested, tmp_path, monkeypatch):
    from acedata.stages import synthesize

    calls: Counter = Counter()
    real = synthesize.open_rgb_fit

    def counted(data: bytes, max_side):
        calls[data] += 1
        return real(data, max_side)

    monkeypatch.setattr(synthesize, "open_rgb_fit", counted)
    photos = sorted(shards.read_table(ingested, columns=["image_id", "kind"]).to_pylist(), key=lambda r: r["image_id"])
    ids = [r["image_id"] for r in photos if r["kind"] in (None, "image")][:4]
    # mined sets {0, 1} and {0, 2}: photo 0 is in two sets of the one reference unit
    mined = pa.Table.from_pylist(
        [{"pair_id": f"m{k}", "source_id": ids[0], "target_id": ids[k], "task": "natural_edit", "subtask": "general",
          "set_id": k} for k in (1, 2)], PAIRS)
    shards.write_table(str(tmp_path / "mined"), mined, PAIRS)
    # just these 4 photos (max_images is a hash sample, not the first ids)
    four = shards.read_table(ingested).filter(pc.is_in(pc.field("image_id"), pa.array(ids)))
    shards.write_table(str(tmp_path / "four"), four, four.schema)
    # several synthesizers per photo and a chain on every photo: still one decode per photo and unit
    cfg = SynthesizeConfig(name="s", synthesizers=["grayscale", "mosaic", "color_grading", "watercolor", "reference"],
                           max_side=96, chain_fraction=1.0, chain_turns=2, images_per_unit=4,
                           inputs={"images": str(tmp_path / "four"), "pairs": str(tmp_path / "mined")})
    s = run_stages([cfg], str(tmp_path / "run"), executor="local")["stages"][0]
    assert s["counts"]["pairs"] > 0 and s["chained_pairs"] > 0 and s["reference_sets"] == "pair_mining_sets"
    by_id = {r["image_id"]: r["image"]["bytes"] for r in shards.read_table(ingested, columns=["image_id", "image"]).to_pylist()}
    # one image unit (4 photos) + one reference unit (photos 0, 1, 2)
    assert {i: calls[by_id[i]] for i in ids} == {ids[0]: 2, ids[1]: 2, ids[2]: 2, ids[3]: 1}
