"""The small assembled world several test modules share: ingested photos, synthesized pairs
(edits, chains, a mask, a reference pair, mined pairs), their instructions, and `assemble` to run
the stage on it."""

from __future__ import annotations

import json
import os

import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from acedata import shards
from acedata.images import encode, image_cell, open_rgb, pixel_id
from acedata.pipeline import _write_marker, run_stages
from acedata.runtime import run_stage
from acedata.schemas import IMAGES, INSTRUCTIONS, PAIRS, QUARANTINE
from acedata.stage import RunContext
from acedata.stages.assemble import Assemble, AssembleConfig
from acedata.stages.ingest import IngestConfig


def _img_row(im: Image.Image, kind: str, uri: str) -> dict:
    data = encode(im.convert("RGB") if kind != "mask" else im, "PNG")
    return {"image_id": pixel_id(im.convert("RGB")), "source_uri": uri, "width": im.width, "height": im.height,
            "format": "PNG", "image": image_cell(data), "kind": kind}


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def _pair(pid: str, src: str, tgt: str, task: str, subtask: str, **kw) -> dict:
    return {"pair_id": pid, "source_id": src, "target_id": tgt, "task": task, "subtask": subtask,
            "provenance": json.dumps({"stage": "test", "algorithm": subtask, "filters": {"min_ssim": 0.5}}), **kw}


def _instr(pid: str, variant: int, text: str, method: str = "template") -> dict:
    return {"pair_id": pid, "variant": variant, "instruction": text, "method": method,
            "model": "tiny-llm@random-init" if method == "llm_rewrite" else None}


