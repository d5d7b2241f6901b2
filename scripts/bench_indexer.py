"""Benchmark: indexer paged logits and top-k 512 (ours) vs DeepGEMM / SGLang / torch on one GPU.

    PYTHONPATH=. python scripts/bench_indexer.py [--mma-v3 both|on|off] [--out FILE]

Paged logits: ours vs DeepGEMM ``fp8_paged_mqa_logits`` (native SM90) and SGLang 0.5.16's
``fp8_paged_mqa_logits_torch_sm120``. Top-k: ours vs ``torch.topk`` and SGLang's JIT ``topk_transform_512``.
"ours" is timed with ``DISABLE_MMA_V3=1`` (mma.sync, the SM12x instruction mix; headline) and without.
GB/s counts the bytes the op must move: indexer cache rows read (132 B/key) + logits written (4 B/key);
top-k: logits read once. Peak = H100 HBM 3.35 TB/s. Times are CUDA-graph replays
(``triton.testing.do_bench_cudagraph``; a baseline that cannot be captured is timed eagerly and noted).
Our top-k is called as the SGLang bindings call it (no workspace: the cached scratch, sized by the warm-up).
"""

from __future__ import annotations

import argparse
import json

from bench_common import run_child, try_baseline

HBM_PEAK = 3.35e12


def _setup(bs: int, ctx: int):
    import torch

    c4 = ctx // 4
    p = c4 // 64
    pages = bs * p
    k = torch.randn(pages, 64, 128, device="cuda").to(torch.float8_e4m3fn).view(torch.uint8)
    s = (torch.rand(pages, 64, device="cuda") + 0.5).view(torch.uint8).reshape(pages, 256)
    cache = torch.cat([k.reshape(pages, -1), s], 1).reshape(pages, 64, 1, 132).contiguous()
    q = torch.randn(bs, 1, 64, 128, device="cuda").to(torch.float8_e4m3fn)
    w = torch.randn(bs, 64, device="cuda")
    sl = torch.full((bs,), c4, dtype=torch.int32, device="cuda")
    pt = torch.randperm(pages, device="cuda").int().reshape(bs, p)
    return cache, q, w, sl, pt, p * 64


def _bench(fn) -> float:
    """Mean us of one call, replayed from a CUDA graph (SGLang decode runs in graphs: no Python launch cost)."""
    import torch
    import triton

    fn()  # compile / autotune outside the capture
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=30) * 1e3


def _bench_any(fn) -> tuple[float, str]:
    """:func:`_bench`, or eager ``do_bench`` (launch overhead included) for a baseline that cannot be captured."""
    import torch
    import triton

    try:
        return _bench(fn), ""
    except Exception as e:  # noqa: BLE001 - e.g. a host sync inside the baseline
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=5, rep=30) * 1e3, f"eager ({type(e).__name__})"


def measure_ours(contexts: list[int], batches: list[int]) -> dict[str, float]:
    import torch

    from sglang_sm120.kernels.indexer import fp8_paged_mqa_logits
    from sglang_sm120.kernels.topk import topk_transform_512

    def case(ctx: int, bs: int) -> None:
        cache, q, w, sl, pt, width = _setup(bs, ctx)
        out = torch.empty(bs, width, device="cuda")
        res[f"logits/{ctx}/{bs}"] = _bench(
            lambda: fp8_paged_mqa_logits(q, cache, w, sl[:, None], pt, None, width, False, out=out)
        )
        idx = torch.empty(bs, 512, dtype=torch.int32, device="cuda")
        logits = torch.randn(bs, width, device="cuda")
        res[f"topk/{ctx}/{bs}"] = _bench(lambda: topk_transform_512(logits, sl, pt, idx, 64))

    res: dict[str, float] = {}
    for ctx in contexts:
        for bs in batches:
            case(ctx, bs)
    return res



