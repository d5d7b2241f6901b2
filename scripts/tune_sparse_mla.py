"""Sweep: sparse-MLA tiles on SGLang-shaped prefill batches (bf16 workspace) or decode batches (fp8 cache), one GPU.

    DISABLE_MMA_V3=1 PYTHONPATH=. python scripts/tune_sparse_mla.py [--cases bs8,bs32,long4k | dec1,dec8,dec32,...]
                                     [--tiles h32n32c8w8s1p0,...] [--out FILE.md]

Tile notation ``h<BLOCK_H>n<BLOCK_N>c<NC>w<warps>s<stages>p<L2_AHEAD>[x<PER_SM>][f]`` (heads per program, candidates
per step, column chunks, warps, pipeline stages, blocks prefetched into L2 ahead; a prefetching tile leaves each split
L2_AHEAD + 1 blocks; decode: the split budget counts PER_SM programs per SM, default 1; ``f``: flat QK dot).  Every
candidate first passes the AOT gate for ``sm_120a`` on the builds its cases launch (prefill: the ``KV_BF16`` build;
decode: the fp8-cache build unsplit, and split unless the only case is ``pre2k``; every alignment variant: <= 101,376 B
shared memory, 0 spills); a failing one is listed and not timed.

Prefill cases mirror what SGLang 0.5.16's ``_forward_prefill_sparse`` hands FlashMLA for the e2e benchmark's tiny
DSV4 (64 heads, 256-token prompts, workspace = per request its compressed rows then its SWA rows): ``bs8`` /
``bs32`` time the four layers' calls (SWA-only, C4, C128, C4; valid prefix per row as SGLang's index combiner
writes it, -1 padded to a multiple of 128) back to back; ``long4k`` is one 4096-token prompt on a C4 layer (top-k
512 + SWA 128 = 640 valid candidates per row from row 2048 on).  The tile is forced through
``sparse_mla._CFG_PREFILL_BF16``; the last column is sgl-kernel's FlashMLA ``flash_mla_sparse_fwd`` (SM90) on the
same inputs when it is installed.  Decode cases are ``bench_sparse_mla.py``'s (32 heads = TP 2, SWA 128 + C4 top-k
512 over an 8K context): ``dec<bs>`` one token per request, ``mtp32`` 32 requests x 2 tokens, ``pre2k`` 16 requests x
128 tokens (2048 rows, unsplit: the fp8-cache prefill tile SGLang 0.5.12's extend batches take); the tile is forced
through ``sparse_mla._pick_cfg`` (split count as ``choose_num_splits`` gives it for that tile) and the ``auto``
column is the shipped choice.  µs per case (CUDA-graph replays) and TFLOP/s on valid candidates (4 x 512 FLOP per
head and candidate); * marks the shipped tile, ** the fastest per row.  Headline numbers need ``DISABLE_MMA_V3=1``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from bench_common import (
    add_sweep_args,
    aot_all_variants,
    emit_table,
    graph_time_us,
    run_gates,
    sm12x_blocks_per_sm,
    try_baseline,
)

HEADS = 64
PROMPT = 256
WINDOW = 128
TOPK = 512
ALIGN = 128  # SGLang pads the combined index rows to a multiple of 128 (FlashMLA's B_TOPK)
# The shipped tile, the 8-warp tile it replaced, and the runners-up of the 2026-12-07 H100 sweep (4 warps beat 8 by ~2x
# at every size; in a CPU screen NC = 1 spilled 1-30 KB, NC = 2 with 32 heads or candidates spilled, 16 warps spilled).
DEFAULT_TILES = (
    "h32n16c4w4s2p0f,h32n16c4w4s2p0,h32n32c8w8s1p0f,h32n32c8w8s1p0,h32n16c4w4s1p0f,h32n16c4w4s2p2f,h32n16c8w4s2p0f,"
    "h16n16c4w4s1p0,h16n16c4w4s2p0,h16n32c4w4s1p0"
)
DECODE_TILES = "h16n16c8w4s1p0x2,h16n16c8w4s1p0,h32n32c8w8s1p2,h16n16c8w4s1p0x4,h16n16c8w8s1p0,h16n32c8w4s1p0x2"
PREFILL_CASES = ("bs8", "bs32", "long4k")
# (requests, tokens per request) over the fp8 cache
DECODE_CASES = {
    "dec1": (1, 1), "dec8": (8, 1), "dec32": (32, 1), "dec64": (64, 1), "mtp32": (32, 2), "pre2k": (16, 128),
}  # fmt: skip
CASES = (*PREFILL_CASES, *DECODE_CASES)
UNSPLIT_CASES = ("pre2k",)  # decode-mode cases with enough programs never to split
DECODE_CTX = 8192
AUTO = "auto"


def parse_tile(text: str):
    """``"h32n32c8w8s1p2"`` -> ``sparse_mla._Cfg``."""
    from sglang_sm120.kernels.sparse_mla import _Cfg

    m = re.fullmatch(r"h(\d+)n(\d+)c(\d+)w(\d+)s(\d+)p(\d+)(?:x(\d+))?(f?)", text)
    if not m:
        raise ValueError(f"tile {text!r}: expected h<BLOCK_H>n<BLOCK_N>c<NC>w<WARPS>s<STAGES>p<L2_AHEAD>[x<PER_SM>][f]")
    bh, bn, nc, nw, ns, l2 = (int(v) for v in m.groups()[:6])
    per_sm, flat = int(m.group(7) or 1), m.group(8) == "f"
    return _Cfg(bh, bn, num_warps=nw, num_stages=ns, nc=nc, l2_ahead=l2, min_blocks=l2 + 1, per_sm=per_sm, flat_qk=flat)


def tile_name(cfg) -> str:
    name = f"h{cfg.block_h}n{cfg.block_n}c{cfg.nc}w{cfg.num_warps}s{cfg.num_stages}p{cfg.l2_ahead}"
    return name + (f"x{cfg.per_sm}" if cfg.per_sm > 1 else "") + ("f" if cfg.flat_qk else "")


def aot_gate(text: str, decode: bool = False, split: bool = True) -> tuple[bool, str]:
    """(passes, "regs R, smem B" or the problems) on sm_120a, every variant, of the ``KV_BF16`` prefill build or
    (``decode``) of the fp8-cache build unsplit and (``split``) split."""
    from sglang_sm120.kernels import sparse_mla
    from sglang_sm120.kernels.registry import registered

    kernel = next(k for k in registered() if k.name == "sparse_mla.attend")
    cfg = parse_tile(text)
    builds = (([(True, False)] if split else []) + [(False, False)]) if decode else [(False, True)]
    found = [aot_all_variants(kernel, sparse_mla._aot_config(cfg, split=sp, bf16=bf)) for sp, bf in builds]
    problems = [p for _, _, probs in found for p in probs]
    regs = "/".join(str(r) for r, _, _ in found)
    smem = found[0][1]
    return not problems, "; ".join(problems) or f"regs {regs}, smem {smem} ({sm12x_blocks_per_sm(smem)}/SM on SM12x)"


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
    """The calls of one prefill case: ``[(q, kv, indices, lens, sink, flop), ...]`` on the GPU."""
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
        raise ValueError(f"case {name!r}: expected one of {', '.join(PREFILL_CASES)}")
    calls = []
    for n_comp, ratio, topk in specs:
        idx, lens, rows = layer_indices(*bs_prompt, n_comp, ratio, topk)
        q = (torch.randn(idx.shape[0], HEADS, 512, device="cuda") * 0.5).bfloat16()
        kv = (torch.randn(rows, 1, 512, device="cuda") * 0.5).bfloat16()
        sink = torch.randn(HEADS, device="cuda")
        flop = 4 * 512 * HEADS * int(lens.sum())
        calls.append((q, kv, idx.cuda(), lens.cuda(), sink, flop))
    return calls


def time_prefill(calls: list[tuple], tiles: list[str]) -> dict[str, float | str]:
    """µs of every passing tile (forced through ``sparse_mla._CFG_PREFILL_BF16``) and of FlashMLA, on one prefill
    case."""
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
            res[text] = graph_time_us(ours)
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
    res["flashmla"] = graph_time_us(fn) if fn else why
    return res


def time_decode(name: str, tiles: list[str]) -> tuple[dict[str, float | str], int]:
    """µs of the shipped choice (``auto``, its tile in the cell) and of every passing tile forced through
    ``sparse_mla._pick_cfg`` on one decode case; the case's FLOP."""
    import torch
    from bench_sparse_mla import SWA, TOPK, make_inputs

    from sglang_sm120.kernels import sparse_mla

    heads = 32
    bs, s_q = DECODE_CASES[name]
    q, swa, swa_idx, swa_len, c4, c4_idx, c4_len, sink = make_inputs(DECODE_CTX, bs, s_q)
    t = bs * s_q
    q = q[:, :heads].contiguous()
    sink = sink[heads : 2 * heads]
    out = torch.empty(t, heads, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(t, heads, dtype=torch.float32, device="cuda")
    dev = torch.device("cuda")

    def timed() -> float:
        splits = sparse_mla.choose_num_splits(t, heads, SWA, TOPK, dev)
        ws = sparse_mla.workspace_for(t, heads, SWA, TOPK, "cuda")
        args = (q, swa, swa_idx, swa_len, sink, c4, c4_idx, c4_len, out, lse, ws, splits)
        return graph_time_us(lambda: sparse_mla.sparse_mla_fwd(*args, rows_per_length=s_q))

    picked = sparse_mla._pick_cfg(t, heads, dev, split=sparse_mla.choose_num_splits(t, heads, SWA, TOPK, dev) > 1)
    res: dict[str, float | str] = {AUTO: timed(), "auto_tile": tile_name(picked)}
    shipped = sparse_mla._pick_cfg
    for text in tiles:
        forced = parse_tile(text)
        sparse_mla._pick_cfg = lambda *a, cfg=forced, **k: cfg
        try:
            res[text] = timed()
        finally:
            sparse_mla._pick_cfg = shipped
        print(f"  {text}: {res[text]:.1f} us", file=sys.stderr, flush=True)
    return res, 4 * 512 * heads * t * (SWA + TOPK)


def render(tiles: list[str], gates: dict[str, tuple[bool, str]], results: dict[str, dict], flops: dict) -> str:
    """Markdown table, a row per case; prefill rows end with FlashMLA, decode rows start with the shipped choice."""
    from sglang_sm120.kernels import sparse_mla

    decode = any(case in DECODE_CASES for case in results)
    ship = tile_name(sparse_mla._CFG_PREFILL_BF16)
    cols = [AUTO, *tiles] if decode else [*tiles, "flashmla"]
    lines = [
        f"Sparse MLA {'fp8 cache, 32 heads' if decode else 'prefill (bf16 workspace), 64 heads'}; "
        f"DISABLE_MMA_V3={os.environ.get('DISABLE_MMA_V3', 'unset')}. µs per case (TFLOP/s on valid candidates); "
        + ("* = shipped choice (auto: the tile it picks)" if decode else "* = shipped, last column FlashMLA (SM90)")
        + ", ** = fastest.",
        "",
        "| case | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for case, res in results.items():
        times = {t: res[t] for t in tiles if isinstance(res.get(t), float)}
        best = min(times, key=times.get) if times else None
        cells = []
        for t in cols:
            us = res.get(t)
            if not isinstance(us, float):
                cells.append("-" if us is None else str(us))
                continue
            mark = ("**" if t == best else "") + ("*" if t == (res.get("auto_tile") if decode else ship) else "")
            name = f" {res['auto_tile']}" if t == AUTO else ""
            cells.append(f"{us:.0f} ({flops[case] / us * 1e-6:.0f}){name}{mark}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    build = "fp8 cache" if decode else "KV_BF16"
    lines += ["", f"AOT gate (sm_120a, {build}): " + "; ".join(f"{t} {why}" for t, (_, why) in gates.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(PREFILL_CASES), help="prefill cases or decode cases, not both")
    ap.add_argument("--tiles", default=None, help=f"default: {DEFAULT_TILES} (prefill), {DECODE_TILES} (decode)")
    add_sweep_args(ap)
    args = ap.parse_args()
    cases = args.cases.split(",")
    if bad := [c for c in cases if c not in CASES]:
        ap.error(f"unknown case(s) {', '.join(bad)}: expected some of {', '.join(CASES)}")
    decode = cases[0] in DECODE_CASES
    if any((c in DECODE_CASES) != decode for c in cases):
        ap.error("--cases: prefill and decode cases time different builds; sweep them in separate runs")
    tiles = (args.tiles or (DECODE_TILES if decode else DEFAULT_TILES)).split(",")
    for t in tiles:
        cfg = parse_tile(t)
        if decode and cfg.nc != 8:
            ap.error(f"tile {t}: the fp8 cache needs NC == 8 (one UE8M0 scale per 64 columns, RoPE the last chunk)")
    split = decode and any(c not in UNSPLIT_CASES for c in cases)
    checked = run_gates(aot_gate, [(t, decode, split) for t in tiles], args.jobs, lambda key: key[0])
    gates = {key[0]: v for key, v in checked.items()}
    passing = [t for t in tiles if gates[t][0]]
    results, flops = {}, {}
    for case in cases:
        print(f"case {case}:", file=sys.stderr, flush=True)
        if decode:
            results[case], flops[case] = time_decode(case, passing)
        else:
            calls = make_case(case)
            flops[case] = sum(c[-1] for c in calls)
            results[case] = time_prefill(calls, passing)
    emit_table(render(tiles, gates, results, flops), args.out)


if __name__ == "__main__":
    main()
