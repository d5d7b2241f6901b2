"""The sparse-MLA prefill tile sweep's notation, index rows and table (the sweep itself needs a CUDA GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tune_sparse_mla  # noqa: E402

from sglang_sm120.kernels import sparse_mla  # noqa: E402


def test_tile_notation_round_trips_and_rejects_garbage():
    cfg = tune_sparse_mla.parse_tile("h32n16c4w8s2p2")
    assert cfg == sparse_mla._Cfg(32, 16, num_warps=8, num_stages=2, nc=4, l2_ahead=2, min_blocks=3)
    large = sparse_mla._CFG_DECODE_LARGE
    assert tune_sparse_mla.parse_tile(tune_sparse_mla.tile_name(large)) == large
    assert tune_sparse_mla.tile_name(cfg) == "h32n16c4w8s2p2"
    doubled = tune_sparse_mla.parse_tile("h16n16c8w4s1p0x2")
    assert doubled == sparse_mla._Cfg(16, 16, num_warps=4, per_sm=2)
    assert tune_sparse_mla.tile_name(doubled) == "h16n16c8w4s1p0x2"
    flat = tune_sparse_mla.parse_tile("h32n16c4w4s2p0f")
    assert flat == sparse_mla._Cfg(32, 16, num_warps=4, num_stages=2, nc=4, flat_qk=True)
    assert tune_sparse_mla.tile_name(flat) == "h32n16c4w4s2p0f"
    with pytest.raises(ValueError, match="expected h<BLOCK_H>n<BLOCK_N>"):
        tune_sparse_mla.parse_tile("32x32")


def test_default_candidates_include_the_shipped_tiles():
    assert tune_sparse_mla.tile_name(sparse_mla._CFG_PREFILL_BF16) in tune_sparse_mla.DEFAULT_TILES.split(",")
    decode = tune_sparse_mla.DECODE_TILES.split(",")
    for cfg in (sparse_mla._CFG_DECODE_SMALL, sparse_mla._CFG_DECODE_LARGE):
        assert tune_sparse_mla.tile_name(cfg) in decode
    assert all(tune_sparse_mla.parse_tile(t).nc >= 8 for t in decode)


@pytest.mark.parametrize("ratio,n_comp,topk", [(0, 0, 0), (4, 16, 512), (4, 16, 8), (32, 2, 2)])
def test_layer_indices_match_sglangs_combined_rows(ratio, n_comp, topk):
    bs, prompt, window = 2, 64, tune_sparse_mla.WINDOW
    idx, lens, rows = tune_sparse_mla.layer_indices(bs, prompt, n_comp, ratio, topk)
    assert idx.shape[1] % tune_sparse_mla.ALIGN == 0 and idx.shape[1] >= topk + window
    assert rows == bs * (n_comp + prompt)
    for r in range(bs):
        for p in (0, 1, 5, prompt - 1):
            row = idx[r * prompt + p]
            n_c = min(topk, (p + 1) // ratio) if ratio else 0
            n_s = min(p + 1, window)
            base = r * (n_comp + prompt)
            want = list(range(base, base + n_c)) + list(range(base + n_comp + p + 1 - n_s, base + n_comp + p + 1))
            assert row[: n_c + n_s].tolist() == want
            assert (row[n_c + n_s :] == -1).all()
            assert lens[r * prompt + p] == n_c + n_s
    assert int(idx.max()) < rows


def test_render_marks_shipped_and_fastest():
    shipped = tune_sparse_mla.tile_name(sparse_mla._CFG_PREFILL_BF16)
    other = "h16n16c4w4s1p0"
    res = {"bs8": {shipped: 200.0, other: 100.0, "flashmla": "FlashMLA unavailable: ImportError"}}
    gates = {shipped: (True, "regs 1"), other: (True, "regs 2")}
    table = tune_sparse_mla.render([shipped, other], gates, res, {"bs8": 2e9})
    row = next(line for line in table.splitlines() if line.startswith("| bs8 |"))
    assert "200 (10)*" in row and "100 (20)**" in row and "unavailable" in row


def test_render_decode_rows_start_with_the_shipped_choice():
    res = {"dec8": {"auto": 30.0, "auto_tile": "h16n16c8w8s1p0", "h16n16c8w8s1p0": 30.5, "h16n16c8w4s1p0": 20.0}}
    tiles = ["h16n16c8w8s1p0", "h16n16c8w4s1p0"]
    table = tune_sparse_mla.render(tiles, {t: (True, "regs 1/1") for t in tiles}, res, {"dec8": 3e6})
    row = next(line for line in table.splitlines() if line.startswith("| dec8 |"))
    assert row.split(" | ")[1] == "30 (0) h16n16c8w8s1p0"
    assert "30 (0)*" in row and "20 (0)**" in row and "fp8 cache" in table
