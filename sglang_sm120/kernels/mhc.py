"""Triton mHC kernels for SM12x: pre-norm GEMM, Sinkhorn mix, weighted stream sum (+RMSNorm), hc_post.

Replaces DeepGEMM ``tf32_hc_prenorm_gemm`` and SGLang's TileLang mHC kernels with two kernels:

* ``_mhc_stream_kernel`` — grid ``(S, cdiv(T, BLOCK_T))``; split ``s`` covers hidden positions
  ``[s*h_per_split, (s+1)*h_per_split)`` of all ``hc`` streams of ``BLOCK_T`` tokens.  ``DO_POST``
  computes ``R'[t, j, h] = bf16(post[t, j] * x[t, h] + sum_i comb[t, i, j] * R[t, i, h])`` and writes it
  (hc_post); ``DO_MIX`` accumulates the split-K partial ``R_flat @ fn.T`` and ``sum(R_flat**2)`` of that
  split into ``mix [S, T, N]`` / ``sq [S, T]`` fp32.  With both, hc_post of layer i is fused with the
  pre-norm GEMM of layer i+1 (SGLang 0.5.16 ``mhc_fused_post_pre``).  ``DOT`` picks the GEMM: fp32 FMA
  (exact; for one or two tokens) or TF32 ``mma`` (as DeepGEMM/TileLang).  With ``FINALIZE`` the last
  split program of a token block to arrive (an atomic counter per block) runs the finalize below for its
  block: one launch per op, and the residual it re-reads was just read, so it comes from L2.
* ``_mhc_finalize_kernel`` — the same finalize as a second launch, ``BLOCK_T`` tokens per program: sum
  the splits, ``rsqrt`` pre-norm, sigmoid pre/post, Sinkhorn comb, ``layer_input = sum_i pre_i * R_i``
  and optional fused RMSNorm.

No host syncs; grids depend only on shapes.  Tile plans are chosen per op and token count from
``PLANS`` (measured on an H100, mma.sync build).  Layouts (all contiguous): residual ``[T, hc, H]``
bf16, ``fn [N, hc*H]`` fp32 with ``N = (2 + hc) * hc``, ``post [T, hc]`` fp32, ``comb [T, hc, hc]`` fp32
(``comb[t, i, j]``: input stream ``i`` -> output ``j``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.platform import guard_compiled, num_sms

HC_MULT = 4
N_MIX = (2 + HC_MULT) * HC_MULT  # 24
_BLOCK_N = 32
_MAX_SPLITS = 128
SUPPORTED_HIDDEN = (4096,)  # DSV4-Flash; the kernels take hidden as a constexpr on the GPU
# ``_mhc_finalize_kernel`` tiles (tokens per program, warps) by token count, read like ``PLANS``.  Session 8
# (`scripts/tune_mhc.py --fin`, H100): one token per program is best up to T = 256 (6.6 vs 26.9 us at T = 64) and
# even at 1024 (35.2 vs 32.9 us for 8 tokens); 16 tokens per program (the block's Sinkhorn shared) from 2048
# (51.6 vs 66.2 us), 81.7 vs 127.2 us at 4096, 153 vs 247 us at 8192.
FIN_TILES: tuple[tuple[int | None, tuple[int, int]], ...] = ((1024, (1, 8)), (None, (16, 8)))
DOT_FMA, DOT_TF32 = 0, 1


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _softmax_row(a, b, c, d, eps):
    m = tl.maximum(tl.maximum(a, b), tl.maximum(c, d))
    a = tl.exp(a - m)
    b = tl.exp(b - m)
    c = tl.exp(c - m)
    d = tl.exp(d - m)
    r = 1.0 / (a + b + c + d)
    return a * r + eps, b * r + eps, c * r + eps, d * r + eps


@triton.jit
def _normalise(a, b, c, d, eps):
    r = 1.0 / (a + b + c + d + eps)
    return a * r, b * r, c * r, d * r


@triton.jit
def _column(x, cols, k):
    """``x[:, k]`` of a ``[BLOCK_T, NP]`` tile as a ``[BLOCK_T]`` vector."""
    return tl.sum(tl.where(cols[None, :] == k, x, 0.0), axis=1)


@triton.jit
def _weighted_sum(rp, mask, p0, p1, p2, p3, H: tl.constexpr):
    """``sum_i p_i * R[i, h]`` in fp32 for the pointers ``rp`` ``[BH]`` into stream 0 of one token."""
    out = p0 * tl.load(rp, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    out += p1 * tl.load(rp + H, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    out += p2 * tl.load(rp + 2 * H, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    out += p3 * tl.load(rp + 3 * H, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    return out


@triton.jit
def _finalize_tokens(
    t0,
    T,
    S,
    mix_ptr,  # fp32 [S, T, NM]
    sq_ptr,  # fp32 [S, T]
    scale_ptr,  # fp32 [3]
    base_ptr,  # fp32 [NM]
    res_ptr,  # bf16 [T, HC, H]
    w_ptr,  # bf16 [H] (HAS_NORM)
    post_ptr,  # fp32 [T, HC]
    comb_ptr,  # fp32 [T, HC, HC]
    y_ptr,  # bf16 [T, H]
    sinkhorn_iters,
    rms_eps,
    pre_eps,
    sinkhorn_eps,
    post_mult,
    norm_eps,
    H: tl.constexpr,
    HC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    """Finalize tokens ``[t0, t0 + BLOCK_T)``.  The 4x4 Sinkhorn runs on 16 ``[BLOCK_T]`` vectors, so
    its 20 iterations are per-thread arithmetic (no cross-thread reductions), shared by ``BLOCK_T`` tokens
    (at one token per program every thread repeats it); ``layer_input`` then goes row by row in
    ``BLOCK_H`` chunks."""
    tl.static_assert(HC == 4, "the Sinkhorn is unrolled for hc_mult == 4")
    NM: tl.constexpr = (2 + HC) * HC
    NP: tl.constexpr = 32
    offs_t = t0 + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    t64 = offs_t.to(tl.int64)
    cols = tl.arange(0, NP)
    mcol = cols < NM
    offs_s = tl.arange(0, BLOCK_S)

    acc = tl.zeros([BLOCK_S, BLOCK_T, NP], dtype=tl.float32)
    sq = tl.zeros([BLOCK_S, BLOCK_T], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + offs_s
        row = s.to(tl.int64)[:, None] * T + t64[None, :]
        m2 = (s < S)[:, None] & mask_t[None, :]
        # mix is this module's own workspace (16-byte aligned base, 96-byte rows): 16-byte vectors whatever the
        # alignment the JIT specialised on.  Unhinted, an unaligned build spread the tile one column per lane and
        # the Sinkhorn's column picks spilled kilobytes.
        acc += tl.load(
            tl.multiple_of(mix_ptr + row[:, :, None] * NM + cols[None, None, :], [1, 1, 16]),
            mask=m2[:, :, None] & mcol[None, None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        sq += tl.load(sq_ptr + row, mask=m2, other=0.0, cache_modifier=".cg")
    rms = tl.rsqrt(tl.sum(sq, axis=0) / (HC * H) + rms_eps)
    grp = cols // HC  # 0: pre, 1: post, 2..5: comb rows
    z = tl.sum(acc, axis=0) * rms[:, None] * tl.load(scale_ptr + tl.minimum(grp, 2))[None, :]
    z += tl.load(base_ptr + cols, mask=mcol, other=0.0)[None, :]
    sig = tl.sigmoid(z)
    tl.store(
        post_ptr + t64[:, None] * HC + (cols - HC)[None, :],
        sig * post_mult,
        mask=mask_t[:, None] & (grp == 1)[None, :],
    )
    p0 = _column(sig, cols, 0) + pre_eps
    p1 = _column(sig, cols, 1) + pre_eps
    p2 = _column(sig, cols, 2) + pre_eps
    p3 = _column(sig, cols, 3) + pre_eps

    # Sinkhorn: row softmax (+eps), column normalise, then (row, column) normalise iters-1 times.
    c00, c01, c02, c03 = _softmax_row(
        _column(z, cols, 8), _column(z, cols, 9), _column(z, cols, 10), _column(z, cols, 11), sinkhorn_eps
    )
    c10, c11, c12, c13 = _softmax_row(
        _column(z, cols, 12), _column(z, cols, 13), _column(z, cols, 14), _column(z, cols, 15), sinkhorn_eps
    )
    c20, c21, c22, c23 = _softmax_row(
        _column(z, cols, 16), _column(z, cols, 17), _column(z, cols, 18), _column(z, cols, 19), sinkhorn_eps
    )
    c30, c31, c32, c33 = _softmax_row(
        _column(z, cols, 20), _column(z, cols, 21), _column(z, cols, 22), _column(z, cols, 23), sinkhorn_eps
    )
    c00, c10, c20, c30 = _normalise(c00, c10, c20, c30, sinkhorn_eps)
    c01, c11, c21, c31 = _normalise(c01, c11, c21, c31, sinkhorn_eps)
    c02, c12, c22, c32 = _normalise(c02, c12, c22, c32, sinkhorn_eps)
    c03, c13, c23, c33 = _normalise(c03, c13, c23, c33, sinkhorn_eps)
    for _ in range(sinkhorn_iters - 1):
        c00, c01, c02, c03 = _normalise(c00, c01, c02, c03, sinkhorn_eps)
        c10, c11, c12, c13 = _normalise(c10, c11, c12, c13, sinkhorn_eps)
        c20, c21, c22, c23 = _normalise(c20, c21, c22, c23, sinkhorn_eps)
        c30, c31, c32, c33 = _normalise(c30, c31, c32, c33, sinkhorn_eps)
        c00, c10, c20, c30 = _normalise(c00, c10, c20, c30, sinkhorn_eps)
        c01, c11, c21, c31 = _normalise(c01, c11, c21, c31, sinkhorn_eps)
        c02, c12, c22, c32 = _normalise(c02, c12, c22, c32, sinkhorn_eps)
        c03, c13, c23, c33 = _normalise(c03, c13, c23, c33, sinkhorn_eps)
    cb = comb_ptr + t64 * (HC * HC)
    tl.store(cb + 0, c00, mask=mask_t)
    tl.store(cb + 1, c01, mask=mask_t)
    tl.store(cb + 2, c02, mask=mask_t)
    tl.store(cb + 3, c03, mask=mask_t)
    tl.store(cb + 4, c10, mask=mask_t)
    tl.store(cb + 5, c11, mask=mask_t)
    tl.store(cb + 6, c12, mask=mask_t)
    tl.store(cb + 7, c13, mask=mask_t)
    tl.store(cb + 8, c20, mask=mask_t)
    tl.store(cb + 9, c21, mask=mask_t)
    tl.store(cb + 10, c22, mask=mask_t)
    tl.store(cb + 11, c23, mask=mask_t)
    tl.store(cb + 12, c30, mask=mask_t)
    tl.store(cb + 13, c31, mask=mask_t)
    tl.store(cb + 14, c32, mask=mask_t)
    tl.store(cb + 15, c33, mask=mask_t)

    # layer_input, one token at a time (the coefficients above are vectors over the block's tokens); SGLang's
    # fused norm takes the RMS of the fp32 sum and applies it to its bf16 rounding.
    offs_h = tl.arange(0, BLOCK_H)
    for i in range(BLOCK_T):
        sel = tl.arange(0, BLOCK_T) == i
        q0 = tl.sum(tl.where(sel, p0, 0.0))
        q1 = tl.sum(tl.where(sel, p1, 0.0))
        q2 = tl.sum(tl.where(sel, p2, 0.0))
        q3 = tl.sum(tl.where(sel, p3, 0.0))
        ok = t0 + i < T
        rrow = res_ptr + (t0 + i).to(tl.int64) * (HC * H)
        yrow = y_ptr + (t0 + i).to(tl.int64) * H
        if BLOCK_H >= H:  # the whole row in registers: one pass
            mask = ok & (offs_h < H)
            out = _weighted_sum(rrow + offs_h, mask, q0, q1, q2, q3, H)
            if HAS_NORM:
                rs = tl.rsqrt(tl.sum(out * out) / H + norm_eps)
                w = tl.load(w_ptr + offs_h, mask=offs_h < H, other=0.0).to(tl.float32)
                out = out.to(tl.bfloat16).to(tl.float32) * rs * w
            tl.store(yrow + offs_h, out.to(tl.bfloat16), mask=mask)
        else:  # chunks; with the norm, a second pass rescales the bf16 sums just written
            ss = 0.0
            for h0 in range(0, H, BLOCK_H):
                hh = h0 + offs_h
                mask = ok & (hh < H)
                out = _weighted_sum(rrow + hh, mask, q0, q1, q2, q3, H)
                tl.store(yrow + hh, out.to(tl.bfloat16), mask=mask)
                ss += tl.sum(out * out)
            if HAS_NORM:
                rs = tl.rsqrt(ss / H + norm_eps)
                tl.debug_barrier()
                for h0 in range(0, H, BLOCK_H):
                    hh = h0 + offs_h
                    mask = ok & (hh < H)
                    yv = tl.load(yrow + hh, mask=mask, other=0.0).to(tl.float32)
                    w = tl.load(w_ptr + hh, mask=hh < H, other=0.0).to(tl.float32)
                    tl.store(yrow + hh, (yv * rs * w).to(tl.bfloat16), mask=mask)


@triton.jit
def _mhc_stream_kernel(
    res_ptr,  # bf16 [T, HC, H]: residual (R of the previous layer when DO_POST)
    x_ptr,  # bf16 [T, H]: sub-layer output (DO_POST)
    post_in_ptr,  # fp32 [T, HC] (DO_POST)
    comb_in_ptr,  # fp32 [T, HC, HC] (DO_POST)
    fn_ptr,  # fp32 [N, HC*H] (DO_MIX)
    res_out_ptr,  # bf16 [T, HC, H] (DO_POST)
    mix_ptr,  # fp32 [S, T, N] (DO_MIX)
    sq_ptr,  # fp32 [S, T] (DO_MIX)
    cnt_ptr,  # int32 [cdiv(T, BLOCK_T)], zeroed (FINALIZE)
    scale_ptr,  # fp32 [3] (FINALIZE)
    base_ptr,  # fp32 [N] (FINALIZE)
    w_ptr,  # bf16 [H] (FINALIZE and HAS_NORM)
    post_ptr,  # fp32 [T, HC] (FINALIZE)
    comb_ptr,  # fp32 [T, HC, HC] (FINALIZE)
    y_ptr,  # bf16 [T, H] (FINALIZE)
    T,
    N,
    h_per_split,
    sinkhorn_iters,
    rms_eps,
    pre_eps,
    sinkhorn_eps,
    post_mult,
    norm_eps,
    H: tl.constexpr,
    HC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DO_POST: tl.constexpr,
    DO_MIX: tl.constexpr,
    DOT: tl.constexpr,  # 0: fp32 FMA, 1: TF32 mma
    FINALIZE: tl.constexpr,
    HAS_NORM: tl.constexpr,
    FIN_BLOCK_S: tl.constexpr,
    FIN_BLOCK_H: tl.constexpr,
):
    tl.static_assert(HC == 4, "hc_post is unrolled for hc_mult == 4")
    pid_s = tl.program_id(0)
    pid_t = tl.program_id(1)
    S = tl.num_programs(0)
    t0 = pid_t * BLOCK_T
    offs_t = t0 + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # 64-bit block bases, 32-bit offsets inside the block.
    res_blk = res_ptr + t0.to(tl.int64) * (HC * H)
    out_blk = res_out_ptr + t0.to(tl.int64) * (HC * H)
    x_blk = x_ptr + t0.to(tl.int64) * H
    if DO_POST:  # bases 16-byte aligned (the wrappers check): vector accesses whatever the JIT specialised on
        res_blk = tl.multiple_of(res_blk, 16)
        out_blk = tl.multiple_of(out_blk, 16)
        x_blk = tl.multiple_of(x_blk, 16)
        fn_ptr = tl.multiple_of(fn_ptr, 16)
    row = tl.arange(0, BLOCK_T)[:, None] * (HC * H)
    h_lo = tl.multiple_of(pid_s * h_per_split, BLOCK_H)

    if DOT == 0:
        acc3 = tl.zeros([BLOCK_T, BLOCK_N, BLOCK_H], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    sq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for h0 in range(0, h_per_split, BLOCK_H):
        offs_h = h_lo + h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        mask_th = mask_t[:, None] & mask_h[None, :]
        if DO_POST:
            x = tl.load(x_blk + tl.arange(0, BLOCK_T)[:, None] * H + offs_h[None, :], mask=mask_th, other=0.0)
            r0 = tl.load(res_blk + row + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
            r1 = tl.load(res_blk + row + H + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
            r2 = tl.load(res_blk + row + 2 * H + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
            r3 = tl.load(res_blk + row + 3 * H + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
        for j in tl.static_range(HC):
            off_j = row + j * H + offs_h[None, :]
            if DO_POST:
                cb = comb_in_ptr + offs_t * (HC * HC) + j  # comb[t, i, j] at cb + i * HC
                v = tl.load(post_in_ptr + offs_t * HC + j, mask=mask_t, other=0.0)[:, None] * x.to(tl.float32)
                v += tl.load(cb, mask=mask_t, other=0.0)[:, None] * r0
                v += tl.load(cb + HC, mask=mask_t, other=0.0)[:, None] * r1
                v += tl.load(cb + 2 * HC, mask=mask_t, other=0.0)[:, None] * r2
                v += tl.load(cb + 3 * HC, mask=mask_t, other=0.0)[:, None] * r3
                vb = v.to(tl.bfloat16)  # the pre-norm GEMM reads the bf16-rounded residual
                tl.store(out_blk + off_j, vb, mask=mask_th)
            else:
                vb = tl.load(res_blk + off_j, mask=mask_th, other=0.0)
            if DO_MIX:
                v = vb.to(tl.float32)
                sq += tl.sum(v * v, axis=1)
                w = tl.load(
                    fn_ptr + offs_n[:, None] * (HC * H) + j * H + offs_h[None, :],
                    mask=mask_n[:, None] & mask_h[None, :],
                    other=0.0,
                )
                if DOT == 0:
                    acc3 += v[:, None, :] * w[None, :, :]
                else:
                    acc = tl.dot(v, tl.trans(w), acc, input_precision="tf32")
    if DO_MIX:
        if DOT == 0:
            acc = tl.sum(acc3, axis=2)
        split_row = pid_s.to(tl.int64) * T + offs_t
        tl.store(mix_ptr + split_row[:, None] * N + offs_n[None, :], acc, mask=mask_t[:, None] & mask_n[None, :])
        tl.store(sq_ptr + split_row, sq, mask=mask_t)
    if FINALIZE:
        # CTA barrier, then one acq_rel RMW: every thread's partials (and R') are visible to the last arriver.
        tl.debug_barrier()
        if tl.atomic_add(cnt_ptr + pid_t, 1, sem="acq_rel", scope="gpu") == S - 1:
            fin_res = res_ptr
            if DO_POST:
                fin_res = res_out_ptr
            _finalize_tokens(
                t0, T, S, mix_ptr, sq_ptr, scale_ptr, base_ptr, fin_res, w_ptr, post_ptr, comb_ptr, y_ptr,
                sinkhorn_iters, rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps,
                H, HC, BLOCK_T, FIN_BLOCK_S, FIN_BLOCK_H, HAS_NORM,
            )  # fmt: skip


@triton.jit
def _mhc_finalize_kernel(
    mix_ptr,  # fp32 [S, T, NM]
    sq_ptr,  # fp32 [S, T]
    scale_ptr,  # fp32 [3]
    base_ptr,  # fp32 [NM]
    res_ptr,  # bf16 [T, HC, H]
    w_ptr,  # bf16 [H] (HAS_NORM)
    post_ptr,  # fp32 [T, HC]
    comb_ptr,  # fp32 [T, HC, HC]
    y_ptr,  # bf16 [T, H]
    T,
    S,
    sinkhorn_iters,
    rms_eps,
    pre_eps,
    sinkhorn_eps,
    post_mult,
    norm_eps,
    H: tl.constexpr,
    HC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    _finalize_tokens(
        tl.program_id(0) * BLOCK_T, T, S, mix_ptr, sq_ptr, scale_ptr, base_ptr, res_ptr, w_ptr, post_ptr,
        comb_ptr, y_ptr, sinkhorn_iters, rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps,
        H, HC, BLOCK_T, BLOCK_S, BLOCK_H, HAS_NORM,
    )  # fmt: skip


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """Stream-kernel tile plan.  ``waves``: programs per SM the split-K count aims for (0: one
    ``block_h`` tile per program, for the elementwise hc_post); ``fused``: the last split program
    finalizes its token block (else ``_mhc_finalize_kernel`` runs as a second launch)."""

    block_t: int
    block_h: int
    warps: int
    stages: int
    dot: int = DOT_TF32
    fused: bool = False
    waves: int = 2


# Plans per op (first ``(largest T, plan)`` match wins; None = any T), from an H100 sweep of candidate
# plans (DISABLE_MMA_V3=1, CUDA-graph replays for T <= 64):
# * pre (also hc_prenorm_gemm, which never finalizes): one-token FMA with in-kernel finalize wins at T = 1
#   (9.4 vs 10.7 us) but grows ~0.5 us/token (13.1 us at T = 8), so it stops at T = 2; TF32 16-token
#   blocks win at T = 8 (10.1 us) and T = 512 (141 vs 160 us), 64-token blocks at T = 64 (11.1 vs 12.5 us)
#   and T = 4096 (244 vs 348 us, where 16-token blocks get a single split).  Crossovers between measured
#   points are interpolated.
# * fused: as pre at T = 1 (9.9 us) and T = 8 (TF32 16-token blocks 11.3 us vs FMA 13.8-15.8 us); no data
#   above T = 8, so it switches by analogy with pre: 16-token blocks up to T = 1024, then 32-token blocks
#   (16 x 64 tiles spill here).
# * post: one token x 512 hidden per program is best or within 1 % at every T (1.4 us at T = 1, 107 us at
#   T = 4096).
# In-kernel finalize of multi-token blocks spilled in the ``noalign`` build, so only the FMA plan fuses it.
# * Session 7 (`scripts/tune_mhc.py`, stream kernel alone): above T = 1024, 128-token blocks read the fn tile once
#   per 128 tokens: pre 87 vs 117 us (64-token blocks) at T = 4096.  Fused: 64 x 32 (289 us) and 128 x 16 (272 us)
#   tiles beat 32 x 32 (501 us) but spill in the noalign build; 64 x 16 does not (untimed).
# * Session 8 (same script, op times): pre on 64 x 16 tiles with 4 warps 17.6 vs 27.0 us (16 x 64) at T = 256;
#   128 x 32 57 vs 91 us at 1024.  Fused: 32 x 32 beats 16 x 32 from T = 512 (80 vs 116 us; 4096: 609 vs 895).
#   Faster fused tiles (64 x 16 with 4 warps: 323 us at 4096; 128 x 16: 387 us) spilled 24-32 B in the unaligned
#   (``noalign``) build.
# * Session 9: 16-byte hints on the residual / x / fn bases of the hc_post ops (the wrappers check them) remove
#   that spill (on mhc_pre's 128 x 32 tile they would add one) and leave every aligned build's PTX unchanged, so
#   the session-8 timings stand: fused runs 64 x 16 on 4 warps above 2048 tokens (measured at 4096: 323 vs
#   609 us; 2049..4095 interpolated).
_FMA_T1 = Plan(1, 32, 4, 1, DOT_FMA, fused=True)
_PRE_T16, _PRE_T64 = Plan(16, 64, 4, 2), Plan(64, 32, 8, 2)
PLANS: dict[str, tuple[tuple[int | None, Plan], ...]] = {
    "pre": ((2, _FMA_T1), (16, _PRE_T16), (64, _PRE_T64), (256, Plan(64, 16, 4, 2)), (None, Plan(128, 32, 8, 2))),
    "fused": ((2, _FMA_T1), (256, Plan(16, 32, 8, 2)), (2048, Plan(32, 32, 8, 2)), (None, Plan(64, 16, 4, 2))),
    "post": ((None, Plan(1, 512, 4, 1, waves=0)),),
}


def _by_tokens(table: tuple[tuple[int | None, Any], ...], num_tokens: int) -> Any:
    """The entry of a ``((limit, choice), ..., (None, choice))`` table for ``num_tokens``."""
    return next(choice for limit, choice in table if limit is None or num_tokens <= limit)


def _plan(op: str, num_tokens: int) -> Plan:
    return _by_tokens(PLANS[op], num_tokens)


def _fin_tile(num_tokens: int) -> tuple[int, int]:
    return _by_tokens(FIN_TILES, num_tokens)


def _fin_block_h(hidden: int, warps: int) -> int:
    """Finalize chunk along H: ``16 * 32 * warps`` elements of a row (whole rows on 8 warps), so the four
    stream loads of a chunk fit the registers without vectors."""
    return min(triton.next_power_of_2(hidden), 512 * warps)


def _fin_block_s(block_t: int) -> int:
    """Splits summed per step by the finalize: a ``[S_step, block_t, 32]`` tile of 4096 elements."""
    return max(1, 128 // block_t)


def _split_count(plan: Plan, num_tokens: int, hidden: int, device: torch.device) -> int:
    n_hblk = triton.cdiv(hidden, plan.block_h)
    if plan.waves == 0:
        return n_hblk
    want = max(1, plan.waves * num_sms(device) // triton.cdiv(num_tokens, plan.block_t))
    return min(1 << (want.bit_length() - 1), n_hblk, _MAX_SPLITS)


# ----------------------------------------------------------------------------- AOT registry

_STREAM_NAMES = {"pre": "mhc.prenorm", "fused": "mhc.fused", "post": "mhc.post"}
_STREAM_SIGNATURE = {
    "res_ptr": "*bf16", "x_ptr": "*bf16", "post_in_ptr": "*fp32", "comb_in_ptr": "*fp32", "fn_ptr": "*fp32",
    "res_out_ptr": "*bf16", "mix_ptr": "*fp32", "sq_ptr": "*fp32", "cnt_ptr": "*i32", "scale_ptr": "*fp32",
    "base_ptr": "*fp32", "w_ptr": "*bf16", "post_ptr": "*fp32", "comb_ptr": "*fp32", "y_ptr": "*bf16",
    "T": "i32", "N": "i32", "h_per_split": "i32", "sinkhorn_iters": "i32", "rms_eps": "fp32",
    "pre_eps": "fp32", "sinkhorn_eps": "fp32", "post_mult": "fp32", "norm_eps": "fp32",
}  # fmt: skip


def _stream_constexprs(op: str, plan: Plan, hidden: int, finalize: bool, has_norm: bool) -> dict:
    return {
        "H": hidden, "HC": HC_MULT, "BLOCK_T": plan.block_t, "BLOCK_H": plan.block_h, "BLOCK_N": _BLOCK_N,
        "DO_POST": op != "pre", "DO_MIX": op != "post", "DOT": plan.dot, "FINALIZE": finalize,
        "HAS_NORM": has_norm, "FIN_BLOCK_S": _fin_block_s(plan.block_t),
        "FIN_BLOCK_H": _fin_block_h(hidden, plan.warps),
    }  # fmt: skip


def _fin_constexprs(hidden: int, tile: tuple[int, int], has_norm: bool) -> dict:
    block_t, warps = tile
    return {"H": hidden, "HC": HC_MULT, "BLOCK_T": block_t, "BLOCK_S": _fin_block_s(block_t),
            "BLOCK_H": _fin_block_h(hidden, warps), "HAS_NORM": has_norm}  # fmt: skip


def _stream_aot_configs(op: str) -> list[AotConfig]:
    configs = {}
    for plan in dict.fromkeys(plan for _, plan in PLANS[op]):
        for hidden in SUPPORTED_HIDDEN:
            # mhc_pre's plans also serve hc_prenorm_gemm, which never finalizes.
            variants = [(False, False)] if not plan.fused or op == "pre" else []
            variants += [(True, False), (True, True)] if plan.fused else []
            for fin, norm in variants:
                cfg = AotConfig(_stream_constexprs(op, plan, hidden, fin, norm), plan.warps, plan.stages)
                configs[cfg.label()] = cfg
    return list(configs.values())


for _op, _name in _STREAM_NAMES.items():
    register_aot(_name, _mhc_stream_kernel, signature=_STREAM_SIGNATURE, configs=_stream_aot_configs(_op))
register_aot(
    "mhc.finalize",
    _mhc_finalize_kernel,
    signature={
        "mix_ptr": "*fp32", "sq_ptr": "*fp32", "scale_ptr": "*fp32", "base_ptr": "*fp32",
        "res_ptr": "*bf16", "w_ptr": "*bf16", "post_ptr": "*fp32", "comb_ptr": "*fp32", "y_ptr": "*bf16",
        "T": "i32", "S": "i32", "sinkhorn_iters": "i32", "rms_eps": "fp32", "pre_eps": "fp32",
        "sinkhorn_eps": "fp32", "post_mult": "fp32", "norm_eps": "fp32",
    },
    configs=[
        AotConfig(_fin_constexprs(hidden, tile, norm), num_warps=tile[1], num_stages=1)
        for tile in dict.fromkeys(tile for _, tile in FIN_TILES)
        for hidden in SUPPORTED_HIDDEN
        for norm in (False, True)
    ],
)  # fmt: skip


# ----------------------------------------------------------------------------- host side


def _check(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {shape} and dtype {dtype}, got {type(t)}")
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise ValueError(f"{name}: expected shape {tuple(shape)} {dtype}, got {tuple(t.shape)} {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor of shape {tuple(shape)}")


def _check_aligned(name: str, t: torch.Tensor) -> None:
    """Residual / x / fn bases are 16-byte aligned: the hc_post ops' stream builds vectorise on that (their hints);
    ``mhc_pre`` and ``hc_prenorm_gemm`` (unhinted builds) hold their inputs to the same contract."""
    if t.data_ptr() % 16:
        raise ValueError(f"{name}: expected a 16-byte aligned base address, got {t.data_ptr():#x} (an offset view?)")


def _check_hidden(name: str, hidden: int) -> None:
    """Only registered (AOT-checked) hidden sizes launch on a GPU; the interpreter takes any."""
    if hidden not in SUPPORTED_HIDDEN and not _interpreting():
        raise ValueError(f"{name}: hidden size {hidden} is not one of {SUPPORTED_HIDDEN}")


def _check_params(
    residual: torch.Tensor, fn: torch.Tensor, hc_scale: torch.Tensor, hc_base: torch.Tensor
) -> tuple[int, int]:
    if not isinstance(residual, torch.Tensor) or residual.dim() < 2:
        raise ValueError("residual: expected a [..., hc_mult, hidden] bf16 tensor")
    hc, hidden = residual.shape[-2], residual.shape[-1]
    if hc != HC_MULT:
        raise ValueError(f"residual: expected hc_mult {HC_MULT} in [..., {HC_MULT}, hidden], got {hc}")
    if residual.dtype != torch.bfloat16 or not residual.is_contiguous():
        raise ValueError(f"residual: expected contiguous bf16 [..., {hc}, {hidden}], got {residual.dtype}")
    _check("fn", fn, (N_MIX, hc * hidden), torch.float32)
    _check_aligned("residual", residual)
    _check_aligned("fn", fn)
    _check("hc_scale", hc_scale, (3,), torch.float32)
    _check("hc_base", hc_base, (N_MIX,), torch.float32)
    _check_hidden("residual", hidden)
    return hc, hidden


def _check_norm(norm_weight: torch.Tensor | None, norm_eps: float | None, hidden: int) -> torch.Tensor | None:
    if norm_weight is None:
        return None
    if norm_eps is None:
        raise ValueError("norm_eps: required when norm_weight is given")
    if tuple(norm_weight.shape) != (hidden,):
        raise ValueError(f"norm_weight: expected shape ({hidden},), got {tuple(norm_weight.shape)}")
    return norm_weight.to(torch.bfloat16).contiguous()


@dataclass
class _Finalize:
    """Finalize operands and outputs (``post [T, hc]``, ``comb [T, hc, hc]`` fp32, ``y [T, H]`` bf16)."""

    hc_scale: torch.Tensor
    hc_base: torch.Tensor
    norm_weight: torch.Tensor | None
    post: torch.Tensor
    comb: torch.Tensor
    y: torch.Tensor
    scalars: tuple  # sinkhorn_iters, rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps


def _new_finalize(
    residual: torch.Tensor, hc_scale: torch.Tensor, hc_base: torch.Tensor, rms_eps: float, hc_pre_eps: float,
    hc_sinkhorn_eps: float, hc_post_mult_value: float, sinkhorn_repeat: int, norm_weight: torch.Tensor | None,
    norm_eps: float | None,
) -> _Finalize:  # fmt: skip
    num_tokens, hc, hidden = residual.shape
    dev = residual.device
    return _Finalize(
        hc_scale, hc_base, norm_weight,
        torch.empty(num_tokens, hc, dtype=torch.float32, device=dev),
        torch.empty(num_tokens, hc, hc, dtype=torch.float32, device=dev),
        torch.empty(num_tokens, hidden, dtype=torch.bfloat16, device=dev),
        (sinkhorn_repeat, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
         norm_eps if norm_eps is not None else 0.0),
    )  # fmt: skip


def _launch_stream(
    op: str,
    plan: Plan,
    residual: torch.Tensor,
    num_tokens: int,
    hidden: int,
    *,
    x: torch.Tensor | None = None,
    post: torch.Tensor | None = None,
    comb: torch.Tensor | None = None,
    res_out: torch.Tensor | None = None,
    fn: torch.Tensor | None = None,
    n_out: int = 0,
    mix: torch.Tensor | None = None,
    sq: torch.Tensor | None = None,
    fin: _Finalize | None = None,
) -> None:
    """Launch ``_mhc_stream_kernel`` with ``mix.shape[0]`` splits (``n_hblk`` for hc_post); with ``fin``
    and ``plan.fused`` the kernel also finalizes (else the caller launches ``_finalize``)."""
    splits = mix.shape[0] if mix is not None else _split_count(plan, num_tokens, hidden, residual.device)
    h_per_split = triton.cdiv(triton.cdiv(hidden, plan.block_h), splits) * plan.block_h
    n_tblk = triton.cdiv(num_tokens, plan.block_t)
    finalize = fin is not None and plan.fused
    has_norm = finalize and fin.norm_weight is not None
    d = residual  # stands in for unused pointers
    cnt = torch.zeros(n_tblk, dtype=torch.int32, device=residual.device) if finalize else d
    f = fin if finalize else None
    compiled = _mhc_stream_kernel[(splits, n_tblk)](
        residual, x if x is not None else d, post if post is not None else d, comb if comb is not None else d,
        fn if fn is not None else d, res_out if res_out is not None else d, mix if mix is not None else d,
        sq if sq is not None else d, cnt, f.hc_scale if f else d, f.hc_base if f else d,
        f.norm_weight if has_norm else d, f.post if f else d, f.comb if f else d, f.y if f else d,
        num_tokens, n_out, h_per_split, *(f.scalars if f else (0, 0.0, 0.0, 0.0, 0.0, 0.0)),
        **_stream_constexprs(op, plan, hidden, finalize, has_norm),
        num_warps=plan.warps, num_stages=plan.stages,
    )  # fmt: skip
    guard_compiled(_STREAM_NAMES[op], compiled)


def _finalize(mix: torch.Tensor, sq: torch.Tensor, residual: torch.Tensor, fin: _Finalize) -> None:
    num_tokens, hc, hidden = residual.shape
    tile = _fin_tile(num_tokens)
    compiled = _mhc_finalize_kernel[(triton.cdiv(num_tokens, tile[0]),)](
        mix, sq, fin.hc_scale, fin.hc_base, residual,
        fin.norm_weight if fin.norm_weight is not None else residual, fin.post, fin.comb, fin.y,
        num_tokens, mix.shape[0], *fin.scalars,
        **_fin_constexprs(hidden, tile, fin.norm_weight is not None), num_warps=tile[1], num_stages=1,
    )  # fmt: skip
    guard_compiled("mhc.finalize", compiled)


def _mix_workspace(plan: Plan, num_tokens: int, hidden: int, device: torch.device):
    splits = _split_count(plan, num_tokens, hidden, device)
    mix = torch.empty(splits, num_tokens, N_MIX, dtype=torch.float32, device=device)
    sq = torch.empty(splits, num_tokens, dtype=torch.float32, device=device)
    return mix, sq


def _empty_outputs(outer: tuple[int, ...], hc: int, hidden: int, device: torch.device):
    return (
        torch.empty(*outer, hc, 1, dtype=torch.float32, device=device),
        torch.empty(*outer, hc, hc, dtype=torch.float32, device=device),
        torch.empty(*outer, hidden, dtype=torch.bfloat16, device=device),
    )


def hc_prenorm_gemm(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, s: torch.Tensor, num_splits: int | None = None
) -> None:
    """DeepGEMM ``tf32_hc_prenorm_gemm``: ``d = a.float() @ b.T``, ``s = sum(a.float()**2, -1)``.

    ``a [M, K]`` bf16, ``b [N, K]`` fp32 (``N <= 32``, ``K % 4 == 0``); ``d [M, N]`` / ``s [M]`` fp32, or
    with ``num_splits`` ``d [num_splits, M, N]`` / ``s [num_splits, M]`` split-K partials to be summed
    over dim 0 by the caller.  Writes in place.  Products are TF32 or more exact (per ``mhc_pre``'s plan).
    """
    if not isinstance(a, torch.Tensor) or a.dim() != 2 or a.dtype != torch.bfloat16:
        raise ValueError("a: expected a [M, K] bf16 tensor")
    m, k = a.shape
    if k % HC_MULT != 0 or not a.is_contiguous():
        raise ValueError(f"a: expected contiguous [M, K] with K % {HC_MULT} == 0, got {tuple(a.shape)}")
    _check_hidden("a", k // HC_MULT)
    if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[0] > _BLOCK_N:
        raise ValueError(f"b: expected a [N <= {_BLOCK_N}, {k}] fp32 tensor")
    n = b.shape[0]
    _check("b", b, (n, k), torch.float32)
    _check_aligned("a", a)
    _check_aligned("b", b)
    lead = () if num_splits is None else (num_splits,)
    _check("d", d, (*lead, m, n), torch.float32)
    _check("s", s, (*lead, m), torch.float32)
    if m == 0:
        return
    splits = num_splits or 1
    plan = _plan("pre", m)
    _launch_stream("pre", plan, a, m, k // HC_MULT, fn=b, n_out=n, mix=d.view(splits, m, n), sq=s.view(splits, m))


def mhc_pre(
    residual: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int = 1,
    n_splits_pre: int = 32,
    *,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SGLang ``mhc_pre``: ``residual [..., 4, H]`` bf16 -> ``post [..., 4, 1]`` fp32,
    ``comb [..., 4, 4]`` fp32, ``layer_input [..., H]`` bf16 (RMS-normed with ``norm_weight [H]``).

    ``n_splits`` / ``n_splits_pre`` are SGLang's tuning knobs, accepted for signature compatibility;
    the split-K count is chosen here from the shape.
    """
    hc, hidden = _check_params(residual, fn, hc_scale, hc_base)
    weight = _check_norm(norm_weight, norm_eps, hidden)
    outer = tuple(residual.shape[:-2])
    r = residual.view(-1, hc, hidden)
    num_tokens = r.shape[0]
    if num_tokens == 0:
        return _empty_outputs(outer, hc, hidden, residual.device)
    plan = _plan("pre", num_tokens)
    mix, sq = _mix_workspace(plan, num_tokens, hidden, residual.device)
    fin = _new_finalize(
        r, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, weight,
        norm_eps,
    )  # fmt: skip
    _launch_stream("pre", plan, r, num_tokens, hidden, fn=fn, n_out=N_MIX, mix=mix, sq=sq, fin=fin)
    if not plan.fused:
        _finalize(mix, sq, r, fin)
    return fin.post.view(*outer, hc, 1), fin.comb.view(*outer, hc, hc), fin.y.view(*outer, hidden)


def _check_post_args(
    x: torch.Tensor, residual: torch.Tensor, post_layer_mix: torch.Tensor, comb_res_mix: torch.Tensor
) -> tuple[int, int, int]:
    if not isinstance(residual, torch.Tensor) or residual.dim() < 2 or residual.shape[-2] != HC_MULT:
        raise ValueError(f"residual: expected a [..., {HC_MULT}, hidden] bf16 tensor")
    outer, hc, hidden = tuple(residual.shape[:-2]), residual.shape[-2], residual.shape[-1]
    _check("residual", residual, (*outer, hc, hidden), torch.bfloat16)
    _check_hidden("residual", hidden)
    _check("x", x, (*outer, hidden), torch.bfloat16)
    _check_aligned("residual", residual)
    _check_aligned("x", x)
    post_shape = (*outer, hc, 1) if post_layer_mix.dim() == len(outer) + 2 else (*outer, hc)
    _check("post_layer_mix", post_layer_mix, post_shape, torch.float32)
    _check("comb_res_mix", comb_res_mix, (*outer, hc, hc), torch.float32)
    return residual.numel() // (hc * hidden), hc, hidden


def mhc_post(
    x: torch.Tensor,
    residual: torch.Tensor,
    post_layer_mix: torch.Tensor,
    comb_res_mix: torch.Tensor,
) -> torch.Tensor:
    """SGLang ``mhc_post``: ``x [..., H]`` bf16, ``residual [..., 4, H]`` bf16, ``post [..., 4(, 1)]`` fp32,
    ``comb [..., 4, 4]`` fp32 -> ``bf16(post_j * x + sum_i comb[i, j] * residual_i)`` ``[..., 4, H]``."""
    num_tokens, _, hidden = _check_post_args(x, residual, post_layer_mix, comb_res_mix)
    out = torch.empty_like(residual)
    if num_tokens:
        _launch_stream(
            "post", _plan("post", num_tokens), residual, num_tokens, hidden, x=x, post=post_layer_mix,
            comb=comb_res_mix, res_out=out,
        )  # fmt: skip
    return out


def mhc_fused_post_pre(
    x: torch.Tensor,
    residual: torch.Tensor,
    post_layer_mix: torch.Tensor,
    comb_res_mix: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int = 1,
    tile_n: int = 1,
    *,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SGLang 0.5.16 ``mhc_fused_post_pre``: ``mhc_post`` of layer i fused with ``mhc_pre`` of layer i+1.

    Returns ``residual_cur [..., 4, H]`` bf16, ``post [..., 4, 1]`` fp32, ``comb [..., 4, 4]`` fp32,
    ``layer_input [..., H]`` bf16.  ``n_splits`` / ``tile_n`` are accepted for signature compatibility.
    """
    num_tokens, hc, hidden = _check_post_args(x, residual, post_layer_mix, comb_res_mix)
    _check_params(residual, fn, hc_scale, hc_base)
    weight = _check_norm(norm_weight, norm_eps, hidden)
    outer = tuple(residual.shape[:-2])
    residual_cur = torch.empty_like(residual)
    if num_tokens == 0:
        return (residual_cur, *_empty_outputs(outer, hc, hidden, residual.device))
    r_cur = residual_cur.view(num_tokens, hc, hidden)
    plan = _plan("fused", num_tokens)
    mix, sq = _mix_workspace(plan, num_tokens, hidden, residual.device)
    fin = _new_finalize(
        r_cur, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
        weight, norm_eps,
    )  # fmt: skip
    _launch_stream(
        "fused", plan, residual, num_tokens, hidden, x=x, post=post_layer_mix, comb=comb_res_mix, res_out=r_cur,
        fn=fn, n_out=N_MIX, mix=mix, sq=sq, fin=fin,
    )  # fmt: skip
    if not plan.fused:
        _finalize(mix, sq, r_cur, fin)
    post, comb, y = fin.post, fin.comb, fin.y
    return residual_cur, post.view(*outer, hc, 1), comb.view(*outer, hc, hc), y.view(*outer, hidden)
