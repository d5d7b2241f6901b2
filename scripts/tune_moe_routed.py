"""Sweep: routed MXFP4 MoE tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) at prefill token counts, one GPU.

    DISABLE_MMA_V3=1 PYTHONPATH=. python scripts/tune_moe_routed.py [--tp 1,2] [--tokens 256,1024,4096,8192]
                                         [--tiles 128x32x64w8s2,...] [--act bf16|mxfp8] [--out FILE.md]

Every candidate first passes the AOT gate for ``sm_120a`` (GEMM1 and GEMM2 builds: <= 101,376 B shared memory,
0 spills, registers reported); a failing one is listed and not timed. Each passing one is then timed as the whole
``fused_moe_mxfp4`` call (routing included) with that tile forced for both GEMMs, at every token count, on the
DSV4-Flash shapes and the uniform random routings of ``bench_moe_gemm.py``: median CUDA-graph replay in µs and
TFLOP/s (6 T top_k H I / t). The table marks the shipped choice (``_routed_tile``) and the fastest per row.
Numbers mean what the headline numbers mean only with ``DISABLE_MMA_V3=1`` (mma.sync, the SM12x instruction mix);
the script prints which build it timed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from bench_common import add_sweep_args, aot_all_variants, emit_table, run_gates, sweep_table_head
from bench_moe_gemm import MOE_E, MOE_H, MOE_I, MOE_LIMIT, MOE_TOPK, _bench_calls, _moe_routing, _moe_weights

# The shipped tiles plus variants with fewer registers (more CTAs per SM) or wider N / K, each 0-spill on sm_120a in
# a CPU screen (GEMM1 128x32x64 w8: 102 registers vs 144 for 128x64x64; 64x32x64 w4: 104 vs 168).
DEFAULT_TILES = (
    "16x64x128w4s2,16x64x64w4s2,16x32x128w4s2,32x64x128w4s2,32x64x64w4s2,32x32x128w4s2,64x64x64w4s2,64x32x64w4s2,64x64x64w8s2,"
    "64x64x64w4s3,64x128x64w8s2,128x64x64w8s2,128x32x64w8s2,128x128x64w8s2,128x64x128w8s2"
)
Tile = tuple[int, int, int, int, int]


def parse_tile(text: str) -> Tile:
    """``"128x64x64w8s2"`` -> (128, 64, 64, 8, 2)."""
    try:
        dims, rest = text.split("w")
        warps, stages = rest.split("s")
        bm, bn, bk = (int(v) for v in dims.split("x"))
        return bm, bn, bk, int(warps), int(stages)
    except ValueError:
        raise ValueError(f"tile {text!r}: expected BMxBNxBKwWARPSsSTAGES, e.g. 128x64x64w8s2") from None


def tile_name(tile: Tile) -> str:
    bm, bn, bk, nw, ns = tile
    return f"{bm}x{bn}x{bk}w{nw}s{ns}"


def aot_gate(tile: Tile, act: str = "bf16") -> tuple[bool, str]:
    """(passes, "regs g1/g2" or the problems) of GEMM1 and GEMM2 with UE8M0 scales on sm_120a, every alignment
    variant."""
    from sglang_sm120.kernels import moe_mxfp4
    from sglang_sm120.kernels.registry import registered

    kernels = {k.name: k for k in registered()}
    regs, problems = [], []
    fp8 = act == "mxfp8"
    for gemm, gated in (("gemm1", True), ("gemm2", False)):
        name = f"moe_mxfp4.{gemm}{'_w4a8' if fp8 else ''}[s=u8]"
        reg, _, found = aot_all_variants(kernels[name], moe_mxfp4._gemm_config(tile, gated, False, fp8))
        regs.append(str(reg))
        problems += [f"{name}: {p}" for p in found]
    return not problems, "; ".join(problems) or "regs " + "/".join(regs)


def time_tiles(tiles: list[Tile], tps: list[int], tokens: list[int], act: str) -> dict[tuple[int, int, Tile], float]:
    """µs per ``fused_moe_mxfp4`` call for every (TP, T, tile)."""
    import torch

    from sglang_sm120.kernels import moe_mxfp4
    from sglang_sm120.kernels.moe_mxfp4 import fused_moe_mxfp4, moe_mxfp4_workspace

    shipped = moe_mxfp4._routed_tile
    res: dict[tuple[int, int, Tile], float] = {}
    for tp in tps:
        weights = _moe_weights(tp)
        for t in tokens:
            x = torch.randn(t, MOE_H, device="cuda").bfloat16()
            out = torch.empty_like(x)
            ws = moe_mxfp4_workspace(t, MOE_TOPK, MOE_E, MOE_H, MOE_I // tp, "cuda")
            tw, ids = _moe_routing(t)
            call = functools.partial(
                fused_moe_mxfp4, x, *weights, tw, ids, swiglu_limit=MOE_LIMIT, out=out, workspace=ws, act=act
            )
            for tile in tiles:
                moe_mxfp4._routed_tile = lambda slots, e, act_fp8=False, tile=tile: tile
                try:
                    res[(tp, t, tile)] = _bench_calls([call])
                finally:
                    moe_mxfp4._routed_tile = shipped
                print(f"  tp{tp} T={t} {tile_name(tile)}: {res[(tp, t, tile)]:.1f} us", file=sys.stderr, flush=True)
        weights = None
        torch.cuda.empty_cache()
    return res


def render(
    tiles: list[Tile], gates: dict[Tile, str], res: dict, tps: list[int], tokens: list[int], act: str = "bf16"
) -> str:
    from sglang_sm120.kernels import moe_mxfp4

    lines = sweep_table_head(
        f"Routed MXFP4 MoE tiles, E={MOE_E}, top-{MOE_TOPK}, H={MOE_H}, I={MOE_I}/TP, activations {act}; "
        f"DISABLE_MMA_V3={os.environ.get('DISABLE_MMA_V3', 'unset')}. µs per call (TFLOP/s); * = shipped choice, "
        "** = fastest.",
        ["TP", "T"], [tile_name(t) for t in tiles],
    )
    for tp in tps:
        inter = MOE_I // tp
        for t in tokens:
            times = {tile: res[(tp, t, tile)] for tile in tiles if (tp, t, tile) in res}
            best = min(times, key=times.get) if times else None
            ship = moe_mxfp4._routed_tile(t * MOE_TOPK, MOE_E, act == "mxfp8")
            cells = []
            for tile in tiles:
                us = times.get(tile)
                mark = ("**" if tile == best else "") + ("*" if tile == ship else "")
                tf = 6 * t * MOE_TOPK * MOE_H * inter / (us * 1e-6) / 1e12 if us else None
                cells.append("-" if us is None else f"{us:.0f} ({tf:.0f}){mark}")
            lines.append(f"| {tp} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "AOT gate (sm_120a, GEMM1 / GEMM2): " + "; ".join(f"{tile_name(t)} {g}" for t, g in gates.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--tokens", default="256,1024,4096,8192")
    ap.add_argument("--tiles", default=DEFAULT_TILES)
    ap.add_argument("--act", choices=("bf16", "mxfp8"), default="bf16", help="routed-path activations")
    add_sweep_args(ap)
    args = ap.parse_args()
    tiles = [parse_tile(s) for s in args.tiles.split(",")]
    from sglang_sm120.kernels.moe_mxfp4 import _BLOCK_MS

    if bad := [tile_name(t) for t in tiles if t[0] not in _BLOCK_MS]:
        ap.error(f"BLOCK_M of {', '.join(bad)} not in {_BLOCK_MS} (the workspace is sized for those)")
    tps = [int(v) for v in args.tp.split(",")]
    tokens = [int(v) for v in args.tokens.split(",")]
    checked = run_gates(aot_gate, [(t, args.act) for t in tiles], args.jobs, lambda key: tile_name(key[0]))
    gates = {tile: checked[(tile, args.act)] for tile in tiles}
    passing = [t for t in tiles if gates[t][0]]
    res = time_tiles(passing, tps, tokens, args.act)
    table = render(tiles, {t: why for t, (_, why) in gates.items()}, res, tps, tokens, args.act)
    emit_table(table, args.out)


if __name__ == "__main__":
    main()
