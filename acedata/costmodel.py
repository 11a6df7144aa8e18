"""Price a pipeline run of N images from per-item costs measured by bench/scale.py.

CPU cost: each stage's CPU seconds per source image (the marginal cost between the two largest
measured runs that have the stage, so fixed start-up costs are not multiplied by N; mining and
stats from the metadata runs, the rest from the image runs), times N. Storage: bytes per image of every table the stage writes, times N. GPU
cost of the production models, which cannot run here: FLOPs per item / (peak bf16 x MFU),
marked as estimates. Wall time on a stated cluster: per stage the larger of CPU-bound and
GPU-bound time at a stated utilisation; stages run one after the other.

Everything scales linearly from the measurement: the bench's per-item ratios between sizes say
how far that holds, and `check()` tests it (predict a larger measured run from a smaller one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from acedata.errors import UserError

# Dense bf16 tensor peak per GPU (FLOP/s), SXM parts, no sparsity.
GPU_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}

# Stages whose per-item cost comes from the metadata runs (realistic embedding structure and size).
META_FIRST = {"cluster", "pair", "stats"}


@dataclass(frozen=True)
class GpuModel:
    """A production model's work per item, from its architecture (estimate, not measured)."""

    stage: str
    model: str
    flops: float  # per item
    per: str  # image | natural_pair | synthetic_pair
    mfu: float
    why: str


def gpu_models(rewrites: int, dit_share: float, dit_steps: int) -> list[GpuModel]:
    # SigLIP SO400M/14 at 384 px: 428M-param tower, 27x27 = 729 tokens: 2*P*T + attention 4*T^2*d*L.
    siglip = 2 * 428e6 * 729 + 4 * 729**2 * 1152 * 27
    # InternVL2-26B captioner: 2 images x 1 tile (InternViT-6B, 1025 tokens) + 20B LLM over
    # 2*256 image tokens + 150 prompt + 80 generated tokens.
    internvl = 2 * (2 * 5.9e9 * 1025) + 2 * 19.9e9 * (512 + 150 + 80)
    # LLM rewrite (8B, vLLM): 200 prompt + 40 generated tokens per rewrite.
    rewrite = 2 * 8e9 * 240
    # Model-based synthesizers (diffusion editing, DiT ~2B params at 1024 px: 64x64 latent / patch 2
    # = 4096 tokens... per step 2*P*T, x2 for classifier-free guidance).
    dit = 2 * 2e9 * 4096 * 2 * dit_steps
    out = [
        GpuModel("embed", "SigLIP ViT-SO400M-14-384", siglip, "image", 0.40, "2*params*729 tokens + attention"),
        GpuModel("instruct", "InternVL2-26B instruction captioner", internvl, "natural_pair", 0.30,
                 "ViT-6B x 2 tiles + 20B LLM x 742 tokens"),
    ]
    if rewrites:
        out.append(GpuModel("instruct", f"8B LLM rewrites x{rewrites} (vLLM)", rewrite * rewrites,
                            "synthetic_pair", 0.30, "2*params*240 tokens per rewrite"))
    if dit_share > 0:
        out.append(GpuModel("synthesize", f"2B DiT editor, {dit_steps} steps + CFG, {dit_share:.0%} of pairs",
                            dit * dit_share, "synthetic_pair", 0.40, "2*params*4096 tokens*2*steps"))
    return out


@dataclass
class Cluster:
    nodes: int = 64
    cores_per_node: int = 32
    gpus_per_node: int = 8
    gpu: str = "H100"
    utilisation: float = 0.7  # share of the cluster's cores/GPUs a stage keeps busy

    def describe(self) -> str:
        return (f"{self.nodes} nodes x {self.cores_per_node} cores + {self.gpus_per_node} {self.gpu} "
                f"(bf16 peak {GPU_PEAK[self.gpu] / 1e12:.0f} TFLOP/s), {self.utilisation:.0%} utilised")


@dataclass
class Row:
    stage: str
    cpu_core_h: float = 0.0
    gpu_h: float = 0.0
    bytes: int = 0
    wall_h: float = 0.0
    source: str = ""
    notes: list[str] = field(default_factory=list)


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except FileNotFoundError:
        raise UserError(f"measurements file {path!r} not found (run bench/scale.py to make one)") from None
    except ValueError as e:
        raise UserError(f"measurements file {path!r} is not JSON ({e})") from None
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list) or not body["runs"]:
        raise UserError(f"measurements file {path!r} has no 'runs' (bench/scale.py writes them)")
    return body


