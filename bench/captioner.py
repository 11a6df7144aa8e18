"""Captioner training throughput: `acedata.captioner.train` against a bare transformers loop.

Both run the same tiny InternVL weights on the same batches (the trainer's own batch order) of
exported records. The trainer step: its collator (images loaded, the processor tiles and
expands image tokens, answer-only labels) + forward + backward + grad clip + AdamW. The bare
loop (run alternately, step by step, on the same batch): the processor on the whole batch of rendered conversations with padding, labels = the
input ids (pad masked), forward + backward + AdamW — what a hand-written HF loop does. Reports
samples/s of each and the ratio (trainer / bare; > 1 means the trainer is faster). On a GPU it
also reports tokens/s with the card named (bf16 autocast).

    .venv/bin/python bench/captioner.py              # CPU, tiny model (about a minute)
    .venv/bin/python bench/captioner.py --hidden 512 --layers 8 --steps 30   # GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


class BareLoop:
    """A hand-written HF step: processor on the whole batch, labels = input ids, fwd + bwd + AdamW."""

    def __init__(self, model, processor, device, bf16: bool) -> None:
        self.model, self.proc, self.device, self.bf16 = model, processor, device, bf16
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        processor.tokenizer.padding_side = "right"

    def step(self, examples) -> int:
        from acedata.captioner.data import load_images, prompt_messages

        texts = [self.proc.apply_chat_template(prompt_messages(e) + [{"role": "assistant", "content": e.answer}],
                                               tokenize=False) for e in examples]
        images = [im for e in examples for im in load_images(e)]
        batch = self.proc(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext():
            loss = self.model(**batch, labels=labels).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--records", type=int, default=16)
    args = ap.parse_args()
    from captioner_fixtures import export, make_run

    from acedata.captioner.config import CaptionerConfig
    from acedata.captioner.model import load_model
    from acedata.captioner.train import CaptionerTrainer

    tmp = Path(tempfile.mkdtemp(prefix="bench-captioner-"))
    data = export(make_run(tmp, n=args.records), tmp / "export")
    gpu = torch.cuda.is_available()
    cfg = CaptionerConfig(
        model={"path": str(tmp / "tiny"), "tiny": {"hidden_size": args.hidden, "layers": args.layers}},
        finetune="full", freeze_vision=False, data={"batch_size": args.batch, "eval_fraction": 0.0},
        steps=args.steps, checkpoint_every=10**9, precision="bf16" if gpu else "fp32", cpu_threads=None)
    trainer = CaptionerTrainer(cfg, str(data), str(tmp / "out"))
    model, processor, _ = load_model(cfg.model)
    bare = BareLoop(model.to(trainer.device).train(), processor, trainer.device, gpu)
    # Alternate one step of each on the same batch, so load from other processes hits both alike.
    t_ours = t_bare = 0.0
    tokens = 0
    for s in range(args.steps):
        examples = [trainer.train_set[i] for i in trainer.indices(s, 0)]
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.train_step()
        sync(trainer.device)
        t1 = time.perf_counter()
        n = bare.step(examples)
        sync(trainer.device)
        t2 = time.perf_counter()
        if s > 0:  # the first step of each warms up
            t_ours, t_bare, tokens = t_ours + t1 - t0, t_bare + t2 - t1, tokens + n
    ours = (args.steps - 1) * args.batch / t_ours
    bare_rate = (args.steps - 1) * args.batch / t_bare
    device = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"device: {device}; tiny InternVL hidden {args.hidden} x {args.layers} layers, batch {args.batch}, "
          f"{args.steps} steps (first = warm-up)")
    print(f"trainer      {ours:8.2f} samples/s")
    print(f"bare HF loop {bare_rate:8.2f} samples/s  ({tokens / t_bare:.0f} tokens/s incl. padding)")
    print(f"ratio trainer/bare = {ours / bare_rate:.2f}")


if __name__ == "__main__":
    main()
