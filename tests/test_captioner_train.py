"""The instruction captioner's training: a tiny random-init InternVL (built through the same
loader as real weights) overfits a handful of exported curated records, resumes exactly,
and the data path keeps images in indicator order with labels on the answer only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from captioner_fixtures import INSTRUCTIONS, export, make_run, write_config

from acedata.captioner.config import load_config
from acedata.captioner.data import IGNORE, is_heldout, read_examples, split, user_parts
from acedata.captioner.evaluate import generate
from acedata.captioner.train import CaptionerTrainer, latest_checkpoint, list_checkpoints

OVERFIT_FACTOR = 20  # measured ~165x on 4 records / 60 steps


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("capdata")
    return export(make_run(root, n=4), root / "export"), root


@pytest.mark.parametrize("family", ["internvl", "qwen2_vl"])
def test_tiny_model_overfits_and_generates_the_references(exported, tmp_path, family):
    data, root = exported
    cfg = load_config(str(write_config(tmp_path / "c.yaml", root / f"tiny-{family}", steps=60, every=1000,
                                       family=family)))
    t = CaptionerTrainer(cfg, str(data), str(tmp_path / "out"))
    losses = t.fit(progress=False)
    final = sum(losses[-5:]) / 5
    print(f"overfit {family}: loss {losses[0]:.3f} -> {final:.4f} (x{losses[0] / final:.0f})")
    assert losses[0] / final > OVERFIT_FACTOR, (losses[0], final)
    preds = generate(t.model.eval(), t.processor, t.train_set, max_new_tokens=32)
    assert preds == [e.answer for e in t.train_set] and set(preds) == set(INSTRUCTIONS[:4])


def test_labels_cover_the_answer_and_end_of_turn_only(exported, tmp_path):
    data, root = exported
    cfg = load_config(str(write_config(tmp_path / "c.yaml", root / "tiny", steps=1)))
    t = CaptionerTrainer(cfg, str(data), str(tmp_path / "out"))
    ex = t.train_set[0]
    batch = t.collate([ex])
    labels = batch["labels"][0]
    answer = labels[labels != IGNORE].tolist()
    assert t.processor.tokenizer.decode(answer) == ex.answer + "<|im_end|>"
    # every image token (tiles expanded by the processor) is in the prompt, none in the labels
    image_id = t.model.config.image_token_id
    assert (batch["input_ids"][0] == image_id).sum() > 0 and image_id not in answer
    # 64x32 images tile as 2x1 + thumbnail: 3 tiles per image, 2 images
    assert batch["pixel_values"].shape[0] == 6


def test_resume_gives_the_same_next_step_loss(exported, tmp_path):
    """LoRA with dropout, so the per-step RNG reseed is exercised too."""
    data, root = exported
    cfg = load_config(str(write_config(tmp_path / "c.yaml", root / "tiny", steps=4, every=3, finetune="lora",
                                       dropout=0.1)))
    a = CaptionerTrainer(cfg, str(data), str(tmp_path / "a"))
    straight = a.fit(progress=False)  # saves at step 3 and 4
    b = CaptionerTrainer(cfg, str(data), str(tmp_path / "b"))
    b.load(str(tmp_path / "a" / "checkpoints" / "step-00000003"))
    assert b.step == 3
    resumed = b.train_step()
    print(f"resume: straight {straight[3]:.8f} resumed {resumed:.8f} diff {abs(straight[3] - resumed):.2e}")
    assert abs(straight[3] - resumed) < 1e-6
    assert latest_checkpoint(str(tmp_path / "a")).endswith("step-00000004")
    assert all(".lora_" in n for n in a.names) and a.names


def test_checkpoints_on_s3_resume_and_commit_by_marker(exported, tmp_path, s3_server):
    """The same exact resume with checkpoints on an S3 server (moto on loopback); state.json is the
    commit marker, so a step folder without it is never taken."""
    from acedata import storage

    data, root = exported
    cfg = load_config(str(write_config(tmp_path / "c.yaml", root / "tiny", steps=4, every=3, finetune="lora",
                                       dropout=0.1)))
    out = f"s3://{s3_server.bucket}/captioner-{tmp_path.name}"
    a = CaptionerTrainer(cfg, str(data), out)
    straight = a.fit(progress=False)
    assert [c.rsplit("/", 1)[1] for c in list_checkpoints(out)] == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(out) == f"{out}/checkpoints/step-00000004"
    storage.delete_file(f"{out}/checkpoints/step-00000004/state.json")  # as if killed before the marker
    assert latest_checkpoint(out) == f"{out}/checkpoints/step-00000003"
    b = CaptionerTrainer(cfg, str(data), out)
    b.load(latest_checkpoint(out))
    assert b.step == 3 and abs(b.train_step() - straight[3]) < 1e-6


def test_multi_input_records_keep_indicator_order(tmp_path):
    data = export(make_run(tmp_path, n=2, extra=1), tmp_path / "export")
    [rec, *_] = [json.loads(x) for x in (data / "captioner.jsonl").read_text().splitlines()]
    [ex, *_] = read_examples(str(data))
    assert ex.images == [str(data / p) for p in rec["image"]] and len(ex.images) == 3
    kinds = [p["type"] for p in ex.user]
    assert kinds == ["text", "image", "text", "image", "text", "image", "text"]
    assert [p["text"] for p in ex.user if p["type"] == "text"][:3] == ["Image-1: ", "\nImage-2: ", "\nImage-3: "]
    with pytest.raises(ValueError):
        user_parts("Image-1: <image>\nfoo", 2)


def test_heldout_split_is_by_pair_and_order_free(exported):
    data, _ = exported
    ex = read_examples(str(data))
    a_train, a_held = split(ex, 0.5)
    _b_train, b_held = split(list(reversed(ex)), 0.5)
    assert {e.id for e in a_held} == {e.id for e in b_held}
    assert is_heldout("p1", 0.3) == is_heldout("p1", 0.3)
    assert all(is_heldout(e.pair_id, 0.5) for e in a_held) and len(a_train) + len(a_held) == len(ex)


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acedata", *args], check=False, capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_missing_weights_are_one_line(tmp_path, exported):
    data, _ = exported
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {tmp_path}/nope/InternVL3-1B-hf}}\n")
    r = _cli("train-captioner", str(cfg), "--data", str(data), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "InternVL3-1B-hf' not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("train-captioner", str(cfg), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no captioner data" in r.stderr


@pytest.mark.parametrize("where", ["local", "s3"])
def test_cli_trains_evaluates_and_resumes(tmp_path, where, request):
    from acedata import storage

    data = export(make_run(tmp_path, n=10), tmp_path / "export")
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "tiny", steps=6, every=3, eval_fraction=0.3)
    out = str(tmp_path / "out") if where == "local" else \
        f"s3://{request.getfixturevalue('s3_server').bucket}/cap-cli-{tmp_path.name}"  # env inherited by the CLI
    r = _cli("train-captioner", str(cfg), "--data", str(data), "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = storage.read_bytes(f"{out}/eval/metrics.csv").decode().splitlines()
    assert rows[0].startswith("step,checkpoint,records,indicator_valid") and len(rows) == 3
    assert len(storage.read_bytes(f"{out}/eval/metrics.png")) > 1000
    results = storage.read_json(f"{out}/eval/metrics.json")
    held = [e for e in read_examples(str(data)) if is_heldout(e.pair_id, 0.3)]
    assert all(r["records"] == len(held) > 0 for r in results)
    r = _cli("train-captioner", str(cfg), "--data", str(data), "--out", out, "--steps", "9", "--no-eval")
    assert r.returncode == 0, r.stderr[-2000:]
    assert latest_checkpoint(out).endswith("step-00000009")
    assert not os.path.exists("s3:")  # nothing landed in a local folder named like the URI (the CLI's cwd)
