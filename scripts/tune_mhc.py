"""Sweep: mHC stream-kernel plans (BLOCK_T, BLOCK_H, warps, stages, dot) for ``mhc_pre`` and ``mhc_fused_post_pre``.

    DISABLE_MMA_V3=1 PYTHONPATH=. python scripts/tune_mhc.py [--ops pre,fused] [--tokens 512,4096]
                                  [--plans t64h32w8s2,t128h32w8s2,...] [--out FILE.md]

Plan notation: ``t<BLOCK_T>h<BLOCK_H>w<warps>s<stages>`` with an optional ``fma`` suffix (fp32 FMA instead of TF32
``mma``).  Every candidate first passes the AOT gate for ``sm_120a`` (the stream build the op launches: <= 101,376 B
shared memory, 0 spills); a failing one is listed and not timed.  Each passing one is timed as the whole op
(stream kernel + finalize, as ``bench_mhc.py`` times it) and as its stream kernel alone, so the table shows
where the time goes; µs per call (CUDA-graph replays) and % of HBM peak on the op's compulsory bytes.  Finalize
tiles ``t<BLOCK_T>w<WARPS>`` (``--fin``) are timed alone, after the shipped pre plan's stream kernel.  * marks
the shipped plan (``mhc.PLANS``, ``mhc.FIN_TILES``), ** the fastest per row.  Headline numbers need
``DISABLE_MMA_V3=1``.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys

from bench_common import add_sweep_args, aot_all_variants, emit_table, graph_time_us, run_gates
from bench_mhc import EPS, HBM_PEAK_GBS, HC, HIDDEN, ITERS, POST_MULT, _bytes, _call, _inputs

DEFAULT_FIN = "t1w8,t4w8,t8w8,t16w8,t32w8,t16w4,t16w16"
DEFAULT_PLANS = "t16h64w4s2,t32h32w8s2,t64h32w8s2,t64h16w8s2,t64h16w4s2,t128h32w8s2,t128h16w8s2,t256h16w8s2,t64h32w4s3"
OP_NAMES = {"pre": "mhc_pre", "fused": "mhc_fused_post_pre"}


def parse_plan(text: str):
    """``"t64h32w8s2"`` (optionally ``…fma``) -> ``mhc.Plan``."""
    from sglang_sm120.kernels import mhc

    m = re.fullmatch(r"t(\d+)h(\d+)w(\d+)s(\d+)(fma)?", text)
    if not m:
        raise ValueError(f"plan {text!r}: expected t<BLOCK_T>h<BLOCK_H>w<WARPS>s<STAGES>[fma], e.g. t64h32w8s2")
    bt, bh, nw, ns = (int(v) for v in m.groups()[:4])
    return mhc.Plan(bt, bh, nw, ns, mhc.DOT_FMA if m.group(5) else mhc.DOT_TF32)


def parse_fin(text: str) -> tuple[int, int]:
    """``"t2w8"`` -> (2, 8): finalize tokens per program, warps."""
    m = re.fullmatch(r"t(\d+)w(\d+)", text)
    if not m:
        raise ValueError(f"finalize tile {text!r}: expected t<BLOCK_T>w<WARPS>, e.g. t1w8")
    return int(m.group(1)), int(m.group(2))


def plan_name(plan) -> str:
    from sglang_sm120.kernels import mhc

    fma = "fma" if plan.dot == mhc.DOT_FMA else ""
    return f"t{plan.block_t}h{plan.block_h}w{plan.warps}s{plan.stages}{fma}"


def aot_gate(op: str, text: str) -> tuple[bool, str]:
    """(passes, "regs N, smem B" or the problems) on sm_120a of the unfused stream build of ``op``, or for
    ``op == "finalize"`` of the finalize kernel with the norm; every alignment variant of the AOT check, as the
    registered configs must pass them all."""
    from sglang_sm120.kernels import mhc
    from sglang_sm120.kernels.registry import AotConfig, registered

    hidden = mhc.SUPPORTED_HIDDEN[0]
    if op == "finalize":
        tile = parse_fin(text)
        kernel = {k.name: k for k in registered()}["mhc.finalize"]
        cfg = AotConfig(mhc._fin_constexprs(hidden, tile, True), num_warps=tile[1], num_stages=1)
    else:
        plan = parse_plan(text)
        kernel = {k.name: k for k in registered()}[mhc._STREAM_NAMES[op]]
        cfg = AotConfig(mhc._stream_constexprs(op, plan, hidden, False, False), plan.warps, plan.stages)
    regs, smem, problems = aot_all_variants(kernel, cfg)
    return not problems, "; ".join(problems) or f"regs {regs}, smem {smem}"


def time_plans(ops: list[str], plans: list[str], tokens: list[int]) -> dict[tuple[str, int, str], tuple[float, float]]:
    """(op µs, stream-kernel µs) for every (op, T, plan)."""
    import torch

    from sglang_sm120.kernels import mhc

    shipped = mhc.PLANS
    res = {}
    for op in ops:
        for t in tokens:
            a = _inputs(t)
            r = a["residual"]
            for text in plans:
                plan = parse_plan(text)
                mhc.PLANS = {**shipped, op: ((None, plan),)}
                try:
                    full = graph_time_us(_call(mhc, OP_NAMES[op], a))
                    mix, sq = mhc._mix_workspace(plan, t, r.shape[-1], r.device)
                    kw = {"fn": a["fn"], "n_out": mhc.N_MIX, "mix": mix, "sq": sq}
                    if op == "fused":
                        kw |= {"x": a["x"], "post": a["post"], "comb": a["comb"], "res_out": torch.empty_like(r)}
                    stream = graph_time_us(functools.partial(mhc._launch_stream, op, plan, r, t, r.shape[-1], **kw))
                finally:
                    mhc.PLANS = shipped
                res[(op, t, text)] = (full, stream)
                print(f"  {op} T={t} {text}: {full:.1f} us (stream {stream:.1f})", file=sys.stderr, flush=True)
    return res


def time_fin(tiles: list[str], tokens: list[int]) -> dict[tuple[int, str], float]:
    """µs of the finalize kernel alone (with the norm, after the shipped pre plan's stream kernel) per (T, tile)."""
    from sglang_sm120.kernels import mhc

    shipped = mhc.FIN_TILES
    res = {}
    for t in tokens:
        a = _inputs(t)
        r = a["residual"]
        hidden = r.shape[-1]
        plan = mhc._plan("pre", t)
        mix, sq = mhc._mix_workspace(plan, t, hidden, r.device)
        mhc._launch_stream("pre", plan, r, t, hidden, fn=a["fn"], n_out=mhc.N_MIX, mix=mix, sq=sq)
        fin = mhc._new_finalize(r, a["scale"], a["base"], EPS, EPS, EPS, POST_MULT, ITERS, a["weight"], EPS)
        for text in tiles:
            mhc.FIN_TILES = ((None, parse_fin(text)),)
            try:
                res[(t, text)] = graph_time_us(functools.partial(mhc._finalize, mix, sq, r, fin))
            finally:
                mhc.FIN_TILES = shipped
            print(f"  finalize T={t} {text}: {res[(t, text)]:.1f} us", file=sys.stderr, flush=True)
    return res


def render_fin(tiles: list[str], res: dict, tokens: list[int]) -> str:
    from sglang_sm120.kernels import mhc

    lines = ["", "Finalize kernel alone (µs; % HBM on one residual read + y write):", "",
             "| T | " + " | ".join(tiles) + " |", "|---|" + "---|" * len(tiles)]  # fmt: skip
    for t in tokens:
        times = {p: res[(t, p)] for p in tiles if (t, p) in res}
        best = min(times, key=times.get) if times else None
        cells = []
        for p in tiles:
            if p not in times:
                cells.append("-")
                continue
            pct = 100 * t * (HC + 1) * HIDDEN * 2 / (times[p] * 1e-6) / 1e9 / HBM_PEAK_GBS
            ship = p == "t{}w{}".format(*mhc._fin_tile(t))
            cells.append(f"{times[p]:.1f} ({pct:.0f} %)" + ("**" if p == best else "") + ("*" if ship else ""))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(ops: list[str], plans: list[str], gates: dict, res: dict, tokens: list[int]) -> str:
    from sglang_sm120.kernels import mhc

    lines = [
        f"mHC stream plans, hidden {mhc.SUPPORTED_HIDDEN[0]}, hc 4; DISABLE_MMA_V3="
        f"{os.environ.get('DISABLE_MMA_V3', 'unset')}. µs per op call (stream kernel alone; % HBM of the op); "
        "* = shipped plan, ** = fastest.",
        "",
        "| op | T | " + " | ".join(plans) + " |",
        "|---|---|" + "---|" * len(plans),
    ]
    for op in ops:
        for t in tokens:
            times = {p: res[(op, t, p)] for p in plans if (op, t, p) in res}
            best = min(times, key=lambda p: times[p][0]) if times else None
            ship = plan_name(mhc._plan(op, t))
            cells = []
            for p in plans:
                if p not in times:
                    cells.append("-")
                    continue
                full, stream = times[p]
                pct = 100 * _bytes(OP_NAMES[op], t) / (full * 1e-6) / 1e9 / HBM_PEAK_GBS
                mark = ("**" if p == best else "") + ("*" if p == ship else "")
                cells.append(f"{full:.1f} ({stream:.1f}; {pct:.0f} %){mark}")
            lines.append(f"| {op} | {t} | " + " | ".join(cells) + " |")
    gate = "; ".join(f"{op} {p} {g}" for (op, p), g in gates.items())
    lines += ["", f"AOT gate (sm_120a, unfused stream build): {gate}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="pre,fused")
    ap.add_argument("--tokens", default="512,4096")
    ap.add_argument("--plans", default=DEFAULT_PLANS)
    ap.add_argument("--fin", default=DEFAULT_FIN, help="finalize tiles t<BLOCK_T>w<WARPS> ('' to skip)")
    add_sweep_args(ap)
    args = ap.parse_args()
    ops = args.ops.split(",")
    if bad := [op for op in ops if op not in OP_NAMES]:
        ap.error(f"--ops: {bad} not in {sorted(OP_NAMES)}")
    plans = args.plans.split(",")
    for p in plans:
        parse_plan(p)
    fins = [f for f in args.fin.split(",") if f]
    for f in fins:
        parse_fin(f)
    tokens = [int(v) for v in args.tokens.split(",")]
    keys = [(op, p) for op in ops for p in plans] + [("finalize", f) for f in fins]
    gates = run_gates(aot_gate, keys, args.jobs)
    res = {}
    for op in ops:
        passing = [p for p in plans if gates[(op, p)][0]]
        res |= time_plans([op], passing, tokens)
    table = render(ops, plans, {k: why for k, (_, why) in gates.items()}, res, tokens)
    if fins:
        passing = [f for f in fins if gates[("finalize", f)][0]]
        table += "\n" + render_fin(fins, time_fin(passing, tokens), tokens)
    emit_table(table, args.out)


if __name__ == "__main__":
    main()
