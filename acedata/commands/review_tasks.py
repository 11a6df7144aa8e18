"""`acedata review-tasks export|import`: review a run in Label Studio instead of the built-in tool."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review-tasks",
        help="export review tasks to Label Studio and import its annotations into the run's reviews table",
        description="Interop with Label Studio's JSON task/annotation format. `export` writes one task per pair "
        "(images, task/subtask, instruction candidates) and a labeling config XML; `import` reads a project's JSON "
        "export back into RUN/review/reviews (origin label_studio), which assemble and export-captioner then use.",
    )
    sp = p.add_subparsers(dest="action", metavar="ACTION")
    e = sp.add_parser("export", help="write Label Studio tasks + labeling config for the run's pairs",
                      description="Writes OUT (a JSON list of tasks) and OUT minus .json plus .label_config.xml "
                      "(paste it into the project's Labeling Interface). With --images files (default) the images "
                      "go to images/ next to OUT and are referenced through --url-prefix; for Label Studio's "
                      "local-files storage set LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                      "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to OUT's folder.")
    e.add_argument("run_dir", help="run directory with pairs, instructions and images tables")
    e.add_argument("--out", required=True, help="tasks file to write (JSON)")
    e.add_argument("--images", choices=["files", "data-uri"], default="files",
                   help="image files next to the tasks (default) or inline data URIs (self-contained, larger)")
    e.add_argument("--url-prefix", default=None,
                   help="prefix of image URLs with --images files (default: /data/local-files/?d=)")
    e.add_argument("--task", nargs="+", dest="tasks", help="only pairs of these tasks")
    e.add_argument("--unreviewed", action="store_true", help="only pairs with no review yet")
    e.add_argument("--limit", type=int, help="at most this many tasks")
    e.add_argument("--json", action="store_true", help="print counts as JSON")
    e.set_defaults(func=run_export)
    i = sp.add_parser("import", help="read a Label Studio JSON export into the run's reviews table",
                      description="Reads a Label Studio JSON export (Export -> JSON) of tasks made by `review-tasks "
                      "export`: per annotation, a reject reason becomes a reject, a corrected text an edit, a picked "
                      "candidate an accept. Cancelled or empty annotations, unknown pairs and annotations already "
                      "imported are counted and skipped.")
    i.add_argument("run_dir", help="run directory whose pairs were exported")
    i.add_argument("--from", dest="src", required=True, help="the Label Studio JSON export file")
    i.add_argument("--json", action="store_true", help="print counts as JSON")
    i.set_defaults(func=run_import)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_export(args: argparse.Namespace) -> int:
    import json

    from acedata.review.labelstudio import DEFAULT_URL_PREFIX, export_tasks

    res = export_tasks(args.run_dir, args.out, images=args.images, url_prefix=args.url_prefix or DEFAULT_URL_PREFIX,
                       tasks_filter=args.tasks, limit=args.limit, unreviewed_only=args.unreviewed)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['tasks']} tasks -> {res['tasks_file']}; labeling config -> {res['label_config']}"
              + (f"; {res['skipped_missing_image']} pairs skipped (image missing)" if res["skipped_missing_image"] else ""))
    return 0


def run_import(args: argparse.Namespace) -> int:
    import json

    from acedata.errors import UserError
    from acedata.instruct.export import _iter_rows, find_tables
    from acedata.review.labelstudio import import_annotations
    from acedata.review.table import reviews_dir

    tables = find_tables(args.run_dir, "pairs")
    if not tables:
        raise UserError(f"no pairs tables under {args.run_dir}; import into the run the tasks were exported from")
    known = {r["pair_id"]: 1 + len(r["extra_input_ids"] or [])
             for r in _iter_rows(tables, ["pair_id", "extra_input_ids"])}
    counts = import_annotations(args.run_dir, args.src, known)
    if args.json:
        print(json.dumps(counts))
    else:
        rest = ", ".join(f"{k} {v}" for k, v in counts.items() if v and k not in ("tasks", "annotations", "imported"))
        print(f"{counts['imported']} reviews imported from {counts['annotations']} annotations of {counts['tasks']} "
              f"tasks -> {reviews_dir(args.run_dir)}" + (f" ({rest})" if rest else ""))
    return 0
