"""The routed-MoE tile sweep's tile notation (the sweep itself needs a CUDA GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tune_moe_routed  # noqa: E402

from sglang_sm120.kernels import moe_mxfp4  # noqa: E402


def test_tile_notation_round_trips_and_rejects_garbage():
    assert tune_moe_routed.parse_tile("128x64x64w8s2") == (128, 64, 64, 8, 2)
    assert tune_moe_routed.tile_name((16, 32, 128, 4, 3)) == "16x32x128w4s3"
    with pytest.raises(ValueError, match="expected BMxBNxBKwWARPSsSTAGES"):
        tune_moe_routed.parse_tile("128x64w8")


def test_default_candidates_include_the_shipped_tiles():
    tiles = [tune_moe_routed.parse_tile(s) for s in tune_moe_routed.DEFAULT_TILES.split(",")]
    assert {*moe_mxfp4._ROUTED_TILES, *moe_mxfp4._ROUTED_TILES_W4A8} <= set(tiles)
    assert {t[0] for t in tiles} <= set(moe_mxfp4._BLOCK_MS)


def test_render_marks_shipped_and_fastest():
    shipped = moe_mxfp4._routed_tile(4096 * 6, 256)
    other = (128, 32, 64, 8, 2)
    res = {(1, 4096, shipped): 10000.0, (1, 4096, other): 8000.0}
    table = tune_moe_routed.render([shipped, other], {shipped: "regs 1/1", other: "regs 2/2"}, res, [1], [4096])
    row = next(line for line in table.splitlines() if line.startswith("| 1 | 4096 |"))
    assert "10000 (" in row and ")*" in row and ")**" in row
    assert row.index(")*") < row.index(")**")  # shipped column first, fastest second
