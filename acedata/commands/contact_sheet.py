"""`acedata contact-sheet RUN_DIR`: PNG contact sheets of sample pairs, one per task family."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "contact-sheet",
        help="draw sample pairs of a run as PNG contact sheets, one per task family",
        description="Reads the pairs and images tables of a run directory and writes "
        "OUT/<family>.png: each row one pair (inputs, mask, target), titled by subtask, with its "
        "instruction (each turn, for a multi-turn chain) when the run has an instructions table.",
    )
    p.add_argument("run_dir", help="a run directory (holding _run.json or stage folders with pairs tables)")
    p.add_argument("--out", help="output folder (default RUN_DIR/contact_sheets)")
    p.add_argument("--per-family", type=int, default=8, help="pairs per sheet (default 8)")
    p.add_argument("--cell", type=int, default=128, help="thumbnail size in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="which pairs are sampled")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata import storage
    from acedata.errors import UserError
    from acedata.synth.support.contact_sheet import write_contact_sheets

    if not storage.is_dir(args.run_dir):
        raise UserError(f"{args.run_dir}: no such run directory")
    if args.per_family < 1 or args.cell < 16:
        raise UserError("--per-family must be >= 1 and --cell >= 16")
    for path in write_contact_sheets(args.run_dir, args.out, args.per_family, args.cell, args.seed):
        print(path)
    return 0
