"""Benchmark the mHC kernels against SGLang's native mHC path and the PyTorch reference.

    PYTHONPATH=. python scripts/bench_mhc.py [--tokens 1,8,64,4096] [--mma-v3 both] [--out FILE]

Ops (hidden 4096, hc_mult 4, fused RMSNorm where SGLang fuses it): ``mhc_pre``, ``mhc_post``,
``mhc_fused_post_pre``.  Native = ``sglang.kernels.ops.layernorm.mhc`` (SGLang >= 0.5.16) with
``SGLANG_OPT_DEEPGEMM_HC_PRENORM=1`` (DeepGEMM ``tf32_hc_prenorm_gemm`` + TileLang kernels).
Ours runs with ``DISABLE_MMA_V3=1`` (mma.sync, as on SM12x; headline) and with Triton's default.
Times: CUDA-graph replays (``do_bench_cudagraph``) for T <= 64, ``do_bench`` otherwise; median us.
GB/s counts compulsory HBM bytes once (residual in/out, x, y, fn); a second residual read by the
finalize kernel is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

HBM_PEAK_GBS = 3350.0
HIDDEN, HC, N_MIX = 4096, 4, 24
EPS, ITERS, POST_MULT = 1e-6, 20, 2.0
OPS = ("mhc_pre", "mhc_post", "mhc_fused_post_pre")


def _inputs(num_tokens: int):
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    k = HC * HIDDEN
    return {
        "residual": torch.randn(num_tokens, HC, HIDDEN, device="cuda", generator=g).bfloat16(),
        "x": torch.randn(num_tokens, HIDDEN, device="cuda", generator=g).bfloat16(),
        "post": 2 * torch.rand(num_tokens, HC, 1, device="cuda", generator=g),
        "comb": torch.softmax(torch.randn(num_tokens, HC, HC, device="cuda", generator=g), -1),
        "fn": torch.randn(N_MIX, k, device="cuda", generator=g) * (4.0 / k**0.5),
        "scale": torch.tensor([0.8, 0.6, 1.5], device="cuda"),
        "base": torch.randn(N_MIX, device="cuda", generator=g) * 0.5,
        "weight": (1 + 0.2 * torch.randn(HIDDEN, device="cuda", generator=g)).bfloat16(),
    }


def _bytes(op: str, num_tokens: int) -> int:
    res, vec, fn = num_tokens * HC * HIDDEN * 2, num_tokens * HIDDEN * 2, N_MIX * HC * HIDDEN * 4
    return {
        "mhc_pre": res + fn + vec,
        "mhc_post": 2 * res + vec,
        "mhc_fused_post_pre": 2 * res + vec + fn + vec,
    }[op]


def _call(mod, op: str, a: dict):
    pre_args = (a["fn"], a["scale"], a["base"], EPS, EPS, EPS, POST_MULT, ITERS)
    norm = dict(norm_weight=a["weight"], norm_eps=EPS)
    if op == "mhc_pre":
        return lambda: mod.mhc_pre(a["residual"], *pre_args, **norm)
    if op == "mhc_post":
        return lambda: mod.mhc_post(a["x"], a["residual"], a["post"], a["comb"])
    return lambda: mod.mhc_fused_post_pre(a["x"], a["residual"], a["post"], a["comb"], *pre_args, **norm)


def _time_us(fn, num_tokens: int) -> float:
    import torch
    import triton.testing

    fn()
    torch.cuda.synchronize()
    if num_tokens <= 64:
        return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def _native_module():
    """SGLang's mHC module with the distributed-only hooks stubbed (standalone process)."""
    os.environ.setdefault("SGLANG_OPT_DEEPGEMM_HC_PRENORM", "1")
    import sglang.kernels.ops.layernorm.mhc as native

    native.use_symmetric_memory = lambda *a, **k: contextlib.nullcontext()
    native.get_tp_group = lambda: None
    native.is_allocation_symmetric = lambda: False
    native.is_dsa_prefill_cp_round_robin_split = lambda: False
    return native


def _max_diff(a, b) -> float:
    if isinstance(a, (tuple, list)):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    return float((a.float() - b.float()).abs().max())


