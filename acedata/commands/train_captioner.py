"""`acedata train-captioner CONFIG --data EXPORT --out DIR`: fine-tune the instruction captioner."""

from __future__ import annotations

import argparse

from acedata import storage


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-captioner",
        help="fine-tune an MLLM instruction captioner on `acedata export-captioner` data",
        description="Supervised fine-tuning (LoRA or full) of an image-text-to-text model (InternVL, Qwen2-VL, "
        "...) on exported chat JSONL; loss on the answer tokens only. Checkpoints go to DIR/checkpoints, "
        "then every checkpoint is evaluated on the held-out split (DIR/eval/metrics.csv, metrics.png). "
        "Reruns resume from the newest checkpoint. --workers N (or num_workers) trains with Ray Train.",
    )
    p.add_argument("config", help="captioner YAML (model/configs/captioner-tiny.yaml, captioner-internvl*.yaml)")
    p.add_argument("--data", required=True, help="export folder (or its captioner.jsonl)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, help="override the config's steps")
    p.add_argument("--workers", type=int, help="Ray Train workers (>1 trains data-parallel)")
    p.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    p.add_argument("--strategy", choices=["ddp", "fsdp"])
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    p.add_argument("--address", help="Ray cluster address (Ray Train or --submit)")
    p.add_argument("--submit", action="store_true", help="submit as a Ray job (absolute --data/--out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.captioner.config import load_config

    cfg = load_config(args.config, {"steps": args.steps, "num_workers": args.workers, "strategy": args.strategy,
                                    "use_gpu": True if args.gpu else None})
    if args.submit:
        from acedata.captioner.submit import submit

        job = submit(cfg.model_dump(mode="json"), args.data, args.out, args.address, evaluate=not args.no_eval)
        print(f"submitted captioner training job {job}")
        return 0
    args.out = storage.absolute(args.out)  # a local path or a URI (s3://...): checkpoints and eval go through it
    from acedata.captioner.train import latest_checkpoint, train_local, train_ray

    if cfg.num_workers > 1 or args.address:
        metrics = train_ray(cfg, args.data, args.out, address=args.address)
        print(f"trained with Ray Train ({cfg.num_workers} workers, {cfg.strategy}): {metrics}")
    else:
        trainer = train_local(cfg, args.data, args.out, resume=not args.no_resume)
        print(f"trained to step {trainer.step}; checkpoints in {storage.join(args.out, 'checkpoints')}")
    if not args.no_eval and cfg.data.eval_fraction > 0:
        from acedata.captioner.evaluate import evaluate_run

        results = evaluate_run(args.out, args.data)
        last = results[-1]
        print(f"held-out ({last['records']} records) at {last['checkpoint']}: "
              + ", ".join(f"{k}={last[k]:.3f}" for k in ("indicator_valid", "exact_match", "edit_distance",
                                                         "bleu", "rouge_l", "minilm_similarity"))
              + f"; table {storage.join(args.out, 'eval', 'metrics.csv')}")
    print(f"newest checkpoint: {latest_checkpoint(args.out)}")
    return 0
