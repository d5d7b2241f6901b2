"""Shared by the benchmark scripts.

``run_child``: Triton reads ``DISABLE_MMA_V3`` when it compiles, so the mma.sync (SM12x-style) and
default (wgmma on Hopper) builds of our kernels are timed in separate processes.
``try_baseline``: a baseline that cannot be built or run is reported, never fatal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def run_child(
    script: str, child_flag: str, args: list[str], *, disable_mma_v3: bool, env: dict[str, str] | None = None
) -> Any:
    """Run ``python script child_flag FILE *args`` with ``DISABLE_MMA_V3=1`` or unset; return FILE's JSON."""
    child_env = {k: v for k, v in os.environ.items() if k != "DISABLE_MMA_V3"}
    if disable_mma_v3:
        child_env["DISABLE_MMA_V3"] = "1"
    child_env.update(env or {})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        subprocess.run([sys.executable, script, child_flag, path, *args], env=child_env, check=True)
        with open(path) as f:
            return json.load(f)


def try_baseline(name: str, make: Callable[[], Callable[[], Any]]) -> tuple[Callable[[], Any] | None, str]:
    """Build a baseline with ``make()`` and run it once: ``(fn, "")``, or ``(None, "<name> unavailable: …")``."""
    try:
        fn = make()
        fn()
        return fn, ""
    except Exception as e:  # noqa: BLE001 - report any failure as unavailable
        return None, f"{name} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def add_sweep_args(ap) -> None:
    """The ``--jobs`` / ``--out`` options every tile sweep takes."""
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel AOT compiles")
    ap.add_argument("--out", default=None, help="save the markdown table here")


def graph_time_us(fn: Callable[[], Any]) -> float:
    """Median µs of CUDA-graph replays of ``fn`` (GPU time only, whatever the host launch cost); one eager call
    first (JIT compiles and warm-up happen outside the graph)."""
    import triton.testing

    fn()
    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")


def aot_all_variants(kernel: Any, config: Any, arch: int = 120) -> tuple[int, int, list[str]]:
    """(registers, shared bytes, problems) of one config over every alignment variant of the AOT check (a
    registered config must pass them all); registers and shared memory of the aligned build."""
    from sglang_sm120.aot import VARIANTS, check_config

    results = [check_config(kernel, config, arch, variant) for variant in VARIANTS]
    problems = [f"{variant}: {p}" for variant, res in zip(VARIANTS, results) for p in res.problems]
    return results[0].registers, results[0].shared, problems


SM12X_SMEM_PER_SM = 102400  # per SM on SM 12.x (a block may take 101,376 B; the driver reserves 1 KB per block)


def sm12x_blocks_per_sm(shared: int) -> int:
    """Blocks of ``shared`` bytes that fit one SM12x SM by shared memory alone (the H100 fits more: 228 KB)."""
    return SM12X_SMEM_PER_SM // (shared + 1024)


def run_gates(
    gate: Callable[..., tuple[bool, str]], keys: Sequence[tuple], jobs: int, name: Callable[[tuple], str] = " ".join
) -> dict[Hashable, tuple[bool, str]]:
    """``{key: gate(*key)}`` (``(passes, why)``) compiled in ``jobs`` processes; each verdict printed to stderr."""
    with ProcessPoolExecutor(jobs) as ex:
        gates = dict(zip(keys, ex.map(gate, *zip(*keys))))
    for key, (ok, why) in gates.items():
        print(f"AOT {name(key)}: {'ok' if ok else 'FAILS'} ({why})", file=sys.stderr, flush=True)
    return gates


def sweep_table_head(caption: str, keys: Sequence[str], columns: Sequence[str]) -> list[str]:
    """First lines of a sweep's markdown table: ``caption``, a blank line, the header (row keys, then one column
    per candidate) and its rule."""
    head = [*keys, *columns]
    return [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def emit_table(table: str, out: str | None) -> None:
    """Print the markdown ``table``; with ``out`` also save it there."""
    print(table, flush=True)
    if out:
        with open(out, "w") as f:
            f.write(table + "\n")
