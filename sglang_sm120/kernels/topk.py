"""Top-k (512/1024) selection + page-table transform for the DeepSeek-V4 C4 indexer (SM12x Triton).

Drop-in for SGLang's ``topk_transform_512`` (JIT ``topk.cuh``; the v2 cluster kernel needs ~141 KB smem).
Exact selection by a tree of register-resident radix selects: a program loads one chunk of ``BLOCK``
candidates into registers, finds the K-th largest order-preserving uint32 key by 4 passes of 8-bit
histograms over those registers, and compacts the selected candidates in ascending index order (ties at
the threshold go to the smallest indices). Rows longer than one chunk are first cut into chunks whose local
top-K lists (key, index; ``-1`` padded) go to a scratch buffer (any global top-K element is in its chunk's
local top-K under the order (key desc, index asc)); levels repeat until one chunk holds all candidates, and
the final level writes slots ``page_table[r, i >> page_bits] << page_bits | (i & (page_size - 1))``. Rows with
``L <= K`` emit ``0..L-1`` then ``-1`` without reading scores; a selected ``-inf`` score becomes ``-1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.platform import guard_compiled

_SUPPORTED_K = (512, 1024)
_CHUNK = 4096  # candidates per program of a non-final level (and of a final level over > 2048)
_SMALL_FINAL = 2048  # final-level block when <= 2048 candidates remain
_PER_THREAD = 8  # candidates per thread: num_warps = BLOCK / 256 (16 at 4096, 8 at 2048)
# Persistent scratch for calls without ``workspace`` (the SGLang bindings), per (device, stream): grown only
# outside CUDA-graph capture and never freed, so graphs captured with an older buffer keep valid pointers.
# A capture that finds it too small, or a need above _CACHED_MAX int32s, allocates per call.
_CACHED_MAX = 16 * 2**20
_SCRATCH: dict[tuple[torch.device, int], list[torch.Tensor]] = {}


@triton.jit
def _order_key(x):
    """fp32 -> uint32 whose unsigned order is the float order (NaN above +inf)."""
    bits = x.to(tl.uint32, bitcast=True)
    flip = tl.where((bits >> 31) != 0, 0xFFFFFFFF, 0x80000000).to(tl.uint32)
    return bits ^ flip


@triton.jit
def _topk_select_kernel(
    src_ptr,
    src_idx_ptr,
    seq_lens_ptr,
    page_table_ptr,
    out_ptr,
    raw_ptr,
    width,
    src_stride,
    dst_stride,
    page_table_stride,
    page_table_width,
    page_bits,
    has_raw,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    FROM_SCORES: tl.constexpr,
    FINAL: tl.constexpr,
):
    """Grid (rows, chunks of BLOCK candidates; 1 when FINAL).

    Candidates: FROM_SCORES, fp32 ``src[r, i]`` for ``i < min(L, width)`` (index i); else int32 keys
    ``src[r, j]`` / indices ``src_idx[r, j]`` for ``j < width`` (index ``-1`` = padding). FINAL writes
    ``out[r, :K]`` (slots) and ``raw[r, :K]``; otherwise the chunk's top-K keys / indices go to
    ``out / raw[r, c*K : (c+1)*K]`` (row stride ``dst_stride``), ``-1`` padded. ``has_raw`` (FINAL only):
    ``raw_ptr`` is a real output.
    """
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    length = tl.maximum(tl.load(seq_lens_ptr + row), 0)
    page_mask = (1 << page_bits) - 1
    pt_row = page_table_ptr + row * page_table_stride
    i = tl.arange(0, K)
    if FINAL:
        out_row = out_ptr + row * K
        raw_row = raw_ptr + row * K
    else:
        out_row = out_ptr + row * dst_stride + chunk * K
        raw_row = raw_ptr + row * dst_stride + chunk * K
    if length <= K:
        if FINAL:
            valid = (i < length) & ((i >> page_bits) < page_table_width)
            first = tl.load(pt_row + (i >> page_bits), mask=valid, other=0)
            tl.store(out_row + i, tl.where(valid, (first << page_bits) | (i & page_mask), -1))
            if has_raw != 0:
                tl.store(raw_row + i, tl.where(valid, i, -1))
    else:
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        if FROM_SCORES:
            m = offs < tl.minimum(length, width)
            key = _order_key(tl.load(src_ptr + row * src_stride + offs, mask=m, other=0))
            idx = offs
        else:
            idx = tl.load(src_idx_ptr + row * src_stride + offs, mask=offs < width, other=-1)
            key = tl.load(src_ptr + row * src_stride + offs, mask=offs < width, other=0).to(tl.uint32, bitcast=True)
            m = idx >= 0
        bins = tl.arange(0, 256)
        prefix = tl.zeros((), dtype=tl.uint32)
        taken = tl.minimum(tl.sum(m.to(tl.int32), 0), K)
        need = taken
        # radix select of the need-th largest key, 8 bits per pass from the top
        for p in tl.static_range(4):
            mp = m
            if p > 0:
                mp = m & ((key >> (32 - 8 * p)) == prefix)
            hist = tl.histogram(((key >> (24 - 8 * p)) & 0xFF).to(tl.int32), 256, mask=mp)
            ge = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist  # count with digit >= bin
            b = tl.max(tl.where(ge >= need, bins, -1), 0)
            need -= tl.sum(tl.where(bins > b, hist, 0), 0)
            prefix = (prefix << 8) | b.to(tl.uint32)
        # compaction: all keys > threshold, plus the first `need` keys == threshold
        eq = (m & (key == prefix)).to(tl.int32)
        take = ((m & (key > prefix)) | ((eq != 0) & (tl.cumsum(eq, 0) - eq < need))).to(tl.int32)
        pos = tl.cumsum(take, 0) - take
        sel = take != 0
        if FINAL:
            keep = sel & (key != 0x007FFFFF)  # _order_key(-inf): a selected -inf becomes -1
            page = tl.load(pt_row + (idx >> page_bits), mask=keep, other=0)
            tl.store(out_row + pos, tl.where(keep, (page << page_bits) | (idx & page_mask), -1), mask=sel)
            tl.store(out_row + i, tl.full((K,), -1, tl.int32), mask=i >= taken)
            if has_raw != 0:
                tl.store(raw_row + pos, tl.where(keep, idx, -1), mask=sel)
                tl.store(raw_row + i, tl.full((K,), -1, tl.int32), mask=i >= taken)
        else:
            tl.store(out_row + pos, key.to(tl.int32, bitcast=True), mask=sel)
            tl.store(raw_row + pos, idx, mask=sel)
            tl.store(raw_row + i, tl.full((K,), -1, tl.int32), mask=i >= taken)


def _num_warps(block: int) -> int:
    return block // (32 * _PER_THREAD)


register_aot(
    "topk.select",
    _topk_select_kernel,
    signature={
        "src_ptr": "*i32",
        "src_idx_ptr": "*i32",
        "seq_lens_ptr": "*i32",
        "page_table_ptr": "*i32",
        "out_ptr": "*i32",
        "raw_ptr": "*i32",
        "width": "i32",
        "src_stride": "i64",
        "dst_stride": "i64",
        "page_table_stride": "i64",
        "page_table_width": "i32",
        "page_bits": "i32",
        "has_raw": "i32",
    },
    # every (BLOCK, FROM_SCORES, FINAL) topk_transform_512 launches: non-final levels at _CHUNK (level 0 from
    # scores, deeper levels from lists), the final level at _SMALL_FINAL or _CHUNK from either source
    configs=[
        AotConfig(
            {"K": k, "BLOCK": block, "FROM_SCORES": src, "FINAL": final}, num_warps=_num_warps(block), num_stages=1
        )
        for k in _SUPPORTED_K
        for block, final in ((_CHUNK, False), (_SMALL_FINAL, True), (_CHUNK, True))
        for src in (True, False)
    ],
)


def _levels(width: int, k: int) -> list[int]:
    """Chunks per row of each non-final level (candidates per row shrink ``_CHUNK / k``-fold per level)."""
    levels = []
    while width > _CHUNK:
        levels.append(triton.cdiv(width, _CHUNK))
        width = levels[-1] * k
    return levels


def topk_workspace_numel(rows: int, width: int, k: int = 512) -> int:
    """int32 elements of scratch :func:`topk_transform_512` needs for ``[rows, width]`` scores (may be 0)."""
    if k not in _SUPPORTED_K:
        raise ValueError(f"k: expected 512 or 1024, got {k}")
    return _workspace_numel(rows, k, _levels(width, k))


def _workspace_numel(rows: int, k: int, levels: list[int]) -> int:
    """Keys + indices of every non-final level's lists (``levels`` from :func:`_levels`)."""
    return 2 * rows * k * sum(levels)


