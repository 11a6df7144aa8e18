"""bench/scale.py's printed tables: CPU per item at each size with ratios, peak RSS, the pair
stage against the bare matmul, unfinished runs, and the cost model's predicted / measured check."""

from __future__ import annotations

from typing import Any

FLAT = (0.8, 1.2)  # goal for the per-item cost ratio between sizes


def report(runs: list[dict[str, Any]]) -> None:
    for kind in ("images", "meta"):
        rs = sorted((r for r in runs if r["kind"] == kind), key=lambda r: r["n"])
        if not rs:
            continue
        names = list(dict.fromkeys(s for r in rs for s in r["stages"]))
        print(f"\n{kind}: CPU ms per item (wall s) | driver / worker peak RSS MiB; ratio = per-item cost vs the "
              f"previous size, '!' outside {FLAT[0]}-{FLAT[1]}")
        print(f"{'stage':<12}" + "".join(f"{'n=' + format(r['n'], ',d'):>34}" for r in rs) + "   ratios")
        for s in names:
            cells, ratios, prev = [], [], None
            for r in rs:
                st = r["stages"].get(s)
                if not st:
                    cells.append(f"{'-':>34}")
                    prev = None
                    continue
                per = 1000 * st["cpu_s"] / r["n"]
                wall = st.get("wall_s") or st.get("sampled_wall_s") or 0
                cells.append(f"{per:9.3f} ({wall:7.1f}) {st.get('driver_peak_mib', 0):6.0f}/"
                             f"{st.get('worker_peak_mib', 0):5.0f}")
                if prev:
                    q = per / prev
                    ratios.append(f"{q:.2f}" + ("" if FLAT[0] <= q <= FLAT[1] else "!"))
                prev = per or None
            print(f"{s:<12}" + "".join(cells) + "   " + " ".join(ratios))
        print(f"{'(startup)':<12}" + "".join(f"{r.get('startup', {}).get('cpu_s', 0):>20.1f} s CPU{'':>9}"
                                             for r in rs))
        # sampled CPU of all stages + start-up (rusage misses Ray workers that the raylet reaps)
        print(f"{'(total)':<12}" + "".join(
            f"{sum(st['cpu_s'] for st in r['stages'].values()) + r.get('startup', {}).get('cpu_s', 0):>14.0f} "
            f"CPU s {r['wall_s']:>7.0f} s{'':>4}" for r in rs))
        for r in rs:
            line = roofline(r)
            if line:
                print(line)


def report_incomplete(body: dict[str, Any]) -> None:
    """Runs that did not finish: CPU per item of the stages that did, and of the running one over
    its finished share of units; ratio against the largest finished run of the kind below it."""
    for r in body.get("incomplete", []):
        below = [x for x in body.get("runs", []) if x["kind"] == r["kind"] and x["n"] < r["n"]]
        ref = max(below, key=lambda x: x["n"]) if below else None
        vs = f"; ratio vs n={ref['n']:,}" if ref else ""
        print(f"\nincomplete: {r['kind']} n={r['n']:,} ({r['incomplete']}); CPU ms per item (wall s) | driver / "
              f"worker peak RSS MiB{vs}")
        for s, st in r["stages"].items():
            note, per = "", None
            if st.get("state") == "succeeded" or st.get("state") is None and "done_fraction" not in st:
                per = st["cpu_s"] / r["n"]
            elif st.get("cpu_s_per_item_done"):
                per = st["cpu_s_per_item_done"]
                note = f"  over {st['done_fraction']:.0%} of units (upper bound: planning, units in flight)"
            else:
                note = f"  ({st['cpu_s']:.0f} CPU s, no unit finished)"
            cell = f"{1000 * per:9.3f}" if per is not None else f"{'-':>9}"
            q = ""
            if per and ref and ref["stages"].get(s, {}).get("cpu_s"):
                q = per / (ref["stages"][s]["cpu_s"] / ref["n"])
                q = f"   {q:.2f}" + ("" if FLAT[0] <= q <= FLAT[1] else "!")
            wall = st.get("wall_s") or st.get("sampled_wall_s") or 0
            print(f"  {s:<12}{cell} ({wall:7.1f}) {st.get('driver_peak_mib', 0):6.0f}/"
                  f"{st.get('worker_peak_mib', 0):5.0f}{q}{note}")


def report_check(body: dict[str, Any]) -> None:
    """The cost model's check: each kind's largest run predicted from the smaller ones (plan-cost's
    model) against what was measured there, per stage and in total; then the same for the stages
    an unfinished larger run did complete."""
    from acedata.commands.plan_cost import print_checks
    from acedata.costmodel import check, check_incomplete

    print_checks(check(body) + check_incomplete(body))


def roofline(r: dict[str, Any]) -> str | None:
    """The pair stage against the bare matmul, two ways:

    - wall: its similarity FLOPs over its wall time, against the bare float32 matmul's wall-clock
      rate measured right before it (`bare_matmul_gflops`): "the stage takes Nx the bare-matmul
      time of its FLOPs" (goal <= 3x); on a loaded machine both move with the load;
    - CPU (load-robust): the stage's CPU seconds (the sampler's, every process of the run) against
      the CPU seconds its FLOPs take at the bare matmul's one-thread rate in GFLOP per CPU second
      (`bare_matmul_cpu_gflops`, time.process_time): "stage CPU = Nx the bare-matmul CPU of its
      FLOPs" (goal <= 3x);

    and the share of its wall time spent in the similarity kernel itself (the stage's own counter)."""
    st = r["stages"].get("pair") or {}
    counts, wall, g = st.get("counts", {}), st.get("wall_s"), r.get("bare_matmul_gflops")
    flops = counts.get("sim_flops")
    if not (flops and wall) or flops < 1e11:  # image runs: too little similarity work to say anything
        return None
    line = f"pair n={r['n']:,}: {flops / 1e12:.2f} TFLOP of similarity in {wall:.0f} s = {flops / wall / 1e9:.1f} GFLOP/s"
    if g:
        line += (f" vs bare matmul {g:.0f} GFLOP/s: the stage takes {wall / (flops / (g * 1e9)):.1f}x the "
                 "bare-matmul time of its FLOPs (goal <= 3x)")
    gc, cpu = r.get("bare_matmul_cpu_gflops"), st.get("cpu_s")
    if gc and cpu:
        line += (f"; CPU: stage {cpu:.0f} CPU s vs {flops / (gc * 1e9):.1f} CPU s for its FLOPs at the one-thread "
                 f"bare matmul's {gc:.0f} GFLOP/CPU-s = {cpu / (flops / (gc * 1e9)):.1f}x (goal <= 3x)")
    if counts.get("sim_matmul_us"):
        line += f"; kernel {counts['sim_matmul_us'] / 1e6:.1f} s = {counts['sim_matmul_us'] / 1e6 / wall:.0%} of the wall"
    return line
