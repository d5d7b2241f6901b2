"""Top-k (512/1024) selection + page-table transform for the DeepSeek-V4 C4 indexer (SM12x Triton).

Drop-in for SGLang's ``topk_transform_512`` (JIT ``topk.cuh``; the v2 cluster kernel needs ~141 KB smem).
One program per row: an exact radix select on the order-preserving uint32 key of each fp32 score
(4 passes of 8-bit histograms over ``scores[r, :L]``), then one compaction pass that writes the selected
raw indices in ascending order (ties at the threshold go to the smallest indices), converted to slots
``page_table[r, i >> page_bits] << page_bits | (i & (page_size - 1))``. Rows with ``L <= K`` emit
``0..L-1`` then ``-1`` without reading scores; a selected ``-inf`` score becomes ``-1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.platform import guard_compiled

_BLOCK = 2048
_NUM_WARPS = 8
_SUPPORTED_K = (512, 1024)


@triton.jit
def _order_key(x):
    """fp32 -> uint32 whose unsigned order is the float order (NaN above +inf)."""
    bits = x.to(tl.uint32, bitcast=True)
    flip = tl.where((bits >> 31) != 0, 0xFFFFFFFF, 0x80000000).to(tl.uint32)
    return bits ^ flip


@triton.jit
def _topk_transform_kernel(
    scores_ptr,
    seq_lens_ptr,
    page_table_ptr,
    out_ptr,
    raw_ptr,
    width,
    score_stride,
    page_table_stride,
    page_table_width,
    page_bits,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RAW: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    length = tl.maximum(tl.load(seq_lens_ptr + row), 0)
    page_mask = (1 << page_bits) - 1
    pt_row = page_table_ptr + row * page_table_stride
    out_row = out_ptr + row * K
    raw_row = raw_ptr + row * K
    if length <= K:
        i = tl.arange(0, K)
        valid = (i < length) & ((i >> page_bits) < page_table_width)
        page = tl.load(pt_row + (i >> page_bits), mask=valid, other=0)
        tl.store(out_row + i, tl.where(valid, (page << page_bits) | (i & page_mask), -1))
        if HAS_RAW:
            tl.store(raw_row + i, tl.where(valid, i, -1))
    else:
        n = tl.minimum(length, width)
        s_row = scores_ptr + row * score_stride
        bins = tl.arange(0, 256)
        prefix = tl.zeros((), dtype=tl.uint32)
        need = tl.minimum(n, K)
        # radix select of the need-th largest key, 8 bits per pass from the top
        for p in tl.static_range(4):
            hist = tl.zeros((256,), dtype=tl.int32)
            for start in range(0, n, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                m = offs < n
                key = _order_key(tl.load(s_row + offs, mask=m, other=0.0))
                if p > 0:
                    m = m & ((key >> (32 - 8 * p)) == prefix)
                digit = ((key >> (24 - 8 * p)) & 0xFF).to(tl.int32)
                hist += tl.histogram(digit, 256, mask=m)
            ge = tl.sum(hist) - tl.cumsum(hist, 0) + hist  # count with digit >= bin
            b = tl.max(tl.where(ge >= need, bins, -1), 0)
            need -= tl.sum(tl.where(bins > b, hist, 0), 0)
            prefix = (prefix << 8) | b.to(tl.uint32)
        # compaction: all keys > threshold, plus the first `need` keys == threshold
        n_sel = 0
        n_eq = 0
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            x = tl.load(s_row + offs, mask=m, other=0.0)
            key = _order_key(x)
            eq = (m & (key == prefix)).to(tl.int32)
            eq_rank = n_eq + tl.cumsum(eq, 0) - eq
            take = ((m & (key > prefix)) | ((eq != 0) & (eq_rank < need))).to(tl.int32)
            pos = n_sel + tl.cumsum(take, 0) - take
            sel = take != 0
            keep = sel & (x != float("-inf"))
            page = tl.load(pt_row + (offs >> page_bits), mask=keep, other=0)
            tl.store(out_row + pos, tl.where(keep, (page << page_bits) | (offs & page_mask), -1), mask=sel)
            if HAS_RAW:
                tl.store(raw_row + pos, tl.where(keep, offs, -1), mask=sel)
            n_sel += tl.sum(take, 0)
            n_eq += tl.sum(eq, 0)


register_aot(
    "topk.transform",
    _topk_transform_kernel,
    signature={
        "scores_ptr": "*fp32",
        "seq_lens_ptr": "*i32",
        "page_table_ptr": "*i32",
        "out_ptr": "*i32",
        "raw_ptr": "*i32",
        "width": "i32",
        "score_stride": "i64",
        "page_table_stride": "i64",
        "page_table_width": "i32",
        "page_bits": "i32",
    },
    configs=[
        AotConfig({"K": k, "BLOCK": _BLOCK, "HAS_RAW": raw}, num_warps=_NUM_WARPS, num_stages=1)
        for k in _SUPPORTED_K
        for raw in (False, True)
    ],
)


def _check_2d(name: str, t: torch.Tensor, dtype: torch.dtype, rows: int, cols: int | None = None) -> None:
    if t.dim() != 2 or t.shape[0] != rows or (cols is not None and t.shape[1] != cols) or t.dtype != dtype:
        want = f"[{rows}, {cols if cols is not None else 'N'}] {dtype}"
        raise ValueError(f"{name}: expected {want}, got {list(t.shape)} {t.dtype}")
    if t.stride(1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got {t.stride()}")


def topk_transform_512(
    scores: torch.Tensor,
    seq_lens: torch.Tensor,
    page_tables: torch.Tensor,
    out_page_indices: torch.Tensor,
    page_size: int,
    out_raw_indices: torch.Tensor | None = None,
) -> None:
    """SGLang ``topk_transform_512`` signature; K = ``out_page_indices.shape[1]`` (512 or 1024).

    scores ``[R, W]`` fp32 (row stride free), seq_lens ``[R]`` or ``[R, 1]`` int32, page_tables ``[R, P]``
    int32 (row stride free), out_page_indices ``[R, K]`` int32 contiguous (written), out_raw_indices
    optional ``[R, K]`` int32 contiguous (written). ``page_size`` a power of two.
    """
    if out_page_indices.dim() != 2 or out_page_indices.shape[1] not in _SUPPORTED_K:
        raise ValueError(f"out_page_indices: expected [R, 512|1024] int32, got {list(out_page_indices.shape)}")
    rows, k = out_page_indices.shape
    _check_2d("out_page_indices", out_page_indices, torch.int32, rows, k)
    if not out_page_indices.is_contiguous():
        raise ValueError("out_page_indices: must be contiguous")
    _check_2d("scores", scores, torch.float32, rows)
    _check_2d("page_tables", page_tables, torch.int32, rows)
    if seq_lens.dtype != torch.int32 or seq_lens.numel() != rows or seq_lens.dim() not in (1, 2):
        raise ValueError(
            f"seq_lens: expected [{rows}] or [{rows}, 1] int32, got {list(seq_lens.shape)} {seq_lens.dtype}"
        )
    if seq_lens.dim() == 2 and seq_lens.shape[1] != 1:
        raise ValueError(f"seq_lens: expected [{rows}] or [{rows}, 1], got {list(seq_lens.shape)}")
    if page_size <= 0 or page_size & (page_size - 1):
        raise ValueError(f"page_size: must be a power of two, got {page_size}")
    if out_raw_indices is not None:
        _check_2d("out_raw_indices", out_raw_indices, torch.int32, rows, k)
        if not out_raw_indices.is_contiguous():
            raise ValueError("out_raw_indices: must be contiguous")
    if rows == 0:
        return
    sl = seq_lens.reshape(rows)
    if sl.stride(0) != 1:
        raise ValueError("seq_lens: must be contiguous")
    compiled = _topk_transform_kernel[(rows,)](
        scores,
        sl,
        page_tables,
        out_page_indices,
        out_raw_indices if out_raw_indices is not None else out_page_indices,
        scores.shape[1],
        scores.stride(0),
        page_tables.stride(0),
        page_tables.shape[1],
        page_size.bit_length() - 1,
        K=k,
        BLOCK=_BLOCK,
        HAS_RAW=out_raw_indices is not None,
        num_warps=_NUM_WARPS,
        num_stages=1,
    )
    guard_compiled("topk.transform", compiled)