def pick(runs: list[dict[str, Any]], stage: str) -> dict[str, Any] | None:
    """The run whose measurement of `stage` prices it: the preferred kind, largest N."""
    order = ("meta", "images") if stage in META_FIRST else ("images", "meta")
    for kind in order:
        have = [r for r in runs if r["kind"] == kind and stage in r["stages"]]
        if have:
            return max(have, key=lambda r: r["n"])
    return None


def marginal(runs: list[dict[str, Any]], r: dict[str, Any], stage: str) -> tuple[float, str]:
    """CPU seconds per image at scale: the slope between the two largest runs of r's kind, which
    drops the fixed cost of a stage (Ray start, planning) that a small run spreads over few items;
    CPU per item at the largest run when there is only one size or the slope is not positive."""
    same = sorted((x for x in runs if x["kind"] == r["kind"] and stage in x["stages"]), key=lambda x: x["n"])
    big = same[-1]
    if len(same) >= 2:
        small = same[-2]
        slope = (big["stages"][stage]["cpu_s"] - small["stages"][stage]["cpu_s"]) / (big["n"] - small["n"])
        if slope > 0:
            return slope, f"{r['kind']} slope n={small['n']:,}..{big['n']:,}"
    return big["stages"][stage]["cpu_s"] / big["n"], f"{r['kind']} n={big['n']:,}"


def ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Items per source image: natural pairs (mining), synthetic pairs, LCU rows."""
    out = {"natural_pair": 0.0, "synthetic_pair": 0.0, "lcu_rows": 0.0}
    r = pick(runs, "pair")
    if r:
        out["natural_pair"] = r["stages"]["pair"].get("counts", {}).get("pairs", 0) / r["n"]
    r = next((x for x in sorted(runs, key=lambda x: -x["n"]) if x["kind"] == "images"
              and "synthesize" in x["stages"]), None)
    if r:
        out["synthetic_pair"] = r["stages"]["synthesize"].get("counts", {}).get("pairs", 0) / r["n"]
        asm = r["stages"].get("assemble", {}).get("counts", {})
        out["lcu_rows"] = (asm.get("lcu", 0) + asm.get("lcu_validation", 0)) / r["n"]
    return out


def price(stages: list[str], n: float, body: dict[str, Any], cluster: Cluster,
          models: list[GpuModel] | None = None,
          per_image: dict[str, float] | None = None) -> tuple[list[Row], dict[str, float]]:
    """One row per stage (spec order, then stats) and the items-per-image ratios used
    (measured, unless `per_image` overrides one: natural_pair, synthetic_pair)."""
    if cluster.gpu not in GPU_PEAK:
        raise UserError(f"unknown GPU {cluster.gpu!r}; known: {', '.join(GPU_PEAK)}")
    runs = body["runs"]
    per = {**ratios(runs), **(per_image or {})}
    per["image"] = 1.0
    cores = cluster.nodes * cluster.cores_per_node * cluster.utilisation
    gpus = cluster.nodes * cluster.gpus_per_node * cluster.utilisation
    rows = []
    for stage in [*stages, "stats"]:
        row = Row(stage)
        r = pick(runs, stage)
        if r is None:
            row.notes.append("not measured")
        else:
            st = r["stages"][stage]
            cpu, row.source = marginal(runs, r, stage)
            row.cpu_core_h = cpu * n / 3600
            row.bytes = int(sum(st.get("table_bytes", {}).values()) / r["n"] * n)
        for m in models or []:
            if m.stage == stage:
                seconds = m.flops * per[m.per] * n / (GPU_PEAK[cluster.gpu] * m.mfu)
                row.gpu_h += seconds / 3600
                row.notes.append(f"GPU estimate: {m.model} ({m.mfu:.0%} MFU)")
        if stage == "embed" and models and r is not None:
            row.notes.append("CPU side measured with a tiny random-init SigLIP")
        row.wall_h = max(row.cpu_core_h / cores, row.gpu_h / gpus if gpus else 0.0)
        rows.append(row)
    return rows, per


def check(body: dict[str, Any], to_n: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Predict a measured run from smaller ones of its kind and compare with what was measured:
    `linear` scales the next-smaller run's CPU per item by N; `affine` (two smaller runs or more)
    fits fixed + per-item cost on the two next-smaller runs — the model `price` uses. The target
    is each kind's largest run, or `to_n[kind]`. ratio = predicted / measured (goal 0.75-1.25)."""
    out = []
    for kind in ("meta", "images"):
        rs = sorted((r for r in body["runs"] if r["kind"] == kind), key=lambda r: r["n"])
        if to_n and kind in to_n:
            rs = [r for r in rs if r["n"] <= to_n[kind]]
            if not rs or rs[-1]["n"] != to_n[kind]:
                continue
        for model in ("linear", "affine"):
            need = 2 if model == "linear" else 3
            if len(rs) < need:
                continue
            big, fit = rs[-1], rs[-need:-1]
            stages = [s for s in big["stages"] if all(s in r["stages"] for r in fit)]
            pred = {s: _predict(fit, s, big["n"]) for s in stages}
            meas = {s: big["stages"][s]["cpu_s"] for s in stages}
            tp, tm = sum(pred.values()), sum(meas.values())
            out.append({"kind": kind, "model": model, "from_n": [r["n"] for r in fit], "to_n": big["n"], "stages": {
                s: {"predicted_cpu_s": pred[s], "measured_cpu_s": meas[s], "ratio": _ratio(pred[s], meas[s]),
                    "error": pred[s] / meas[s] - 1 if meas[s] else None} for s in stages},
                "predicted_cpu_s": tp, "measured_cpu_s": tm, "ratio": _ratio(tp, tm),
                "error": tp / tm - 1 if tm else None})
    return out


