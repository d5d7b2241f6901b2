"""Benchmark sparse MLA decode (DeepSeek-V4, TP=2: 32 heads, SWA 128 + C4 top-k 512) on one GPU.

    PYTHONPATH=. python scripts/bench_sparse_mla.py [--mma-v3 both|on|off] [--out FILE]

Compares, on identical inputs: ours (sglang_sm120.kernels.sparse_mla), the PyTorch reference,
SGLang 0.5.16's SM120 Triton kernel (flash_mla_sparse_decode_triton) and sgl-kernel's FlashMLA
sparse decode (SM90; needs 64 q-heads, so it runs the 64-head padded problem SGLang runs on SM90).
"Ours" is timed with DISABLE_MMA_V3=1 (mma.sync, the SM12x instruction mix; headline) and without
(wgmma).  GB/s = bytes the kernel must read (valid candidate rows x 584 B + q + indices) plus the
bf16 output written, over the measured time; H100 HBM peak 3.35 TB/s.  "tile" is the tile the op
picked for the shape (``h<heads>n<candidates>``, ``l2`` = L2 prefetch) and its split count.  All
timings are CUDA-graph replays except the PyTorch reference and SGLang's Triton kernel (eager).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from bench_common import run_child

HBM_PEAK_GBS = 3350.0
HEADS, SWA, TOPK = 32, 128, 512
SWA_P, C4_P = 256, 64
BATCHES = ((1, 1), (8, 1), (32, 1), (64, 1), (8, 2), (32, 2))  # (requests, q_len)
CASES = [(ctx, bs, s_q) for ctx in (8192, 65536) for bs, s_q in BATCHES]


def make_inputs(ctx: int, bs: int, s_q: int, seed: int = 0):
    """Per request: its own raw pages (SWA window of 128) and C4 pages (ctx/4 compressed tokens)."""
    from sglang_sm120.reference.sparse_mla import pack_kv_cache

    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = "cuda"
    t = bs * s_q
    swa_pages_per_req = 1
    c4_pages_per_req = max(1, ctx // 4 // C4_P)
    swa = pack_kv_cache(torch.randn(bs * swa_pages_per_req, SWA_P, 512, device=dev, generator=g))
    c4 = pack_kv_cache(torch.randn(bs * c4_pages_per_req, C4_P, 512, device=dev, generator=g))
    req = torch.arange(t, device=dev) // s_q
    swa_idx = (req[:, None] * SWA_P + torch.arange(SWA, device=dev)[None]).int()
    c4_idx = (
        torch.stack([torch.randperm(c4_pages_per_req * C4_P, device=dev, generator=g)[:TOPK] for _ in range(t)]).int()
        + (req * c4_pages_per_req * C4_P)[:, None].int()
    )
    q = (torch.randn(t, 64, 512, device=dev, generator=g) * 0.5).bfloat16()
    sink = torch.randn(64, device=dev, generator=g)
    swa_len = torch.full((bs,), SWA, dtype=torch.int32, device=dev)
    c4_len = torch.full((bs,), TOPK, dtype=torch.int32, device=dev)
    return q, swa, swa_idx, swa_len, c4, c4_idx, c4_len, sink


def bytes_moved(t: int, heads: int) -> int:
    return t * ((SWA + TOPK) * (584 + 4) + heads * 512 * 2 * 2)


def _time(fn, graph: bool) -> float:
    import triton.testing as tt

    fn()
    torch.cuda.synchronize()
    if graph:
        try:
            return tt.do_bench_cudagraph(fn, rep=100) * 1e3
        except Exception:  # noqa: BLE001 - fall back to eager timing
            pass
    return tt.do_bench(fn, warmup=25, rep=100) * 1e3


def tile_name(t: int) -> str:
    """``h<BLOCK_H>n<BLOCK_N>[l2]/<splits>`` the op launches for ``t`` rows of ``HEADS`` heads."""
    from sglang_sm120.kernels import sparse_mla as K

    splits = K.choose_num_splits(t, HEADS, SWA, TOPK, torch.device("cuda"))
    cfg = K._pick_cfg(t, HEADS, torch.device("cuda"), split=splits > 1)
    return f"h{cfg.block_h}n{cfg.block_n}{'l2' if cfg.l2_ahead else ''}/{splits}"


def bench_ours(inp, bs, s_q) -> float:
    from sglang_sm120.kernels import sparse_mla as K

    q, swa, swa_idx, swa_len, c4, c4_idx, c4_len, sink = inp
    t = bs * s_q
    q32 = q[:, :HEADS].contiguous()
    out = torch.empty(t, HEADS, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(t, HEADS, dtype=torch.float32, device="cuda")
    splits = K.choose_num_splits(t, HEADS, SWA, TOPK, q.device)
    ws = K.workspace_for(t, HEADS, SWA, TOPK, "cuda")
    sink32 = sink[HEADS : 2 * HEADS]
    return _time(
        lambda: K.sparse_mla_fwd(
            q32,
            swa,
            swa_idx,
            swa_len,
            sink32,
            c4,
            c4_idx,
            c4_len,
            out,
            lse,
            ws,
            splits,
            rows_per_length=s_q,
        ),
        graph=True,
    )


def bench_baselines(inp, bs, s_q) -> dict[str, float | str]:
    from sglang_sm120.reference.sparse_mla import sparse_mla_ref

    q, swa, swa_idx, swa_len, c4, c4_idx, c4_len, sink = inp
    t = bs * s_q
    q32 = q[:, :HEADS].contiguous()
    sink32 = sink[HEADS : 2 * HEADS].contiguous()
    res: dict[str, float | str] = {}
    rl, cl = swa_len.repeat_interleave(s_q), c4_len.repeat_interleave(s_q)
    res["torch"] = _time(lambda: sparse_mla_ref(q32, swa, swa_idx, rl, sink32, c4, c4_idx, cl), graph=False)
    try:
        from sglang.kernels.ops.attention.flash_mla_sm120_triton import flash_mla_sparse_decode_triton

        res["sglang_triton"] = _time(
            lambda: flash_mla_sparse_decode_triton(
                q32.view(t, 1, HEADS, 512),
                swa,
                swa_idx.view(t, 1, -1),
                rl,
                sink32,
                512,
                512**-0.5,
                c4,
                c4_idx.view(t, 1, -1),
                cl,
            ),
            graph=False,
        )
    except Exception as exc:  # noqa: BLE001
        res["sglang_triton"] = f"unavailable: {type(exc).__name__}: {exc}".splitlines()[0][:120]
    try:
        from sgl_kernel.flash_mla import flash_mla_with_kvcache, get_mla_metadata

        meta = get_mla_metadata()[0]
        q4 = q.view(bs, s_q, 64, 512)

        def fm():
            flash_mla_with_kvcache(
                q=q4,
                k_cache=swa,
                block_table=None,
                cache_seqlens=None,
                head_dim_v=512,
                tile_scheduler_metadata=meta,
                softmax_scale=512**-0.5,
                is_fp8_kvcache=True,
                indices=swa_idx.view(bs, s_q, -1),
                topk_length=swa_len,
                attn_sink=sink,
                extra_k_cache=c4,
                extra_indices_in_kvcache=c4_idx.view(bs, s_q, -1),
                extra_topk_length=c4_len,
            )

        res["flashmla_64h"] = _time(fm, graph=True)
    except Exception as exc:  # noqa: BLE001
        res["flashmla_64h"] = f"unavailable: {type(exc).__name__}: {exc}".splitlines()[0][:120]
    return res


def measure_rows(with_baselines: bool) -> list[dict]:
    rows = []
    for ctx, bs, s_q in CASES:
        inp = make_inputs(ctx, bs, s_q)
        row = {"ctx": ctx, "bs": bs, "s_q": s_q, "ours": bench_ours(inp, bs, s_q), "tile": tile_name(bs * s_q)}
        if with_baselines:
            row.update(bench_baselines(inp, bs, s_q))
        rows.append(row)
        del inp
        torch.cuda.empty_cache()
    return rows


def _fmt(x) -> str:
    return f"{x:.1f}" if isinstance(x, float) else "n/a"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table; the headline "ours" column is mma.sync (``off``) when measured."""
    head_mode = "off" if "off" in results else "on"
    rows = results[head_mode]
    on_rows = results.get("on", []) if head_mode == "off" else []
    other = {(r["ctx"], r["bs"], r["s_q"]): r["ours"] for r in on_rows}
    label = "mma.sync" if head_mode == "off" else "wgmma"
    lines = [
        f"| ctx | bs | q_len | tile | ours µs ({label}) | ours µs (wgmma) | torch µs | sglang triton µs "
        "| FlashMLA SM90 µs (64 h) | × vs triton | ours / FlashMLA | GB/s | % HBM peak |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        key = (r["ctx"], r["bs"], r["s_q"])
        ours = r["ours"]
        gbs = bytes_moved(r["bs"] * r["s_q"], HEADS) / (ours * 1e-6) / 1e9
        tri, fm = r.get("sglang_triton"), r.get("flashmla_64h")
        speed = f"{tri / ours:.2f}" if isinstance(tri, float) else "n/a"
        ratio = f"{ours / fm:.2f}" if isinstance(fm, float) else "n/a"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {r['tile']} | {ours:.1f} | {_fmt(other.get(key))} "
            f"| {_fmt(r.get('torch'))} | {_fmt(tri)} | {_fmt(fm)} | {speed} | {ratio} | {gbs:.0f} "
            f"| {100 * gbs / HBM_PEAK_GBS:.0f} |"
        )
    notes = sorted({f"{k}: {v}" for r in rows for k, v in r.items() if isinstance(v, str) and k != "tile"})
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mma-v3", choices=("on", "off", "both"), default="both")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json_child:
        rows = measure_rows(with_baselines=os.environ.get("BENCH_SPARSE_MLA_BASELINES") == "1")
        with open(args.json_child, "w") as f:
            json.dump(rows, f)
        return 0
    modes = ("off", "on") if args.mma_v3 == "both" else (args.mma_v3,)
    results = {}
    for i, mode in enumerate(modes):
        results[mode] = run_child(
            __file__,
            "--json-child",
            [],
            disable_mma_v3=mode == "off",
            env={"BENCH_SPARSE_MLA_BASELINES": "1" if i == 0 else "0"},
        )
    md = table(results)
    print(f"GPU: {torch.cuda.get_device_name()}  heads={HEADS} swa={SWA} c4_topk={TOPK}\n")
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
