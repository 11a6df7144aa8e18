"""The dataset card: `README.md` in an LCU dataset folder.

It opens with Hugging Face YAML (`configs` listing the train/validation Parquet files, so
`datasets.load_dataset(FOLDER)` finds the splits) and records what a user of the data needs:
the schema, counts per task/subtask and split, the provenance of every stage of the run, the
models used (random-init ones flagged), the filter thresholds found in pair provenance and the
quarantine totals. Everything comes from metadata columns and run markers, never image bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

import polars as pl
from pydantic import BaseModel

from acedata import shards, storage
from acedata.schemas import LCU, SCHEMA_VERSION
from acedata.stats import run_tables, stage_summaries

SPLIT_TABLES = {"train": "lcu", "validation": "lcu_validation"}
# Config keys that decide what a stage keeps (matched anywhere in a dotted key).
THRESHOLD_HINTS = ("filter", "threshold", "tau", "pass2", "guard", "min_", "max_aspect", "max_pixels", "band",
                   "_low", "_high", "min_score", "ssim", "clip", "dino")


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(f"{r.get(c):,}" if isinstance(r.get(c), int) else str(r.get(c)) for c in cols) + " |"
            for r in rows]
    return "\n".join(out)


def _files(dirs: list[str]) -> list[str]:
    return [f for d in dirs for f in shards.list_shards(d)]


def _walk(obj: Any, keys: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(key, value) for every key in `keys` found anywhere inside a JSON value."""
    found: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys:
                found.append((k, v))
            found.extend(_walk(v, keys))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(_walk(v, keys))
    return found


def _provenance(values: list[str | None]) -> list[Any]:
    out = []
    for v in values:
        if v:
            try:
                out.append(json.loads(v))
            except ValueError:
                continue
    return out


def models_used(tables: dict[str, list[str]]) -> Counter:
    """Model ids from instruction/embedding `model` columns and `model` keys of pair provenance."""
    found: Counter = Counter()
    for name in ("instructions", "embeddings"):
        files = _files(tables.get(name, []))
        if files:
            df = storage.scan_parquet(files).select("model").drop_nulls().group_by("model").len().collect()
            found.update({m: int(n) for m, n in df.iter_rows()})
    pair_files = _files(tables.get("pairs", []))
    if pair_files:
        # only the distinct provenance texts that name a model are parsed (per-pair texts differ by seed/params)
        prov = (storage.scan_parquet(pair_files).select("provenance")
                .filter(pl.col("provenance").str.contains('"model', literal=True)).unique()
                .collect().to_series().to_list())
        for p in _provenance(prov):
            for _, v in _walk(p, ("model", "models")):
                for m in v if isinstance(v, list) else [v]:
                    if isinstance(m, str):
                        found[m] += 1
    return found


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict) and obj:
        return [kv for k, v in obj.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix[:-1], obj)]


