"""End-to-end DeepSeek-V4 step times through real SGLang: native SM90 path vs the emulated plugin path.

    python scripts/bench_e2e.py [--batch-sizes 1 8 32] [--input-len 256] [--decode-steps 16] [--repeats 3]
                                [--check] [--profile-top N] [--out bench_e2e.md] [--workdir DIR [--reuse]]

The tiny real-dimension model of ``sglang-sm120 smoke`` (4 layers: SWA, C4, C128, C4; 256 MXFP4 experts;
seeded dummy weights) runs in one child process per path, each building a ``ModelRunner`` as
``bench_one_batch`` does, with decode CUDA graphs for exactly these batch sizes, on the same GPU in one run:

* ``native``: ``SGLANG_SM120=off`` (SGLang's SM90 kernels; FP4 experts dequantized to FP8 at load);
* ``emulated``: ``SGLANG_SM120=emulate``, ``DISABLE_MMA_V3=1`` (our kernels with the SM12x instruction mix,
  ``mma.sync``; the headline);
* ``emulated-wgmma``: ``SGLANG_SM120=emulate`` with Triton free to use wgmma on Hopper;
* ``emulated-w4a8`` (only when named in ``--configs``): ``emulated`` with ``SGLANG_SM120_MOE_ACT=mxfp8``, the
  opt-in W4A8 MoE prefill path (``--check`` gives its model-level numerics; Hopper decomposes its block-scaled MMA,
  so its times say nothing about SM12x).

Per batch size: one warm-up round, then ``repeats`` rounds of a prefill (``input-len`` tokens per request)
and ``decode-steps`` decode steps; the tables show medians in ms (host overhead included, as in
``bench_one_batch``), the prefill's minimum too, and emulated/native ratios (target <= 1.25). ``--check`` also
runs the in-process smoke comparison (``sglang-sm120 smoke --mode inprocess``: bs 1..``--check-max-bs``,
teacher-forced greedy decode, same tolerance) in the same child processes, so one startup and one graph capture
per path serve both; exit 1 if it fails. Needs a CUDA GPU (exit 2 without one).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from sglang_sm120 import smoke

TARGET = 1.25
TOLERANCE = smoke.Tolerance()
CONFIGS = (smoke.NATIVE, smoke.EMULATED, smoke.EMULATED_WGMMA, smoke.EMULATED_W4A8)
DEFAULT_CONFIGS = (smoke.NATIVE, smoke.EMULATED, smoke.EMULATED_WGMMA)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "-"
    r = value / base
    return f"{r:.2f}" + ("" if r <= TARGET else " (!)")


def _ms(res: dict[str, Any] | None, bs: int, key: str) -> float | None:
    return res["bench"][bs].get(key) if res is not None else None


def check(results: dict[str, dict[str, Any] | None], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``--check``: each emulated path's logits vs native (:func:`smoke.comparison_table`); (report lines,
    problems)."""
    native = results.get(smoke.NATIVE.name)
    lines: list[str] = []
    problems: list[str] = []
    for cfg in CONFIGS:
        res = results.get(cfg.name)
        if res is None:
            continue
        problems += smoke.check_child(cfg.name, res, cfg, _graph_bs(args))
        if cfg is smoke.NATIVE or native is None:
            continue
        table, total = smoke.comparison_table(native, res, TOLERANCE)
        verdict = "PASS" if total.passed else "FAIL"
        lines += ["", f"### Logits, `{cfg.name}` vs `native` (in-process smoke comparison): {verdict}", "",
                  "```", smoke.format_table(table), "```"]
        if not total.passed:
            problems.append(f"{cfg.name}: logits do not agree with native within the smoke tolerance")
    if native is None:
        problems.append("native path did not run: nothing to compare against")
    return lines, problems


def _check_bs(args: argparse.Namespace) -> list[int]:
    return list(range(1, args.check_max_bs + 1)) if args.check else []


def _graph_bs(args: argparse.Namespace) -> list[int]:
    """Decode graphs each child captures: the timed batch sizes, plus 1..N for ``--check``."""
    return sorted({*_check_bs(args), *args.batch_sizes})


