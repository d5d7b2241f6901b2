"""The mHC plan sweep's plan notation and table (the sweep itself needs a CUDA GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tune_mhc  # noqa: E402

from sglang_sm120.kernels import mhc  # noqa: E402


def test_plan_notation_round_trips_and_rejects_garbage():
    assert tune_mhc.parse_plan("t64h32w8s2") == mhc.Plan(64, 32, 8, 2, mhc.DOT_TF32)
    assert tune_mhc.parse_plan("t1h32w4s1fma").dot == mhc.DOT_FMA
    assert tune_mhc.plan_name(mhc.Plan(128, 16, 8, 3)) == "t128h16w8s3"
    with pytest.raises(ValueError, match="expected t<BLOCK_T>h<BLOCK_H>"):
        tune_mhc.parse_plan("64x32")


def test_default_candidates_include_the_shipped_large_t_plans():
    names = set(tune_mhc.DEFAULT_PLANS.split(","))
    for op in ("pre", "fused"):
        assert tune_mhc.plan_name(mhc._plan(op, 4096)) in names


def test_render_marks_shipped_and_fastest():
    shipped = tune_mhc.plan_name(mhc._plan("pre", 4096))
    other = "t256h16w8s2" if shipped != "t256h16w8s2" else "t128h16w8s2"
    res = {("pre", 4096, shipped): (240.0, 190.0), ("pre", 4096, other): (120.0, 70.0)}
    gates = {("pre", shipped): "regs 1", ("pre", other): "regs 2"}
    table = tune_mhc.render(["pre"], [shipped, other], gates, res, [4096])
    row = next(line for line in table.splitlines() if line.startswith("| pre | 4096 |"))
    assert "240.0 (190.0;" in row and "%)*" in row and "%)**" in row
    assert row.index("%)*") < row.index("%)**")
