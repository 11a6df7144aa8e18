"""`acedata stats` as text: aligned tables and the readable report."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if v[:1].isdigit() else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join("  " + line for line in lines)


def render(res: dict[str, Any]) -> str:
    """The readable report a person reads."""
    out = [f"dataset {res['dataset']}: {res.get('rows', 0):,} rows"
           + (f" where {' and '.join(res['where'])}" if res["where"] else "")]
    if res.get("rows"):
        out += ["", f"samples by {', '.join(res['by'])}:",
                table([{**g, "share": f"{g['share'] * 100:.1f}%"} for g in res["groups"]], [*res["by"], "count", "share"])]
        out += ["", "turns per sample:",
                table([{**t, "share": f"{t['share'] * 100:.1f}%"} for t in res["turns"]], ["num_turns", "count", "share"])]
        r = res["resolution"]
        qs = ["min", "p5", "p50", "mean", "p95", "max"]
        out += ["", "target resolution and aspect (width / height):",
                table([{"": k, **r[k]} for k in ("width", "height", "megapixels")] + [{"": "aspect", **res["aspect"]["ratio"]}],
                      ["", *qs])]
        out += ["  aspect bins: " + ", ".join(f"{b['bin']} {b['count']:,}" for b in res["aspect"]["bins"] if b["count"])]
        i = res["instructions"]
        approx = res.get("approximate", {})
        hll = approx.get("instructions.distinct")
        distinct = (f"~{i['distinct']:,} distinct ({i['distinct_ratio'] * 100:.1f}% of rows; approximate: "
                    f"HyperLogLog, {hll['std_error'] * 100:.2g}% standard error)") if hll else \
            f"{i['distinct']:,} distinct ({i['distinct_ratio'] * 100:.1f}% of rows)"
        out += ["", f"instructions: {distinct}",
                table([{"": "chars", **i["chars"]}], ["", *qs]),
                "  methods: " + ", ".join(f"{m['instruction_method']} {m['count']:,}" for m in i["methods"])]
        if res["scores"]:
            out += ["", "scores:", table(res["scores"], ["name", "count", "mean", "min", "p5", "p50", "p95", "max"])]
            sketched = [k.split(".", 1)[1] for k in approx if k.startswith("scores.")]
            if sketched:
                err = approx[f"scores.{sketched[0]}"]["relative_error"]
                out += [(f"  approximate: p5, p50, p95 of {', '.join(sketched)} (log buckets, within "
                         f"{err * 100:.2g}% relative; count, mean, min and max are exact)")]
    f = res.get("funnel")
    if f:
        out += ["", f"funnel of run {f['run']}:", table(f["steps"], ["step", "count"])]
        approx = f.get("approximate") or {}
        if approx:
            err = next(iter(approx.values()))["std_error"]
            out += [f"  approximate: {', '.join(approx)} (HyperLogLog of pair ids, {err * 100:.2g}% standard error)"]
        if f["quarantined"]:
            out += ["  quarantined by reason:", table(f["quarantined"], ["stage", "reason", "count"])]
    return "\n".join(out)
