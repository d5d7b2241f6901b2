"""Sweep: sparse-MLA prefill tiles (bf16 workspace, ``sparse_mla_bf16_fwd``) on SGLang-shaped prefill batches, one GPU.

    DISABLE_MMA_V3=1 PYTHONPATH=. python scripts/tune_sparse_mla.py [--cases bs8,bs32,long4k]
                                     [--tiles h32n32c8w8s1p0,...] [--out FILE.md]

Tile notation ``h<BLOCK_H>n<BLOCK_N>c<NC>w<warps>s<stages>p<L2_AHEAD>`` (heads per program, candidates per step,
column chunks, warps, pipeline stages, blocks prefetched into L2 ahead).  Every candidate first passes the AOT gate
for ``sm_120a`` (the ``KV_BF16`` build, every alignment variant: <= 101,376 B shared memory, 0 spills); a failing
one is listed and not timed.  Cases mirror what SGLang 0.5.16's ``_forward_prefill_sparse`` hands FlashMLA for the
e2e benchmark's tiny DSV4 (64 heads, 256-token prompts, workspace = per request its compressed rows then its SWA
rows): ``bs8`` / ``bs32`` time the four layers' calls (SWA-only, C4, C128, C4; valid prefix per row as SGLang's
index combiner writes it, -1 padded to a multiple of 128) back to back; ``long4k`` is one 4096-token prompt on a C4
layer (top-k 512 + SWA 128 = 640 valid candidates per row from row 2048 on).  µs per case (CUDA-graph replays),
TFLOP/s on valid candidates (4 x 512 FLOP per head and candidate), and sgl-kernel's FlashMLA ``flash_mla_sparse_fwd``
(SM90) on the same inputs when it is installed.  * marks the shipped tile (``sparse_mla._CFG_PREFILL_BF16``), ** the
fastest per row.  Headline numbers need ``DISABLE_MMA_V3=1``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from bench_common import add_sweep_args, aot_all_variants, emit_table, run_gates, try_baseline

HEADS = 64
PROMPT = 256
WINDOW = 128
TOPK = 512
ALIGN = 128  # SGLang pads the combined index rows to a multiple of 128 (FlashMLA's B_TOPK)
# The shipped tile, the 8-warp tile it replaced, and the runners-up of the 2026-12-07 H100 sweep (4 warps beat 8 by ~2x
# at every size; in a CPU screen NC = 1 spilled 1-30 KB, NC = 2 with 32 heads or candidates spilled, 16 warps spilled).
DEFAULT_TILES = (
    "h32n16c4w4s2p0,h32n32c8w8s1p0,h32n16c4w4s1p0,h32n16c4w4s2p2,h32n16c8w4s2p0,h16n16c4w4s1p0,h16n16c4w4s2p0,"
    "h16n16c4w2s1p0,h16n32c4w4s1p0,h16n16c8w8s1p0"
)
CASES = ("bs8", "bs32", "long4k")


def parse_tile(text: str):
    """``"h32n32c8w8s1p2"`` -> ``sparse_mla._Cfg``."""
    from sglang_sm120.kernels.sparse_mla import _Cfg

    m = re.fullmatch(r"h(\d+)n(\d+)c(\d+)w(\d+)s(\d+)p(\d+)", text)
    if not m:
        raise ValueError(f"tile {text!r}: expected h<BLOCK_H>n<BLOCK_N>c<NC>w<WARPS>s<STAGES>p<L2_AHEAD>")
    bh, bn, nc, nw, ns, l2 = (int(v) for v in m.groups())
    return _Cfg(bh, bn, num_warps=nw, num_stages=ns, nc=nc, l2_ahead=l2)


def tile_name(cfg) -> str:
    return f"h{cfg.block_h}n{cfg.block_n}c{cfg.nc}w{cfg.num_warps}s{cfg.num_stages}p{cfg.l2_ahead}"


def aot_gate(text: str) -> tuple[bool, str]:
    """(passes, "regs R, smem B" or the problems) of the ``KV_BF16`` prefill build on sm_120a, every variant."""
    from sglang_sm120.kernels import sparse_mla
    from sglang_sm120.kernels.registry import registered

    kernel = next(k for k in registered() if k.name == "sparse_mla.attend")
    regs, smem, problems = aot_all_variants(kernel, sparse_mla._aot_config(parse_tile(text), split=False, bf16=True))
    return not problems, "; ".join(problems) or f"regs {regs}, smem {smem}"


def layer_indices(bs: int, prompt: int, compressed_per_req: int, ratio: int, topk: int):
    """(indices [bs * prompt, width] int32, lens [bs * prompt] int32, workspace rows) of one layer: per request
    its ``compressed_per_req`` compressed rows then its ``prompt`` SWA rows in the workspace; row p of a request
    sees its first min(topk, (p + 1) // ratio) compressed rows, then the last min(p + 1, WINDOW) tokens."""
    import torch

    width = -(-(topk + WINDOW) // ALIGN) * ALIGN
    p = torch.arange(prompt, dtype=torch.int64)
    n_c = torch.clamp((p + 1) // ratio, max=topk) if ratio else torch.zeros_like(p)
    n_s = torch.clamp(p + 1, max=WINDOW)
    j = torch.arange(width, dtype=torch.int64)[None, :]
    per_req = compressed_per_req + prompt
    rows = []
    for r in range(bs):
        base = r * per_req
        comp = base + j
        swa = base + compressed_per_req + (p + 1 - n_s)[:, None] + (j - n_c[:, None])
        idx = torch.where(j < n_c[:, None], comp, torch.where(j < (n_c + n_s)[:, None], swa, -1))
        rows.append(idx)
    lens = (n_c + n_s).repeat(bs)
    return torch.cat(rows).to(torch.int32), lens.to(torch.int32), bs * per_req


def make_case(name: str, seed: int = 0) -> list[tuple]:
    """The calls of one case: ``[(q, kv, indices, lens, sink, flop), ...]`` on the GPU."""
    import torch

    torch.manual_seed(seed)
    if name in ("bs8", "bs32"):
        bs = int(name[2:])
        layers = [(0, 0, 0), (PROMPT // 4, 4, TOPK), (PROMPT // 128, 128, PROMPT // 128)]
        specs = [layers[0], layers[1], layers[2], layers[1]]
        bs_prompt = (bs, PROMPT)
    elif name == "long4k":
        specs = [(4096 // 4, 4, TOPK)]
        bs_prompt = (1, 4096)
    else:
        raise ValueError(f"case {name!r}: expected one of {', '.join(CASES)}")
    calls = []
    for n_comp, ratio, topk in specs:
        idx, lens, rows = layer_indices(*bs_prompt, n_comp, ratio, topk)
        q = (torch.randn(idx.shape[0], HEADS, 512, device="cuda") * 0.5).bfloat16()
        kv = (torch.randn(rows, 1, 512, device="cuda") * 0.5).bfloat16()
        sink = torch.randn(HEADS, device="cuda")
        flop = 4 * 512 * HEADS * int(lens.sum())
        calls.append((q, kv, idx.cuda(), lens.cuda(), sink, flop))
    return calls


def _time_us(fn) -> float:
    import triton.testing

    fn()
    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")


def time_case(calls: list[tuple], tiles: list[str]) -> dict[str, float | str]:
    """µs of every passing tile (forced through ``sparse_mla._CFG_PREFILL_BF16``) and of FlashMLA, on one case."""
    import torch

    from sglang_sm120.kernels import sparse_mla

    outs = [(torch.empty_like(q), torch.empty(q.shape[:2], device="cuda")) for q, *_ in calls]

    def ours():
        for (q, kv, idx, lens, sink, _), (out, lse) in zip(calls, outs):
            sparse_mla.sparse_mla_bf16_fwd(q, kv, idx, lens, sink, out, lse)

    res: dict[str, float | str] = {}
    shipped = sparse_mla._CFG_PREFILL_BF16
    for text in tiles:
        sparse_mla._CFG_PREFILL_BF16 = parse_tile(text)
        try:
            res[text] = _time_us(ours)
        finally:
            sparse_mla._CFG_PREFILL_BF16 = shipped
        print(f"  {text}: {res[text]:.1f} us", file=sys.stderr, flush=True)

    def make_flashmla():
        from sgl_kernel.flash_mla import flash_mla_sparse_fwd

        scale = 512**-0.5
        return lambda: [
            flash_mla_sparse_fwd(q, kv, idx[:, None, :], scale, 512, sink, lens) for q, kv, idx, lens, sink, _ in calls
        ]

    fn, why = try_baseline("FlashMLA flash_mla_sparse_fwd", make_flashmla)
    res["flashmla"] = _time_us(fn) if fn else why
    return res


def render(tiles: list[str], gates: dict[str, tuple[bool, str]], results: dict[str, dict], flops: dict) -> str:
    from sglang_sm120.kernels import sparse_mla

    ship = tile_name(sparse_mla._CFG_PREFILL_BF16)
    lines = [
        f"Sparse MLA prefill (bf16 workspace), {HEADS} heads; "
        f"DISABLE_MMA_V3={os.environ.get('DISABLE_MMA_V3', 'unset')}. µs per case (TFLOP/s on valid candidates); "
        "* = shipped, ** = fastest; last column FlashMLA (SM90).",
        "",
        "| case | " + " | ".join(tiles) + " | FlashMLA |",
        "|---|" + "---|" * (len(tiles) + 1),
    ]
    for case, res in results.items():
        times = {t: res[t] for t in tiles if isinstance(res.get(t), float)}
        best = min(times, key=times.get) if times else None
        cells = []
        for t in [*tiles, "flashmla"]:
            us = res.get(t)
            if not isinstance(us, float):
                cells.append("-" if us is None else str(us))
                continue
            mark = ("**" if t == best else "") + ("*" if t == ship else "")
            cells.append(f"{us:.0f} ({flops[case] / us * 1e-6:.0f}){mark}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += ["", "AOT gate (sm_120a, KV_BF16): " + "; ".join(f"{t} {why}" for t, (_, why) in gates.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--tiles", default=DEFAULT_TILES)
    add_sweep_args(ap)
    args = ap.parse_args()
    tiles = args.tiles.split(",")
    for t in tiles:
        parse_tile(t)
    cases = args.cases.split(",")
    if bad := [c for c in cases if c not in CASES]:
        ap.error(f"unknown case(s) {', '.join(bad)}: expected some of {', '.join(CASES)}")
    gates = {key[0]: v for key, v in run_gates(aot_gate, [(t,) for t in tiles], args.jobs).items()}
    passing = [t for t in tiles if gates[t][0]]
    results, flops = {}, {}
    for case in cases:
        calls = make_case(case)
        flops[case] = sum(c[-1] for c in calls)
        print(f"case {case}:", file=sys.stderr, flush=True)
        results[case] = time_case(calls, passing)
    emit_table(render(tiles, gates, results, flops), args.out)


if __name__ == "__main__":
    main()
