"""ACE DiT checkpoints on object storage: train to S3 (moto server on loopback) and memory://, resume
bit-exactly from there, marker-last commits (a checkpoint without its marker is never taken), and
`acedata generate` from an S3 checkpoint."""

from __future__ import annotations

import os
import uuid

import pytest
import torch
from ace_helpers import CONFIG, tiny_config
from acemodel import checkpoint, files
from acemodel.train import Trainer, latest_checkpoint

RESUME_CFG = {"steps": 3, "checkpoint_every": 2, "data": {"batch_size": 2, "cfg_dropout": 0.5, "token_budget": 12},
              "optim": {"lr": 2e-3, "grad_accum": 2, "ema_decay": 0.9}}


@pytest.fixture(params=["memory", "s3"])
def remote(request) -> str:
    if request.param == "memory":
        return f"memory://acemodel-{uuid.uuid4().hex[:8]}/train"
    server = request.getfixturevalue("s3_server")
    return f"s3://{server.bucket}/train-{uuid.uuid4().hex[:8]}"


def test_resume_from_object_storage_gives_the_local_next_step_loss(lcu, tmp_path, remote):
    cfg = tiny_config(**RESUME_CFG)
    straight = Trainer(cfg, lcu, str(tmp_path / "local"))
    want = [straight.train_step() for _ in range(3)]

    first = Trainer(cfg, lcu, remote)  # the same run, checkpoints on object storage
    assert first.fit(steps=2, progress=False) == want[:2]
    ckpt = latest_checkpoint(remote)
    assert ckpt == f"{remote}/checkpoints/step-00000002"  # spelled as given: a URI stays a URI
    names = {i.base_name for i in files.list_dir(ckpt)}
    assert names == {"model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"}
    assert not os.path.exists(remote.split("://", 1)[1])  # nothing landed on the local disk
    resumed = Trainer(cfg, lcu, remote)
    resumed.load(ckpt)
    assert resumed.step == 2
    assert resumed.train_step() == want[2]  # bit-exact on CPU, as from a local checkpoint
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


def test_checkpoint_without_its_marker_is_ignored_and_replaced(lcu, tmp_path, remote, monkeypatch):
    real = files.write_bytes

    def die_at_marker(uri: str, data: bytes) -> None:
        if uri.endswith(checkpoint.MARKER):
            raise KeyboardInterrupt("killed before the marker")
        real(uri, data)

    for out in (str(tmp_path / "local"), remote):
        cfg = tiny_config(steps=2, checkpoint_every=1, keep_checkpoints=3,
                   data={"batch_size": 2, "cfg_dropout": 0.0, "token_budget": 12})
        tr = Trainer(cfg, lcu, out)
        tr.fit(steps=1, progress=False)
        assert latest_checkpoint(out).endswith("step-00000001")

        # a save killed before its marker: every data file is there, state.json is not
        monkeypatch.setattr(files, "write_bytes", die_at_marker)
        tr.train_step()
        with pytest.raises(KeyboardInterrupt):
            tr.save()
        monkeypatch.setattr(files, "write_bytes", real)
        root = files.join(out, "checkpoints")
        left = {i.base_name for i in files.list_dir(root)}
        assert left & {"step-00000002", "step-00000002.tmp"}, left  # the half checkpoint is there ...
        assert latest_checkpoint(out).endswith("step-00000001")  # ... and ignored
        assert checkpoint.step_dirs(root) == ["step-00000001"]
        files.write_bytes(files.join(root, "step-00000009", "model.safetensors"), b"half an upload")

        again = Trainer(cfg, lcu, out)
        again.load(latest_checkpoint(out))
        again.fit(progress=False)  # redoes step 2 and commits it
        assert latest_checkpoint(out).endswith("step-00000002")
        assert {i.base_name for i in files.list_dir(root)} == {"step-00000001", "step-00000002"}  # junk cleaned
        for k, v in tr.model.state_dict().items():
            torch.testing.assert_close(again.model.state_dict()[k], v, rtol=0, atol=0)


def test_train_cli_to_s3_resumes_and_generate_reads_it(lcu, tmp_path, s3_server):
    from PIL import Image
    from safetensors.torch import load_file

    from acedata.cli import main

    out = f"s3://{s3_server.bucket}/cli-{uuid.uuid4().hex[:8]}"
    local = str(tmp_path / "straight")
    assert main(["train", CONFIG, "--data", lcu, "--out", local, "--steps", "3"]) == 0
    assert main(["train", CONFIG, "--data", lcu, "--out", out, "--steps", "2"]) == 0
    assert latest_checkpoint(out).endswith("step-00000002")
    assert main(["train", CONFIG, "--data", lcu, "--out", out, "--steps", "3"]) == 0  # resumes at 2 from S3
    ckpt = latest_checkpoint(out)
    assert ckpt.endswith("step-00000003")
    with files.local_copy(files.join(ckpt, "model.safetensors")) as p:
        got = load_file(p)
    want = load_file(os.path.join(latest_checkpoint(local), "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    png = tmp_path / "t2i.png"
    assert main(["generate", out, "--instruction", "a photograph of coffee", "--width", "48", "--height", "32",
                 "--steps", "2", "--guidance", "1", "--out", str(png)]) == 0
    assert Image.open(png).size == (48, 32)
    remote_png = f"{out}/samples/t2i.png"
    assert main(["generate", ckpt, "--instruction", "a photograph of coffee", "--width", "48", "--height", "32",
                 "--steps", "2", "--guidance", "1", "--out", remote_png]) == 0
    assert files.read_bytes(remote_png) == png.read_bytes()  # same checkpoint, same seed: same image
    assert main(["generate", f"{out}/nowhere", "--instruction", "x"]) == 2
