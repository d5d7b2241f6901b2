"""Sweep: FP8 block-GEMM prefill tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) on the DSV4 linears, one GPU.

    DISABLE_MMA_V3=1 PYTHONPATH=. python scripts/tune_fp8_gemm.py [--m 1024,4096,8192] [--tiles 128x64x64w4s4,...]
                                       [--out FILE.md]

Every candidate first passes the AOT gate for ``sm_120a`` (the fp8-activation, bf16-output builds with fp32 and
UE8M0 weight scales, 128-wide scale blocks, every alignment variant: <= 101,376 B shared memory, 0 spills); a failing
one is listed and not timed. Each passing tile is forced through ``fp8_gemm.config_for`` (no split-K) and timed as
``w8a8_block_fp8_linear`` (bf16 in, bf16 out, the separate activation-quant launch included) on the linears of
``bench_moe_gemm.py`` with its weight rotation, at every M: median CUDA-graph replay in µs and TFLOP/s. The last
column is DeepGEMM's ``fp8_gemm_nt`` (SM90, activations quantised beforehand) when it is installed. The table marks
the shipped prefill tile (*) and the fastest per row (**). Headline numbers need ``DISABLE_MMA_V3=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bench_common import add_sweep_args, aot_all_variants, emit_table, run_gates, sweep_table_head, try_baseline
from bench_moe_gemm import SHAPES, _bench_calls, _weights
from tune_moe_routed import Tile, parse_tile, tile_name

SCALE_K = 128
# The shipped prefill tile, its 128-wide-K twin (0-spill once the weight scale is folded into the row scale: 255
# registers), and neighbours with fewer registers or other warp counts.
DEFAULT_TILES = "128x64x64w4s4,128x64x128w4s3,128x64x128w4s4,128x128x64w8s4,128x128x64w8s3,64x128x64w4s4,64x64x128w4s4"
LINEARS = {name: (n, k) for name, (n, k, groups) in SHAPES.items() if groups == 1}


def _config(tile: Tile):
    from sglang_sm120.kernels.fp8_gemm import GemmConfig

    bm, bn, bk, nw, ns = tile
    return GemmConfig(bm, bn, nw, ns, waves=1, block_k=bk)


def aot_gate(tile: Tile) -> tuple[bool, str]:
    """(passes, "regs fp32/u8 smem" or the problems) of the prefill builds on sm_120a, every alignment variant."""
    from sglang_sm120.kernels import fp8_gemm
    from sglang_sm120.kernels.registry import registered

    kernels = {k.name: k for k in registered()}
    regs, problems, smem = [], [], 0
    for scales, e8m0 in (("fp32", False), ("u8", True)):
        name = f"fp8_gemm.gemm[a=fp8e4nv,c=bf16,s={scales}]"
        reg, smem, found = aot_all_variants(kernels[name], fp8_gemm._aot_config(_config(tile), SCALE_K, False, e8m0))
        regs.append(str(reg))
        problems += [f"{name}: {p}" for p in found]
    return not problems, "; ".join(problems) or f"regs {'/'.join(regs)}, smem {smem}"


def time_tiles(tiles: list[Tile], ms: list[int]) -> tuple[dict[tuple[str, int, Tile | str], float], list[str]]:
    """µs per linear for every (shape, M, tile), plus ``"deepgemm"`` in the tile slot where it runs."""
    import torch

    from sglang_sm120.kernels import fp8_gemm
    from sglang_sm120.reference.fp8_gemm import per_token_group_quant_fp8_ref

    shipped = fp8_gemm.config_for
    res: dict[tuple[str, int, Tile | str], float] = {}
    notes: set[str] = set()
    for name, (n, k) in LINEARS.items():
        weights = _weights(n, k, 1)
        for m in ms:
            x = torch.randn(m, k, device="cuda").bfloat16()
            for tile in tiles:
                fp8_gemm.config_for = lambda m_, scale_k, tile=tile: _config(tile)
                try:
                    calls = [lambda w=w, ws=ws, x=x: fp8_gemm.w8a8_block_fp8_linear(x, w, [SCALE_K, SCALE_K], ws)
                             for w, ws in weights]
                    res[(name, m, tile)] = _bench_calls(calls)
                finally:
                    fp8_gemm.config_for = shipped
                print(f"  {name} M={m} {tile_name(tile)}: {res[(name, m, tile)]:.1f} us", file=sys.stderr, flush=True)
            a, sa = per_token_group_quant_fp8_ref(x, SCALE_K)
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")

            def deepgemm(w, ws, a=a, sa=sa, out=out):
                import deep_gemm

                return lambda: deep_gemm.fp8_gemm_nt((a, sa), (w, ws), out)

            fn, why = try_baseline("DeepGEMM fp8_gemm_nt", lambda: deepgemm(*weights[0]))  # noqa: B023 - called at once
            if fn is None:
                notes.add(why)
            else:
                res[(name, m, "deepgemm")] = _bench_calls([fn] + [deepgemm(w, ws) for w, ws in weights[1:]])
        weights = None
        torch.cuda.empty_cache()
    return res, sorted(notes)


def render(tiles: list[Tile], gates: dict[Tile, str], res: dict, ms: list[int], notes: Sequence[str] = ()) -> str:
    from sglang_sm120.kernels import fp8_gemm

    ship = fp8_gemm.config_for(max(ms), SCALE_K)
    ship_tile = (ship.block_m, ship.block_n, ship.block_k or SCALE_K, ship.num_warps, ship.num_stages)
    lines = sweep_table_head(
        f"FP8 block GEMM (128x128 scales) prefill tiles, bf16 in/out, activation quant included; "
        f"DISABLE_MMA_V3={os.environ.get('DISABLE_MMA_V3', 'unset')}. µs per linear (TFLOP/s); * = shipped "
        "prefill tile, ** = fastest of ours.",
        ["linear", "M"], [*map(tile_name, tiles), "DeepGEMM SM90"],
    )
    for name, (n, k) in LINEARS.items():
        for m in ms:
            times = {t: res[(name, m, t)] for t in tiles if (name, m, t) in res}
            best = min(times, key=times.get) if times else None
            cells = []
            for t in [*tiles, "deepgemm"]:
                us = res.get((name, m, t))
                mark = ("**" if t == best else "") + ("*" if t == ship_tile else "")
                cells.append("-" if us is None else f"{us:.0f} ({2 * m * n * k / (us * 1e-6) / 1e12:.0f}){mark}")
            lines.append(f"| {name} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "AOT gate (sm_120a, fp32 / UE8M0 weight scales): "
              + "; ".join(f"{tile_name(t)} {g}" for t, g in gates.items())]
    return "\n".join([*lines, *notes])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1024,4096,8192", help="rows (tokens) per linear")
    ap.add_argument("--tiles", default=DEFAULT_TILES)
    add_sweep_args(ap)
    args = ap.parse_args()
    tiles = [parse_tile(s) for s in args.tiles.split(",")]
    if bad := [tile_name(t) for t in tiles if SCALE_K % t[2]]:
        ap.error(f"BLOCK_K of {', '.join(bad)} must divide the scale block {SCALE_K}")
    ms = [int(v) for v in args.m.split(",")]
    gates = run_gates(aot_gate, [(t,) for t in tiles], args.jobs, lambda key: tile_name(key[0]))
    passing = [t for t in tiles if gates[(t,)][0]]
    res, notes = time_tiles(passing, ms)
    emit_table(render(tiles, {t: why for (t,), (_, why) in gates.items()}, res, ms, notes), args.out)


if __name__ == "__main__":
    main()
