"""Static SASS statistics of registered Triton kernel configs for SM12x, on the CPU (no GPU needed).

    PYTHONPATH=. python scripts/sass_stats.py KERNEL [--config I ...] [--set KEY=VALUE ...] [--arch 120]

KERNEL is a registered AOT name (``python -m sglang_sm120.aot`` lists them; a unique substring will do). Each
config is compiled as the AOT check does (:func:`sglang_sm120.aot.compile_config`), its cubin disassembled with
the ``cuobjdump`` of Triton's own ``bin/``, and one line printed: shared memory, registers and spills
(``ptxas -v``), then the main loop, taken as the span of the longest backward branch: its instruction count
per warp, its tensor-core instructions (HMMA / QMMA / OMMA; HGMMA for ``--arch 90``) and the commonest
opcodes. Without a GPU this is the proxy for an issue-bound loop (instructions per tensor-core op); it is no
timing. ``--set`` overrides constexprs, ``num_warps`` or ``num_stages`` of every selected config, e.g.
``--set BLOCK_M=64 --set BLOCK_K=64 --set num_stages=2``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", re.M)
_BRANCH = re.compile(r"\bBRA(?:\.\w+)*\s+(?:!?U?P\w+,\s*)?(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)")
_MMA = ("HMMA", "HGMMA", "QMMA", "OMMA", "IMMA")  # HGMMA: wgmma, when run for --arch 90


def loop_stats(sass: str) -> tuple[int, Counter]:
    """(instruction count, opcode counter) of the longest backward-branch span of ``sass`` (0 if no loop)."""
    ins = [(int(a, 16), txt) for a, txt in _INSTR.findall(sass)]
    best = None
    for addr, txt in ins:
        m = _BRANCH.search(txt)
        if m and int(m.group(1), 16) < addr and (best is None or addr - int(m.group(1), 16) > best[1] - best[0]):
            best = (int(m.group(1), 16), addr)
    if best is None:
        return 0, Counter()
    body = [re.sub(r"^@!?U?P\w+\s+", "", t) for a, t in ins if best[0] <= a <= best[1]]
    return len(body), Counter(t.split()[0].split(".")[0] for t in body)


def _parse_value(v: str):
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel")
    ap.add_argument("--config", type=int, action="append", help="config index (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--arch", type=int, default=120)
    ap.add_argument("--variant", default="all16", choices=("all16", "ptr16", "noalign"))
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        ap.error("unset TRITON_INTERPRET: the interpreter replaces kernels, nothing to compile")

    from triton.backends.nvidia.compiler import get_ptxas

    from sglang_sm120.aot import compile_config, ptxas_report, ptxas_usage
    from sglang_sm120.kernels.registry import registered

    kernels = {k.name: k for k in registered()}
    match = [n for n in kernels if n == args.kernel] or [n for n in kernels if args.kernel in n]
    if len(match) != 1:
        ap.error(f"kernel {args.kernel!r} matches {match or 'nothing'}; registered: {', '.join(kernels)}")
    kernel = kernels[match[0]]
    overrides = dict(kv.split("=", 1) for kv in args.set)
    launch = {k: int(overrides.pop(k)) for k in ("num_warps", "num_stages") if k in overrides}
    cuobjdump = os.path.join(os.path.dirname(get_ptxas(args.arch).path), "cuobjdump")
    print(f"{kernel.name} sm_{args.arch}a {args.variant}")
    for i in args.config or range(len(kernel.configs)):
        cfg = kernel.configs[i]
        cfg = dataclasses.replace(
            cfg, constexprs={**cfg.constexprs, **{k: _parse_value(v) for k, v in overrides.items()}}, **launch
        )
        compiled = compile_config(kernel, cfg, args.arch, args.variant)
        regs, spill_stores, spill_loads = ptxas_usage(ptxas_report(compiled.asm["ptx"], args.arch))
        spill = spill_stores + spill_loads
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        n, ops = loop_stats(sass)
        mma = sum(ops[m] for m in _MMA)
        ratio = f"{n / mma:.1f} instr per MMA" if mma else "no MMA"
        top = " ".join(f"{op}:{c}" for op, c in ops.most_common(10))
        print(
            f"[{i}] {cfg.label()}\n    smem {compiled.metadata.shared} B, {regs} regs, spill {spill} B; "
            f"loop {n} instr/warp, {mma} MMA ({ratio}); {top}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
