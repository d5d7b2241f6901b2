"""Ahead-of-time check of every registered Triton kernel config for SM12x.

    python -m sglang_sm120.aot [--arch 120,121] [--only NAME_SUBSTRING] [--jobs N] [--json FILE]

For each (kernel, config, arch) it compiles with Triton's own compiler on the CPU
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``) in the
runtime JIT's extreme specialisations: ``all16`` (every pointer and integer argument
divisible by 16, as for aligned tensors and round strides: the most pipelining, so
the most shared memory), ``ptr16`` (only pointers aligned) and ``noalign`` (views at
odd offsets: the least vectorised code, often the most registers), then fails the
config when

* ``metadata.shared`` exceeds 101,376 B,
* ``ptxas -v`` (the ptxas Triton itself uses for that arch, from its ``bin/``)
  reports any spill store or spill load,
* the PTX contains ``wgmma``, ``tcgen05`` or ``setmaxnreg``.

Exit status 0 when every config passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from sglang_sm120.kernels.registry import AotConfig, AotKernel, registered
from sglang_sm120.platform import FORBIDDEN_PTX, SM12X_SMEM_PER_BLOCK

DEFAULT_ARCHS = (120, 121)
_SPILL_RE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS_RE = re.compile(r"Used (\d+) registers")


@dataclass
class AotResult:
    kernel: str
    config: str
    arch: str
    variant: str = "all16"
    shared: int = 0
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def ptxas_report(ptx: str, arch: int) -> str:
    """Run the ptxas Triton uses for ``arch`` with ``-v``; return its report."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [ptxas, f"-arch=sm_{arch}a", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{arch}a: {proc.stderr.strip()}")
    return proc.stderr


def ptxas_usage(report: str) -> tuple[int, int, int]:
    """(registers, spill-store bytes, spill-load bytes) from a ``ptxas -v`` report (max / sums over its kernels)."""
    regs = max((int(r) for r in _REGS_RE.findall(report)), default=0)
    spills = _SPILL_RE.findall(report)
    return regs, sum(int(st) for st, _ in spills), sum(int(ld) for _, ld in spills)


def forbidden_instructions(ptx: str) -> list[str]:
    """Instruction families SM12x lacks that appear in ``ptx``."""
    return [name for name in FORBIDDEN_PTX if re.search(rf"\b{name}\b", ptx)]


VARIANTS = ("all16", "ptr16", "noalign")
_INT_TYPES = ("i32", "i64", "u32", "u64")


def compile_config(kernel: AotKernel, config: AotConfig, arch: int, variant: str = "all16"):
    """``triton.compile`` one config for ``sm_{arch}a`` in one specialisation (see the module docstring); returns
    Triton's compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata``)."""
    import triton
    from triton.backends.compiler import GPUTarget

    signature = kernel.full_signature(config)
    marked = {"all16": ("*", *_INT_TYPES), "ptr16": ("*",), "noalign": ()}[variant]
    # the runtime's "D" specialisation: tt.divisibility 16 on aligned pointers / round integers
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith(marked)}
    src = triton.compiler.ASTSource(fn=kernel.fn, signature=signature, constexprs=dict(config.constexprs), attrs=attrs)
    return triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )


def check_config(kernel: AotKernel, config: AotConfig, arch: int, variant: str = "all16") -> AotResult:
    """Compile one config for ``sm_{arch}a`` and collect every problem."""
    result = AotResult(kernel.name, config.label(), f"sm_{arch}a", variant)
    try:
        compiled = compile_config(kernel, config, arch, variant)
    except Exception as exc:  # a config that does not compile is a failure too
        result.problems.append(f"compile error: {type(exc).__name__}: {exc}".splitlines()[0])
        return result
    ptx = compiled.asm["ptx"]
    result.shared = int(compiled.metadata.shared)
    if result.shared > SM12X_SMEM_PER_BLOCK:
        result.problems.append(f"shared memory {result.shared} B > {SM12X_SMEM_PER_BLOCK} B")
    for name in forbidden_instructions(ptx):
        result.problems.append(f"PTX contains {name}")
    result.registers, result.spill_stores, result.spill_loads = ptxas_usage(ptxas_report(ptx, arch))
    if result.spill_stores or result.spill_loads:
        result.problems.append(
            f"register spills: {result.spill_stores} B stores, {result.spill_loads} B loads"
        )
    return result


def _check_by_name(args: tuple[str, int, int, str]) -> AotResult:
    name, index, arch, variant = args
    kernel = {k.name: k for k in registered()}[name]
    return check_config(kernel, kernel.configs[index], arch, variant)


def _import_modules(modules: tuple[str, ...]) -> None:
    for module in modules:
        importlib.import_module(module)


def run_checks(
    kernels: list[AotKernel],
    archs: tuple[int, ...] = DEFAULT_ARCHS,
    jobs: int = 1,
    extra_modules: tuple[str, ...] = (),
) -> list[AotResult]:
    """Check every (kernel, config, arch, variant); ``jobs > 1`` uses worker processes."""
    work = [(k, i, a, v) for k in kernels for i in range(len(k.configs)) for a in archs for v in VARIANTS]
    if jobs <= 1 or len(work) <= 1:
        return [check_config(k, k.configs[i], a, v) for k, i, a, v in work]
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=_import_modules, initargs=(extra_modules,)
    ) as pool:
        return list(pool.map(_check_by_name, [(k.name, i, a, v) for k, i, a, v in work]))


def format_table(results: list[AotResult]) -> str:
    rows = [("kernel", "config", "arch", "variant", "smem B", "regs", "spill B", "result")]
    for r in results:
        rows.append(
            (
                r.kernel,
                r.config,
                r.arch,
                r.variant,
                str(r.shared),
                str(r.registers),
                str(r.spill_stores + r.spill_loads),
                "ok" if r.ok else "FAIL: " + "; ".join(r.problems),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1]
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglang_sm120.aot", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=",".join(map(str, DEFAULT_ARCHS)), help="e.g. 120,121")
    ap.add_argument("--only", default="", help="check only kernels whose name contains this")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument(
        "--extra-module",
        action="append",
        default=[],
        help="import this module too (it registers more kernels); repeatable",
    )
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        ap.error("unset TRITON_INTERPRET: the interpreter replaces kernels, nothing to compile")
    _import_modules(tuple(args.extra_module))
    archs = tuple(int(a) for a in args.arch.split(","))
    kernels = [k for k in registered() if args.only in k.name]
    results = run_checks(kernels, archs, jobs=args.jobs, extra_modules=tuple(args.extra_module))
    if results:
        print(format_table(results))
    failed = [r for r in results if not r.ok]
    n_cfg = sum(len(k.configs) for k in kernels)
    print(
        f"AOT check: {len(kernels)} kernels, {n_cfg} configs, {len(results)} compiles "
        f"for {', '.join(f'sm_{a}a' for a in archs)}: {len(failed)} failed"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"ok": r.ok} for r in results], f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
