"""The FP8 GEMM prefill tile sweep's candidates, AOT gate and table (the timing itself needs a CUDA GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import tune_fp8_gemm  # noqa: E402

from sglang_sm120.kernels import fp8_gemm  # noqa: E402

SHIPPED = (128, 64, 64, 4, 4)


def test_default_candidates_include_the_shipped_prefill_tile():
    cfg = fp8_gemm.config_for(4096, 128)
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages) == SHIPPED
    tiles = [tune_fp8_gemm.parse_tile(s) for s in tune_fp8_gemm.DEFAULT_TILES.split(",")]
    assert SHIPPED in tiles and all(128 % t[2] == 0 for t in tiles)


def test_aot_gate_passes_the_shipped_tile_and_fails_an_oversized_one():
    """In a fresh interpreter without TRITON_INTERPRET (the gate compiles for sm_120a)."""
    code = (
        "import sys; sys.path.insert(0, 'scripts')\n"
        "import tune_fp8_gemm as t\n"
        f"print(t.aot_gate({SHIPPED}))\n"
        "print(t.aot_gate((128, 128, 128, 4, 4)))\n"  # 128 x 128 fp32 accumulators on 4 warps: spills
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          cwd=ROOT)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout + proc.stderr
    assert lines[0].startswith("(True, 'regs "), lines[0]
    assert lines[1].startswith("(False, ") and "register spills" in lines[1], lines[1]


def test_render_marks_shipped_fastest_and_deepgemm():
    other = (128, 64, 128, 4, 3)
    name = next(iter(tune_fp8_gemm.LINEARS))
    res = {(name, 4096, SHIPPED): 500.0, (name, 4096, other): 400.0, (name, 4096, "deepgemm"): 120.0}
    table = tune_fp8_gemm.render([SHIPPED, other], {SHIPPED: "regs 1/1", other: "regs 2/2"}, res, [4096])
    row = next(line for line in table.splitlines() if line.startswith(f"| {name} | 4096 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2].endswith(")*") and cells[3].endswith(")**") and cells[4].startswith("120 (")
