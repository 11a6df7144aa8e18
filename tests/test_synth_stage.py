"""The synthesize stage end to end on the ingested demo corpus (local executor; one Ray run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acedata import shards
from acedata.images import open_mask, open_rgb
from acedata.lookup import ImageStore
from acedata.pipeline import run_stages
from acedata.schemas import IMAGES, PAIRS, QUARANTINE
from acedata.stages.ingest import IngestConfig
from acedata.stages.synthesize import SynthesizeConfig

FAMILIES = {"low_level", "controllable", "repainting", "element_editing", "semantic_editing", "layer_editing",
            "reference_generation"}


@pytest.fixture(scope="module")
def synth_run(demo_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    cfgs = [IngestConfig(name="ingest", sources=[demo_corpus]),
            SynthesizeConfig(name="synthesize", max_images=12, per_image=4, max_side=160, chain_fraction=0.5)]
    run = run_stages(cfgs, out, executor="local")
    return out, cfgs, run


def test_tables_valid_and_counts_add_up(synth_run):
    out, _, run = synth_run
    for table, schema in (("images", IMAGES), ("pairs", PAIRS), ("quarantine", QUARANTINE)):
        assert shards.validate(f"{out}/synthesize/{table}", schema) == []
    s = run["stages"][1]
    pairs, quarantined = shards.count_rows(f"{out}/synthesize/pairs"), shards.count_rows(f"{out}/synthesize/quarantine")
    assert s["counts"]["candidates"] == pairs + quarantined and pairs > 50
    assert {k.split("/")[0] for k in s["pairs_by_task"]} == FAMILIES
    assert s["reference_sets"] == "ingest_groups"
    assert sum(s["quarantine_reasons"].values()) == quarantined


def test_pairs_reference_existing_aligned_images(synth_run):
    out, _, _ = synth_run
    pairs = shards.read_table(f"{out}/synthesize/pairs").to_pylist()
    store = ImageStore([f"{out}/ingest/images", f"{out}/synthesize/images"])
    kinds = {r["image_id"]: r["kind"] for r in shards.read_table(f"{out}/synthesize/images",
                                                                 columns=["image_id", "kind"]).to_pylist()}
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    for p in pairs:
        ids = [p["source_id"], p["target_id"], *(p["extra_input_ids"] or [])] + ([p["mask_id"]] if p["mask_id"] else [])
        assert all(i in store for i in ids), p["task"]
        prov = json.loads(p["provenance"])
        assert prov["synthesizer"] and prov["random_init"] is False
        slots = p["slots"]  # typed template slots: style edits name their style
        if p["subtask"] in ("watercolor", "cartoon", "pencil_sketch", "color_grading"):
            assert slots["style"], p["subtask"]
        if prov.get("source_caption"):
            assert slots["caption"] == " ".join(prov["source_caption"].replace("_", " ").split()).rstrip(".")
        if p["mask_id"]:
            assert kinds[p["mask_id"]] == "mask"
    masked = [p for p in pairs if p["task"] == "repainting"][:4]
    for p in masked:
        got = store.image_bytes([p["source_id"], p["target_id"], p["mask_id"]])
        src, tgt = np.asarray(open_rgb(got[p["source_id"]])), np.asarray(open_rgb(got[p["target_id"]]))
        m = np.asarray(open_mask(got[p["mask_id"]])) > 0
        assert src.shape == tgt.shape and m.shape == src.shape[:2]
        assert (src[~m] == tgt[~m]).all() and (src[m] == 128).all()
    for p in (p for p in pairs if p["task"] == "low_level"):
        assert kinds[p["target_id"]] == "condition"


def test_chains_link_to_their_parent(synth_run):
    out, _, run = synth_run
    pairs = {p["pair_id"]: p for p in shards.read_table(f"{out}/synthesize/pairs").to_pylist()}
    chained = [p for p in pairs.values() if p["parent_pair_id"]]
    assert chained and run["stages"][1]["chained_pairs"] == len(chained)
    for p in chained:
        parent = pairs[p["parent_pair_id"]]
        assert parent["target_id"] == p["source_id"]
        assert json.loads(p["provenance"])["params"]["chain_turn"] >= 2


def test_rerun_is_skipped_and_unit_work_is_deterministic(synth_run, tmp_path):
    out, cfgs, _ = synth_run
    again = run_stages(cfgs, out, executor="local")
    assert again["stages"][1].get("skipped")
    # the same config in a fresh folder makes the same pairs
    other = run_stages(cfgs, str(tmp_path), executor="local")
    ids = lambda d: sorted(shards.read_table(f"{d}/synthesize/pairs", columns=["pair_id"]).column(0).to_pylist())
    assert ids(out) == ids(str(tmp_path)) and other["stages"][1]["counts"]["pairs"] == len(ids(out))


def test_unknown_synthesizer_is_a_user_error(synth_run):
    from acedata.errors import UserError

    out, cfgs, _ = synth_run
    with pytest.raises(UserError, match="unknown synthesizer"):
        run_stages([cfgs[0], SynthesizeConfig(name="s2", synthesizers=["nope"])], out, executor="local")


def test_weight_free_stage_on_ray(ray_local, synth_run, tmp_path):
    out, _, _ = synth_run
    cfg = SynthesizeConfig(name="synthesize", synthesizers=["canny", "inpaint_box", "color_grading", "reference"],
                           inputs={"images": f"{out}/ingest/images"}, max_images=8, max_side=128,
                           images_per_unit=4)
    run = run_stages([cfg], str(tmp_path), executor="ray")
    s = run["stages"][0]
    assert s["counts"]["candidates"] == s["counts"]["pairs"] + s["counts"]["quarantine"]
    assert {"low_level/canny", "repainting/inpainting", "semantic_editing/color_grading"} <= set(s["pairs_by_task"])


def test_contact_sheet_command_draws_every_family(synth_run, tmp_path, capsys):
    from PIL import Image

    from acedata.cli import main

    out, _, _ = synth_run
    assert main(["contact-sheet", out, "--out", str(tmp_path), "--per-family", "3", "--cell", "48"]) == 0
    written = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[-1][:-4] for p in written} == FAMILIES
    sheet = Image.open(str(tmp_path / "repainting.png"))
    assert sheet.height > 3 * 48 and sheet.width > 3 * 48  # 3 rows of source, mask, target
    assert main(["contact-sheet", str(tmp_path / "nope")]) == 2


def test_read_ids_returns_rows_in_the_order_asked(tmp_path):
    import pyarrow as pa

    from acedata.stages.synthesize import _read_ids

    p = str(tmp_path / "x")
    t = pa.table({"image_id": [f"id{i}" for i in range(100)],
                  "image": [{"bytes": bytes([i]), "path": None} for i in range(100)]})
    shards.write_table(p, t, t.schema, row_group_bytes=200)
    rows = _read_ids([p], ["id93", "id5", "id50", "id6", "id7"])
    assert [r["image_id"] for r in rows] == ["id93", "id5", "id50", "id6", "id7"]
    assert rows[0]["image"]["bytes"] == bytes([93]) and rows[0]["caption"] is None


def test_reference_sets_from_pair_mining_else_groups_else_none(synth_run, tmp_path):
    import pyarrow as pa

    out, _, _ = synth_run
    images = f"{out}/ingest/images"
    ids = sorted(shards.read_table(images, columns=["image_id"]).column(0).to_pylist())[:3]
    # a mined set of three images (ids 0,1,2) linked by two pairs
    mined = pa.Table.from_pylist(
        [{"pair_id": "m1", "source_id": ids[0], "target_id": ids[1], "task": "natural_edit", "subtask": "general",
          "set_id": 7},
         {"pair_id": "m2", "source_id": ids[1], "target_id": ids[2], "task": "natural_edit", "subtask": "general",
          "set_id": 7}], PAIRS)
    shards.write_table(str(tmp_path / "mined"), mined, PAIRS)
    cfg = SynthesizeConfig(name="s", synthesizers=["reference"],
                           inputs={"images": images, "pairs": str(tmp_path / "mined")})
    s = run_stages([cfg], str(tmp_path / "a"), executor="local")["stages"][0]
    assert s["reference_sets"] == "pair_mining_sets" and s["counts"]["pairs"] == 3
    targets = shards.read_table(str(tmp_path / "a" / "s" / "pairs"), columns=["target_id"]).column(0).to_pylist()
    assert sorted(targets) == sorted(ids[:3])

    # no sets and no groups: nothing to reference, and the run still completes
    full = shards.read_table(images)
    no_groups = full.set_column(full.schema.get_field_index("group"), "group", pa.nulls(full.num_rows, pa.string()))
    shards.write_table(str(tmp_path / "flat"), no_groups, IMAGES)
    cfg = SynthesizeConfig(name="s", synthesizers=["reference", "grayscale"], max_images=4,
                           inputs={"images": str(tmp_path / "flat")})
    s = run_stages([cfg], str(tmp_path / "b"), executor="local")["stages"][0]
    assert s["reference_sets"] == "none" and set(s["pairs_by_task"]) <= {"low_level/grayscale",
                                                                          "controllable/grayscale"}


def test_photos_per_unit_follows_the_work_per_photo():
    """8 photos at the defaults (every weight-free synthesizer, 1024 px); smaller photos or fewer
    synthesizers per photo make units of more photos, up to 32; an explicit value wins."""
    assert SynthesizeConfig(name="s").photos_per_unit() == 8
    assert SynthesizeConfig(name="s", max_side=2048).photos_per_unit() == 8
    assert SynthesizeConfig(name="s", max_side=384).photos_per_unit() == 32
    assert SynthesizeConfig(name="s", per_image=4, max_side=1024).photos_per_unit() == 32
    assert SynthesizeConfig(name="s", per_image=10).photos_per_unit() == 16
    assert SynthesizeConfig(name="s", synthesizers=["grayscale"]).photos_per_unit() == 32
    assert SynthesizeConfig(name="s", max_side=384, images_per_unit=3).photos_per_unit() == 3


def test_sets_per_unit_follows_the_work_per_set():
    """Reference units: 26 sets at the defaults (6 members, one group synthesizer), between 8 and
    32 whatever the photo size; none when no group synthesizer runs; an explicit value wins."""
    assert SynthesizeConfig(name="s").sets_per_unit() == 26
    assert SynthesizeConfig(name="s", max_side=384).sets_per_unit() == 32
    assert SynthesizeConfig(name="s", max_side=4096).sets_per_unit() == 8
    assert SynthesizeConfig(name="s", reference_max_set=16).sets_per_unit() == 10
    assert SynthesizeConfig(name="s", synthesizers=["grayscale"]).sets_per_unit() == 32
    assert SynthesizeConfig(name="s", groups_per_unit=3).sets_per_unit() == 3
