"""Benchmark: FP8 block-scaled GEMM / fp8_einsum and the MXFP4 routed-experts MoE (ours) vs baselines, one GPU.

    PYTHONPATH=. python scripts/bench_moe_gemm.py [--mma-v3 both|on|off] [--sections gemm,moe] [--out FILE]

Every time is the median of CUDA-graph replays (``triton.testing.do_bench_cudagraph``: no Python launch cost) of a
sequence of calls, divided by its length, and the calls cycle through inputs that do not fit in L2 (H100: 50 MB),
as in a model where every layer has its own weights.
GEMM: ours (``w8a8_block_fp8_linear``, bf16 in -> bf16 out, activation quant included) vs DeepGEMM
``fp8_gemm_nt`` (native SM90, activation pre-quantised), SGLang's ``triton_w8a8_block_fp8_linear`` and torch
dequant + matmul (weight pre-dequantised to bf16: the BF16-fallback cost). wo_a: ours ``fp8_einsum`` vs
``torch.einsum`` on bf16 weights. Each case cycles through copies of its weights (>= ``ROTATE_BYTES`` of FP8
weights in all). "ours" is timed with ``DISABLE_MMA_V3=1`` (mma.sync, the SM12x instruction mix; headline) and
without. GB/s counts weight bytes (FP8 + scales); peak = H100 HBM 3.35 TB/s.
MoE: ours (``fused_moe_mxfp4``, DSV4-Flash E=256 top-6, H=4096, I=2048/TP, swiglu_limit 10, uniform random
routing; "path": GEMV with the wide or small tile up to 64 tokens, the routed tl.dot pipeline with m-row expert
blocks above; ``--moe-routed-too`` also times the routed path where the GEMV runs) vs SGLang's
Marlin MXFP4 MoE (``fused_marlin_moe`` on ``prepare_moe_mxfp4_layer_for_marlin`` weights, native SM90) and
SGLang's Triton ``fused_experts`` on FP8 128x128-block experts; times include routing alignment. Each case cycles
through ``MOE_ROUTINGS`` random routings (1 at T > 64), so the experts read are not L2-resident. GB/s counts the
MXFP4 weight + scale bytes of the experts actually routed to (mean over the routings); TFLOP/s =
6 * T * top_k * H * I / t.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench_common import run_child, try_baseline

HBM_PEAK = 3.35e12
# name -> (N, K, groups); groups > 1 = wo_a einsum ([T, G, K] x [G, N, K])
SHAPES = {
    "wq_b TP2 (16384x1024)": (16384, 1024, 1),
    "wo_b TP2 (4096x4096)": (4096, 4096, 1),
    "wq_a (1024x4096)": (1024, 4096, 1),
    "shared gate_up (4096x4096)": (4096, 4096, 1),
    "wo_a TP2 (4x1024x4096)": (1024, 4096, 4),
}


MOE_E, MOE_H, MOE_I, MOE_TOPK, MOE_LIMIT = 256, 4096, 2048, 6, 10.0
MOE_ROUTINGS = 8
ROTATE_BYTES = 160 << 20  # GEMM: FP8 weight bytes cycled through per timing (> 3x an H100's L2)


def _emit(key: str, us: float) -> None:
    print(f"  {key}: {us:.1f} us", file=sys.stderr, flush=True)  # partial results survive a timeout


def _each(fns):
    """One callable making every call of ``fns`` in turn."""
    return lambda: [fn() for fn in fns]


def _bench_calls(fns) -> float:
    """us per call: median CUDA-graph replay of every ``fns`` in turn, divided by their number."""
    import triton

    _each(fns)()
    return triton.testing.do_bench_cudagraph(_each(fns), rep=50, return_mode="median") * 1e3 / len(fns)


def _weights(n: int, k: int, groups: int) -> list:
    """Copies (>= ROTATE_BYTES in all) of random FP8 ``[groups * n, k]`` weights with their fp32 128x128 scales."""
    import torch

    copies = -(-ROTATE_BYTES // (groups * n * k))
    return [
        (
            (torch.randn(groups * n, k, device="cuda") * 0.5).to(torch.float8_e4m3fn),
            torch.rand(groups * n // 128, k // 128, device="cuda") * 0.01,
        )
        for _ in range(copies)
    ]


def measure_ours(ms: list[int]) -> dict[str, float]:
    import torch

    from sglang_sm120.kernels.fp8_gemm import fp8_einsum, per_token_group_quant_fp8, w8a8_block_fp8_linear

    def case(n: int, k: int, groups: int, m: int) -> float:
        weights = _weights(n, k, groups)
        work = torch.empty(64 * m * n * groups, device="cuda")
        if groups == 1:
            x = torch.randn(m, k, device="cuda").bfloat16()
            return _bench_calls(
                [lambda w=w, ws=ws: w8a8_block_fp8_linear(x, w, [128, 128], ws, workspace=work) for w, ws in weights]
            )
        a, sa = per_token_group_quant_fp8(torch.randn(m * groups, k, device="cuda").bfloat16(), 128)
        d = torch.empty(m, groups, n, dtype=torch.bfloat16, device="cuda")
        a3, sa3 = a.view(m, groups, k), sa.view(m, groups, -1)
        return _bench_calls([
            lambda w=w, ws=ws: fp8_einsum("bhr,hdr->bhd", (a3, sa3), (w.view(groups, n, k), ws), d, workspace=work)
            for w, ws in weights
        ])  # fmt: skip

    res: dict[str, float] = {}
    for name, (n, k, groups) in SHAPES.items():
        for m in ms:
            res[f"{name}/{m}"] = case(n, k, groups, m)
            _emit(f"{name}/{m}", res[f"{name}/{m}"])
            torch.cuda.empty_cache()
    return res


def _moe_weights(tp: int):
    """Packed E2M1 bytes + UE8M0 scales in the pre-Marlin layout, DSV4-like magnitudes."""
    import torch

    inter = MOE_I // tp
    w13 = torch.randint(0, 256, (MOE_E, 2 * inter, MOE_H // 2), dtype=torch.uint8, device="cuda")
    w2 = torch.randint(0, 256, (MOE_E, MOE_H, inter // 2), dtype=torch.uint8, device="cuda")
    s13 = torch.randint(118, 124, (MOE_E, 2 * inter, MOE_H // 32), dtype=torch.uint8, device="cuda")
    s2 = torch.randint(118, 124, (MOE_E, MOE_H, inter // 32), dtype=torch.uint8, device="cuda")
    return w13.view(torch.int8), w2.view(torch.int8), s13, s2


def _moe_routings(t: int):
    return [_moe_routing(t, i) for i in range(MOE_ROUTINGS if t <= 64 else 1)]


def _moe_routing(t: int, seed: int = 0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(t + 100_003 * seed)
    ids = torch.rand(t, MOE_E, device="cuda", generator=g).argsort(1)[:, :MOE_TOPK].to(torch.int32)
    tw = torch.rand(t, MOE_TOPK, device="cuda", generator=g)
    return (tw / tw.sum(1, keepdim=True)).contiguous(), ids.contiguous()


def measure_moe_ours(tps: list[int], ts: list[int], routed_too: bool, act: str) -> dict[str, float]:
    """``moe/tp/T``: the shipped path; ``routed_too``: also ``moe_routed/tp/T``, the routed path forced where the
    GEMV path would run (to place :func:`gemv_max_tokens`)."""
    import torch

    from sglang_sm120.kernels import moe_mxfp4
    from sglang_sm120.kernels.moe_mxfp4 import fused_moe_mxfp4, moe_mxfp4_workspace

    def case(weights, t: int) -> float:
        x = torch.randn(t, MOE_H, device="cuda").bfloat16()
        out = torch.empty_like(x)
        ws = moe_mxfp4_workspace(t, MOE_TOPK, MOE_E, MOE_H, weights[1].shape[2] * 2, "cuda")
        return _bench_calls([
            lambda tw=tw, ids=ids: fused_moe_mxfp4(
                x, *weights, tw, ids, swiglu_limit=MOE_LIMIT, out=out, workspace=ws, act=act
            )
            for tw, ids in _moe_routings(t)
        ])  # fmt: skip

    res: dict[str, float] = {}
    for tp in tps:
        weights = _moe_weights(tp)
        for t in ts:
            res[f"moe/tp{tp}/{t}"] = case(weights, t)
            _emit(f"moe/tp{tp}/{t}", res[f"moe/tp{tp}/{t}"])
            if routed_too and t <= moe_mxfp4.gemv_max_tokens(MOE_I // tp):
                shipped = moe_mxfp4.GEMV_MAX_TOKENS, moe_mxfp4.GEMV_MAX_TOKENS_WIDE
                moe_mxfp4.GEMV_MAX_TOKENS = moe_mxfp4.GEMV_MAX_TOKENS_WIDE = 0
                try:
                    res[f"moe_routed/tp{tp}/{t}"] = case(weights, t)
                finally:
                    moe_mxfp4.GEMV_MAX_TOKENS, moe_mxfp4.GEMV_MAX_TOKENS_WIDE = shipped
                _emit(f"moe_routed/tp{tp}/{t}", res[f"moe_routed/tp{tp}/{t}"])
            torch.cuda.empty_cache()
        weights = None
        torch.cuda.empty_cache()
    return res


def _moe_path(tp: int, t: int) -> str:
    """Which code :func:`fused_moe_mxfp4` runs for T tokens at this TP on the current GPU."""
    import torch

    from sglang_sm120.kernels import moe_mxfp4

    if t > moe_mxfp4.gemv_max_tokens(MOE_I // tp):
        return f"routed m{moe_mxfp4._routed_tile(t * MOE_TOPK, MOE_E)[0]}"
    tile = moe_mxfp4._gemv_plan(t, MOE_TOPK, MOE_H, MOE_I // tp, moe_mxfp4.num_sms(torch.device("cuda")))[0]
    return "gemv wide" if tile is moe_mxfp4._WIDE else "gemv small"


def measure_moe_baselines(tps: list[int], ts: list[int]) -> tuple[dict[str, float], dict[str, int], list[str]]:
    """Marlin MXFP4 and SGLang Triton FP8 ``fused_experts`` times, experts hit per T, notes."""
    import torch

    res: dict[str, float] = {}
    hit: dict[str, int] = {}
    notes: set[str] = set()
    for t in ts:
        routs = _moe_routings(t)
        hit[str(t)] = sum(ids.unique().numel() for _, ids in routs) / len(routs)

    def marlin(w13, w2, s13, s2):
        from sglang.srt.layers.moe.fused_moe_triton.fused_marlin_moe import fused_marlin_moe
        from sglang.srt.layers.quantization.marlin_utils_fp4 import prepare_moe_mxfp4_layer_for_marlin

        layer = torch.nn.Module()
        e8m0 = torch.float8_e8m0fnu
        for name, val in (
            ("w13_weight", w13.clone()),
            ("w2_weight", w2.clone()),
            ("w13_weight_scale_inv", s13.view(e8m0).clone()),
            ("w2_weight_scale_inv", s2.view(e8m0).clone()),
        ):
            layer.register_parameter(name, torch.nn.Parameter(val, requires_grad=False))
        prepare_moe_mxfp4_layer_for_marlin(layer)

        def run(x, tw, ids):
            logits = torch.empty(x.shape[0], MOE_E, device="cuda")
            return lambda: fused_marlin_moe(
                x, layer.w13_weight, layer.w2_weight, layer.w13_weight_scale, layer.w2_weight_scale, logits, tw, ids,
                workspace=layer.workspace, num_bits=4, clamp_limit=MOE_LIMIT,
            )  # fmt: skip

        return run

    def sgl_fp8(w13, w2, s13, s2):
        from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
        from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import fused_experts
        from sglang.srt.layers.moe.topk import StandardTopKOutput

        inter = w2.shape[2] * 2

        def fp8(*shape):  # random finite e4m3 bytes
            b = torch.randint(0, 0x7E, shape, dtype=torch.uint8, device="cuda")
            return (b | (torch.randint(0, 2, shape, dtype=torch.uint8, device="cuda") << 7)).view(torch.float8_e4m3fn)

        f1, f2 = fp8(MOE_E, 2 * inter, MOE_H), fp8(MOE_E, MOE_H, inter)
        fs1 = torch.rand(MOE_E, 2 * inter // 128, MOE_H // 128, device="cuda") * 1e-3
        fs2 = torch.rand(MOE_E, MOE_H // 128, inter // 128, device="cuda") * 1e-3
        cfg = MoeRunnerConfig(
            num_experts=MOE_E,
            num_local_experts=MOE_E,
            hidden_size=MOE_H,
            intermediate_size_per_partition=inter,
            top_k=MOE_TOPK,
            inplace=False,
            swiglu_limit=MOE_LIMIT,
            gate_up_interleaved=False,
        )

        def run(x, tw, ids):
            topk = StandardTopKOutput(tw, ids, torch.empty(x.shape[0], MOE_E, device="cuda"))
            return lambda: fused_experts(
                x, f1, f2, topk, cfg, use_fp8_w8a8=True, w1_scale=fs1, w2_scale=fs2, block_shape=[128, 128]
            )

        return run

    def cases(name: str, run, tp: int) -> None:
        for t in ts:
            x = torch.randn(t, MOE_H, device="cuda").bfloat16()
            fns = []
            for tw, ids in _moe_routings(t):
                fn, why = try_baseline(name, lambda: run(x, tw, ids))  # noqa: B023 - called at once
                if fn is None:
                    notes.add(why)
                    return
                fns.append(fn)
            key = f"{name}/tp{tp}/{t}"
            try:
                res[key] = _bench_calls(fns)
                _emit(key, res[key])
            except Exception as e:  # noqa: BLE001 - e.g. not capturable in a CUDA graph
                notes.add(f"{name} failed to time: {type(e).__name__}: {str(e)[:100]}")

    for tp in tps:
        weights = _moe_weights(tp)
        for name, prep in (("marlin", marlin), ("sgl_fp8", sgl_fp8)):
            try:
                cases(name, prep(*weights), tp)
            except Exception as e:  # noqa: BLE001 - report any failure as unavailable
                notes.add(f"{name} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            torch.cuda.empty_cache()
        weights = None
        torch.cuda.empty_cache()
    return res, hit, sorted(notes)


def measure_baselines(ms: list[int]) -> tuple[dict[str, float], list[str]]:
    import torch

    from sglang_sm120.reference.fp8_gemm import per_token_group_quant_fp8_ref

    def case(name: str, n: int, k: int, groups: int, m: int) -> None:
        weights = _weights(n, k, groups)
        x = torch.randn(m, k, device="cuda").bfloat16()
        out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        a, sa = per_token_group_quant_fp8_ref(x, 128)

        def deepgemm(w, ws):
            import deep_gemm

            if groups > 1:
                raise RuntimeError("DeepGEMM fp8_einsum is SM100-only")
            return lambda: deep_gemm.fp8_gemm_nt((a, sa), (w, ws), out)

        def sgl_triton(w, ws):
            from sglang.srt.layers.quantization.fp8_utils import triton_w8a8_block_fp8_linear as f

            if groups > 1:
                raise RuntimeError("SGLang has no Triton FP8 einsum")
            return lambda: f(x, w, [128, 128], ws)

        def torch_bf16(w, ws):
            wbf = (w.float() * ws.repeat_interleave(128, 0).repeat_interleave(128, 1)).bfloat16()
            if groups == 1:
                return lambda: x @ wbf.t()
            o = torch.randn(m, groups, k, device="cuda").bfloat16()
            return lambda: torch.einsum("tgd,grd->tgr", o, wbf.view(groups, n, k))

        for key, make in {"deepgemm": deepgemm, "sgl_triton": sgl_triton, "torch_bf16": torch_bf16}.items():
            fn, why = try_baseline(key, lambda: make(*weights[0]))  # noqa: B023 - called at once
            if fn is None:
                notes.add(why)
                continue
            try:
                res[f"{key}/{name}/{m}"] = _bench_calls([fn] + [make(w, ws) for w, ws in weights[1:]])
                _emit(f"{key}/{name}/{m}", res[f"{key}/{name}/{m}"])
            except Exception as e:  # noqa: BLE001 - e.g. not capturable in a CUDA graph
                notes.add(f"{key} failed to time: {type(e).__name__}: {str(e)[:100]}")

    res: dict[str, float] = {}
    notes: set[str] = set()
    for name, (n, k, groups) in SHAPES.items():
        for m in ms:
            case(name, n, k, groups, m)
            torch.cuda.empty_cache()
    return res, sorted(notes)


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render(ms, off, on, base, notes, device: str) -> str:
    lines = [
        f"Device: {device}. ours(off) = DISABLE_MMA_V3=1 (headline), ours(on) = Triton default. Weights FP8 "
        "128x128 blocks, fp32 scales; times include activation quantisation (ours, SGLang Triton).",
        "",
        "| op | M | ours(off) us | ours(on) us | GB/s weights (off) | % HBM | TFLOP/s (off) | DeepGEMM us "
        "| SGLang Triton us | torch bf16 us | ours/DeepGEMM throughput |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (n, k, groups) in SHAPES.items():
        wbytes = groups * n * k * (1 + 4 / 128 / 128)
        for m in ms:
            key = f"{name}/{m}"
            t = off.get(key)
            gbs = wbytes / (t * 1e-6) / 1e9 if t else None
            tf = 2 * m * n * k * groups / (t * 1e-6) / 1e12 if t else None
            dg = base.get(f"deepgemm/{key}")
            lines.append(
                f"| {name} | {m} | {_fmt(t)} | {_fmt(on.get(key))} | {_fmt(gbs, 0)} | "
                f"{_fmt(gbs / HBM_PEAK * 1e11 if gbs else None)} | {_fmt(tf, 2)} | {_fmt(dg)} | "
                f"{_fmt(base.get(f'sgl_triton/{key}'))} | {_fmt(base.get(f'torch_bf16/{key}'))} | "
                f"{_fmt(dg / t if dg and t else None, 2)} |"
            )
    return "\n".join([*lines, "", *notes])


def render_moe(tps, ts, off, on, base, hit, notes, act) -> str:
    lines = [
        f"MoE (MXFP4 routed experts, E={MOE_E}, top-{MOE_TOPK}, H={MOE_H}, I={MOE_I}/TP, swiglu_limit "
        f"{MOE_LIMIT}); ours: routed-path activations {act}; GB/s and % HBM on the MXFP4 bytes of the experts hit; "
        "ours/Marlin < 1 = faster.",
        "",
        "| TP | T | path | experts hit | ours(off) us | ours(on) us | routed forced (off) us | GB/s (off) | % HBM "
        "| TFLOP/s (off) | Marlin us | ours/Marlin time | SGLang Triton FP8 us |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tp in tps:
        inter = MOE_I // tp
        per_expert = 3 * inter * MOE_H // 2 + 3 * inter * MOE_H // 32  # packed E2M1 + UE8M0 scales
        for t in ts:
            key = f"tp{tp}/{t}"
            n_hit = hit.get(str(t))
            mar = base.get(f"marlin/{key}")
            tm = off.get(f"moe/{key}")
            gbs = n_hit * per_expert / (tm * 1e-6) / 1e9 if tm and n_hit else None
            tf = 6 * t * MOE_TOPK * MOE_H * inter / (tm * 1e-6) / 1e12 if tm else None
            lines.append(
                f"| {tp} | {t} | {_moe_path(tp, t)} | {_fmt(n_hit)} | {_fmt(tm)} | {_fmt(on.get(f'moe/{key}'))} | "
                f"{_fmt(off.get(f'moe_routed/{key}'))} | {_fmt(gbs, 0)} | "
                f"{_fmt(gbs / HBM_PEAK * 1e11 if gbs else None)} | {_fmt(tf, 2)} | {_fmt(mar)} | "
                f"{_fmt(tm / mar if tm and mar else None, 2)} | {_fmt(base.get(f'sgl_fp8/{key}'))} |"
            )
    return "\n".join([*lines, "", *notes])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mma-v3", choices=("on", "off", "both"), default="both")
    ap.add_argument("--sections", default="gemm,moe", help="comma list of gemm, moe")
    ap.add_argument("--ms", default="1,8,16,64,4096")
    ap.add_argument("--moe-tp", default="1,2,4,8", help="MoE: TP splits of the intermediate size")
    ap.add_argument("--moe-tokens", default="1,4,8,32,64,65,256,1024,4096")
    ap.add_argument(
        "--moe-routed-too", action="store_true", help="MoE: also time the routed path where the GEMV runs"
    )
    ap.add_argument("--moe-act", choices=("bf16", "mxfp8"), default="bf16",
                    help="MoE: activations of our routed path (mxfp8 = W4A8, block-scaled MMA on SM12x)")
    ap.add_argument("--out", default=None, help="save the markdown tables here")
    ap.add_argument("--json-ours", default=None, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    ms = [int(x) for x in args.ms.split(",")]
    tps = [int(x) for x in args.moe_tp.split(",")]
    ts = [int(x) for x in args.moe_tokens.split(",")]
    sections = set(args.sections.split(","))

    if args.json_ours:
        res = measure_ours(ms) if "gemm" in sections else {}
        if "moe" in sections:
            res.update(measure_moe_ours(tps, ts, args.moe_routed_too, args.moe_act))
        with open(args.json_ours, "w") as f:
            json.dump(res, f)
        return

    def child(disable: bool) -> dict[str, float]:
        return run_child(
            __file__,
            "--json-ours",
            [
                "--ms",
                args.ms,
                "--sections",
                args.sections,
                "--moe-tp",
                args.moe_tp,
                "--moe-tokens",
                args.moe_tokens,
                *(["--moe-routed-too"] if args.moe_routed_too else []),
                "--moe-act",
                args.moe_act,
            ],
            disable_mma_v3=disable,
        )

    off = child(True) if args.mma_v3 in ("off", "both") else {}
    on = child(False) if args.mma_v3 in ("on", "both") else {}
    import torch

    tables = []
    if "gemm" in sections:
        base, notes = measure_baselines(ms)
        tables.append(render(ms, off, on, base, notes, torch.cuda.get_device_name()))
        print(tables[-1], flush=True)
    if "moe" in sections:
        base, hit, notes = measure_moe_baselines(tps, ts)
        tables.append(render_moe(tps, ts, off, on, base, hit, notes, args.moe_act))
        print(tables[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