def _scratch(numel: int, device: torch.device) -> torch.Tensor:
    """int32 scratch of >= ``numel`` elements for a call without ``workspace`` (see ``_SCRATCH``)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    bufs = _SCRATCH.setdefault((device, stream), [])
    if bufs and bufs[-1].numel() >= numel:
        return bufs[-1]
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if numel == 0 or numel > _CACHED_MAX or capturing:
        return torch.empty(numel, dtype=torch.int32, device=device)
    bufs.append(torch.empty(min(triton.next_power_of_2(numel), _CACHED_MAX), dtype=torch.int32, device=device))
    return bufs[-1]


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
    *,
    workspace: torch.Tensor | None = None,
) -> None:
    """SGLang ``topk_transform_512`` signature; K = ``out_page_indices.shape[1]`` (512 or 1024).

    scores ``[R, W]`` fp32 (row stride free), seq_lens ``[R]`` or ``[R, 1]`` int32, page_tables ``[R, P]``
    int32 (row stride free), out_page_indices ``[R, K]`` int32 contiguous (written), out_raw_indices
    optional ``[R, K]`` int32 contiguous (written). ``page_size`` a power of two. ``workspace``: int32,
    >= :func:`topk_workspace_numel` elements (rows longer than 4096 need one; when omitted, a per-device
    cached buffer, grown only outside CUDA-graph capture). Launches depend on shapes only (CUDA-graph safe).
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
    width = scores.shape[1]
    levels = _levels(width, k)
    need = _workspace_numel(rows, k, levels)
    if workspace is None:
        workspace = _scratch(need, scores.device)
    elif workspace.dtype != torch.int32 or workspace.numel() < need or not workspace.is_contiguous():
        raise ValueError(f"workspace: expected >= {need} contiguous int32, got {workspace.numel()} {workspace.dtype}")
    if rows == 0:
        return
    sl = seq_lens.reshape(rows)
    if sl.stride(0) != 1:
        raise ValueError("seq_lens: must be contiguous")
    page_bits = page_size.bit_length() - 1
    src, src_idx, src_stride, n = scores.view(torch.int32), scores.view(torch.int32), scores.stride(0), width
    for level, lists in enumerate(levels):  # non-final levels: [rows, lists * k] keys and indices
        keys, idx = workspace[: 2 * rows * lists * k].view(2, rows, lists * k).unbind(0)
        workspace = workspace[2 * rows * lists * k :]
        compiled = _topk_select_kernel[(rows, lists)](
            src, src_idx, sl, page_tables, keys, idx, n, src_stride, lists * k, page_tables.stride(0),
            page_tables.shape[1], page_bits, 0,
            K=k, BLOCK=_CHUNK, FROM_SCORES=level == 0, FINAL=False, num_warps=_num_warps(_CHUNK), num_stages=1,
        )  # fmt: skip
        guard_compiled("topk.select", compiled)
        src, src_idx, src_stride, n = keys, idx, lists * k, lists * k
    block = _SMALL_FINAL if n <= _SMALL_FINAL else _CHUNK
    compiled = _topk_select_kernel[(rows, 1)](
        src, src_idx, sl, page_tables, out_page_indices,
        out_raw_indices if out_raw_indices is not None else out_page_indices, n, src_stride, k,
        page_tables.stride(0), page_tables.shape[1], page_bits, int(out_raw_indices is not None),
        K=k, BLOCK=block, FROM_SCORES=not levels, FINAL=True,
        num_warps=_num_warps(block), num_stages=1,
    )  # fmt: skip
    guard_compiled("topk.select", compiled)
