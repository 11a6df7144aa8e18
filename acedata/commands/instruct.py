"""`acedata instruct RUN_DIR`: give every pair in a run an instruction (templates, LLM, MLLM)."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "instruct",
        help="label every pair of a run with instructions (templates; LLM rewrites / MLLM when served)",
        description="Reads every pairs and images table under RUN_DIR and writes RUN_DIR/<name>/instructions "
        "and RUN_DIR/<name>/quarantine. With no endpoint given it uses templates only. Endpoints are "
        "OpenAI-compatible servers such as `vllm serve` (give the URL ending in /v1).",
    )
    p.add_argument("run_dir", help="a run directory holding pairs tables (and images tables)")
    p.add_argument("--name", default="instruct", help="stage folder to write (default: instruct)")
    p.add_argument("--config", help="YAML file with instruct stage settings (same keys as in a pipeline spec)")
    p.add_argument("--llm-url", help="LLM endpoint for rewrites and natural-pair instructions")
    p.add_argument("--llm-model", help="served LLM model name")
    p.add_argument("--mllm-url", help="MLLM endpoint (InternVL2) for natural pairs and image captions")
    p.add_argument("--mllm-model", help="served MLLM model name")
    p.add_argument("--natural-mode", choices=["mllm_llm", "captioner", "template"])
    p.add_argument("-k", "--rewrites", type=int, help="accepted LLM rewrites per template instruction")
    p.add_argument("--seed", type=int)
    from acedata.commands._common import add_run_options

    add_run_options(p, "local")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    import yaml

    from acedata.config import validate_model
    from acedata.errors import UserError
    from acedata.stages.instruct import InstructConfig

    data: dict = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise UserError(f"config file {args.config!r} not found") from None
        if not isinstance(data, dict):
            raise UserError(f"{args.config}: expected a mapping of instruct settings")
    for flag, key in ((args.llm_url, "llm"), (args.mllm_url, "mllm")):
        if bool(flag) != bool(getattr(args, f"{key}_model")):
            raise UserError(f"give both --{key}-url and --{key}-model")
    if args.llm_url:
        data["llm"] = {**data.get("llm", {}), "base_url": args.llm_url, "model": args.llm_model}
    if args.mllm_url:
        m = data.get("mllm", {})
        data["mllm"] = {**m, "endpoint": {**m.get("endpoint", {}), "base_url": args.mllm_url,
                                          "model": args.mllm_model}}
    if args.natural_mode:
        data["natural_mode"] = args.natural_mode
    if args.rewrites is not None:
        data.setdefault("rewrite", {})["k"] = args.rewrites
    if args.seed is not None:
        data["seed"] = args.seed
    data["name"] = args.name
    return validate_model(InstructConfig, data, args.config or "instruct")


def run(args: argparse.Namespace) -> int:
    import posixpath

    from acedata import ids, run_settings, runtime, storage
    from acedata.commands._common import print_run
    from acedata.errors import UserError
    from acedata.instruct.export import find_tables
    from acedata.pipeline import _prepare_stage_dir, _write_marker, load_stages
    from acedata.resume import stage_key
    from acedata.stage import RunContext
    from acedata.stages.instruct import Instruct

    cfg = build_config(args)
    load_stages()
    args.run_dir = storage.absolute(args.run_dir)
    own = posixpath.join(args.run_dir, args.name)
    pairs = [t for t in find_tables(args.run_dir, "pairs") if not t.startswith(own + "/")]
    images = [t for t in find_tables(args.run_dir, "images") if not t.startswith(own + "/")]
    if not pairs:
        raise UserError(f"no pairs tables under {args.run_dir} (run the pair / synthesis stages first)")
    stage_dir = posixpath.join(args.run_dir, args.name)
    # the run's own scheme, as `acedata run` gives its stages (never silently the default)
    scheme = run_settings.table_scheme(pairs[0]) or ids.DEFAULT
    stage = Instruct(cfg, RunContext(args.run_dir, stage_dir, {"pairs": pairs, "images": images}, scheme))
    digest = stage_key(stage)  # config, code version and input content, as in `acedata run`
    if args.executor == "ray":
        runtime.init_ray(args.address)
    _prepare_stage_dir(stage_dir, digest)
    summary = runtime.run_stage(stage, args.executor)
    _write_marker(stage_dir, digest, summary)
    print_run({"name": "instruct", "out": args.run_dir, "seconds": summary["seconds"],
               "stages": [{"name": args.name, **summary}]}, args.json)
    if not args.json:
        c = summary["counts"]
        print(f"mode: {summary['mode']}")
        print(f"pairs {c.get('pairs_in', 0)} = with instruction {c.get('pairs_with_instruction', 0)}"
              f" + quarantined {c.get('quarantine', 0)}; instruction rows {c.get('instructions', 0)}")
    return 0