def markdown(results: dict[str, dict[str, Any] | None], errors: dict[str, str], args: argparse.Namespace,
             check_lines: Sequence[str] = ()) -> str:
    """The report: one table for decode steps, one for prefill, ratios against ``native``."""
    ran = next((r for r in results.values() if r is not None), None)
    device = f"{ran['device']}, SGLang {ran['sglang']}, torch {ran['torch']}" if ran else "unknown device"
    lines = [
        "# End-to-end DeepSeek-V4 step times: emulated plugin path vs native SM90",
        "",
        f"{device}; {time.strftime('%Y-%m-%d')}; `python scripts/bench_e2e.py "
        + " ".join(sys.argv[1:]) + "`",
        f"Model: tiny DeepSeek-V4 ({args.layers} layers, compress ratios "
        f"{smoke.tiny_config(args.layers)['compress_ratios'][:-1]}, hidden 4096, 64 heads x 512, 256 MXFP4 experts,"
        f" top-6), seeded dummy weights; prefill {args.input_len} tokens per request; decode CUDA graphs; "
        f"medians over {args.repeats} rounds ({args.decode_steps} decode steps each). Ratios emulated/native, "
        f"target <= {TARGET} ((!) = above).",
        "",
    ]
    for cfg in CONFIGS:
        state = f" — **failed**: {errors[cfg.name]}" if cfg.name in errors else ""
        lines.append(f"- `{cfg.name}`: {cfg.note}" + (state if cfg.name in results else " (not run)"))
    native = results.get(smoke.NATIVE.name)
    tables = (("Decode step (ms)", "decode_ms"), ("Prefill (ms)", "prefill_ms"),
              (f"Prefill, best of {args.repeats} rounds (ms; the host part of a prefill swings between rounds)",
               "prefill_min_ms"))
    for title, key in tables:
        head = ["bs", "native"]
        for cfg in CONFIGS[1:]:
            head += [cfg.name, "ratio"]
        rows = [head, ["---"] * len(head)]
        for bs in args.batch_sizes:
            base = _ms(native, bs, key)
            row = [str(bs), f"{base:.3f}" if base is not None else "-"]
            for cfg in CONFIGS[1:]:
                val = _ms(results.get(cfg.name), bs, key)
                row += [f"{val:.3f}" if val is not None else "-", _ratio(val, base)]
            rows.append(row)
        lines += ["", f"### {title}", ""] + ["| " + " | ".join(r) + " |" for r in rows]
    no_graph = [f"{name} bs {bs}" for name, res in results.items() if res is not None
                for bs in args.batch_sizes if not res["bench"][bs]["graph"]]
    for name, res in results.items():
        prof = res.get("prefill_profile") if res is not None else None
        if prof:
            lines += ["", f"### Prefill kernels, `{name}` (bs {prof['bs']}, one profiled prefill, "
                      f"{prof['total_us'] / 1e3:.2f} ms of GPU kernel time)", "",
                      "| kernel | calls | us | % |", "|---|---|---|---|"]
            lines += [f"| `{k[:90]}` | {n} | {us:.0f} | {100 * us / prof['total_us']:.1f} |"
                      for k, n, us in prof["kernels"]]
    if no_graph:
        lines += ["", "Decode did NOT replay a CUDA graph for: " + ", ".join(no_graph)]
    return "\n".join([*lines, *check_lines]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=540, help="seconds per child process")
    ap.add_argument("--configs", nargs="+", choices=[c.name for c in CONFIGS],
                    default=[c.name for c in DEFAULT_CONFIGS])
    ap.add_argument("--check", action="store_true", help="also compare logits with native (in-process smoke)")
    ap.add_argument("--check-max-bs", type=int, default=4, help="--check: batch sizes 1..N (default 4)")
    ap.add_argument("--profile-top", type=int, default=0,
                    help="also profile one prefill at the largest batch size; report the N costliest kernels")
    ap.add_argument("--out", default="bench_e2e.md", help="markdown report (default bench_e2e.md)")
    ap.add_argument("--workdir", help="keep the model and per-child results here (default: temporary)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --workdir: take a path's result from an earlier run there with the same settings "
                         "instead of running it again (e.g. native in one command, emulated in the next)")
    args = ap.parse_args(argv)
    args.batch_sizes = sorted(set(args.batch_sizes))
    if (rc := smoke.require_gpu("bench_e2e.py")) is not None:
        return rc
    workdir, temporary = smoke.workdir_for(args.workdir)
    results: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, str] = {}
    try:
        model_dir = smoke.write_tiny_model(workdir / "tiny-dsv4", args.layers)
        spec = {"job": "compare+bench" if args.check else "bench", "seed": args.seed,
                "batch_sizes": _check_bs(args) or args.batch_sizes, "bench_batch_sizes": args.batch_sizes,
                "input_len": args.input_len, "decode_steps": args.decode_steps, "repeats": args.repeats,
                "profile_top": args.profile_top,
                "server_args": smoke.server_argv(model_dir, _graph_bs(args), args.seed,
                                                 context_length=max(4096, 2 * (args.input_len + args.decode_steps)))}
        for cfg in CONFIGS:
            if cfg.name not in args.configs:
                continue
            job = spec
            if args.check and cfg is not smoke.NATIVE and results.get(smoke.NATIVE.name) is not None:
                job = {**spec, "force": str(smoke.result_path(workdir, spec["job"], smoke.NATIVE))}
            if args.reuse and (saved := smoke.saved_result(cfg, job, workdir)) is not None:
                results[cfg.name] = saved
                continue
            try:
                results[cfg.name] = smoke.run_child(cfg, job, workdir, args.timeout)
            except RuntimeError as exc:
                results[cfg.name] = None
                errors[cfg.name] = str(exc)
        check_lines, problems = check(results, args) if args.check else ([], [])
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    for p in problems:
        smoke.log(f"bench_e2e --check: FAIL: {p}")
    report = markdown(results, errors, args, check_lines)
    print("\n" + report, flush=True)
    with open(args.out, "w") as f:
        f.write(report)
    smoke.log(f"bench_e2e: report saved to {args.out}")
    return 1 if errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