def check_incomplete(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The same check for a run that did not finish (bench/scale.py's `incomplete`): the stages it
    completed, and the running one per item over its finished share of units (`done_fraction`),
    predicted from the two largest complete runs of its kind below its size."""
    out = []
    for big in body.get("incomplete", []):
        fit = sorted((r for r in body["runs"] if r["kind"] == big["kind"] and r["n"] < big["n"]),
                     key=lambda r: r["n"])[-2:]
        if not fit:
            continue
        stages = {}
        for s, st in big["stages"].items():
            if not all(s in r["stages"] for r in fit):
                continue
            if st.get("state") == "succeeded":
                meas, share = st["cpu_s"], 1.0
            elif st.get("cpu_s_per_item_done"):
                meas, share = st["cpu_s_per_item_done"] * big["n"], st["done_fraction"]
            else:
                continue
            pred = _predict(fit, s, big["n"])
            stages[s] = {"predicted_cpu_s": pred, "measured_cpu_s": meas, "ratio": _ratio(pred, meas),
                         "measured_share": share}
        if stages:  # the total only over finished stages: the running one's figure is an upper bound
            done = [v for v in stages.values() if v["measured_share"] == 1.0]
            tp, tm = sum(v["predicted_cpu_s"] for v in done), sum(v["measured_cpu_s"] for v in done)
            out.append({"kind": big["kind"], "model": "affine" if len(fit) == 2 else "linear", "incomplete": True,
                        "from_n": [r["n"] for r in fit], "to_n": big["n"], "stages": stages,
                        "predicted_cpu_s": tp, "measured_cpu_s": tm, "ratio": _ratio(tp, tm),
                        "error": tp / tm - 1 if tm else None})
    return out


def _ratio(pred: float, meas: float) -> float | None:
    return pred / meas if meas else None


def _predict(fit: list[dict[str, Any]], stage: str, n: int) -> float:
    if len(fit) == 1:
        return fit[0]["stages"][stage]["cpu_s"] / fit[0]["n"] * n
    (n0, c0), (n1, c1) = ((r["n"], r["stages"][stage]["cpu_s"]) for r in fit)
    slope = (c1 - c0) / (n1 - n0)
    if slope <= 0:  # as in `marginal`: no usable slope, per item at the larger run
        return c1 / n1 * n
    return c1 + slope * (n - n1)


def fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(b) < 1000 or unit == "PB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{b:.0f} B"
        b /= 1000
    return f"{b:.1f} PB"


def table(rows: list[Row]) -> list[str]:
    """A Markdown table of the rows plus a total."""
    lines = ["| stage | CPU core-hours | GPU-hours (estimate) | storage | wall (h) | measured at | notes |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        gpu = f"{r.gpu_h:,.0f}" if r.gpu_h else "-"
        lines.append(f"| {r.stage} | {r.cpu_core_h:,.0f} | {gpu} | {fmt_bytes(r.bytes)} | {r.wall_h:,.2f} | "
                     f"{r.source or '-'} | {'; '.join(r.notes)} |")
    lines.append(f"| **total** | **{sum(r.cpu_core_h for r in rows):,.0f}** | **{sum(r.gpu_h for r in rows):,.0f}** "
                 f"| **{fmt_bytes(sum(r.bytes for r in rows))}** | **{sum(r.wall_h for r in rows):,.1f}** | | |")
    return lines
