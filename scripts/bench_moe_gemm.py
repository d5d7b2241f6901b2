"""Benchmark: FP8 block-scaled GEMM and fp8_einsum (ours) vs DeepGEMM / SGLang Triton / torch on one GPU.

    PYTHONPATH=. python scripts/bench_moe_gemm.py [--mma-v3 both|on|off] [--out FILE]

GEMM: ours (``w8a8_block_fp8_linear``, bf16 in -> bf16 out, activation quant included) vs DeepGEMM
``fp8_gemm_nt`` (native SM90, activation pre-quantised), SGLang's ``triton_w8a8_block_fp8_linear`` and torch
dequant + matmul (weight pre-dequantised to bf16: the BF16-fallback cost). wo_a: ours ``fp8_einsum`` vs
``torch.einsum`` on bf16 weights. "ours" is timed with ``DISABLE_MMA_V3=1`` (mma.sync, the SM12x instruction
mix; headline) and without. GB/s counts weight bytes (FP8 + scales); peak = H100 HBM 3.35 TB/s.
MoE (MXFP4) is not implemented yet: no rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HBM_PEAK = 3.35e12
# name -> (N, K, groups); groups > 1 = wo_a einsum ([T, G, K] x [G, N, K])
SHAPES = {
    "wq_b TP2 (16384x1024)": (16384, 1024, 1),
    "wo_b TP2 (4096x4096)": (4096, 4096, 1),
    "wq_a (1024x4096)": (1024, 4096, 1),
    "shared gate_up (4096x4096)": (4096, 4096, 1),
    "wo_a TP2 (4x1024x4096)": (1024, 4096, 4),
}


def _bench(fn) -> float:
    import torch
    import triton

    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=5, rep=30) * 1e3  # us


def _inputs(n: int, k: int, groups: int, m: int):
    import torch

    w = (torch.randn(groups * n, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    ws = torch.rand(groups * n // 128, k // 128, device="cuda") * 0.01
    x = torch.randn(m, k, device="cuda").bfloat16()
    return w, ws, x


def measure_ours(ms: list[int]) -> dict[str, float]:
    import torch

    from sglang_sm120.kernels.fp8_gemm import fp8_einsum, per_token_group_quant_fp8, w8a8_block_fp8_linear

    def case(n: int, k: int, groups: int, m: int) -> float:
        w, ws, x = _inputs(n, k, groups, m)
        work = torch.empty(64 * m * n * groups, device="cuda")
        if groups == 1:
            return _bench(lambda: w8a8_block_fp8_linear(x, w, [128, 128], ws, workspace=work))
        a, sa = per_token_group_quant_fp8(torch.randn(m * groups, k, device="cuda").bfloat16(), 128)
        d = torch.empty(m, groups, n, dtype=torch.bfloat16, device="cuda")
        a3, sa3 = a.view(m, groups, k), sa.view(m, groups, -1)
        return _bench(lambda: fp8_einsum("bhr,hdr->bhd", (a3, sa3), (w.view(groups, n, k), ws), d, workspace=work))

    res: dict[str, float] = {}
    for name, (n, k, groups) in SHAPES.items():
        for m in ms:
            res[f"{name}/{m}"] = case(n, k, groups, m)
            torch.cuda.empty_cache()
    return res


def _try(name: str, make):
    try:
        fn = make()
        fn()
        return fn, ""
    except Exception as e:  # noqa: BLE001 - report any failure as unavailable
        return None, f"{name} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def measure_baselines(ms: list[int]) -> tuple[dict[str, float], list[str]]:
    import torch

    from sglang_sm120.reference.fp8_gemm import per_token_group_quant_fp8_ref

    def case(name: str, n: int, k: int, groups: int, m: int) -> None:
        w, ws, x = _inputs(n, k, groups, m)
        wbf = (w.float() * ws.repeat_interleave(128, 0).repeat_interleave(128, 1)).bfloat16()

        def deepgemm():
            import deep_gemm

            if groups > 1:
                raise RuntimeError("DeepGEMM fp8_einsum is SM100-only")
            a, sa = per_token_group_quant_fp8_ref(x, 128)
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            return lambda: deep_gemm.fp8_gemm_nt((a, sa), (w, ws), out)

        def sgl_triton():
            from sglang.srt.layers.quantization.fp8_utils import triton_w8a8_block_fp8_linear as f

            if groups > 1:
                raise RuntimeError("SGLang has no Triton FP8 einsum")
            return lambda: f(x, w, [128, 128], ws)

        def torch_bf16():
            if groups == 1:
                return lambda: x @ wbf.t()
            o = torch.randn(m, groups, k, device="cuda").bfloat16()
            return lambda: torch.einsum("tgd,grd->tgr", o, wbf.view(groups, n, k))

        for key, make in {"deepgemm": deepgemm, "sgl_triton": sgl_triton, "torch_bf16": torch_bf16}.items():
            fn, why = _try(key, make)
            if fn is None:
                notes.add(why)
                continue
            try:
                res[f"{key}/{name}/{m}"] = _bench(fn)
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
    lines += ["", "MoE (MXFP4): not implemented in this revision.", *notes]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mma-v3", choices=("on", "off", "both"), default="both")
    ap.add_argument("--ms", default="1,8,16,64,4096")
    ap.add_argument("--out", default=None, help="save the markdown table here")
    ap.add_argument("--json-ours", default=None, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    ms = [int(x) for x in args.ms.split(",")]

    if args.json_ours:
        with open(args.json_ours, "w") as f:
            json.dump(measure_ours(ms), f)
        return

    def child(disable: bool) -> dict[str, float]:
        env = dict(os.environ)
        env.pop("DISABLE_MMA_V3", None)
        if disable:
            env["DISABLE_MMA_V3"] = "1"
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            path = tmp.name
        subprocess.run([sys.executable, __file__, "--json-ours", path, "--ms", args.ms], env=env, check=True)
        with open(path) as f:
            return json.load(f)

    off = child(True) if args.mma_v3 in ("off", "both") else {}
    on = child(False) if args.mma_v3 in ("on", "both") else {}
    import torch

    base, notes = measure_baselines(ms)
    table = render(ms, off, on, base, notes, torch.cuda.get_device_name())
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