def build_world(run: str, corpus: str) -> dict:
    """A run with real ingest output, synthesized images, pairs of every shape and instructions."""
    run_stages([IngestConfig(name="ingest", sources=[corpus])], run, executor="local", name="t")
    ing = shards.read_table(os.path.join(run, "ingest", "images"), ["image_id", "image", "group"]).to_pylist()
    by_group: dict[str, list[dict]] = {}
    for r in sorted(ing, key=lambda r: r["image_id"]):
        by_group.setdefault(r["group"] or "none", []).append(r)
    groups = sorted(g for g in by_group if len(by_group[g]) >= 4)
    pic = {r["image_id"]: open_rgb(r["image"]["bytes"]) for r in ing}
    synth: list[dict] = []

    def add(im: Image.Image, kind: str = "image") -> str:
        row = _img_row(im, kind, f"synth://{len(synth)}")
        synth.append(row)
        return row["image_id"]

    pairs: list[dict] = []
    instr: list[dict] = []
    # A synthesis chain: A -grayscale-> B -blur-> C -remove (mask)-> D
    a = by_group[groups[0]][0]["image_id"]
    b = add(ImageOps.grayscale(pic[a]).convert("RGB"))
    c = add(open_rgb(synth[-1]["image"]["bytes"]).filter(ImageFilter.GaussianBlur(2)))
    cim = open_rgb(synth[-1]["image"]["bytes"])
    mask_c = add(_mask(cim.size, (4, 4, cim.width // 2, cim.height // 2)), "mask")
    d = add(ImageOps.posterize(cim, 2))
    pairs += [
        _pair("chain1", a, b, "low_level", "grayscale"),
        _pair("chain2", b, c, "semantic_editing", "style", parent_pair_id="chain1"),
        _pair("chain3", c, d, "element_editing", "remove", mask_id=mask_c, parent_pair_id="chain2"),
    ]
    instr += [_instr("chain1", 0, "turn {image} into black and white"),
              _instr("chain1", 1, "make {image} grayscale", "llm_rewrite"),
              _instr("chain2", 0, "blur {image} softly"),
              _instr("chain3", 0, "remove the marked region from {image}")]
    # Repainting with a mask; variant 1 names an input the pair does not have.
    e = by_group[groups[1]][0]["image_id"]
    mask_e = add(_mask(pic[e].size, (0, 0, pic[e].width // 3, pic[e].height)), "mask")
    f = add(ImageOps.invert(pic[e]))
    pairs.append(_pair("repaint", e, f, "repainting", "inpainting", mask_id=mask_e))
    instr += [_instr("repaint", 0, "repaint the masked area of {image}"), _instr("repaint", 1, "mix {image2} in")]
    # Reference generation: two inputs named {image1} {image2}.
    g, h = by_group[groups[2]][0]["image_id"], by_group[groups[3]][0]["image_id"]
    i = add(Image.blend(pic[g].resize((64, 48)), pic[h].resize((64, 48)), 0.5))
    pairs.append(_pair("ref", g, i, "reference_generation", "subject", extra_input_ids=[h]))
    instr.append(_instr("ref", 0, "draw the subject of {image1} in the style of {image2}"))
    # A mined set: all ordered pairs of four variants of one photo.
    mined = [r["image_id"] for r in by_group[groups[4]][:4]]
    for x in mined:
        for y in mined:
            if x != y:
                pid = f"mined-{x[:6]}-{y[:6]}"
                pairs.append(_pair(pid, x, y, "natural_edit", "general", set_id=5, sim_pass1=0.9, score_pass2=0.8,
                                   scores=[{"name": "ssim", "value": 0.6}]))
                instr += [_instr(pid, 0, f"edit {{image}} toward {y[:4]}"),
                          _instr(pid, 1, f"change {{image}} ({x[:4]})", "llm_rewrite")]
    # Simple pairs in the other groups, so a split has independent components to draw from.
    for gname in groups[5:]:
        s, t = by_group[gname][0]["image_id"], by_group[gname][1]["image_id"]
        pairs.append(_pair(f"simple-{gname}", s, t, "controllable", "canny"))
        instr.append(_instr(f"simple-{gname}", 0, f"generate from the edges in {{image}} ({gname})"))
    # Rows that must end in quarantine.
    k, m = by_group[groups[5]][2]["image_id"], by_group[groups[5]][3]["image_id"]
    pairs += [_pair("unlabelled", k, m, "low_level", "mosaic"), _pair("badref", k, m, "low_level", "mosaic"),
              _pair("missing", k, "0" * 64, "low_level", "mosaic")]
    instr += [_instr("badref", 0, "compare {image1} and {image3}"), _instr("missing", 0, "x {image}")]
    t2i = by_group[groups[6]][3]["image_id"]
    instr += [_instr(f"t2i:{t2i}", 0, "a photograph of a test subject", "caption"),
              _instr("t2i:" + "f" * 64, 0, "caption of an image nobody has", "caption"),
              _instr("nopair", 0, "an instruction for no pair")]
    sdir = os.path.join(run, "synth")
    shards.write_table(os.path.join(sdir, "images"), pa.Table.from_pylist(synth, IMAGES), IMAGES)
    shards.write_table(os.path.join(sdir, "pairs"), pa.Table.from_pylist(pairs, PAIRS), PAIRS)
    shards.write_table(os.path.join(sdir, "quarantine"),
                       pa.Table.from_pylist([{"source_uri": "x", "stage": "synth", "reason": "low_ssim"}] * 2,
                                            QUARANTINE), QUARANTINE)
    shards.write_table(os.path.join(run, "label", "instructions"), pa.Table.from_pylist(instr, INSTRUCTIONS),
                       INSTRUCTIONS)
    _write_marker(sdir, "test", {"stage": "synthesize", "counts": {"pairs": len(pairs)}},
                  config={"filters": {"max_ssim": 0.95}, "models": {"inpaint": {"name": "tiny-unet", "random_init": True}}})
    _write_marker(os.path.join(run, "label"), "test", {"stage": "instruct", "counts": {"instructions": len(instr)}})
    images = {r["image_id"]: r["image"]["bytes"] for r in ing} | {r["image_id"]: r["image"]["bytes"] for r in synth}
    return {"pairs": pairs, "instr": instr, "images": images, "mined": mined, "sdir": sdir}


def assemble(run: str, name: str = "assemble", out: str | None = None, **cfg) -> dict:
    config = AssembleConfig(name=name, **cfg)
    inputs = {
        "images": [os.path.join(run, "ingest", "images"), os.path.join(run, "synth", "images")],
        "pairs": [os.path.join(run, "synth", "pairs")],
        "instructions": [os.path.join(run, "label", "instructions")],
    }
    out = out or run
    stage = Assemble(config, RunContext(out, os.path.join(out, name), inputs))
    summary = run_stage(stage, "local")
    _write_marker(os.path.join(out, name), "test", summary)
    return summary
