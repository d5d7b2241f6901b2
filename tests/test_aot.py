"""The AOT check (sm_120a / sm_121a, on the CPU) passes good configs and reports bad ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _aot(*args: str, timeout: int = 3000) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    return subprocess.run([sys.executable, "-m", "sglang_sm120.aot", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=str(ROOT))


def test_aot_reports_configs_over_the_smem_budget_or_spilling():
    proc = _aot("--extra-module", "aot_fixture_kernels", "--only", "fixture.", "--jobs", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("fixture.tile_gemm")]
    assert len(rows) == 18  # 3 configs x sm_120a, sm_121a x all16, ptr16, noalign
    small = [r for r in rows if "BM=64," in r]
    big = [r for r in rows if "BM=512," in r]
    pipelined = [r for r in rows if "BM=128," in r]
    assert all(r.rstrip().endswith("ok") for r in small), rows
    assert all("FAIL" in r and "shared memory" in r and "> 101376 B" in r for r in big), rows
    # aligned arguments let Triton pipeline the loads (4 stages: 128-192 KB); unaligned ones do
    # not, and then the 128x128 fp32 accumulator over 8 warps spills registers
    assert all("FAIL: shared memory" in r for r in pipelined if "noalign" not in r), rows
    assert all("FAIL: register spills" in r for r in pipelined if "noalign" in r), rows
    assert {"sm_120a", "sm_121a"} <= {tok for r in rows for tok in r.split()}
    assert "12 failed" in proc.stdout
    assert {"all16", "ptr16", "noalign"} <= {tok for r in rows for tok in r.split()}


def test_forbidden_instruction_scan():
    from sglang_sm120.aot import forbidden_instructions

    ptx = "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n mma.sync.aligned.m16n8k16"
    assert forbidden_instructions(ptx) == ["wgmma"]
    assert forbidden_instructions("tcgen05.mma.cta_group::1 ; setmaxnreg.inc.sync 240;") == [
        "tcgen05", "setmaxnreg"]
    assert forbidden_instructions("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32") == []


def test_registry_rejects_a_config_missing_a_constexpr():
    import aot_fixture_kernels  # under the interpreter an InterpretedFunction: same arg_names

    from sglang_sm120.kernels.registry import AotConfig, register_aot

    with pytest.raises(ValueError, match="neither in the signature nor a constexpr"):
        register_aot("fixture.bad", aot_fixture_kernels._tile_gemm,
                     signature={"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "K": "i32"},
                     configs=[AotConfig({"BM": 64, "BN": 64, "BK": 64})])


def test_every_registered_kernel_config_passes_aot():
    """The project's AOT gate: every shipped config fits SM12x (smem, 0 spills, no wgmma/tcgen05)."""
    jobs = str(min(2, os.cpu_count() or 1))
    proc = _aot("--jobs", jobs)
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, tail + proc.stderr[-3000:]
    assert " 0 failed" in proc.stdout.splitlines()[-1]


def test_sass_stats_reports_the_mma_loop():
    """scripts/sass_stats.py on the fixture GEMM: its K loop holds the tile's mma.sync ops (64x64x64 tile,
    4 warps: 4 x 8 x 4 m16n8k16 / 4 = 32 per warp per step), and --set overrides a constexpr (BK 32: 16)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    code = (
        "import sys, runpy, aot_fixture_kernels; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    script = str(ROOT / "scripts" / "sass_stats.py")
    out = []
    for extra in ([], ["--set", "BK=32"]):
        proc = subprocess.run([sys.executable, "-c", code, script, "fixture.tile_gemm", "--config", "0", *extra],
                              capture_output=True, text=True, env=env, timeout=600, cwd=str(ROOT))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out.append(proc.stdout)
    assert "BK=64" in out[0] and "spill 0 B" in out[0] and " 32 MMA " in out[0], out[0]
    assert "BK=32" in out[1] and " 16 MMA " in out[1], out[1]


def test_sass_loop_stats_takes_the_longest_backward_branch():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from sass_stats import loop_stats
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    sass = "\n".join(
        f"        /*{a:04x}*/                   {op} ;"
        for a, op in [(0x10, "MOV R1, R2"), (0x20, "HMMA.16816.F32.BF16 R4, R8, R12, R4"), (0x30, "IADD3 R1, R1, 1"),
                      (0x40, "@P0 BRA 0x20"), (0x50, "LOP3.LUT R3, R3, 0x1, RZ, 0xc0"), (0x60, "@!P1 BRA 0x50"),
                      (0x70, "EXIT")]
    )
    n, ops = loop_stats(sass)
    assert n == 3 and ops["HMMA"] == 1 and ops["BRA"] == 1 and "MOV" not in ops
    assert loop_stats("        /*0010*/                   EXIT ;") == (0, {})
