"""Per-checkpoint evaluation on the held-out split: greedy generation, the metrics of
`acedata.captioner.metrics`, written as `eval/metrics.csv`, `eval/metrics.json`, one
predictions JSONL per checkpoint and `eval/metrics.png` (metrics against step)."""

from __future__ import annotations

import csv
import io
import json
import os

import torch

from acedata import storage
from acedata.captioner.config import CaptionerConfig
from acedata.captioner.data import Example, load_images, prompt_messages, read_examples, split
from acedata.captioner.metrics import summarise
from acedata.captioner.model import load_model, prepare_for_training
from acedata.errors import UserError

COLUMNS = ["step", "checkpoint", "records", "indicator_valid", "exact_match", "edit_distance", "bleu", "rouge_l",
           "minilm_similarity"]


def checkpoint_config(ckpt: str) -> tuple[CaptionerConfig, dict]:
    path = storage.join(ckpt, "state.json")  # a local path or URI (s3://...)
    if not storage.is_file(path):
        raise UserError(f"{ckpt} is not a captioner checkpoint (no state.json)")
    state = storage.read_json(path)
    return CaptionerConfig(**state["config"]), state


def load_checkpoint(ckpt: str, device: str = "cpu"):
    """(model, processor, state) with the checkpoint's trainable weights in place (LoRA unmerged)."""
    from acemodel.checkpoint import read_tensors

    from acedata.captioner.train import load_trainable

    cfg, state = checkpoint_config(ckpt)
    base, processor, _ = load_model(cfg.model)
    torch.manual_seed(cfg.seed)
    model = prepare_for_training(base, cfg)
    load_trainable(model, read_tensors(storage.join(ckpt, "trainable.safetensors")))
    return model.to(device).eval(), processor, state


@torch.no_grad()
def generate(model, processor, examples: list[Example], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers, one example at a time (no padding effects on the result)."""
    tok = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    out = []
    for ex in examples:
        prompt = processor.apply_chat_template(prompt_messages(ex), add_generation_prompt=True, tokenize=False)
        enc = processor(text=[prompt], images=load_images(ex) or None, return_tensors="pt").to(device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def evaluate_checkpoint(ckpt: str, data: str, limit: int | None = None, embedder=None,
                        examples: list[Example] | None = None) -> tuple[dict, list[dict]]:
    cfg, state = checkpoint_config(ckpt)
    if examples is None:
        _, examples = split(read_examples(data, cfg.data.max_records), cfg.data.eval_fraction)
    limit = cfg.eval.limit if limit is None else limit
    examples = examples[:limit] if limit else examples
    model, processor, _ = load_checkpoint(ckpt, "cuda" if torch.cuda.is_available() else "cpu")
    preds = generate(model, processor, examples, cfg.eval.max_new_tokens)
    if embedder is None and examples:
        from acedata.instruct.embedder import get_embedder

        embedder = get_embedder(cfg.eval.embedder_path)
    refs = [e.answer for e in examples]
    metrics = {"step": state["step"], "checkpoint": os.path.basename(ckpt),
               **summarise(preds, refs, [len(e.images) - 1 for e in examples], embedder)}
    rows = [{"id": e.id, "prediction": p, "reference": e.answer} for e, p in zip(examples, preds)]
    return metrics, rows


def evaluate_run(out: str, data: str, limit: int | None = None, embedder=None) -> list[dict]:
    """Every checkpoint under OUT (results already written are reused); table + plot."""
    from acedata.captioner.train import list_checkpoints

    ckpts = list_checkpoints(out)
    if not ckpts:
        raise UserError(f"no checkpoints under {out}/checkpoints (train with `acedata train-captioner` first)")
    root = storage.join(out, "eval")  # a local path or URI: every file written whole (acedata.storage)
    results = []
    for ckpt in ckpts:
        name = ckpt.rstrip("/").rsplit("/", 1)[-1]
        cached = storage.join(root, f"{name}.json")
        if storage.is_file(cached):
            results.append(storage.read_json(cached))
            continue
        metrics, rows = evaluate_checkpoint(ckpt, data, limit, embedder)
        if metrics.get("records", 0) == 0:
            raise UserError("the held-out split is empty; set data.eval_fraction > 0 and retrain")
        storage.write_bytes(storage.join(root, f"{name}.predictions.jsonl"),
                            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        storage.write_json(cached, metrics, indent=1)  # last: the cache entry says this checkpoint is done
        results.append(metrics)
    write_table(results, root)
    return results


def write_table(results: list[dict], root: str) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(results)
    storage.write_bytes(storage.join(root, "metrics.csv"), buf.getvalue().encode())
    storage.write_json(storage.join(root, "metrics.json"), results, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("indicator_valid", "exact_match", "edit_distance", "rouge_l", "minilm_similarity"):
        ax1.plot(steps, [r[key] for r in results], marker="o", label=key)
    ax1.set_xlabel("step")
    ax1.set_ylim(0, 1.05)
    ax1.legend(fontsize=8)
    ax2.plot(steps, [r["bleu"] for r in results], marker="o", color="k")
    ax2.set_xlabel("step")
    ax2.set_ylabel("BLEU")
    fig.suptitle("captioner: held-out metrics per checkpoint")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(storage.join(root, "metrics.png"), png.getvalue())
