"""PNG charts of `acedata stats` results (matplotlib, headless Agg backend)."""

from __future__ import annotations

import io
import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
logging.getLogger("matplotlib").setLevel(logging.WARNING)
import matplotlib.pyplot as plt  # the backend is chosen first

from acedata import storage


def _save(fig: plt.Figure, out_dir: str, name: str) -> str:
    path = storage.join(out_dir, name)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    storage.write_bytes(path, buf.getvalue())
    plt.close(fig)
    return path


def _bar(labels: list[str], counts: list[int], title: str, xlabel: str, horizontal: bool = False) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(labels) + 1.5) if horizontal else 4))
    if horizontal:
        bars = ax.barh(labels[::-1], counts[::-1], color="#4c72b0")
        ax.set_xlabel("rows")
    else:
        bars = ax.bar(labels, counts, color="#4c72b0")
        ax.set_ylabel("rows")
        ax.set_xlabel(xlabel)
        ax.tick_params(axis="x", labelrotation=30)
    ax.bar_label(bars, labels=[f"{c:,}" for c in (counts[::-1] if horizontal else counts)], padding=2, fontsize=8)
    ax.margins(x=0.08) if horizontal else ax.margins(y=0.08)
    ax.set_title(title)
    return fig


def _hist(bins: list[dict[str, Any]], title: str, xlabel: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    lefts = [b["lo"] for b in bins]
    widths = [b["hi"] - b["lo"] for b in bins]
    ax.bar(lefts, [b["count"] for b in bins], width=widths, align="edge", color="#55a868", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return fig


def write_plots(res: dict[str, Any], out_dir: str) -> list[str]:
    """Write one PNG per chart that has data; returns the paths."""
    out_dir = storage.absolute(out_dir)
    paths: list[str] = []
    if res.get("rows"):
        by = res["by"]
        groups = res["groups"][:40]
        labels = ["/".join(str(g[c]) for c in by) for g in groups]
        paths.append(_save(_bar(labels, [g["count"] for g in groups], f"samples by {', '.join(by)}", "", True),
                           out_dir, "distribution.png"))
        tasks: dict[str, int] = {}
        for g in res["groups"]:
            key = str(g["task"]) if "task" in g else "/".join(str(g[c]) for c in by)
            tasks[key] = tasks.get(key, 0) + g["count"]
        fig, ax = plt.subplots(figsize=(8, 5.5))
        order = sorted(tasks, key=lambda k: -tasks[k])
        total = sum(tasks.values())
        wedges, _t, _a = ax.pie([tasks[k] for k in order], startangle=90, counterclock=False,
                                autopct=lambda pct: f"{pct:.1f}%" if pct >= 4 else "", pctdistance=0.75)
        ax.legend(wedges, [f"{k} ({100 * tasks[k] / total:.1f}%)" for k in order], loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_title("share of samples per task")
        paths.append(_save(fig, out_dir, "tasks_pie.png"))
        t = res["turns"]
        paths.append(_save(_bar([str(x["num_turns"]) for x in t], [x["count"] for x in t], "turns per sample",
                                "turns (history CUs + 1)"), out_dir, "turns.png"))
        a = res["aspect"]["bins"]
        paths.append(_save(_bar([b["bin"] for b in a], [b["count"] for b in a], "target aspect ratio (w:h)", "aspect"),
                           out_dir, "aspect.png"))
        sizes = res["resolution"]["top_sizes"]
        paths.append(_save(_bar([f"{s['width']}x{s['height']}" for s in sizes], [s["count"] for s in sizes],
                                "most common target resolutions", "", True), out_dir, "resolutions.png"))
        h = res.get("histograms", {})
        if h.get("megapixels"):
            paths.append(_save(_hist(h["megapixels"], "target megapixels", "megapixels"), out_dir, "megapixels.png"))
        if h.get("instruction_chars"):
            paths.append(_save(_hist(h["instruction_chars"], "instruction length", "characters"), out_dir,
                               "instruction_length.png"))
        for name, bins in h.get("scores", {}).items():
            if bins:
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
                paths.append(_save(_hist(bins, f"score: {name}", name), out_dir, f"score_{safe}.png"))
    f = res.get("funnel")
    if f:
        steps = f["steps"]
        paths.append(_save(_bar([s["step"] for s in steps], [s["count"] for s in steps], "stage funnel of the run", "",
                                True), out_dir, "funnel.png"))
        if f["quarantined"]:
            q = f["quarantined"]
            paths.append(_save(_bar([f"{x['stage']}:{x['reason']}" for x in q], [x["count"] for x in q],
                                    "quarantined by stage and reason", "", True), out_dir, "quarantine.png"))
    return paths
