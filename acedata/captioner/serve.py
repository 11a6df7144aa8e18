"""Serving directories for a trained captioner checkpoint.

- merged (default): the LoRA deltas folded into the base weights (or the fully fine-tuned
  weights) saved with the processor as an ordinary transformers model folder, which
  `vllm serve DIR` and `transformers serve DIR` load as they load the base model;
- adapter (`keep_adapter`): the peft adapter alone (`adapter_config.json` +
  `adapter_model.safetensors`), served on the base with `vllm serve BASE --enable-lora
  --lora-modules captioner=DIR`.

Either folder carries `acedata_captioner.json` naming the checkpoint it came from; the
instruct stage copies that into each captioner-labelled row's provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

INFO = "acedata_captioner.json"


def file_digest(path: str) -> str:
    """sha256 (16 hex) of a local file or URI, streamed."""
    from acedata import storage

    h = hashlib.sha256()
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def export_model(ckpt: str, out_dir: str, keep_adapter: bool = False) -> dict[str, Any]:
    from acedata.captioner.evaluate import load_checkpoint
    from acedata.errors import UserError

    model, processor, state = load_checkpoint(ckpt)
    is_lora = state["finetune"] == "lora"
    if keep_adapter and not is_lora:
        raise UserError(f"{ckpt} is a full fine-tune: there is no adapter to keep; export it merged")
    os.makedirs(out_dir, exist_ok=True)
    ckpt = ckpt if "://" in ckpt else os.path.abspath(ckpt)
    info = {"checkpoint": ckpt, "step": state["step"], "finetune": state["finetune"],
            "base_model": state["base_model"], "weights_sha256": file_digest(f"{ckpt}/trainable.safetensors"),
            "layout": "adapter" if keep_adapter else "merged"}
    if keep_adapter:
        model.save_pretrained(out_dir)  # peft: the adapter only
    else:
        merged = model.merge_and_unload() if is_lora else model
        merged.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    with open(os.path.join(out_dir, INFO), "w") as f:
        json.dump(info, f, indent=1)
    return info


def checkpoint_info(model_dir: str | None) -> dict[str, Any] | None:
    """The `acedata_captioner.json` of a served folder, when the model name is a readable local path."""
    if not model_dir:
        return None
    path = os.path.join(model_dir, INFO)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def serve_commands(out_dir: str, info: dict[str, Any]) -> list[str]:
    if info["layout"] == "adapter":
        return [(f"vllm serve {info['base_model']} --enable-lora --lora-modules captioner={out_dir} "
                "--max-lora-rank 64 --limit-mm-per-prompt '{\"image\": 4}'")]
    return [f"vllm serve {out_dir} --limit-mm-per-prompt '{{\"image\": 4}}'",
            f"transformers serve {out_dir}  # CPU / small models"]