def measure(tokens: list[int], baselines: bool) -> dict:
    """{(op, T): {column: value}} plus {"_notes": [...]} for unavailable baselines."""
    from sglang_sm120.kernels import mhc as ours
    from sglang_sm120.reference import mhc as ref

    results: dict = {"_notes": []}
    native = None
    if baselines:
        try:
            native = _native_module()
        except Exception as exc:  # noqa: BLE001 - report any import failure
            results["_notes"].append(f"native: unavailable: {type(exc).__name__}: {exc}")
    for op in OPS:
        for t in tokens:
            a = _inputs(t)
            row = {"ours": _time_us(_call(ours, op, a), t)}
            if baselines:
                row["torch"] = _time_us(_call(ref, op, a), t)
                if native is not None:
                    try:
                        row["native"] = _time_us(_call(native, op, a), t)
                        row["diff"] = _max_diff(_call(ours, op, a)(), _call(native, op, a)())
                    except Exception as exc:  # noqa: BLE001
                        results["_notes"].append(f"native {op} T={t}: unavailable: {type(exc).__name__}: {exc}")
            results[f"{op}|{t}"] = row
            # progress as it is measured, so a run cut off by a timeout still leaves its rows
            print(f"# {os.environ.get('DISABLE_MMA_V3') and 'mma.sync' or 'default'} {op} T={t}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in row.items()), file=sys.stderr, flush=True)
    return results


def _table(merged: dict, tokens: list[int], device: str) -> str:
    lines = [
        f"mHC on {device}, hidden {HIDDEN}, hc {HC}; us = median; GB/s over compulsory bytes; "
        f"% of {HBM_PEAK_GBS / 1000:.2f} TB/s",
        "",
        "| op | T | ours mma.sync (us) | ours default (us) | native (us) | torch (us) | ours/native "
        "| ours/torch | GB/s | % HBM | max abs diff vs native |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v, spec=".1f"):
        return "n/a" if v is None else format(v, spec)

    for op in OPS:
        for t in tokens:
            row = merged.get(f"{op}|{t}", {})
            ours = row.get("ours_off", row.get("ours_on"))
            native, torch_us = row.get("native"), row.get("torch")
            gbs = None if ours is None else _bytes(op, t) / ours / 1e3
            lines.append(
                f"| {op} | {t} | {fmt(row.get('ours_off'))} | {fmt(row.get('ours_on'))} | {fmt(native)} "
                f"| {fmt(torch_us)} | {fmt(native and ours / native, '.2f')} "
                f"| {fmt(torch_us and ours / torch_us, '.2f')} | {fmt(gbs, '.0f')} "
                f"| {fmt(gbs and 100 * gbs / HBM_PEAK_GBS, '.0f')} | {fmt(row.get('diff'), '.2e')} |"
            )
    for note in merged.get("_notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1,8,64,4096")
    ap.add_argument("--mma-v3", choices=("on", "off", "both"), default="both")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json", help=argparse.SUPPRESS)  # child -> parent results
    ap.add_argument("--no-baselines", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",")]
    import torch  # triton reads DISABLE_MMA_V3 at compile time, so importing torch here is fine

    if not torch.cuda.is_available():
        print("unavailable: needs a CUDA GPU")
        return 1

    child = None
    if args.mma_v3 == "both":
        os.environ.pop("DISABLE_MMA_V3", None)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            child_json = f.name
        cmd = [sys.executable, os.path.abspath(__file__), "--tokens", args.tokens, "--mma-v3", "off",
               "--json", child_json, "--no-baselines"]  # fmt: skip
        child = subprocess.Popen(cmd, env={**os.environ, "DISABLE_MMA_V3": "1"})
        child.wait()
    elif args.mma_v3 == "off":
        os.environ["DISABLE_MMA_V3"] = "1"
    else:
        os.environ.pop("DISABLE_MMA_V3", None)

    key = "ours_off" if args.mma_v3 == "off" else "ours_on"
    results = measure(tokens, baselines=not args.no_baselines)
    merged = {k: ({key if c == "ours" else c: v for c, v in row.items()} if k != "_notes" else row)
              for k, row in results.items()}  # fmt: skip
    if child is not None:
        if child.returncode != 0:
            merged["_notes"].append(f"DISABLE_MMA_V3=1 run failed (exit {child.returncode})")
        else:
            with open(child_json) as f:
                for k, row in json.load(f).items():
                    if k == "_notes":
                        merged["_notes"] += row
                    else:
                        merged.setdefault(k, {})["ours_off"] = row["ours"]
        os.unlink(child_json)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
        return 0
    table = _table(merged, tokens, torch.cuda.get_device_name())
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
