"""`acedata plan-cost SPEC --images N`: what a run of N images costs on a stated cluster."""

from __future__ import annotations

import argparse
import json
import os

import acedata

# bench/scale.py's result on the development machine, shipped with the package (see README)
DEFAULT_MEASUREMENTS = os.path.join(os.path.dirname(acedata.__file__), "scale_measurements.json")


def _count(text: str) -> int:
    from acedata.errors import UserError

    try:
        n = int(float(text.replace("_", "")))
    except ValueError:
        raise UserError(f"--images {text!r} is not a number (e.g. 1e9)") from None
    if n <= 0:
        raise UserError("--images must be positive")
    return n


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan-cost",
        help="price a pipeline run of N images: CPU core-hours, GPU-hours, storage, wall time",
        description="Scale the per-image costs bench/scale.py measured (CPU seconds, bytes written per "
        "table) to N images, add GPU-hours of the production models from their FLOPs (estimates), and "
        "give wall time on a cluster of NODESxCORESxGPUS.",
    )
    p.add_argument("spec", help="pipeline spec (YAML); its stages are priced")
    p.add_argument("--images", required=True, help="source images, e.g. 1e9")
    p.add_argument("--cluster", default="64x32x8", help="NODESxCORESxGPUS per node (default 64x32x8)")
    p.add_argument("--gpus", type=int, help="GPUs per node (overrides the third number of --cluster)")
    p.add_argument("--gpu", default="H100", help="H100 | H200 | A100 | B200 (bf16 peak used for estimates)")
    p.add_argument("--utilisation", type=float, default=0.7, help="share of the cluster a stage keeps busy")
    p.add_argument("--rewrites", type=int, default=2, help="LLM rewrites per synthetic pair (0: templates only)")
    p.add_argument("--dit-share", type=float, default=0.3,
                   help="share of synthetic pairs made by a diffusion (DiT) editor rather than an algorithm")
    p.add_argument("--dit-steps", type=int, default=28)
    p.add_argument("--natural-per-image", type=float,
                   help="natural (mined) pairs per source image for GPU pricing (default: measured)")
    p.add_argument("--synthetic-per-image", type=float,
                   help="synthetic pairs per source image for GPU pricing (default: measured)")
    p.add_argument("--no-gpu-models", action="store_true", help="price only what was measured (no GPU estimates)")
    p.add_argument("--measurements", default=DEFAULT_MEASUREMENTS, help="bench/scale.py result JSON")
    p.add_argument("--check", action="store_true",
                   help="also predict each family's largest measured run from the smaller ones (predicted/measured)")
    p.add_argument("--check-at", action="append", metavar="KIND=N", default=[],
                   help="with --check: the run to predict, e.g. images=100000 (default: the largest of each kind)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _cluster(args: argparse.Namespace):
    from acedata.costmodel import GPU_PEAK, Cluster
    from acedata.errors import UserError

    try:
        nodes, cores, gpus = (int(x) for x in args.cluster.lower().split("x"))
    except ValueError:
        raise UserError(f"--cluster {args.cluster!r}: expected NODESxCORESxGPUS, e.g. 64x32x8") from None
    gpus = gpus if args.gpus is None else args.gpus
    if nodes < 1 or cores < 1 or gpus < 0:
        raise UserError(f"--cluster {args.cluster!r}: nodes and cores must be >= 1, GPUs >= 0")
    if args.gpu not in GPU_PEAK:
        raise UserError(f"--gpu {args.gpu!r}: known {', '.join(GPU_PEAK)}")
    if not 0 < args.utilisation <= 1:
        raise UserError("--utilisation must be in (0, 1]")
    return Cluster(nodes, cores, gpus, args.gpu, args.utilisation)


def _check_at(items: list[str]) -> dict[str, int] | None:
    from acedata.errors import UserError

    out = {}
    for item in items:
        kind, _, n = item.partition("=")
        if kind not in ("images", "meta") or not n:
            raise UserError(f"--check-at {item!r}: expected images=N or meta=N")
        out[kind] = _count(n)
    return out or None


def run(args: argparse.Namespace) -> int:
    from acedata import costmodel
    from acedata.errors import UserError
    from acedata.pipeline import load_spec, stage_kind

    n = _count(args.images)
    cluster = _cluster(args)
    if not 0 <= args.dit_share <= 1:
        raise UserError("--dit-share must be in [0, 1]")
    _, configs = load_spec(args.spec, {"out": "/plan-cost"})
    stages = list(dict.fromkeys(stage_kind(c) for c in configs))
    body = costmodel.load(args.measurements)
    models = None if args.no_gpu_models else costmodel.gpu_models(args.rewrites, args.dit_share, args.dit_steps)
    override = {k: v for k, v in (("natural_pair", args.natural_per_image),
                                   ("synthetic_pair", args.synthetic_per_image)) if v is not None}
    if any(v < 0 for v in override.values()):
        raise UserError("pairs per image must be >= 0")
    rows, per = costmodel.price(stages, n, body, cluster, models, override)
    checks = []
    if args.check or args.check_at:
        checks = costmodel.check(body, _check_at(args.check_at)) + costmodel.check_incomplete(body)
    if args.json:
        print(json.dumps({"images": n, "cluster": cluster.__dict__, "per_image": per,
                          "rows": [r.__dict__ for r in rows], "check": checks}, indent=1))
        return 0
    host = body.get("host", "?")
    print(f"{n:,} images on {cluster.describe()}")
    print(f"per-image costs measured on {host} (bench/scale.py; CPU seconds, loaded shared machine); "
          f"GPU-hours are FLOP estimates")
    print(f"per image: {per['natural_pair']:.3f} natural pairs, {per['synthetic_pair']:.2f} synthetic pairs, "
          f"{per['lcu_rows']:.2f} LCU rows  ->  {per['natural_pair'] * n:,.0f} + {per['synthetic_pair'] * n:,.0f} pairs")
    print("\n".join(costmodel.table(rows)))
    print_checks(checks)
    return 0


def print_checks(checks: list[dict]) -> None:
    """Predicted vs measured CPU seconds per stage and in total, for each check of `costmodel.check`."""
    for c in checks:
        sizes = " and ".join(f"{x:,}" for x in c["from_n"])
        q = c["ratio"]
        verdict = "no CPU measured" if q is None else f"predicted/measured {q:.2f}, " + (
            "within 25%" if abs(q - 1) <= 0.25 else "MISSES the 25% goal")
        what = "the finished stages of the unfinished run" if c.get("incomplete") else "the run"
        print(f"\ncheck ({c['kind']}, {c['model']}): costs at n={sizes} predict {what} at n={c['to_n']:,}: "
              f"{c['predicted_cpu_s']:.1f} CPU s vs {c['measured_cpu_s']:.1f} measured ({verdict})")
        for s, v in c["stages"].items():
            q = f"{v['ratio']:.2f}" if v["ratio"] is not None else "-"
            share = v.get("measured_share", 1.0)
            note = f"  (running: per item over {share:.0%} of its units x n, upper bound; not in the total)" \
                if share < 1 else ""
            print(f"  {s:<12} predicted {v['predicted_cpu_s']:9.1f}  measured {v['measured_cpu_s']:9.1f}  "
                  f"predicted/measured {q}{note}")
