"""Sparse MLA attention for DeepSeek-V4 on SM12x (FlashMLA ``flash_mla_with_kvcache`` replacement).

Per query row ``t`` and head ``h``: softmax over the union of a main candidate list (SWA) and an
optional extra list (C4 top-k or C128), each a list of slots into a paged fp8 KV cache in the V4
layout (see :mod:`sglang_sm120.reference.sparse_mla`), with a per-head sink logit in the
denominator.  Kernel: one program per (row, block of BLOCK_H heads, candidate split); gathers
BLOCK_N slots per step, dequantizes FP8 NoPE x UE8M0 into a bf16 tile (RoPE columns taken as
bf16) held as ``[NC, BLOCK_N, 512 / NC]`` column chunks spread over the warps: QK and PV are
batched ``tl.dot`` over the chunks (QK partial sums reduced over chunks, the ``[NC, BLOCK_H,
512 / NC]`` fp32 accumulator split across warps without replication), online softmax in base 2.
The tile follows the launch size (:func:`_pick_cfg`): 16 heads x 16 candidates with many splits for
small decode batches, 32 heads x 32 candidates with an L2 prefetch two blocks ahead for large ones,
32 x 32 unsplit for prefill; prefill over SGLang's bf16 workspace (:func:`sparse_mla_bf16_fwd`) takes
32 heads x 16 candidates in four 128-column chunks on 4 warps.  With more than one split, partials
``(o / l, log2 l + m)`` go to a workspace and a combine kernel merges them and applies the sink.  No
host syncs, no allocation in :func:`sparse_mla_fwd`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.platform import guard_compiled, num_sms
from sglang_sm120.reference.sparse_mla import DEFAULT_SCALE, HEAD_DIM, TOKEN_BYTES, sparse_mla_bf16_ref, sparse_mla_ref

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634
MAX_SPLITS = 64
SUPPORTED_HEADS = (8, 16, 32, 64, 128)


@triton.jit
def _block_slots(
    idx_ptr, n_valid, eidx_ptr, en_valid, nb0, blk, blk_hi, kv_rows, BLOCK_N: tl.constexpr, KV_BF16: tl.constexpr
):
    """Slots ``[BLOCK_N]`` int32 of candidate block ``blk`` of the list [main blocks ``0..nb0``) | extra
    blocks]; -1 where invalid, past the list's length or ``blk >= blk_hi``, and (KV_BF16) at or past ``kv_rows``
    (FlashMLA's sparse-prefill contract), so a -1 slot is the only invalid one downstream."""
    second = blk >= nb0
    pos = tl.where(second, blk - nb0, blk) * BLOCK_N + tl.arange(0, BLOCK_N)
    lim = tl.where(blk < blk_hi, tl.where(second, en_valid, n_valid), 0)
    slot = tl.load(tl.where(second, eidx_ptr, idx_ptr) + pos, mask=pos < lim, other=-1)
    if KV_BF16:
        slot = tl.where(slot < kv_rows, slot, -1)
    return slot


@triton.jit
def _slot_rows(kv_ptr, page_stride, page_bits, ekv_ptr, epage_stride, epage_bits, second, slot):
    """Cache base pointer (extra cache when ``second``), data-row and scale-row byte offsets
    ``[BLOCK_N]`` int64 of ``slot`` (-1 read as slot 0); pages of ``2 ** page_bits`` tokens (shifts: a
    division by a runtime page size cost ~9-13 % of the decode loop's instructions)."""
    # both caches are validated 16-byte aligned (base and page stride): lets the gathers vectorise
    # whatever the JIT's specialisation of the integer arguments
    base = tl.multiple_of(tl.where(second, ekv_ptr, kv_ptr), 16)
    stride = tl.multiple_of(tl.where(second, epage_stride, page_stride), 16)
    bits = tl.where(second, epage_bits, page_bits)
    slot = tl.maximum(slot, 0).to(tl.int64)
    page = slot >> bits
    off = slot - (page << bits)
    return base, page * stride + off * 576, page * stride + (576 << bits) + off * 8


@triton.jit
def _prefetch_l2(
    kv_ptr, page_stride, page_bits, ekv_ptr, epage_stride, epage_bits, second, slot, KV_BF16: tl.constexpr
):
    """``prefetch.global.L2`` every 128-B line of each slot's row: the 584 B of an fp8 row, the 1024 B of a
    bf16 row (no registers held)."""
    base, row, srow = _slot_rows(kv_ptr, page_stride, page_bits, ekv_ptr, epage_stride, epage_bits, second, slot)
    j = tl.arange(0, 8)[None, :]
    if KV_BF16:
        addr = base + row[:, None] + j * 128
    else:
        addr = base + tl.where(j < 6, row[:, None] + tl.minimum(j * 128, 575), srow[:, None])
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [addr], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _gather_block(
    kv_ptr,
    page_stride,
    page_bits,
    ekv_ptr,
    epage_stride,
    epage_bits,
    second,
    slot,
    NC: tl.constexpr,
    KV_BF16: tl.constexpr,
):
    """Raw bytes of the candidates ``slot [BLOCK_N]`` (-1 = invalid, not read) of one cache (extra when
    ``second``).  The 512 columns are ``NC`` chunks of ``DC = 512 // NC`` (fp8 cache: NC = 8, one UE8M0
    scale per chunk, the last chunk the 64 RoPE columns).

    Returns fp8 NoPE bytes ``[NC, BLOCK_N, DC]`` u8 (0 on RoPE columns), UE8M0 bytes ``[NC, BLOCK_N, 1]``
    u8, RoPE ``[1, BLOCK_N, DC]`` bf16 and validity ``[BLOCK_N]``.  KV_BF16: the cache is bf16 rows (page
    size 1, the page stride the row stride): all 512 columns come back in the RoPE slot (``[NC, BLOCK_N,
    DC]``), the fp8 and scale slots are unused.
    """
    DC: tl.constexpr = 512 // NC
    valid = slot >= 0
    base, row, srow = _slot_rows(kv_ptr, page_stride, page_bits, ekv_ptr, epage_stride, epage_bits, second, slot)
    row = row[None, :, None]
    v3 = valid[None, :, None]
    chunk = tl.arange(0, NC)[:, None, None]
    col = chunk * DC + tl.arange(0, DC)[None, None, :]
    if KV_BF16:
        kr = tl.load((base + row).to(tl.pointer_type(tl.bfloat16)) + col, mask=v3, other=0.0)
        kb = kr
        sb = kr
    else:
        nope = col < 448
        kb = tl.load(base + row + col, mask=v3 & nope, other=0)
        sb = tl.load(base + srow[None, :, None] + chunk * DC // 64, mask=v3 & (chunk * DC < 448), other=127)
        # RoPE once as [1, BLOCK_N, 64], broadcast over the chunks by the caller's select (a [NC, BLOCK_N, 64]
        # load masked to its last chunk cost ~11-17 % more instructions per step: PRMT / SEL / F2F)
        rope = tl.arange(0, DC)[None, None, :]
        kr = tl.load((base + row + 448).to(tl.pointer_type(tl.bfloat16)) + rope, mask=v3, other=0.0)
    return kb, sb, kr, valid


@triton.jit
def _attend_block(
    qt,
    acc,
    m_i,
    l_i,
    kb,
    sb,
    kr,
    valid,
    qk_scale,
    NC: tl.constexpr,
    FLAT_QK: tl.constexpr,
    UPCAST: tl.constexpr,
    KV_BF16: tl.constexpr,
):
    """Online-softmax update of ``acc [NC, BLOCK_H, DC]``, ``m_i``, ``l_i`` (base 2) by one gathered block;
    ``qt`` is q: ``[BLOCK_H, 512]`` (FLAT_QK) or ``[NC, BLOCK_H, DC]`` in the same column chunks.

    Column chunks are the batch axis of the PV dot, so each warp owns whole chunks and it needs no
    reduction.  QK: FLAT_QK, one ``[BLOCK_H, 512] x [512, BLOCK_N]`` dot whose output tiles the warps
    share out (no reduction across warps); else chunk-batched too, the per-chunk partial sums then
    reduced over the chunk axis (across the warps: for a 32 x 32 tile on 8 warps ~26 % of the loop's
    instructions, mostly SHFL / FADD; worth it only where the flat dot's output has fewer 16 x 8 mma
    tiles than there are warps, which would compute some twice).
    """
    DC: tl.constexpr = 512 // NC
    if KV_BF16:
        k = kr.to(tl.float32) if UPCAST else kr
    else:
        nope = (tl.arange(0, NC)[:, None, None] * DC + tl.arange(0, DC)[None, None, :]) < 448
        scale = tl.exp2(sb.to(tl.float32) - 127.0)
        kf = kb.to(tl.float8e4nv, bitcast=True)
        if UPCAST:  # interpreter: bf16 arithmetic / bf16 tl.dot are wrong there, stay in fp32
            k = tl.where(nope, kf.to(tl.float32) * scale, kr.to(tl.float32))
        else:  # power-of-two scales: the bf16 product is exact
            k = tl.where(nope, kf.to(tl.bfloat16) * scale.to(tl.bfloat16), kr)
    if FLAT_QK:
        s = tl.dot(qt, tl.trans(tl.reshape(tl.permute(k, (1, 0, 2)), (k.shape[1], 512))))
    else:
        s = tl.sum(tl.dot(qt, tl.permute(k, (0, 2, 1))), 0)
    s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if not UPCAST:
        p = p.to(tl.bfloat16)
    acc = acc * alpha[None, :, None] + tl.dot(tl.broadcast_to(p[None, :, :], (NC, p.shape[0], p.shape[1])), k)
    return acc, m_new, l_i


@triton.jit
def _sparse_mla_kernel(
    q_ptr,
    stride_qt,
    stride_qh,
    kv_ptr,
    page_stride,
    page_bits,
    idx_ptr,
    stride_it,
    len_ptr,
    num_idx,
    ekv_ptr,
    epage_stride,
    epage_bits,
    kv_rows,
    eidx_ptr,
    stride_eit,
    elen_ptr,
    num_eidx,
    has_len,
    has_elen,
    rows_per_len,
    sink_ptr,
    has_sink,
    out_ptr,
    stride_ot,
    stride_oh,
    lse_ptr,
    stride_lt,
    stride_lh,
    part_o_ptr,
    part_lse_ptr,
    H,
    qk_scale,
    num_splits,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NC: tl.constexpr,
    FLAT_QK: tl.constexpr,
    SPLIT: tl.constexpr,
    L2_AHEAD: tl.constexpr,
    UPCAST: tl.constexpr,
    KV_BF16: tl.constexpr,
):
    """Grid ``(T * cdiv(H, BLOCK_H), num_splits)``.

    The row's non-empty candidate blocks (main list, then extra list, per its lengths) are dealt in
    equal contiguous runs to the ``num_splits`` programs.  L2_AHEAD > 0: the block that many steps
    ahead is prefetched into L2 (its slots loaded one step earlier still).
    SPLIT=False: writes the final ``out`` bf16 and ``lse`` (sink applied).  SPLIT=True: writes
    ``part_o [T, H, num_splits, 512]`` fp32 (normalized) and ``part_lse [T, H, num_splits]`` (log2).
    """
    DC: tl.constexpr = 512 // NC
    # one UE8M0 scale per 64 fp8 columns is applied per chunk, and the 64 RoPE columns are the last chunk
    tl.static_assert(KV_BF16 or NC == 8, "sparse_mla: the fp8 cache needs NC == 8 (chunks of 64 columns)")
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_hb = tl.cdiv(H, BLOCK_H)
    t = (pid // n_hb).to(tl.int64)
    heads = (pid % n_hb) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = heads < H
    col = tl.arange(0, NC)[:, None, None] * DC + tl.arange(0, DC)[None, None, :]  # [NC, 1, DC]
    h3 = heads[None, :, None]
    m3 = hmask[None, :, None]
    # loaded once, before any gather is in flight
    if FLAT_QK:
        qcol = tl.arange(0, 512)[None, :]
        qt = tl.load(q_ptr + t * stride_qt + heads[:, None] * stride_qh + qcol, mask=hmask[:, None], other=0.0)
    else:
        qt = tl.load(q_ptr + t * stride_qt + h3 * stride_qh + col, mask=m3, other=0.0)
    if UPCAST:  # interpreter: bf16 tl.dot is wrong there, stay in fp32
        qt = qt.to(tl.float32)

    b = t // rows_per_len
    len0 = tl.minimum(tl.load(len_ptr + b, mask=has_len != 0, other=num_idx), num_idx)
    len1 = tl.minimum(tl.load(elen_ptr + b, mask=has_elen != 0, other=num_eidx), num_eidx)
    nb0 = tl.cdiv(len0, BLOCK_N)
    nblk = nb0 + tl.cdiv(len1, BLOCK_N)
    per_split = tl.cdiv(nblk, num_splits)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, nblk)
    idx_row = idx_ptr + t * stride_it
    eidx_row = eidx_ptr + t * stride_eit

    acc = tl.zeros([NC, BLOCK_H, DC], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    if L2_AHEAD > 0:  # blocks lo .. lo + L2_AHEAD - 1 now; each step then prefetches the block L2_AHEAD on
        for d in tl.static_range(L2_AHEAD):
            slots = _block_slots(idx_row, len0, eidx_row, len1, nb0, lo + d, hi, kv_rows, BLOCK_N, KV_BF16)
            _prefetch_l2(kv_ptr, page_stride, page_bits, ekv_ptr, epage_stride, epage_bits, lo + d >= nb0, slots,
                         KV_BF16)  # fmt: skip
        ahead = _block_slots(idx_row, len0, eidx_row, len1, nb0, lo + L2_AHEAD, hi, kv_rows, BLOCK_N, KV_BF16)
    for blk in range(lo, hi):
        if L2_AHEAD > 0:
            _prefetch_l2(kv_ptr, page_stride, page_bits, ekv_ptr, epage_stride, epage_bits, blk + L2_AHEAD >= nb0,
                         ahead, KV_BF16)  # fmt: skip
            ahead = _block_slots(idx_row, len0, eidx_row, len1, nb0, blk + L2_AHEAD + 1, hi, kv_rows, BLOCK_N,
                                 KV_BF16)  # fmt: skip
        slots = _block_slots(idx_row, len0, eidx_row, len1, nb0, blk, hi, kv_rows, BLOCK_N, KV_BF16)
        kb, sb, kr, valid = _gather_block(kv_ptr, page_stride, page_bits, ekv_ptr, epage_stride, epage_bits,
                                          blk >= nb0, slots, NC, KV_BF16)  # fmt: skip
        acc, m_i, l_i = _attend_block(qt, acc, m_i, l_i, kb, sb, kr, valid, qk_scale, NC, FLAT_QK, UPCAST, KV_BF16)

    lonely = l_i == 0.0
    o = acc / tl.where(lonely, 1.0, l_i)[None, :, None]
    lse2 = tl.where(lonely, float("-inf"), m_i + tl.log2(tl.where(lonely, 1.0, l_i)))
    if SPLIT:
        prow = (t * H + heads) * num_splits + split
        # the workspace is validated 16-byte aligned
        tl.store(tl.multiple_of(part_o_ptr, 16) + prow[None, :, None] * 512 + col, o, mask=m3)
        tl.store(part_lse_ptr + prow, lse2, mask=hmask)
    else:
        sink2 = tl.load(sink_ptr + heads, mask=hmask & (has_sink != 0), other=float("-inf"))
        sink2 = sink2 * 1.4426950408889634
        # out *= exp(lse) / (exp(lse) + exp(sink)); a row with no valid candidate gives 0 and +inf.
        o = o / (1.0 + tl.exp2(sink2 - lse2))[None, :, None]
        o = tl.where(lonely[None, :, None], 0.0, o)
        lse = tl.where(lonely, float("inf"), lse2 * 0.6931471805599453)
        tl.store(out_ptr + t * stride_ot + h3 * stride_oh + col, o.to(tl.bfloat16), mask=m3)
        tl.store(lse_ptr + t * stride_lt + heads * stride_lh, lse, mask=hmask)


@triton.jit
def _sparse_mla_combine_kernel(
    part_o_ptr,
    part_lse_ptr,
    sink_ptr,
    has_sink,
    out_ptr,
    stride_ot,
    stride_oh,
    lse_ptr,
    stride_lt,
    stride_lh,
    H,
    num_splits,
):
    """Grid ``(T * H,)``: LSE-merge the split partials of one (row, head), apply the sink."""
    pid = tl.program_id(0).to(tl.int64)
    t = pid // H
    h = pid % H
    d = tl.arange(0, 512)
    base = pid * num_splits
    # `while` loops: the interpreter rejects runtime-int bounds in range().
    m = float("-inf")
    s = 0
    while s < num_splits:
        m = tl.maximum(m, tl.load(part_lse_ptr + base + s))
        s += 1
    m_use = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([512], dtype=tl.float32)
    total = 0.0
    s = 0
    while s < num_splits:
        w = tl.exp2(tl.load(part_lse_ptr + base + s) - m_use)
        acc += w * tl.load(part_o_ptr + (base + s) * 512 + d)
        total += w
        s += 1
    lonely = total == 0.0
    lse2 = m_use + tl.log2(tl.where(lonely, 1.0, total))
    sink2 = tl.load(sink_ptr + h, mask=has_sink != 0, other=float("-inf")) * 1.4426950408889634
    o = acc / tl.where(lonely, 1.0, total) / (1.0 + tl.exp2(sink2 - lse2))
    o = tl.where(lonely, 0.0, o)
    lse = tl.where(lonely, float("inf"), lse2 * 0.6931471805599453)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + d, o.to(tl.bfloat16))
    tl.store(lse_ptr + t * stride_lt + h * stride_lh, lse)


# ----------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class _Cfg:
    """Launch configuration: ``block_h`` heads per program (16 = the mma M; heads past H are masked),
    ``block_n`` candidates per step, ``nc`` column chunks (the batch axis of the PV dot, spread over the
    warps; of the QK dot too unless ``flat_qk``), L2 prefetch ``l2_ahead`` blocks ahead, the fewest candidate
    blocks per split :func:`choose_num_splits` leaves a program (the prefetch needs a few), the programs per SM
    its split budget counts on (``per_sm`` > 1 only for a tile of which that many fit one SM), and ``flat_qk``:
    QK as one ``[block_h, 512] x [512, block_n]`` dot (only for a tile whose QK output has a 16 x 8 mma tile
    for every warp, ``block_h * block_n >= 128 * num_warps``; else warps would compute some twice)."""

    block_h: int
    block_n: int
    num_warps: int = 8
    num_stages: int = 1
    nc: int = 8
    l2_ahead: int = 0
    min_blocks: int = 1
    per_sm: int = 1
    flat_qk: bool = False


# Tiles picked by :func:`_pick_cfg`, from an H100 mma.sync sweep (DISABLE_MMA_V3=1, CUDA-graph
# replays, 32 heads, SWA 128 + C4 top-k 512, 8K context).  Few programs: 16-head programs split the
# candidates most finely (bs 1: 13.3 us vs 42.2 us for the large tile, bs 8: 22.6 vs 42.9).  Many
# programs: 32-head programs gather and dequantise each KV row once per 32 heads and prefetch two
# blocks ahead into L2 (bs 32: 55.6 vs 75.9 us, bs 64: 105.2 vs 146.0; MTP q_len 2 bs 32: 103.0 vs
# 141.3).  The small tile runs on 4 warps (scripts/tune_sparse_mla.py --cases dec1,dec8,dec32,dec64,mtp32:
# bs 8 20.5 vs 22.4 us for 8 warps, never slower at bs 1-64).  All builds have 0 spills in every AOT specialisation.
# Session 12 (H100, tune_sparse_mla.py --cases dec8,dec32,dec64): budgeting splits for two small-tile programs per SM
# (it fits two: 49 KB shared memory, <= 205 registers x 128 threads) made it the fastest decode tile up to 128
# 16-head programs: bs 8 19 vs 20 us, bs 32 46 vs 57 us (large tile), bs 64 94 vs 106 us (large tile); hence
# LARGE_DECODE_PROGRAMS 48 -> 256 (beyond 128 programs not timed).
_CFG_DECODE_SMALL = _Cfg(16, 16, num_warps=4, per_sm=2)
# The decode tiles keep the chunk-batched QK: the small one's 16 x 16 output has 2 mma tiles for 4 warps; the large
# one's flat QK holds a 16 x 512 q fragment per warp and spills 344 B split-K in the no-alignment specialisation.
_CFG_DECODE_LARGE = _Cfg(32, 32, l2_ahead=2, min_blocks=3)
# Prefill (rows x 32-head blocks >= 2 x SMs, never split); the L2 prefetch was not timed there.  The prefill tiles
# take the flat QK: no cross-warp reduction of per-chunk partials, sm_120a loop instructions per warp per step
# 1441 -> 1059 here and 852 -> 648 for the bf16-workspace tile (scripts/sass_stats.py).  H100, mma.sync, session 12
# (tune_sparse_mla.py): pre2k 1496 vs 3003 us; bf16 tile bs32 5479 vs 6389 us, long4k 2434 vs 2781 us.
_CFG_PREFILL = _Cfg(32, 32, flat_qk=True)
# Prefill over the bf16 workspace (no per-chunk UE8M0 scale, so chunks may be 128 wide): the fastest 0-spill tile of
# scripts/tune_sparse_mla.py on the H100 (mma.sync; 6.97 vs 16.68 ms for the bs-32 e2e prefill's four layers; the L2
# prefetch gained nothing there).
_CFG_PREFILL_BF16 = _Cfg(32, 16, num_warps=4, num_stages=2, nc=4, flat_qk=True)
# The large decode tile from this many 16-head programs (rows x cdiv(H, 16)) on, for H >= 32 (see above).
LARGE_DECODE_PROGRAMS = 256

_MAIN_SIG = {
    "q_ptr": "*bf16",
    "stride_qt": "i32",
    "stride_qh": "i32",
    "kv_ptr": "*u8",
    "page_stride": "i64",
    "page_bits": "i32",
    "idx_ptr": "*i32",
    "stride_it": "i32",
    "len_ptr": "*i32",
    "num_idx": "i32",
    "ekv_ptr": "*u8",
    "epage_stride": "i64",
    "epage_bits": "i32",
    "kv_rows": "i32",
    "eidx_ptr": "*i32",
    "stride_eit": "i32",
    "elen_ptr": "*i32",
    "num_eidx": "i32",
    "has_len": "i32",
    "has_elen": "i32",
    "rows_per_len": "i32",
    "sink_ptr": "*fp32",
    "has_sink": "i32",
    "out_ptr": "*bf16",
    "stride_ot": "i32",
    "stride_oh": "i32",
    "lse_ptr": "*fp32",
    "stride_lt": "i32",
    "stride_lh": "i32",
    "part_o_ptr": "*fp32",
    "part_lse_ptr": "*fp32",
    "H": "i32",
    "qk_scale": "fp32",
    "num_splits": "i32",
}


def _aot_config(c: _Cfg, split: bool, bf16: bool) -> AotConfig:
    """The build of tile ``c``, split-K or not, over the fp8 cache or the bf16 workspace (``bf16``)."""
    consts = {"BLOCK_H": c.block_h, "BLOCK_N": c.block_n, "NC": c.nc, "FLAT_QK": c.flat_qk, "SPLIT": split,
              "L2_AHEAD": c.l2_ahead}
    return AotConfig({**consts, "UPCAST": False, "KV_BF16": bf16}, num_warps=c.num_warps, num_stages=c.num_stages)


def _aot_configs() -> list[AotConfig]:
    """The builds :func:`_pick_cfg` can launch: both decode tiles split or not, prefill unsplit."""
    builds = [(_CFG_DECODE_SMALL, False, False), (_CFG_DECODE_SMALL, True, False), (_CFG_DECODE_LARGE, False, False)]
    builds += [(_CFG_DECODE_LARGE, True, False), (_CFG_PREFILL, False, False), (_CFG_PREFILL_BF16, False, True)]
    return [_aot_config(c, split, bf16) for c, split, bf16 in builds]


register_aot("sparse_mla.attend", _sparse_mla_kernel, signature=_MAIN_SIG, configs=_aot_configs())
register_aot(
    "sparse_mla.combine",
    _sparse_mla_combine_kernel,
    signature={
        "part_o_ptr": "*fp32",
        "part_lse_ptr": "*fp32",
        "sink_ptr": "*fp32",
        "has_sink": "i32",
        "out_ptr": "*bf16",
        "stride_ot": "i32",
        "stride_oh": "i32",
        "lse_ptr": "*fp32",
        "stride_lt": "i32",
        "stride_lh": "i32",
        "H": "i32",
        "num_splits": "i32",
    },
    configs=[AotConfig({}, num_warps=4, num_stages=1)],
)

# ----------------------------------------------------------------------------- host side


def _pick_cfg(num_rows: int, num_heads: int, device: torch.device, split: bool) -> _Cfg:
    """Tile for ``num_rows`` query rows of ``num_heads`` heads; ``split``: the launch may be split-K
    (the prefill tile is only taken unsplit)."""
    if num_heads < 32:
        return _CFG_DECODE_SMALL
    if not split and num_rows * num_heads // 32 >= 2 * num_sms(device):
        return _CFG_PREFILL
    if num_rows * triton.cdiv(num_heads, 16) >= LARGE_DECODE_PROGRAMS:
        return _CFG_DECODE_LARGE
    return _CFG_DECODE_SMALL


def choose_num_splits(num_rows: int, num_heads: int, topk: int, extra_topk: int, device: torch.device) -> int:
    """Split count for flash-decoding (host ints only): the most splits that keep rows x head blocks x
    splits within the tile's ``per_sm`` programs per SM and leave each split its ``min_blocks`` blocks."""
    cfg = _pick_cfg(num_rows, num_heads, device, split=True)
    programs = num_rows * triton.cdiv(num_heads, cfg.block_h)
    if programs == 0:
        return 1
    blocks = triton.cdiv(topk, cfg.block_n) + triton.cdiv(extra_topk, cfg.block_n)
    return max(1, min(num_sms(device) * cfg.per_sm // programs, blocks // cfg.min_blocks, MAX_SPLITS))


@dataclass
class SparseMLAWorkspace:
    """Split-K partials: room for ``capacity`` (row, head, split) triples."""

    part_o: torch.Tensor  # [capacity * 512] fp32
    part_lse: torch.Tensor  # [capacity] fp32

    @classmethod
    def allocate(cls, capacity: int, device: torch.device | str) -> SparseMLAWorkspace:
        return cls(
            torch.empty(capacity * HEAD_DIM, dtype=torch.float32, device=device),
            torch.empty(capacity, dtype=torch.float32, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.part_lse.numel()


def workspace_for(
    max_rows: int, num_heads: int, topk: int, extra_topk: int, device: torch.device | str
) -> SparseMLAWorkspace:
    """Workspace covering :func:`choose_num_splits` for every row count ``1..max_rows``.

    Allocate once before CUDA-graph capture; pass ``choose_num_splits(T, ...)`` as ``num_splits``.
    """
    device = torch.device(device)
    need = max(
        (r * s for r in range(1, max_rows + 1) if (s := choose_num_splits(r, num_heads, topk, extra_topk, device)) > 1),
        default=0,
    )
    return SparseMLAWorkspace.allocate(need * num_heads, device)  # 1 split needs no workspace


def _check_cache(name: str, cache: torch.Tensor) -> None:
    if cache.dtype not in (torch.uint8, torch.float8_e4m3fn):
        raise ValueError(f"{name}: expected uint8 (or float8_e4m3fn) bytes, got {cache.dtype}")
    if cache.ndim != 4 or cache.shape[2] != 1 or cache.shape[3] != TOKEN_BYTES:
        raise ValueError(f"{name}: expected [num_pages, page_size, 1, {TOKEN_BYTES}], got {tuple(cache.shape)}")
    if cache.shape[1] < 1 or cache.shape[1] & (cache.shape[1] - 1):
        raise ValueError(f"{name}: page_size (dim 1) must be a power of two, got {tuple(cache.shape)}")
    if cache.stride(3) != 1 or cache.stride(0) < cache.shape[1] * TOKEN_BYTES:
        raise ValueError(
            f"{name}: expected page stride >= page_size*{TOKEN_BYTES} B and unit byte stride, "
            f"got strides {cache.stride()}"
        )
    if cache.stride(0) % 16 or cache.data_ptr() % 16:
        raise ValueError(
            f"{name}: expected a 16-byte aligned base and page stride (the kernel gathers 16 B "
            f"vectors), got page stride {cache.stride(0)}, address {cache.data_ptr():#x}"
        )


def _page_bits(cache: torch.Tensor) -> int:
    """log2 of a checked cache's (power-of-two) page size."""
    return cache.shape[1].bit_length() - 1


def _check_indices(name: str, idx: torch.Tensor, rows: int) -> None:
    if idx.dtype != torch.int32 or idx.ndim != 2 or idx.shape[0] != rows or idx.stride(1) != 1:
        raise ValueError(
            f"{name}: expected int32 [{rows}, topk] with unit last stride, got {idx.dtype} {tuple(idx.shape)}"
        )


def _check_len(name: str, ln: torch.Tensor | None, n: int) -> None:
    if ln is not None and (ln.dtype != torch.int32 or tuple(ln.shape) != (n,) or ln.stride(0) != 1):
        raise ValueError(f"{name}: expected int32 [{n}] contiguous, got {ln.dtype} {tuple(ln.shape)}")


def _check_q_out(
    q: torch.Tensor, attn_sink: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor
) -> tuple[int, int]:
    """``(T, H)`` of q ``[T, H, 512]`` bf16 after checking q, the sink ``[H]`` and the outputs."""
    if q.dtype != torch.bfloat16 or q.ndim != 3 or q.shape[2] != HEAD_DIM or q.stride(2) != 1:
        raise ValueError(f"q: expected bf16 [T, H, {HEAD_DIM}] with unit last stride, got {q.dtype} {tuple(q.shape)}")
    t_rows, heads, _ = q.shape
    if heads not in SUPPORTED_HEADS:
        raise ValueError(f"q: head count {heads} not in {SUPPORTED_HEADS} (q is [T, H, {HEAD_DIM}])")
    if attn_sink is not None and (
        attn_sink.dtype != torch.float32 or tuple(attn_sink.shape) != (heads,) or attn_sink.stride(0) != 1
    ):
        raise ValueError(
            f"attn_sink: expected fp32 [{heads}] contiguous, got {attn_sink.dtype} {tuple(attn_sink.shape)}"
        )
    if out.dtype != torch.bfloat16 or tuple(out.shape) != (t_rows, heads, HEAD_DIM) or out.stride(2) != 1:
        raise ValueError(f"out: expected bf16 [{t_rows}, {heads}, {HEAD_DIM}], got {out.dtype} {tuple(out.shape)}")
    if lse.dtype != torch.float32 or tuple(lse.shape) != (t_rows, heads):
        raise ValueError(f"lse: expected fp32 [{t_rows}, {heads}], got {lse.dtype} {tuple(lse.shape)}")
    return t_rows, heads


def sparse_mla_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None,
    attn_sink: torch.Tensor | None,
    extra_k_cache: torch.Tensor | None,
    extra_indices: torch.Tensor | None,
    extra_topk_length: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    workspace: SparseMLAWorkspace | None = None,
    num_splits: int = 1,
    softmax_scale: float = DEFAULT_SCALE,
    rows_per_length: int = 1,
) -> None:
    """Allocation-free sparse MLA (CUDA-graph capturable), results written into ``out``/``lse``.

    q ``[T, H, 512]`` bf16 (last dim contiguous); k_cache / extra_k_cache ``[pages, P, 1, 584]``
    uint8 views (page stride = ``stride(0)``); indices ``[T, K]`` / extra_indices ``[T, K']`` int32
    slots ``page*P + offset`` (-1 invalid); topk_length / extra_topk_length ``[T // rows_per_length]``
    int32 or None (row ``t`` uses entry ``t // rows_per_length``); attn_sink ``[H]`` fp32 or None
    (slice the global 64-head sink by this rank's head range).  out ``[T, H, 512]`` bf16, lse
    ``[T, H]`` fp32 (natural log, sink excluded, +inf for rows without a valid slot).
    ``num_splits > 1`` needs ``workspace`` with room for ``T x H x num_splits``; pass
    :func:`choose_num_splits` ``(T, H, ...)`` (the tile follows ``T`` and ``H``, see :func:`_pick_cfg`).
    """
    t_rows, heads = _check_q_out(q, attn_sink, out, lse)
    _check_cache("k_cache", k_cache)
    _check_indices("indices", indices, t_rows)
    if rows_per_length < 1 or t_rows % rows_per_length:
        raise ValueError(f"rows_per_length: {rows_per_length} must divide T={t_rows}")
    n_len = t_rows // rows_per_length
    _check_len("topk_length", topk_length, n_len)
    if (extra_k_cache is None) != (extra_indices is None):
        raise ValueError("extra_k_cache and extra_indices: pass both or neither")
    if extra_k_cache is not None:
        _check_cache("extra_k_cache", extra_k_cache)
        _check_indices("extra_indices", extra_indices, t_rows)
        _check_len("extra_topk_length", extra_topk_length, n_len)
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits: expected 1..{MAX_SPLITS}, got {num_splits}")
    if num_splits > 1 and (
        workspace is None or workspace.capacity < t_rows * heads * num_splits or workspace.part_o.data_ptr() % 16
    ):
        raise ValueError(f"workspace: needs room for [{t_rows}, {heads}, {num_splits}] partials, 16-byte aligned")
    if t_rows == 0:
        return

    cfg = _pick_cfg(t_rows, heads, q.device, split=num_splits > 1)
    ekv, eidx, elen = (
        (k_cache, indices, None) if extra_k_cache is None else (extra_k_cache, extra_indices, extra_topk_length)
    )
    num_idx = indices.shape[1]
    num_eidx = 0 if extra_k_cache is None else extra_indices.shape[1]
    total_blocks = triton.cdiv(num_idx, cfg.block_n) + triton.cdiv(num_eidx, cfg.block_n)
    num_splits = max(1, min(num_splits, total_blocks))
    part_o = workspace.part_o if num_splits > 1 else lse
    part_lse = workspace.part_lse if num_splits > 1 else lse
    grid = (t_rows * triton.cdiv(heads, cfg.block_h), num_splits)
    compiled = _sparse_mla_kernel[grid](
        q,
        q.stride(0),
        q.stride(1),
        k_cache.view(torch.uint8),
        k_cache.stride(0),
        _page_bits(k_cache),
        indices,
        indices.stride(0),
        topk_length if topk_length is not None else indices,
        num_idx,
        ekv.view(torch.uint8),
        ekv.stride(0),
        _page_bits(ekv),
        0,
        eidx,
        eidx.stride(0),
        elen if elen is not None else indices,
        num_eidx,
        int(topk_length is not None),
        int(elen is not None),
        rows_per_length,
        attn_sink if attn_sink is not None else lse,
        int(attn_sink is not None),
        out,
        out.stride(0),
        out.stride(1),
        lse,
        lse.stride(0),
        lse.stride(1),
        part_o,
        part_lse,
        heads,
        softmax_scale * _LOG2E,
        num_splits,
        BLOCK_H=cfg.block_h,
        BLOCK_N=cfg.block_n,
        NC=cfg.nc,
        FLAT_QK=cfg.flat_qk,
        SPLIT=num_splits > 1,
        L2_AHEAD=0 if _INTERPRET else cfg.l2_ahead,
        UPCAST=_INTERPRET,
        KV_BF16=False,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    guard_compiled("sparse_mla.attend", compiled)
    if num_splits > 1:
        compiled = _sparse_mla_combine_kernel[(t_rows * heads,)](
            part_o,
            part_lse,
            attn_sink if attn_sink is not None else lse,
            int(attn_sink is not None),
            out,
            out.stride(0),
            out.stride(1),
            lse,
            lse.stride(0),
            lse.stride(1),
            heads,
            num_splits,
            num_warps=4,
            num_stages=1,
        )
        guard_compiled("sparse_mla.combine", compiled)


def sparse_mla_bf16_fwd(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None,
    attn_sink: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    softmax_scale: float = DEFAULT_SCALE,
) -> None:
    """Sparse MLA over a flat bf16 KV workspace (the layout of SGLang's sparse prefill and FlashMLA's
    ``flash_mla_sparse_fwd``: KV rows dequantised once per context token, not once per query); no
    allocation, no host sync.

    q ``[T, H, 512]`` bf16; kv ``[N, 1, 512]`` or ``[N, 512]`` bf16 rows (unit last stride, 16-byte aligned
    base and row stride); indices ``[T, K]`` int32 rows of kv (-1 or >= N: invalid);
    topk_length ``[T]`` int32 (only the first ``len`` indices count) or None; attn_sink ``[H]`` fp32 or None.
    Writes out ``[T, H, 512]`` bf16 and lse ``[T, H]`` fp32 (natural log, sink excluded, +inf for rows
    without a valid index).  One program per (row, 32 heads), never split: a prefill kernel.
    """
    t_rows, heads = _check_q_out(q, attn_sink, out, lse)
    if not isinstance(kv, torch.Tensor) or kv.dtype != torch.bfloat16 or kv.shape[-1] != HEAD_DIM:
        raise ValueError(f"kv: expected bf16 [N, 1, {HEAD_DIM}] or [N, {HEAD_DIM}] rows")
    rows = kv.reshape(-1, HEAD_DIM) if kv.ndim == 3 and kv.shape[1] == 1 else kv
    if rows.ndim != 2 or rows.stride(1) != 1 or (rows.stride(0) * 2) % 16 or rows.data_ptr() % 16:
        raise ValueError(
            f"kv: expected [N, 1, {HEAD_DIM}] or [N, {HEAD_DIM}] bf16 with unit last stride and a 16-byte aligned "
            f"base and row stride, got {tuple(kv.shape)} strides {kv.stride()}"
        )
    _check_indices("indices", indices, t_rows)
    _check_len("topk_length", topk_length, t_rows)
    if t_rows == 0:
        return
    cfg = _CFG_PREFILL_BF16
    raw = rows.view(torch.uint8)
    compiled = _sparse_mla_kernel[(t_rows * triton.cdiv(heads, cfg.block_h), 1)](
        q, q.stride(0), q.stride(1),
        raw, rows.stride(0) * 2, 0, indices, indices.stride(0),
        topk_length if topk_length is not None else indices, indices.shape[1],
        raw, rows.stride(0) * 2, 0, rows.shape[0], indices, indices.stride(0), indices, 0,
        int(topk_length is not None), 0, 1,
        attn_sink if attn_sink is not None else lse, int(attn_sink is not None),
        out, out.stride(0), out.stride(1), lse, lse.stride(0), lse.stride(1), lse, lse,
        heads, softmax_scale * _LOG2E, 1,
        BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n, NC=cfg.nc, FLAT_QK=cfg.flat_qk, SPLIT=False, L2_AHEAD=0,
        UPCAST=_INTERPRET,
        KV_BF16=True, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    guard_compiled("sparse_mla.attend", compiled)


# ----------------------------------------------------------------------------- FlashMLA-compatible API


_SHARED_WORKSPACES: dict[tuple[torch.device, int], SparseMLAWorkspace] = {}


def shared_workspace(num_heads: int, device: torch.device) -> SparseMLAWorkspace:
    """Split-K workspace of :func:`flash_mla_with_kvcache` for ``num_heads`` heads on ``device``.

    Sized for :func:`choose_num_splits` at every row count and top-k (at most per_sm x SMs x 16
    (row, head, split) triples of 2 KB: 8.4 MB on an H100 with the 2-per-SM small decode tile), allocated
    on first use and never replaced, so CUDA graphs captured earlier keep valid pointers whatever
    batch sizes come later.  The first call per (device, head count) must be outside capture.
    """
    key = (device, num_heads)
    ws = _SHARED_WORKSPACES.get(key)
    if ws is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"sparse_mla: no split-K workspace yet for {num_heads} heads on {device} during CUDA-graph "
                "capture; run one eager call first (SGLang's capture warm-up does) or use sparse_mla_fwd"
            )
        # a row count splits only while its programs fit per_sm x SMs: every such count is below this bound
        max_rows = num_sms(device) * max(c.per_sm for c in (_CFG_DECODE_SMALL, _CFG_DECODE_LARGE))
        ws = workspace_for(max_rows, num_heads, MAX_SPLITS * 64, 0, device)
        _SHARED_WORKSPACES[key] = ws
    return ws


class SparseMLASchedMeta:
    """Stand-in for ``FlashMLASchedMeta``: stateless (SGLang recreates these every forward, also
    during CUDA-graph capture); the split-K workspace is per device, see :func:`shared_workspace`."""


def get_mla_metadata(*args, **kwargs) -> tuple[SparseMLASchedMeta, None]:
    """FlashMLA-compatible: returns ``(SparseMLASchedMeta(), None)``; arguments are ignored."""
    return SparseMLASchedMeta(), None


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor | None = None,
    cache_seqlens: torch.Tensor | None = None,
    head_dim_v: int = HEAD_DIM,
    tile_scheduler_metadata: SparseMLASchedMeta | None = None,
    num_splits: None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    is_fp8_kvcache: bool = True,
    indices: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for FlashMLA's sparse fp8 decode (keyword names as in SGLang 0.5.12 / 0.5.16).

    q ``[B, s_q, H, 512]`` bf16; k_cache ``[pages, P, 1, 584]`` uint8/fp8 view; indices
    ``[B, s_q, K]`` int32; topk_length ``[B]`` int32; attn_sink ``[H]`` fp32; extra_* likewise.
    Returns out ``[B, s_q, H, 512]`` bf16 and lse ``[B, H, s_q]`` fp32 (a transposed view).
    Allocates ``out``/``lse`` per call like FlashMLA; ``tile_scheduler_metadata`` is accepted and
    ignored, the split workspace is :func:`shared_workspace` (first call per head count eager).
    """
    if indices is None or block_table is not None or cache_seqlens is not None or causal:
        raise ValueError("indices: sparse mode only (indices [B, s_q, topk] int32, no block_table/causal)")
    if head_dim_v != HEAD_DIM:
        raise ValueError(f"head_dim_v: expected {HEAD_DIM}, got {head_dim_v}")
    if not is_fp8_kvcache:
        raise ValueError("is_fp8_kvcache: only the fp8 V4 cache layout is supported")
    if num_splits is not None:
        raise ValueError("num_splits: must be None (FlashMLA interface)")
    if q.ndim != 4:
        raise ValueError(f"q: expected [B, s_q, H, {HEAD_DIM}], got {tuple(q.shape)}")
    b, s_q, heads, _ = q.shape
    for name, idx in (("indices", indices), ("extra_indices_in_kvcache", extra_indices_in_kvcache)):
        if idx is not None and (idx.ndim != 3 or tuple(idx.shape[:2]) != (b, s_q)):
            raise ValueError(f"{name}: expected [{b}, {s_q}, topk], got {tuple(idx.shape)}")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    rows = b * s_q
    q3 = q.reshape(rows, heads, q.shape[-1])
    idx = indices.reshape(rows, indices.shape[-1])
    eidx = None if extra_indices_in_kvcache is None else extra_indices_in_kvcache.reshape(rows, -1)

    if q.device.type != "cuda" and not _INTERPRET:
        out3, lse2 = sparse_mla_ref(
            q3,
            k_cache,
            idx,
            None if topk_length is None else topk_length.repeat_interleave(s_q),
            attn_sink,
            extra_k_cache,
            eidx,
            None if extra_topk_length is None else extra_topk_length.repeat_interleave(s_q),
            scale,
        )
    else:
        out3 = torch.empty(rows, heads, HEAD_DIM, dtype=torch.bfloat16, device=q.device)
        lse2 = torch.empty(rows, heads, dtype=torch.float32, device=q.device)
        extra_topk = 0 if eidx is None else eidx.shape[-1]
        splits = choose_num_splits(rows, heads, idx.shape[-1], extra_topk, q.device)
        ws = shared_workspace(heads, q.device) if splits > 1 else None
        sparse_mla_fwd(
            q3,
            k_cache,
            idx,
            topk_length,
            attn_sink,
            extra_k_cache,
            eidx,
            extra_topk_length,
            out3,
            lse2,
            ws,
            splits,
            scale,
            rows_per_length=s_q,
        )
    return out3.view(b, s_q, heads, HEAD_DIM), lse2.view(b, s_q, heads).transpose(1, 2)


def flash_mla_sparse_fwd(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int = HEAD_DIM,
    attn_sink: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, None, None]:
    """Drop-in for FlashMLA's sparse prefill (``flash_mla_sparse_fwd``, as sgl-kernel exposes it).

    q ``[s_q, H, 512]`` bf16; kv ``[s_kv, 1, 512]`` bf16 rows; indices ``[s_q, 1, topk]`` int32 rows of kv
    (-1 or >= s_kv: invalid); topk_length ``[s_q]`` int32 or None; attn_sink ``[H]`` fp32 or None.
    Returns ``(out [s_q, H, 512] bf16, None, None)``: FlashMLA's ``max_logits`` and base-2 ``lse`` are not
    produced (SGLang's caller discards both), so a caller that reads them fails instead of reading
    different quantities.  Allocates ``out`` per call like FlashMLA; CUDA tensors run
    :func:`sparse_mla_bf16_fwd`, CPU tensors :func:`~sglang_sm120.reference.sparse_mla.sparse_mla_bf16_ref`.
    """
    if d_v != HEAD_DIM:
        raise ValueError(f"d_v: expected {HEAD_DIM}, got {d_v}")
    if not isinstance(indices, torch.Tensor) or indices.ndim != 3 or indices.shape[1] != 1:
        shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise ValueError(f"indices: expected [s_q, 1, topk] int32 (one KV head), got {shape}")
    idx = indices[:, 0]
    if q.device.type != "cuda" and not _INTERPRET:
        return sparse_mla_bf16_ref(q, kv, idx, topk_length, attn_sink, sm_scale)[0], None, None
    out = torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    sparse_mla_bf16_fwd(q, kv, idx, topk_length, attn_sink, out, lse, sm_scale)
    return out, None, None


__all__ = [
    "MAX_SPLITS",
    "SparseMLASchedMeta",
    "SparseMLAWorkspace",
    "choose_num_splits",
    "flash_mla_sparse_fwd",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
    "shared_workspace",
    "sparse_mla_bf16_fwd",
    "sparse_mla_fwd",
    "workspace_for",
]
