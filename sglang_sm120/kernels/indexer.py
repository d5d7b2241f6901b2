"""DeepSeek-V4 lightning-indexer logits for SM12x (Triton, fp8 ``mma.sync``).

Replaces DeepGEMM ``fp8_paged_mqa_logits`` (decode and SGLang's paged prefill) and ``fp8_mqa_logits``
(ragged prefill): ``logit[r, j] = k_scale[j] * sum_h w[r, h] * relu(<q8[r, h], k8[j]>)``, H = 64 heads,
D = 128, e4m3 operands, fp32 accumulation.

One kernel serves both layouts. A program owns a *group* of query rows (the ``next_n`` MTP rows of one
request, or 4 consecutive prefill rows) and a chunk of keys; each 64-key tile is loaded once and
multiplied against all rows of the group (``[64 keys, 128] x [128, rows*64 heads]``). Paged keys live in
the 132 B/token indexer cache (per 64-token page: 64x128 e4m3 bytes, then 64 fp32 scales); ragged keys
are a contiguous ``[N, 128]`` e4m3 array with a separate ``[N]`` fp32 scale, addressed as pages of 64 with
an identity page table. Columns outside a row's valid key range are written as ``-inf``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.kernels.topk import topk_transform_512, topk_workspace_numel
from sglang_sm120.platform import guard_compiled, num_sms

NUM_HEADS = 64
HEAD_DIM = 128
PAGE_TOKENS = 64
PAGE_BYTES = PAGE_TOKENS * (HEAD_DIM + 4)  # 8448
RAGGED_GROUP = 4
# cap on the temporary logits buffer of paged_indexer_topk (rows are processed in chunks under it)
MAX_LOGITS_BYTES = int(os.environ.get("SGLANG_SM120_INDEXER_MAX_LOGITS_MB", "256")) * 2**20
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_CONFIGS = {  # rows-per-group (power of two) -> (num_warps, num_stages)
    1: (4, 3),
    2: (4, 3),
    4: (8, 3),
}


@triton.jit
def _mqa_logits_kernel(
    q_ptr,
    k_ptr,
    s_ptr,
    w_ptr,
    lo_ptr,
    hi_ptr,
    pt_ptr,
    out_ptr,
    num_rows,
    group_rows,
    hi_stride_g,
    hi_stride_n,
    causal,
    w_stride,
    pt_stride,
    k_page_stride,
    s_page_stride,
    s_offset,
    key_limit,
    num_keys,
    out_width,
    out_stride,
    compressed,
    store_all,
    tiles_per_prog,
    ROWS: tl.constexpr,
    PAGED: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Grid (groups, key chunks). Row r = g * group_rows + n (n < group_rows <= ROWS).

    Row r sees keys [lo_r, hi_r): paged lo = 0, hi = seq_len[g, n] + causal * (n + 1 - group_rows);
    ragged lo = ks[r], hi = ke[r]. Output column = key - compressed * lo_r.
    """
    HEADS: tl.constexpr = 64
    D: tl.constexpr = 128
    BN: tl.constexpr = 64
    COLS: tl.constexpr = ROWS * HEADS
    g = tl.program_id(0)
    c = tl.program_id(1)

    n_idx = tl.arange(0, ROWS)
    rows = g * group_rows + n_idx
    row_ok = (n_idx < group_rows) & (rows < num_rows)
    hi = tl.load(hi_ptr + g * hi_stride_g + n_idx * hi_stride_n, mask=row_ok, other=0)
    hi = hi + causal * (n_idx + 1 - group_rows)
    if PAGED:
        lo = tl.zeros((ROWS,), dtype=tl.int32)
    else:
        lo = tl.maximum(tl.load(lo_ptr + rows, mask=row_ok, other=0), 0)
    hi = tl.where(row_ok, tl.minimum(hi, key_limit), 0)
    col_off = lo * compressed

    # Q^T of the group: [D, ROWS*HEADS] e4m3; weights [ROWS*HEADS]
    j = tl.arange(0, COLS)
    j_row = g * group_rows + j // HEADS
    j_ok = ((j // HEADS) < group_rows) & (j_row < num_rows)
    d = tl.arange(0, D)
    q_off = j_row.to(tl.int64)[None, :] * (HEADS * D) + (j % HEADS)[None, :] * D + d[:, None]
    qt = tl.load(q_ptr + q_off, mask=j_ok[None, :], other=0).to(tl.float8e4nv, bitcast=True)
    if UPCAST:
        qt = qt.to(tl.float32)
    w = tl.load(w_ptr + j_row.to(tl.int64) * w_stride + j % HEADS, mask=j_ok, other=0.0)

    grp_lo = tl.min(tl.where(hi > lo, lo, num_keys), 0)
    grp_hi = tl.max(hi, 0)
    tok_begin = c * tiles_per_prog * BN
    tok_end = tl.minimum(tok_begin + tiles_per_prog * BN, num_keys)
    live_begin = tl.maximum(tok_begin, (grp_lo // BN) * BN)
    live_end = tl.minimum(tok_end, grp_hi)

    t = tl.arange(0, BN)
    rows64 = rows.to(tl.int64)
    out_rows = out_ptr + rows64[None, :] * out_stride
    if store_all != 0:
        # keys of this chunk that no row of the group can see: [tok_begin, dead_a) and [dead_b, tok_end);
        # tiles stay 64-aligned (tile-aligned starts keep the stores vectorized)
        neg_inf = tl.full((BN, ROWS), float("-inf"), dtype=tl.float32)
        dead_a = tl.minimum(live_begin, tok_end)
        dead_b = tl.maximum(tl.maximum(live_end, live_begin), tok_begin)
        for t0 in range(tok_begin, dead_a, BN):
            tok = t0 + t
            col = tok[:, None] - col_off[None, :]
            m = (tok < dead_a)[:, None] & row_ok[None, :] & (col >= 0) & (col < out_width)
            tl.store(out_rows + col, neg_inf, mask=m)
        for t0 in range(tok_begin + (dead_b - tok_begin) // BN * BN, tok_end, BN):
            tok = t0 + t
            col = tok[:, None] - col_off[None, :]
            m = ((tok >= dead_b) & (tok < tok_end))[:, None] & row_ok[None, :] & (col >= 0) & (col < out_width)
            tl.store(out_rows + col, neg_inf, mask=m)

    for t0 in range(live_begin, live_end, BN):
        tok = t0 + t
        tok_ok = tok < live_end
        if PAGED:
            page = tl.load(pt_ptr + g.to(tl.int64) * pt_stride + t0 // BN).to(tl.int64)
            in_page = tok % BN
        else:
            page = tl.cast(t0 // BN, tl.int64)
            in_page = t
        k_off = page * k_page_stride + in_page[:, None] * D + d[None, :]
        k = tl.load(k_ptr + k_off, mask=tok_ok[:, None], other=0).to(tl.float8e4nv, bitcast=True)
        ks = tl.load(s_ptr + page * s_page_stride + s_offset + in_page, mask=tok_ok, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        sc = tl.dot(k, qt)  # [BN, COLS] fp32
        sc = tl.maximum(sc, 0.0) * w[None, :]
        logit = tl.sum(tl.reshape(sc, (BN, ROWS, HEADS)), 2) * ks[:, None]  # [BN, ROWS]
        valid = (tok[:, None] >= lo[None, :]) & (tok[:, None] < hi[None, :])
        col = tok[:, None] - col_off[None, :]
        m = tok_ok[:, None] & row_ok[None, :] & (col >= 0) & (col < out_width)
        if store_all == 0:
            m = m & valid
        tl.store(out_rows + col, tl.where(valid, logit, float("-inf")), mask=m)


_SIGNATURE = {
    "q_ptr": "*u8",
    "k_ptr": "*u8",
    "s_ptr": "*fp32",
    "w_ptr": "*fp32",
    "lo_ptr": "*i32",
    "hi_ptr": "*i32",
    "pt_ptr": "*i32",
    "out_ptr": "*fp32",
    "num_rows": "i32",
    "group_rows": "i32",
    "hi_stride_g": "i32",
    "hi_stride_n": "i32",
    "causal": "i32",
    "w_stride": "i64",
    "pt_stride": "i64",
    "k_page_stride": "i64",
    "s_page_stride": "i64",
    "s_offset": "i32",
    "key_limit": "i32",
    "num_keys": "i32",
    "out_width": "i32",
    "out_stride": "i64",
    "compressed": "i32",
    "store_all": "i32",
    "tiles_per_prog": "i32",
}

register_aot(
    "indexer.mqa_logits",
    _mqa_logits_kernel,
    signature=_SIGNATURE,
    configs=[
        AotConfig({"ROWS": r, "PAGED": True, "UPCAST": False}, num_warps=nw, num_stages=ns)
        for r, (nw, ns) in _CONFIGS.items()
    ]
    + [
        AotConfig(
            {"ROWS": RAGGED_GROUP, "PAGED": False, "UPCAST": False},
            num_warps=_CONFIGS[RAGGED_GROUP][0],
            num_stages=_CONFIGS[RAGGED_GROUP][1],
        )
    ],
)

def _tiles_per_prog(groups: int, num_tiles: int, device: torch.device) -> int:
    """Key tiles per program: >= 4 (amortise the Q load), enough programs for ~4 waves."""
    want = 4 * num_sms(device)
    per = triton.cdiv(num_tiles * max(groups, 1), want)
    return max(1, min(num_tiles, max(4, per)))


def _launch(
    q_u8, k_u8, s_f32, w, lo, hi, pt, out, *, num_rows, group_rows, rows_pow2, hi_strides, causal,
    k_page_stride, s_page_stride, s_offset, key_limit, num_keys, out_width, compressed, store_all, paged,
) -> None:
    groups = triton.cdiv(num_rows, group_rows)
    num_tiles = triton.cdiv(num_keys, PAGE_TOKENS)
    if groups == 0 or num_tiles == 0:
        return
    per = _tiles_per_prog(groups, num_tiles, out.device)
    nw, ns = _CONFIGS[rows_pow2]
    compiled = _mqa_logits_kernel[(groups, triton.cdiv(num_tiles, per))](
        q_u8, k_u8, s_f32, w, lo, hi, pt, out,
        num_rows, group_rows, hi_strides[0], hi_strides[1], causal, w.stride(0), pt.stride(0),
        k_page_stride, s_page_stride, s_offset, key_limit, num_keys, out_width, out.stride(0),
        compressed, store_all, per,
        ROWS=rows_pow2, PAGED=paged, UPCAST=_INTERPRET, num_warps=nw, num_stages=ns,
    )  # fmt: skip
    guard_compiled("indexer.mqa_logits", compiled)


def _fp8_bytes(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise ValueError(f"{name}: expected float8_e4m3fn (or its uint8 bytes), got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")
    return t.view(torch.uint8)


def _check_weights(weights: torch.Tensor, rows: int) -> None:
    if weights.dim() != 2 or tuple(weights.shape) != (rows, NUM_HEADS) or weights.dtype != torch.float32:
        raise ValueError(
            f"weights: expected [{rows}, {NUM_HEADS}] float32, got {list(weights.shape)} {weights.dtype}"
        )
    if weights.stride(1) != 1:
        raise ValueError("weights: the head dimension must be contiguous")


def _check_i32(name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.int32:
        raise ValueError(f"{name}: expected int32, got {t.dtype}")


def fp8_paged_mqa_logits(
    q_fp8: torch.Tensor,
    kv_cache_fp8: torch.Tensor,
    weight: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    deep_gemm_metadata: object,
    max_seq_len: int,
    clean_logits: bool = True,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """SGLang/DeepGEMM ``fp8_paged_mqa_logits`` signature (``deep_gemm_metadata`` is ignored).

    q_fp8 ``[B, next_n, 64, 128]`` e4m3 (next_n <= 4); kv_cache_fp8 ``[pages, 64, 1, 132]`` uint8 (page
    stride free); weight ``[B*next_n, 64]`` fp32; seq_lens ``[B]`` or ``[B, 1]`` int32 (MTP row n sees
    ``L - next_n + n + 1`` keys) or ``[B, next_n]`` (per-row lengths); page_table ``[B, P]`` int32.
    Returns ``[B*next_n, max_seq_len]`` fp32 (or fills ``out``); columns >= the row's length are ``-inf``
    whatever ``clean_logits`` says. No host sync; capturable in a CUDA graph (pass ``out`` to avoid the
    allocation).
    """
    del deep_gemm_metadata, clean_logits
    if q_fp8.dim() != 4 or q_fp8.shape[2:] != (NUM_HEADS, HEAD_DIM) or not 1 <= q_fp8.shape[1] <= 4:
        raise ValueError(f"q_fp8: expected [B, next_n<=4, {NUM_HEADS}, {HEAD_DIM}], got {list(q_fp8.shape)}")
    b, next_n = q_fp8.shape[:2]
    q_u8 = _fp8_bytes("q_fp8", q_fp8)
    if (
        kv_cache_fp8.dim() != 4
        or kv_cache_fp8.shape[1:] != (PAGE_TOKENS, 1, HEAD_DIM + 4)
        or kv_cache_fp8.dtype != torch.uint8
        or kv_cache_fp8.stride(1) != HEAD_DIM + 4
        or kv_cache_fp8.stride(3) != 1
    ):
        raise ValueError(
            f"kv_cache_fp8: expected [pages, {PAGE_TOKENS}, 1, {HEAD_DIM + 4}] uint8 with contiguous pages, "
            f"got {list(kv_cache_fp8.shape)} {kv_cache_fp8.dtype} strides {kv_cache_fp8.stride()}"
        )
    page_stride = kv_cache_fp8.stride(0)
    if page_stride % 4:
        raise ValueError(f"kv_cache_fp8: page stride {page_stride} B must be a multiple of 4")
    _check_weights(weight, b * next_n)
    _check_i32("seq_lens", seq_lens)
    if seq_lens.dim() == 1 and seq_lens.shape[0] == b:
        hi_strides, causal = (seq_lens.stride(0), 0), 1
    elif seq_lens.dim() == 2 and seq_lens.shape == (b, 1):
        hi_strides, causal = (seq_lens.stride(0), 0), 1
    elif seq_lens.dim() == 2 and seq_lens.shape == (b, next_n):
        hi_strides, causal = (seq_lens.stride(0), seq_lens.stride(1)), 0
    else:
        raise ValueError(f"seq_lens: expected [{b}], [{b}, 1] or [{b}, {next_n}], got {list(seq_lens.shape)}")
    _check_i32("page_table", page_table)
    if page_table.dim() != 2 or page_table.shape[0] != b or page_table.stride(1) != 1:
        raise ValueError(f"page_table: expected [{b}, P] int32 (last dim contiguous), got {list(page_table.shape)}")
    if max_seq_len < 0:
        raise ValueError(f"max_seq_len: must be >= 0, got {max_seq_len}")
    rows = b * next_n
    if out is None:
        out = torch.empty((rows, max_seq_len), dtype=torch.float32, device=q_fp8.device)
    elif out.shape != (rows, max_seq_len) or out.dtype != torch.float32 or out.stride(1) != 1:
        raise ValueError(f"out: expected [{rows}, {max_seq_len}] float32, got {list(out.shape)} {out.dtype}")
    scales = kv_cache_fp8.as_strided((kv_cache_fp8.shape[0], PAGE_BYTES), (page_stride, 1)).view(torch.float32)
    _launch(
        q_u8, kv_cache_fp8, scales, weight, seq_lens, seq_lens, page_table, out,
        num_rows=rows, group_rows=next_n, rows_pow2=triton.next_power_of_2(next_n), hi_strides=hi_strides,
        causal=causal, k_page_stride=page_stride, s_page_stride=page_stride // 4,
        s_offset=PAGE_TOKENS * HEAD_DIM // 4, key_limit=min(max_seq_len, page_table.shape[1] * PAGE_TOKENS),
        num_keys=max_seq_len, out_width=max_seq_len, compressed=0, store_all=1, paged=True,
    )  # fmt: skip
    return out


def fp8_mqa_logits(
    q: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor],
    weights: torch.Tensor,
    cu_seq_len_k_start: torch.Tensor,
    cu_seq_len_k_end: torch.Tensor,
    clean_logits: bool = True,
    max_seqlen_k: int = 0,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeepGEMM ``fp8_mqa_logits`` (ragged prefill; SGLang 0.5.16 calls it with ``clean_logits=False``).

    q ``[T, 64, 128]`` e4m3; kv = (k ``[N, 128]`` e4m3 contiguous, k_scale ``[N]`` fp32); weights ``[T, 64]``
    fp32; ks/ke ``[T]`` int32: row t sees keys ``[ks[t], ke[t])``. ``max_seqlen_k == 0``: returns
    ``[T, N]`` (column = key index); else ``[T, max_seqlen_k]`` (column = key index - ks[t]). Columns
    outside the row's range are ``-inf``.
    """
    del clean_logits
    if q.dim() != 3 or q.shape[1:] != (NUM_HEADS, HEAD_DIM):
        raise ValueError(f"q: expected [T, {NUM_HEADS}, {HEAD_DIM}] float8_e4m3fn, got {list(q.shape)}")
    q_u8 = _fp8_bytes("q", q)
    k, k_scale = kv
    if k.dim() != 2 or k.shape[1] != HEAD_DIM:
        raise ValueError(f"kv[0]: expected [N, {HEAD_DIM}] float8_e4m3fn, got {list(k.shape)}")
    k_u8 = _fp8_bytes("kv[0]", k)
    n = k.shape[0]
    if k_scale.shape != (n,) or k_scale.dtype != torch.float32 or (n and k_scale.stride(0) != 1):
        raise ValueError(f"kv[1]: expected [{n}] float32 contiguous, got {list(k_scale.shape)} {k_scale.dtype}")
    t = q.shape[0]
    _check_weights(weights, t)
    for name, x in (("cu_seq_len_k_start", cu_seq_len_k_start), ("cu_seq_len_k_end", cu_seq_len_k_end)):
        _check_i32(name, x)
        if x.shape != (t,) or (t and x.stride(0) != 1):
            raise ValueError(f"{name}: expected [{t}] int32 contiguous, got {list(x.shape)}")
    if max_seqlen_k < 0:
        raise ValueError(f"max_seqlen_k: must be >= 0, got {max_seqlen_k}")
    width = max_seqlen_k if max_seqlen_k > 0 else n
    if out is None:
        out = torch.empty((t, width), dtype=torch.float32, device=q.device)
    elif out.shape != (t, width) or out.dtype != torch.float32 or out.stride(1) != 1:
        raise ValueError(f"out: expected [{t}, {width}] float32, got {list(out.shape)} {out.dtype}")
    compressed = int(max_seqlen_k > 0)
    if compressed:
        out.fill_(float("-inf"))
    _launch(
        q_u8, k_u8, k_scale, weights, cu_seq_len_k_start, cu_seq_len_k_end, cu_seq_len_k_end, out,
        num_rows=t, group_rows=RAGGED_GROUP, rows_pow2=RAGGED_GROUP, hi_strides=(RAGGED_GROUP, 1), causal=0,
        k_page_stride=PAGE_TOKENS * HEAD_DIM, s_page_stride=PAGE_TOKENS, s_offset=0, key_limit=n,
        num_keys=n, out_width=width, compressed=compressed, store_all=1 - compressed, paged=False,
    )  # fmt: skip
    return out


def paged_indexer_topk(
    q_fp8: torch.Tensor,
    kv_cache_fp8: torch.Tensor,
    weight: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    out_page_indices: torch.Tensor,
    out_raw_indices: torch.Tensor | None = None,
    *,
    max_logits_bytes: int | None = None,
    workspace: torch.Tensor | None = None,
    topk_workspace: torch.Tensor | None = None,
) -> None:
    """Paged logits + top-k transform for DSV4 rows (``next_n == 1``), in row chunks under a memory cap.

    Arguments as :func:`fp8_paged_mqa_logits` (q ``[R, 1, 64, 128]``) and
    :func:`~sglang_sm120.kernels.topk.topk_transform_512` (out ``[R, 512|1024]`` int32, page size 64).
    The logits buffer holds at most ``max_logits_bytes`` (default ``SGLANG_SM120_INDEXER_MAX_LOGITS_MB``
    = 256 MiB; at least one row); ``workspace`` (fp32, >= that many elements) avoids the allocation.
    ``topk_workspace``: the top-k scratch (int32, >= ``topk_workspace_numel(rows per chunk, P * 64, K)``;
    default: :func:`~sglang_sm120.kernels.topk.topk_transform_512`'s cached one). Chunking depends only on
    shapes, so it is CUDA-graph safe.
    """
    if q_fp8.dim() != 4 or q_fp8.shape[1] != 1:
        raise ValueError(f"q_fp8: expected [R, 1, {NUM_HEADS}, {HEAD_DIM}], got {list(q_fp8.shape)}")
    rows = q_fp8.shape[0]
    width = page_table.shape[1] * PAGE_TOKENS
    cap = MAX_LOGITS_BYTES if max_logits_bytes is None else max_logits_bytes
    chunk = max(1, min(rows, cap // max(4 * width, 1)))
    if workspace is None:
        workspace = torch.empty(chunk * width, dtype=torch.float32, device=q_fp8.device)
    elif workspace.dtype != torch.float32 or workspace.numel() < chunk * width or not workspace.is_contiguous():
        raise ValueError(f"workspace: expected >= {chunk * width} contiguous float32, got {workspace.numel()}")
    if topk_workspace is not None and out_page_indices.dim() == 2 and out_page_indices.shape[1] in (512, 1024):
        need = topk_workspace_numel(chunk, width, out_page_indices.shape[1])
        if topk_workspace.dtype != torch.int32 or topk_workspace.numel() < need or not topk_workspace.is_contiguous():
            raise ValueError(f"topk_workspace: expected >= {need} contiguous int32, got {topk_workspace.numel()}")
    sl = seq_lens.reshape(rows)
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        logits = workspace[: (r1 - r0) * width].view(r1 - r0, width)
        fp8_paged_mqa_logits(
            q_fp8[r0:r1], kv_cache_fp8, weight[r0:r1], sl[r0:r1], page_table[r0:r1], None, width, out=logits
        )
        topk_transform_512(
            logits,
            sl[r0:r1],
            page_table[r0:r1],
            out_page_indices[r0:r1],
            PAGE_TOKENS,
            None if out_raw_indices is None else out_raw_indices[r0:r1],
            workspace=topk_workspace,
        )