def config_thresholds(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """Settings of a stage config that decide what is kept: filters, bands, bounds, guards."""
    out = []
    for key, value in _flatten({k: v for k, v in config.items() if k not in ("resources", "inputs", "name")}):
        if value is not None and any(h in key for h in THRESHOLD_HINTS):
            out.append((key, value))
    return out


def config_models(config: dict[str, Any]) -> list[str]:
    """Model ids named in a stage config (ModelSpec-like dicts and endpoint `model` keys)."""
    found = []

    def visit(obj: Any) -> None:
        if isinstance(obj, dict):
            if isinstance(obj.get("name"), str) and ("random_init" in obj or "path" in obj):
                where = "random-init" if obj.get("random_init") else (obj.get("path") or "hf-cache")
                found.append(f"{obj['name']}@{where}")
            elif isinstance(obj.get("model"), str):
                found.append(obj["model"])
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    visit(config)
    return found


def provenance_thresholds(tables: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Threshold settings pair producers wrote into provenance (`tau`, `pass2`, `filters` ...)."""
    pair_files = _files(tables.get("pairs", []))
    if not pair_files:
        return []
    hint = '"[^"]*(' + "|".join(THRESHOLD_HINTS) + ')[^"]*":'
    df = (storage.scan_parquet(pair_files).select("task", "provenance")
          .filter(pl.col("provenance").str.contains(hint)).unique().collect())
    seen: set[tuple[str, str]] = set()
    for task, prov in df.iter_rows():
        for p in _provenance([prov]):
            if isinstance(p, dict):
                picked = {k: v for k, v in p.items() if any(h in k for h in THRESHOLD_HINTS) and v is not None}
                if picked:
                    seen.add((task, json.dumps(picked, sort_keys=True)))
    return [{"task": t, "settings": j} for t, j in sorted(seen)]


def _split_counts(folder: str) -> tuple[list[dict[str, Any]], dict[str, int], list[dict[str, Any]]]:
    per: dict[tuple[str, str], dict[str, int]] = {}
    rows: dict[str, int] = {}
    turns: Counter = Counter()
    for split, t in SPLIT_TABLES.items():
        path = storage.join(folder, t)
        files = _files([path]) if storage.is_dir(path) else []
        rows[split] = sum(shards.open_parquet(f).metadata.num_rows for f in files)
        if not files:
            continue
        lf = storage.scan_parquet(files)
        for task, subtask, n in lf.group_by("task", "subtask").len().collect().iter_rows():
            per.setdefault((task, subtask), {})[split] = int(n)
        for k, n in lf.group_by("num_turns").len().collect().iter_rows():
            turns[int(k)] += int(n)
    total = sum(rows.values()) or 1
    groups = [
        {"task": t, "subtask": s, "train": c.get("train", 0), "validation": c.get("validation", 0),
         "share": f"{100 * sum(c.values()) / total:.1f}%"}
        for (t, s), c in sorted(per.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    ]
    turn_rows = [{"num_turns": k, "count": n, "share": f"{100 * n / total:.1f}%"} for k, n in sorted(turns.items())]
    return groups, rows, turn_rows


def review_section(folder: str, counts: dict[str, Any]) -> list[str]:
    """Human review totals: pairs reviewed/accepted/corrected/rejected and rows carrying reviewed text."""
    if not counts.get("reviewed_pairs"):
        return []
    by_method: Counter = Counter()
    for t in SPLIT_TABLES.values():
        path = storage.join(folder, t)
        files = _files([path]) if storage.is_dir(path) else []
        if files:
            df = storage.scan_parquet(files).group_by("instruction_method").len().collect()
            by_method.update({m: int(n) for m, n in df.iter_rows() if m})
    reasons: list[dict[str, Any]] = []
    q = storage.join(folder, "quarantine")
    q_files = _files([q]) if storage.is_dir(q) else []
    if q_files:
        reasons = (storage.scan_parquet(q_files).filter(pl.col("reason").str.starts_with("review_"))
                   .group_by("reason", "detail").len("pairs").sort("reason", "detail").collect().to_dicts())
    lines = [
        "## Human review",
        "",
        (f"Pairs reviewed {counts['reviewed_pairs']:,}: accepted {counts.get('review_accepted', 0):,}, "
         f"corrected {counts.get('review_corrected', 0):,}, rejected {counts.get('review_rejected', 0):,} "
         f"(left the dataset; see below). Pairs whose overlapping reviewers disagreed: "
         f"{counts.get('review_conflicts', 0):,} (the latest decision was used)."),
        "",
        (f"Rows whose current instruction was reviewed: accepted (`human_accept`) {by_method['human_accept']:,}, "
         f"corrected (`human_edit`) {by_method['human_edit']:,}; every other row carries a machine instruction."),
        "",
    ]
    if reasons:
        lines += [table(reasons, ["reason", "detail", "pairs"]), ""]
    return lines


def _header(rows: dict[str, int], random_init: list[str], counts: dict[str, Any] | None) -> list[str]:
    """The Hugging Face YAML front matter (splits), the title line and the warnings."""
    data_files = [f"  - split: {s}\n    path: {t}/*.parquet" for s, t in SPLIT_TABLES.items() if rows.get(s)]
    lines = [
        "---",
        "pretty_name: acedata LCU instruction-editing dataset",
        "task_categories:\n- image-to-image\n- text-to-image",
        "configs:\n- config_name: default\n  data_files:\n" + "\n".join(data_files) if data_files else "",
        "---",
        "",
        "# LCU training dataset",
        "",
        (f"Long-context Condition Units assembled by `acedata` (schema version {SCHEMA_VERSION}) on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}. "
        f"Rows: train {rows.get('train', 0):,}, validation {rows.get('validation', 0):,}."),
        "",
    ]
    if random_init:
        lines += [
            "> **Warning:** some stages ran randomly-initialised models (" + ", ".join(f"`{m}`" for m in random_init)
            + "). Their outputs test the pipeline only; do not train a real model on them.",
            "",
        ]
    if counts:
        keys = ("single_turn", "multi_turn", "t2i", "pairs_in", "pairs_labelled", "quarantine")
        lines += ["Assembly: " + ", ".join(f"{k} {counts[k]:,}" for k in keys if k in counts) + ".", ""]
    return lines


def _contents(folder: str, groups: list[dict[str, Any]], turns: list[dict[str, Any]]) -> list[str]:
    """How to load it, counts per task and turns, the schema."""
    return [
        "## Loading",
        "",
        "```python",
        "import datasets, polars as pl",
        f"ds = datasets.load_dataset({folder!r})  # splits from the YAML above; images decode to PIL",
        "meta = storage.scan_parquet('lcu/*.parquet').select('task', 'subtask', 'instruction')  # no image bytes read",
        "```",
        "",
        ("`datasets` caches a loaded folder and can answer a later load of another folder from that "
         "entry; after a re-assemble, or with several runs, pass `download_mode='force_redownload'` "
         "or a `cache_dir` of the folder's own."),
        "",
        ("Image indicators: condition frames are the history CUs' inputs (oldest first) then the current "
        "inputs; condition frame k is written `{image}` (k = 1) or `{image<k-1>}`, the target is index N."),
        "",
        "## Counts per task and subtask",
        "",
        table(groups, ["task", "subtask", "train", "validation", "share"]) if groups else "  (no rows)",
        "",
        "Turns per sample:",
        "",
        table(turns, ["num_turns", "count", "share"]) if turns else "  (no rows)",
        "",
        "## Schema",
        "",
        "| column | type |",
        "|---|---|",
        *[f"| `{f.name}` | `{f.type}` |" for f in LCU],
        "",
    ]


def _provenance_section(summaries: list[dict[str, Any]], config: BaseModel | None) -> list[str]:
    lines = ["## Provenance per stage", ""]
    if summaries:
        lines += ["| stage | kind | seconds | counts |", "|---|---|---|---|"]
        for s in summaries:
            c = ", ".join(f"{k}={v}" for k, v in sorted(s.get("counts", {}).items()))
            lines.append(f"| {s['name']} | {s.get('stage', '')} | {s.get('seconds', '')} | {c} |")
        configs = [(s["name"], s["config"]) for s in summaries if s.get("config")]
        if configs:
            lines += ["", "<details><summary>stage configs</summary>", ""]
            lines += [f"- `{name}`: `{json.dumps(cfg, sort_keys=True)}`" for name, cfg in configs]
            lines += ["", "</details>"]
    else:
        lines.append("(no run markers found next to this dataset)")
    if config is not None:
        lines += ["", f"Assembly config: `{json.dumps(config.model_dump(mode='json'), sort_keys=True)}`"]
    return lines


def _models_section(models: Counter, random_init: list[str]) -> list[str]:
    lines = ["", "## Models used", ""]
    if models:
        lines += ["| model | rows | random-init |", "|---|---|---|"]
        lines += [f"| `{m}` | {n:,} | {'yes' if m in random_init else ''} |" if n else
                  f"| `{m}` | (named in a stage config) | {'yes' if m in random_init else ''} |"
                  for m, n in models.most_common()]
    else:
        lines.append("(no model recorded: every stage was algorithmic)")
    return lines


def _thresholds_section(summaries: list[dict[str, Any]], tables: dict[str, list[str]]) -> list[str]:
    lines = ["", "## Filter thresholds", ""]
    rows = [(s["name"], k, v) for s in summaries if s.get("config") for k, v in config_thresholds(s["config"])]
    if rows:
        lines += ["| stage | setting | value |", "|---|---|---|"]
        lines += [f"| {n} | `{k}` | `{json.dumps(v)}` |" for n, k, v in rows]
    found = provenance_thresholds(tables)
    if found:
        lines += ["", "Recorded in pair provenance:", "", "| task | settings |", "|---|---|"]
        lines += [f"| {t['task']} | `{t['settings']}` |" for t in found]
    if not rows and not found:
        lines.append("(no filter settings recorded in stage configs or pair provenance)")
    return lines


def _quarantine_and_files(tables: dict[str, list[str]]) -> list[str]:
    lines = []
    q_files = _files(tables.get("quarantine", []))
    if q_files:
        df = storage.scan_parquet(q_files).group_by("stage", "reason").len("count").sort("stage", "reason").collect()
        lines += ["", "## Quarantined inputs", "", table(df.to_dicts(), ["stage", "reason", "count"])]
    lines += ["", "## Files", "", ("Shards are zstd Parquet with image bytes inline, listed with rows, bytes and sha256 "
              "in each table's `_manifest.json`; `acedata validate` checks them. Reading the shards in manifest "
              "order gives the seeded shuffle.")]
    return lines


def write_card(folder: str, run_dir: str | None, config: BaseModel | None = None,
               counts: dict[str, Any] | None = None) -> str:
    """Write `FOLDER/README.md` for the LCU tables under FOLDER; returns its path."""
    groups, rows, turns = _split_counts(folder)
    tables = run_tables(run_dir) if run_dir and storage.is_dir(run_dir) else {}
    summaries = stage_summaries(run_dir) if run_dir and storage.is_dir(run_dir) else []
    models = models_used(tables)
    for s in summaries:
        for m in config_models(s.get("config") or {}):
            models.setdefault(m, 0)
    random_init = sorted(m for m in models if "random-init" in m or "random_init" in m)
    lines = _header(rows, random_init, counts) + review_section(folder, counts or {}) + _contents(folder, groups, turns)
    lines += _provenance_section(summaries, config) + _models_section(models, random_init)
    lines += _thresholds_section(summaries, tables) + _quarantine_and_files(tables)
    fs, d = shards.resolve(folder)
    path = f"{d}/README.md"
    shards.write_bytes_atomic(fs, path, ("\n".join(lines) + "\n").encode())
    return path