def measure_baselines(contexts: list[int], batches: list[int]) -> tuple[dict[str, float], list[str]]:
    import torch

    def case(ctx: int, bs: int) -> None:
        cache, q, w, sl, pt, width = _setup(bs, ctx)

        def deepgemm():
            import deep_gemm

            meta = deep_gemm.get_paged_mqa_logits_metadata(sl[:, None], 64, deep_gemm.get_num_sms())
            return lambda: deep_gemm.fp8_paged_mqa_logits(q, cache, w, sl[:, None], pt, meta, width, False)

        def sgl_torch():
            from sglang.srt.layers.attention.dsv4.indexer import fp8_paged_mqa_logits_torch_sm120 as f

            return lambda: f(q, cache, w, sl, pt, None, width, False)

        logits = torch.randn(bs, width, device="cuda")
        idx = torch.empty(bs, 512, dtype=torch.int32, device="cuda")

        def sgl_jit_topk():
            try:
                from sglang.jit_kernel.dsv4 import topk_transform_512 as f
            except ImportError:
                from sglang.jit_kernel.deepseek_v4 import topk_transform_512 as f
            return lambda: f(logits, sl, pt, idx, 64)

        cases = {
            "logits_deepgemm": deepgemm,
            "logits_sgl_torch": sgl_torch,
            "topk_torch": lambda: (lambda: torch.topk(logits, 512, dim=1, sorted=False)),
            "topk_sgl_jit": sgl_jit_topk,
        }
        for key, make in cases.items():
            fn, why = try_baseline(key, make)
            if fn is None:
                notes.add(why)
                continue
            res[f"{key}/{ctx}/{bs}"], how = _bench_any(fn)
            if how:
                notes.add(f"{key}: timed {how}, launch overhead included")
            torch.cuda.empty_cache()

    res: dict[str, float] = {}
    notes: set[str] = set()
    for ctx in contexts:
        for bs in batches:
            case(ctx, bs)
    return res, sorted(notes)


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render(contexts, batches, off, on, base, notes, device: str) -> str:
    lines = [
        f"Device: {device}. ours(off) = DISABLE_MMA_V3=1 (headline), ours(on) = Triton default.",
        "",
        "| op | ctx | bs | ours(off) us | ours(on) us | GB/s (off) | % HBM peak | DeepGEMM us | SGLang torch us "
        "| torch.topk us | SGLang JIT us | speedup vs ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ctx in contexts:
        for bs in batches:
            c4 = ctx // 4
            k = f"logits/{ctx}/{bs}"
            t = off.get(k)
            gbs = bs * c4 * (132 + 4) / (t * 1e-6) / 1e9 if t else None
            ref = base.get(f"logits_sgl_torch/{ctx}/{bs}")
            lines.append(
                f"| paged logits | {ctx // 1024}K | {bs} | {_fmt(t)} | {_fmt(on.get(k))} | {_fmt(gbs, 0)} | "
                f"{_fmt(gbs / HBM_PEAK * 1e11 if gbs else None)} | {_fmt(base.get(f'logits_deepgemm/{ctx}/{bs}'))} | "
                f"{_fmt(ref)} | - | - | {_fmt(ref / t if ref and t else None, 2)}x vs SGLang torch |"
            )
            k = f"topk/{ctx}/{bs}"
            t = off.get(k)
            gbs = bs * c4 * 4 / (t * 1e-6) / 1e9 if t else None
            ref = base.get(f"topk_torch/{ctx}/{bs}")
            lines.append(
                f"| top-k 512 | {ctx // 1024}K | {bs} | {_fmt(t)} | {_fmt(on.get(k))} | {_fmt(gbs, 0)} | "
                f"{_fmt(gbs / HBM_PEAK * 1e11 if gbs else None)} | - | - | {_fmt(ref)} | "
                f"{_fmt(base.get(f'topk_sgl_jit/{ctx}/{bs}'))} | "
                f"{_fmt(ref / t if ref and t else None, 2)}x vs torch.topk |"
            )
    lines += ["", *notes]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mma-v3", choices=("on", "off", "both"), default="both")
    ap.add_argument("--contexts", default="8192,32768,131072")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--out", default=None, help="save the markdown table here")
    ap.add_argument("--json-ours", default=None, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    batches = [int(x) for x in args.batches.split(",")]

    if args.json_ours:  # child: ours only, under the environment the parent chose
        with open(args.json_ours, "w") as f:
            json.dump(measure_ours(contexts, batches), f)
        return

    def child(disable: bool) -> dict[str, float]:
        return run_child(__file__, "--json-ours", ["--contexts", args.contexts, "--batches", args.batches],
                         disable_mma_v3=disable)

    off = child(True) if args.mma_v3 in ("off", "both") else {}
    on = child(False) if args.mma_v3 in ("on", "both") else {}
    import torch

    base, notes = measure_baselines(contexts, batches)
    table = render(contexts, batches, off, on, base, notes, torch.cuda.get_device_name())
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
