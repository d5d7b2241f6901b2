"""MXFP4 routed-experts MoE (W4A16) and hash routing for DeepSeek-V4 on SM12x (Triton, ``mma.sync``).

Replaces SGLang's ``fused_marlin_moe`` for ``Mxfp4MarlinMoEMethod`` on the weights as ``create_weights`` makes
them, *before* Marlin repacking: ``w13 [E, 2I, H/2]`` int8/uint8 (rows ``[gate; up]``, two E2M1 per byte, low
nibble = even k), ``w2 [E, H, I/2]``, scales ``[E, 2I, H/32]`` / ``[E, H, I/32]`` as fp32 powers of two
(0.5.12) or UE8M0 bytes (``uint8`` / ``float8_e8m0fnu``, 0.5.16).

Pipeline (6 launches, graph-safe, no host sync; grids depend on shapes only):

1. ``count``: per (token, k) slot, ``rank = atomic_add(counts[expert], 1)`` (ids outside ``[0, E)``, e.g. SGLang's
   ``-1`` for padded tokens, are skipped);
2. ``offsets`` (one program): experts' row ranges padded to ``BLOCK_M``, the expert of each row block, padding
   sentinels; resets ``counts`` to zero for the next call;
3. ``scatter``: ``sorted[offset[expert] + rank] = slot``;
4. GEMM1 (grouped, one ``BLOCK_M`` block of one expert per program): ``x[slot // topk] @ [gate; up]^T`` with the
   FP4 weights decoded in registers (exact bit arithmetic, the UE8M0 scale folded into the exponent) and a
   bf16 ``tl.dot``; epilogue ``h = silu(min(g, L)) * clamp(u, -L, L)`` (``L = swiglu_limit``, SGLang's
   ``swiglu_limit_func``) stored bf16. Small-M (decode) with few programs: split-K, fp32 atomics into a
   ``[slots, 2I]`` buffer, and the SwiGLU moves into GEMM2's operand load;
5. GEMM2: ``y[slot] = h[slot] @ w2^T`` (bf16);
6. ``sum``: ``out[t] = scale * sum_k topk_weights[t, k] * y[t * topk + k]`` in fp32 (scale = ``routed_scaling_factor``
   or 1: a subclass of ``Mxfp4MarlinMoEMethod`` must pass None, SGLang scales afterwards).

Tiles: ``BLOCK_M`` 16 for up to 64 tokens (decode), 64 above (prefill). No E2M1 lookup table exists on the device.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.platform import guard_compiled, num_sms

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_E8M0 = (torch.uint8, getattr(torch, "float8_e8m0fnu", torch.uint8))
_IDS = (torch.int32, torch.int64)
DECODE_MAX_TOKENS = 64
MAX_EXPERTS = 512
K_ALIGN = 128  # H and I must be multiples of this (the largest BLOCK_K)
_SLOT_BLOCK = 256  # count / scatter kernels: slots per program
_OFF_CHUNK = 32  # offsets kernel: row blocks per step
_SUM_BLOCK = 1024
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
_DECODE = {64: (16, 64, 128, 4, 4), 32: (16, 32, 128, 4, 4)}
_PREFILL_GATED = (64, 64, 64, 8, 3)
_PREFILL_DOWN = (64, 128, 64, 8, 3)


@triton.jit
def _e2m1_times_scale(q, s, HIGH: tl.constexpr):
    """Packed bytes ``q`` and UE8M0 exponents ``s`` (both int32) -> fp32 ``E2M1(nibble) * 2^(s - 127)``, exact:
    the value's fp32 bits are built directly (code c = e1e0m: c >= 2 -> exponent field c//2 + s - 1, mantissa
    bit c & 1, i.e. ``(c + 2s - 2) << 22``; c == 1 (0.5) -> ``(2s - 2) << 22``; c == 0 -> 0). Needs 1 <= s <= 252."""
    n = (q >> 4) & 0xF if HIGH else q & 0xF
    code = n & 7
    mag = code + 2 * s - 2 - (code == 1).to(tl.int32)
    bits = tl.where(code == 0, 0, mag << 22) | ((n & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _fp4_dot(acc, a_ev, a_od, w_ptrs, s_ptrs, S_FP32: tl.constexpr, UPCAST: tl.constexpr):
    """``acc += a_ev @ W[even k] + a_od @ W[odd k]``; ``w_ptrs`` ``[BLOCK_K/2, BLOCK_N]`` packed bytes,
    ``s_ptrs`` ``[BLOCK_K/32, BLOCK_N]`` per-32 scales (broadcast over their 16 bytes in registers)."""
    KH: tl.constexpr = w_ptrs.shape[0]
    BN: tl.constexpr = w_ptrs.shape[1]
    q = tl.reshape(tl.load(w_ptrs).to(tl.int32), (KH // 16, 16, BN))
    s = tl.load(s_ptrs)
    if S_FP32:  # an exact power of two: its exponent field is the UE8M0 byte
        s = (s.to(tl.int32, bitcast=True) >> 23) & 0xFF
    else:
        s = s.to(tl.int32)
    s = tl.expand_dims(s, 1)
    lo = tl.reshape(_e2m1_times_scale(q, s, False), (KH, BN))
    hi = tl.reshape(_e2m1_times_scale(q, s, True), (KH, BN))
    if not UPCAST:  # the values have <= 2 significant bits: the bf16 cast is exact
        lo = lo.to(tl.bfloat16)
        hi = hi.to(tl.bfloat16)
    acc = tl.dot(a_ev, lo, acc)
    return tl.dot(a_od, hi, acc)


@triton.jit
def _swiglu(g, u, limit):
    g = tl.minimum(g, limit)
    u = tl.minimum(tl.maximum(u, -limit), limit)
    return g / (1.0 + tl.exp(-g)) * u


@triton.jit
def _moe_gemm_kernel(
    a_ptr,
    w_ptr,
    s_ptr,
    c_ptr,
    sorted_ptr,
    block_expert_ptr,
    total_ptr,
    N,
    K,
    num_slots,
    a_div,
    stride_am,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_cm,
    k_per_split,
    limit,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATED: tl.constexpr,
    SPLIT: tl.constexpr,
    A_GATEUP: tl.constexpr,
    S_FP32: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), row blocks, K splits). Row block b holds ``sorted[b*BM : (b+1)*BM]`` (slots, or
    ``num_slots`` = padding) of expert ``block_expert[b]``; A row = ``slot // a_div``. W ``[E, rows, K/2]``
    bytes with rows ``[gate (N); up (N)]`` when GATED. C row = slot: GATED -> ``[.., N]`` SwiGLU (or, SPLIT,
    fp32 atomics of ``[g | u]`` into ``[.., 2N]``); else ``[.., N]``. A_GATEUP: A is that fp32 ``[g | u]``
    buffer (K = its N) and the SwiGLU is applied on load."""
    KH: tl.constexpr = BLOCK_K // 2
    # the wrapper guarantees these (16-byte rows): vectorised, pipelined loads
    stride_am = stride_am // 16 * 16
    stride_wn = stride_wn // 16 * 16
    stride_we = stride_we // 16 * 16
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    if pid_b * BLOCK_M >= tl.load(total_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_b).to(tl.int64)
    slots = tl.load(sorted_ptr + pid_b * BLOCK_M + tl.arange(0, BLOCK_M))
    m_ok = slots < num_slots
    rows = tl.where(m_ok, slots // a_div, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_rows = tl.where(n_ok, offs_n, 0)  # clamp instead of masking: unmasked, vectorised weight loads
    k0 = tl.program_id(2) * k_per_split
    kp = k0 // 2 + tl.arange(0, KH)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    a_ptrs = tl.multiple_of(a_ptr + rows[:, None] * stride_am + offs_k[None, :], [16, 16])  # checked by the wrapper
    w_ptrs = w_ptr + expert * stride_we + (w_rows[None, :] * stride_wn + kp[:, None])
    w_ptrs = tl.multiple_of(w_ptrs, [16, 16])
    kg = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    s_ptrs = s_ptr + expert * stride_se + (w_rows[None, :] * stride_sn + kg[:, None])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, tl.minimum(k_per_split, K - k0), BLOCK_K):
        if A_GATEUP:
            g = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
            u = tl.load(a_ptrs + K, mask=m_ok[:, None], other=0.0)
            a = _swiglu(g, u, limit).to(tl.bfloat16)
        else:
            a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
        a_ev, a_od = tl.split(tl.reshape(a, (BLOCK_M, KH, 2)))
        if UPCAST:  # the interpreter's bf16 dot is wrong
            a_ev = a_ev.to(tl.float32)
            a_od = a_od.to(tl.float32)
        acc = _fp4_dot(acc, a_ev, a_od, w_ptrs, s_ptrs, S_FP32, UPCAST)
        if GATED:
            acc_u = _fp4_dot(acc_u, a_ev, a_od, w_ptrs + N * stride_wn, s_ptrs + N * stride_sn, S_FP32, UPCAST)
        a_ptrs += BLOCK_K
        w_ptrs += KH
        s_ptrs += BLOCK_K // 32

    c_ptrs = c_ptr + tl.where(m_ok, slots, 0).to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    c_ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT:
        tl.atomic_add(c_ptrs, acc, mask=c_ok, sem="relaxed")
        tl.atomic_add(c_ptrs + N, acc_u, mask=c_ok, sem="relaxed")
    else:
        if GATED:
            acc = _swiglu(acc, acc_u, limit)
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _moe_count_kernel(ids_ptr, counts_ptr, rank_ptr, num_slots, num_experts, BLOCK: tl.constexpr):
    """Grid (cdiv(slots, BLOCK)): ``rank[slot] = atomic_add(counts[ids[slot]], 1)`` for valid expert ids."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < num_slots
    eid = tl.load(ids_ptr + offs, mask=ok, other=-1).to(tl.int32)
    valid = ok & (eid >= 0) & (eid < num_experts)
    rank = tl.atomic_add(counts_ptr + tl.where(valid, eid, 0), 1, mask=valid, sem="relaxed")
    tl.store(rank_ptr + offs, rank, mask=valid)


@triton.jit
def _moe_offsets_kernel(
    counts_ptr,
    offsets_ptr,
    block_expert_ptr,
    sorted_ptr,
    total_ptr,
    num_experts,
    num_slots,
    max_blocks,
    BLOCK_M: tl.constexpr,
    E_MAX: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """One program: expert e owns rows ``[offsets[e], offsets[e] + cdiv(counts[e], BM) * BM)``; writes the
    expert of each row block below ``total``, ``num_slots`` into each padding row, and zeroes ``counts``."""
    e = tl.arange(0, E_MAX)
    e_ok = e < num_experts
    cnt = tl.load(counts_ptr + e, mask=e_ok, other=0)
    padded = tl.cdiv(cnt, BLOCK_M) * BLOCK_M
    end = tl.cumsum(padded, 0)
    start = end - padded
    total = tl.sum(padded, 0)
    tl.store(offsets_ptr + e, start, mask=e_ok)
    tl.store(counts_ptr + e, tl.zeros_like(cnt), mask=e_ok)
    tl.store(total_ptr, total)
    fill_end = start + cnt
    for b0 in range(0, max_blocks, CHUNK):
        blk = b0 + tl.arange(0, CHUNK)
        row0 = blk * BLOCK_M
        before = (end[None, :] <= row0[:, None]) & e_ok[None, :]
        owner = tl.sum(before.to(tl.int32), 1)  # experts entirely before the block: its expert's index
        mine = e[None, :] == owner[:, None]
        lim = tl.sum(tl.where(mine, fill_end[None, :], 0), 1)
        live = row0 < total
        tl.store(block_expert_ptr + blk, owner, mask=live & (blk < max_blocks))
        r = row0[:, None] + tl.arange(0, BLOCK_M)[None, :]
        pad = live[:, None] & (r >= lim[:, None])
        tl.store(sorted_ptr + r, tl.full(r.shape, 0, tl.int32) + num_slots, mask=pad)


@triton.jit
def _moe_scatter_kernel(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, num_slots, num_experts, BLOCK: tl.constexpr):
    """Grid (cdiv(slots, BLOCK)): ``sorted[offsets[expert] + rank[slot]] = slot`` for valid slots."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < num_slots
    eid = tl.load(ids_ptr + offs, mask=ok, other=-1).to(tl.int32)
    valid = ok & (eid >= 0) & (eid < num_experts)
    eid = tl.where(valid, eid, 0)
    pos = tl.load(offsets_ptr + eid, mask=valid, other=0) + tl.load(rank_ptr + offs, mask=valid, other=0)
    tl.store(sorted_ptr + pos, offs, mask=valid)


@triton.jit
def _moe_sum_kernel(
    y_ptr, tw_ptr, ids_ptr, out_ptr, H, topk, num_experts, stride_out, scale, BLOCK: tl.constexpr
):
    """Grid (T, cdiv(H, BLOCK)): ``out[t] = scale * sum_k tw[t, k] * y[t * topk + k]`` over valid experts."""
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < H
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(topk):
        slot = t * topk + k
        eid = tl.load(ids_ptr + slot)
        valid = (eid >= 0) & (eid < num_experts)
        w = tl.load(tw_ptr + slot)
        y = tl.load(y_ptr + slot * H + offs, mask=ok & valid, other=0.0)
        acc += tl.where(valid, w, 0.0) * y.to(tl.float32)
    tl.store(out_ptr + t * stride_out + offs, (acc * scale).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _hash_topk_kernel(
    logits_ptr,
    ids_ptr,
    tid2eid_ptr,
    tw_ptr,
    tids_ptr,
    T,
    topk,
    n_shared,
    num_experts,
    stride_l,
    stride_map,
    shared_weight,
    BLOCK_T: tl.constexpr,
    K_POW2: tl.constexpr,
):
    """Grid (cdiv(T, BLOCK_T)): ``eid = tid2eid[input_ids[t], :topk]``, weight ``sqrt(softplus(logit[t, eid]))``
    renormalised over the row; then ``n_shared`` slots with ids ``E, E+1, ..`` and ``shared_weight``."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    j = tl.arange(0, K_POW2)
    tok = tl.load(ids_ptr + t, mask=t_ok, other=0).to(tl.int64)
    routed = t_ok[:, None] & (j[None, :] < topk)
    eid = tl.load(tid2eid_ptr + tok[:, None] * stride_map + j[None, :], mask=routed, other=0)
    x = tl.load(logits_ptr + t.to(tl.int64)[:, None] * stride_l + eid, mask=routed, other=0.0)
    score = tl.sqrt(tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))
    score = tl.where(routed, score, 0.0)
    w = score / tl.where(t_ok, tl.sum(score, 1), 1.0)[:, None]
    is_shared = j[None, :] >= topk
    eid = tl.where(is_shared, num_experts + j[None, :] - topk, eid)
    w = tl.where(is_shared, shared_weight, w)
    out = t.to(tl.int64)[:, None] * (topk + n_shared) + j[None, :]
    ok = t_ok[:, None] & (j[None, :] < topk + n_shared)
    tl.store(tids_ptr + out, eid, mask=ok)
    tl.store(tw_ptr + out, w, mask=ok)


# ------------------------------------------------------------------ AOT registration ---------------------------

_INT = "i32"  # what the runtime JIT passes for ints < 2^31


def _gemm_signature(a: str, s: str, c: str) -> dict[str, str]:
    sig = {"a_ptr": a, "w_ptr": "*u8", "s_ptr": s, "c_ptr": c, "sorted_ptr": "*i32", "block_expert_ptr": "*i32",
           "total_ptr": "*i32"}
    for name in ("N", "K", "num_slots", "a_div", "stride_am", "stride_we", "stride_wn", "stride_se", "stride_sn",
                 "stride_cm", "k_per_split"):
        sig[name] = _INT
    sig["limit"] = "fp32"
    return sig


def _gemm_config(tile: tuple[int, int, int, int], gated: bool, split: bool, gateup: bool, s_fp32: bool):
    bm, bn, bk, nw, ns = tile
    consts = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GATED": gated, "SPLIT": split,
              "A_GATEUP": gateup, "S_FP32": s_fp32, "UPCAST": False}
    return AotConfig(consts, num_warps=nw, num_stages=ns)


for _s, _sf in (("*fp32", True), ("*u8", False)):
    _tag = _s[1:]
    register_aot(
        f"moe_mxfp4.gemm1[s={_tag}]",
        _moe_gemm_kernel,
        signature=_gemm_signature("*bf16", _s, "*bf16"),
        configs=[_gemm_config(t, True, False, False, _sf) for t in (*_DECODE.values(), _PREFILL_GATED)],
    )
    register_aot(
        f"moe_mxfp4.gemm1_splitk[s={_tag}]",
        _moe_gemm_kernel,
        signature=_gemm_signature("*bf16", _s, "*fp32"),
        configs=[_gemm_config(t, True, True, False, _sf) for t in _DECODE.values()],
    )
    register_aot(
        f"moe_mxfp4.gemm2[s={_tag}]",
        _moe_gemm_kernel,
        signature=_gemm_signature("*bf16", _s, "*bf16"),
        configs=[_gemm_config(t, False, False, False, _sf) for t in (*_DECODE.values(), _PREFILL_DOWN)],
    )
    register_aot(
        f"moe_mxfp4.gemm2_gateup[s={_tag}]",
        _moe_gemm_kernel,
        signature=_gemm_signature("*fp32", _s, "*bf16"),
        configs=[_gemm_config(t, False, False, True, _sf) for t in _DECODE.values()],
    )
for _ids in ("i32", "i64"):
    register_aot(
        f"moe_mxfp4.count[ids={_ids}]",
        _moe_count_kernel,
        signature={"ids_ptr": f"*{_ids}", "counts_ptr": "*i32", "rank_ptr": "*i32", "num_slots": _INT,
                   "num_experts": _INT},
        configs=[AotConfig({"BLOCK": _SLOT_BLOCK}, num_warps=4, num_stages=1)],
    )
    register_aot(
        f"moe_mxfp4.scatter[ids={_ids}]",
        _moe_scatter_kernel,
        signature={"ids_ptr": f"*{_ids}", "rank_ptr": "*i32", "offsets_ptr": "*i32", "sorted_ptr": "*i32",
                   "num_slots": _INT, "num_experts": _INT},
        configs=[AotConfig({"BLOCK": _SLOT_BLOCK}, num_warps=4, num_stages=1)],
    )
    register_aot(
        f"moe_mxfp4.sum[ids={_ids}]",
        _moe_sum_kernel,
        signature={"y_ptr": "*bf16", "tw_ptr": "*fp32", "ids_ptr": f"*{_ids}", "out_ptr": "*bf16", "H": _INT,
                   "topk": _INT, "num_experts": _INT, "stride_out": _INT, "scale": "fp32"},
        configs=[AotConfig({"BLOCK": _SUM_BLOCK}, num_warps=4, num_stages=1)],
    )
    register_aot(
        f"moe_mxfp4.hash_topk[ids={_ids}]",
        _hash_topk_kernel,
        signature={"logits_ptr": "*fp32", "ids_ptr": f"*{_ids}", "tid2eid_ptr": "*i32", "tw_ptr": "*fp32",
                   "tids_ptr": "*i32", "T": _INT, "topk": _INT, "n_shared": _INT, "num_experts": _INT,
                   "stride_l": _INT, "stride_map": _INT, "shared_weight": "fp32"},
        configs=[AotConfig({"BLOCK_T": 32, "K_POW2": 8}, num_warps=4, num_stages=1)],
    )
register_aot(
    "moe_mxfp4.offsets",
    _moe_offsets_kernel,
    signature={"counts_ptr": "*i32", "offsets_ptr": "*i32", "block_expert_ptr": "*i32", "sorted_ptr": "*i32",
               "total_ptr": "*i32", "num_experts": _INT, "num_slots": _INT, "max_blocks": _INT},
    configs=[AotConfig({"BLOCK_M": bm, "E_MAX": MAX_EXPERTS, "CHUNK": _OFF_CHUNK}, num_warps=4, num_stages=1)
             for bm in (16, 64)],
)

# ------------------------------------------------------------------ host side -----------------------------------

def _block_m(num_tokens: int) -> int:
    return 16 if num_tokens <= DECODE_MAX_TOKENS else 64


def _max_blocks(num_slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound on row blocks: each non-empty expert pads to a block multiple and owns >= 1 slot."""
    return min(num_slots, triton.cdiv(num_slots, block_m) + min(num_experts, num_slots))


class MoeWorkspace(NamedTuple):
    """Scratch of :func:`fused_moe_mxfp4` for up to ``max_tokens`` tokens (see :func:`moe_mxfp4_workspace`).
    ``counts`` must be all zero before the first call (each call leaves it zero)."""

    counts: torch.Tensor  # [E] int32
    offsets: torch.Tensor  # [E] int32
    rank: torch.Tensor  # [T*topk] int32
    sorted_ids: torch.Tensor  # [max_blocks * BLOCK_M] int32
    block_expert: torch.Tensor  # [max_blocks] int32
    total: torch.Tensor  # [1] int32
    inter: torch.Tensor  # [T*topk, I] bf16 (SwiGLU output)
    gateup: torch.Tensor  # [T*topk * 2I] fp32 (split-K gate/up partials; used when T <= 64)
    y: torch.Tensor  # [T*topk, H] bf16 (per-slot expert outputs)
    max_tokens: int


def moe_mxfp4_workspace(
    max_tokens: int, topk: int, num_experts: int, hidden: int, inter: int, device: torch.device | str
) -> MoeWorkspace:
    """Allocate (zeroed where needed) scratch for :func:`fused_moe_mxfp4` calls with ``<= max_tokens`` tokens."""
    slots = max_tokens * topk
    rows = max(_max_blocks(slots, num_experts, bm) * bm for bm in (16, 64))
    gu = min(max_tokens, DECODE_MAX_TOKENS) * topk * 2 * inter

    def i32(n: int) -> torch.Tensor:
        return torch.zeros(max(n, 1), dtype=torch.int32, device=device)

    return MoeWorkspace(
        counts=i32(num_experts), offsets=i32(num_experts), rank=i32(slots), sorted_ids=i32(rows),
        block_expert=i32(rows // 16), total=i32(1),
        inter=torch.empty(slots, inter, dtype=torch.bfloat16, device=device),
        gateup=torch.empty(max(gu, 1), dtype=torch.float32, device=device),
        y=torch.empty(slots, hidden, dtype=torch.bfloat16, device=device), max_tokens=max_tokens,
    )  # fmt: skip


def _packed(name: str, w: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if w.dtype not in (torch.int8, torch.uint8) or tuple(w.shape) != shape:
        raise ValueError(f"{name}: expected {list(shape)} int8/uint8 (packed E2M1), got {list(w.shape)} {w.dtype}")
    if w.stride(2) != 1 or w.stride(1) % 16 or w.stride(0) % 16 or w.data_ptr() % 16:
        raise ValueError(f"{name}: the packed K dimension must be contiguous with 16-byte aligned rows")
    return w.view(torch.uint8)


def _scales(name: str, s: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    if s.dtype not in (torch.float32, *_E8M0) or tuple(s.shape) != shape or s.stride(2) != 1:
        raise ValueError(f"{name}: expected {list(shape)} float32 (powers of two) or UE8M0 bytes with the last "
                         f"dim contiguous, got {list(s.shape)} {s.dtype}")
    fp32 = s.dtype == torch.float32
    return (s if fp32 else s.view(torch.uint8)), fp32


def fused_moe_mxfp4(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    swiglu_limit: float | None = None,
    routed_scaling_factor: float | None = None,
    out: torch.Tensor | None = None,
    workspace: MoeWorkspace | None = None,
) -> torch.Tensor:
    """Routed MXFP4 experts, ``fused_marlin_moe`` semantics on unrepacked weights.

    hidden_states ``[T, H]`` bf16 (row stride a multiple of 16); w13 ``[E, 2I, H/2]`` and w2 ``[E, H, I/2]`` int8/uint8;
    w13_scale ``[E, 2I, H/32]`` and w2_scale ``[E, H, I/32]`` fp32 powers of two or UE8M0 bytes; topk_weights
    ``[T, k]`` fp32 and topk_ids ``[T, k]`` int32/int64 (contiguous; ids outside ``[0, E)`` contribute nothing).
    ``swiglu_limit`` (SGLang ``clamp_limit``): ``silu(min(g, L)) * clamp(u, -L, L)``; None = plain SwiGLU.
    ``routed_scaling_factor``: None = not applied (Marlin MXFP4 convention). H and I must be multiples of 128.
    Pass ``out`` ``[T, H]`` bf16 and ``workspace`` (:func:`moe_mxfp4_workspace`) for CUDA-graph capture.
    Returns ``out``.
    """
    x = hidden_states
    if x.dim() != 2 or x.dtype != torch.bfloat16 or x.stride(1) != 1 or x.stride(0) % 16 or x.data_ptr() % 16:
        raise ValueError(f"hidden_states: expected [T, H] bfloat16, rows contiguous with a row stride that is a "
                         f"multiple of 16 and a 16-byte aligned pointer, got {list(x.shape)} {x.dtype}")
    t, h = x.shape
    if w13.dim() != 3 or w13.shape[1] % 2:
        raise ValueError(f"w13: expected [E, 2I, H/2], got {list(w13.shape)}")
    e, inter = w13.shape[0], w13.shape[1] // 2
    if h % K_ALIGN or inter % K_ALIGN:
        raise ValueError(f"hidden_states/w13: H ({h}) and I ({inter}) must be multiples of {K_ALIGN}")
    if e > MAX_EXPERTS:
        raise ValueError(f"w13: at most {MAX_EXPERTS} experts, got {e}")
    w13b = _packed("w13", w13, (e, 2 * inter, h // 2))
    w2b = _packed("w2", w2, (e, h, inter // 2))
    s13, s13_fp32 = _scales("w13_scale", w13_scale, (e, 2 * inter, h // 32))
    s2, s2_fp32 = _scales("w2_scale", w2_scale, (e, h, inter // 32))
    if topk_ids.dim() != 2 or topk_ids.shape[0] != t or topk_ids.dtype not in _IDS or not topk_ids.is_contiguous():
        raise ValueError(f"topk_ids: expected contiguous [{t}, k] int32/int64, got {list(topk_ids.shape)} "
                         f"{topk_ids.dtype}")
    topk = topk_ids.shape[1]
    if (tuple(topk_weights.shape) != (t, topk) or topk_weights.dtype != torch.float32
            or not topk_weights.is_contiguous()):
        raise ValueError(f"topk_weights: expected contiguous [{t}, {topk}] float32, got "
                         f"{list(topk_weights.shape)} {topk_weights.dtype}")
    if out is None:
        out = torch.empty(t, h, dtype=torch.bfloat16, device=x.device)
    elif tuple(out.shape) != (t, h) or out.dtype != torch.bfloat16 or out.stride(1) != 1:
        raise ValueError(f"out: expected [{t}, {h}] bfloat16 with contiguous rows, got {list(out.shape)} {out.dtype}")
    if workspace is None:
        workspace = moe_mxfp4_workspace(t, topk, e, h, inter, x.device)
    elif (workspace.max_tokens < t or workspace.counts.numel() < e or workspace.inter.shape[1] != inter
          or workspace.y.shape[1] != h or workspace.rank.numel() < t * topk):
        raise ValueError(f"workspace: built for fewer tokens/experts or other sizes than T={t}, topk={topk}, E={e}, "
                         f"H={h}, I={inter}")
    if t == 0:
        return out
    ws = workspace
    slots = t * topk
    bm = _block_m(t)
    max_blocks = _max_blocks(slots, e, bm)
    limit = float("inf") if swiglu_limit is None else float(swiglu_limit)
    scale = 1.0 if routed_scaling_factor is None else float(routed_scaling_factor)

    grid = (triton.cdiv(slots, _SLOT_BLOCK),)
    c = _moe_count_kernel[grid](topk_ids, ws.counts, ws.rank, slots, e, BLOCK=_SLOT_BLOCK, num_warps=4)
    guard_compiled("moe_mxfp4.count", c)
    c = _moe_offsets_kernel[(1,)](
        ws.counts, ws.offsets, ws.block_expert, ws.sorted_ids, ws.total, e, slots, max_blocks,
        BLOCK_M=bm, E_MAX=MAX_EXPERTS, CHUNK=_OFF_CHUNK, num_warps=4,
    )  # fmt: skip
    guard_compiled("moe_mxfp4.offsets", c)
    c = _moe_scatter_kernel[grid](topk_ids, ws.rank, ws.offsets, ws.sorted_ids, slots, e, BLOCK=_SLOT_BLOCK,
                                  num_warps=4)
    guard_compiled("moe_mxfp4.scatter", c)

    route = (ws.sorted_ids, ws.block_expert, ws.total)
    sms = num_sms(x.device)
    if bm == 16:  # narrower tiles, then split-K of GEMM1, when the programs cannot fill the GPU (high TP)
        tile1 = _DECODE[64 if triton.cdiv(inter, 64) * max_blocks >= 2 * sms else 32]
        tile2 = _DECODE[64 if triton.cdiv(h, 64) * max_blocks >= 2 * sms else 32]
    else:
        tile1, tile2 = _PREFILL_GATED, _PREFILL_DOWN
    _, bn1, bk1, nw1, ns1 = tile1
    kblocks = h // bk1
    splits = 1 if bm != 16 else min(kblocks, triton.cdiv(2 * sms, triton.cdiv(inter, bn1) * max_blocks))
    per_split = triton.cdiv(kblocks, splits) * bk1
    splits = triton.cdiv(h, per_split)
    gu = ws.gateup[: slots * 2 * inter].view(slots, 2 * inter) if splits > 1 else None
    if gu is not None:
        gu.zero_()
    c1 = ws.inter[:slots] if gu is None else gu
    c = _moe_gemm_kernel[(triton.cdiv(inter, bn1), max_blocks, splits)](
        x, w13b, s13, c1, *route, inter, h, slots, topk, x.stride(0), w13b.stride(0), w13b.stride(1),
        s13.stride(0), s13.stride(1), c1.stride(0), per_split, limit,
        BLOCK_M=bm, BLOCK_N=bn1, BLOCK_K=bk1, GATED=True, SPLIT=splits > 1, A_GATEUP=False, S_FP32=s13_fp32,
        UPCAST=_INTERPRET, num_warps=nw1, num_stages=ns1,
    )  # fmt: skip
    guard_compiled("moe_mxfp4.gemm1", c)
    a2 = ws.inter[:slots] if gu is None else gu
    y = ws.y[:slots]
    _, bn2, bk2, nw2, ns2 = tile2
    c = _moe_gemm_kernel[(triton.cdiv(h, bn2), max_blocks, 1)](
        a2, w2b, s2, y, *route, h, inter, slots, 1, a2.stride(0), w2b.stride(0), w2b.stride(1),
        s2.stride(0), s2.stride(1), y.stride(0), inter, limit,
        BLOCK_M=bm, BLOCK_N=bn2, BLOCK_K=bk2, GATED=False, SPLIT=False, A_GATEUP=gu is not None,
        S_FP32=s2_fp32, UPCAST=_INTERPRET, num_warps=nw2, num_stages=ns2,
    )  # fmt: skip
    guard_compiled("moe_mxfp4.gemm2", c)
    c = _moe_sum_kernel[(t, triton.cdiv(h, _SUM_BLOCK))](
        y, topk_weights, topk_ids, out, h, topk, e, out.stride(0), scale, BLOCK=_SUM_BLOCK, num_warps=4
    )
    guard_compiled("moe_mxfp4.sum", c)
    return out


def hash_topk(
    router_logits: torch.Tensor,
    input_ids: torch.Tensor,
    tid2eid: torch.Tensor,
    num_fused_shared_experts: int = 0,
    routed_scaling_factor: float = 1.0,
    scoring_func: str = "sqrtsoftplus",
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's ``jit_kernel.deepseek_v4.hash_topk`` (hash-routed layers), for int32 *and* int64 ``input_ids``.

    router_logits ``[T, E]`` fp32, input_ids ``[T]``, tid2eid ``[vocab, k]`` int32 -> (topk_weights
    ``[T, k + s]`` fp32, topk_ids ``[T, k + s]`` int32): ids ``tid2eid[input_ids[t]]``, weights the
    sqrtsoftplus scores of those experts renormalised to sum 1 (no routed scaling), then ``s`` fused shared
    slots (ids ``E..E+s-1``, weight ``1 / routed_scaling_factor``). ``out`` = (weights, ids) buffers.
    """
    if scoring_func != "sqrtsoftplus":
        raise ValueError(f"scoring_func: only 'sqrtsoftplus' is supported, got {scoring_func!r}")
    if router_logits.dim() != 2 or router_logits.dtype != torch.float32 or router_logits.stride(1) != 1:
        raise ValueError(f"router_logits: expected [T, E] float32 (last dim contiguous), got "
                         f"{list(router_logits.shape)} {router_logits.dtype}")
    t, e = router_logits.shape
    if input_ids.dim() != 1 or input_ids.shape[0] != t or input_ids.dtype not in _IDS or input_ids.stride(0) != 1:
        raise ValueError(f"input_ids: expected contiguous [{t}] int32/int64, got {list(input_ids.shape)} "
                         f"{input_ids.dtype}")
    if tid2eid.dim() != 2 or tid2eid.dtype != torch.int32 or tid2eid.stride(1) != 1:
        raise ValueError(f"tid2eid: expected [vocab, k] int32 (last dim contiguous), got {list(tid2eid.shape)} "
                         f"{tid2eid.dtype}")
    topk = tid2eid.shape[1]
    width = topk + num_fused_shared_experts
    if topk < 1 or width > 8:
        raise ValueError(f"tid2eid/num_fused_shared_experts: need 1 <= k and k + shared <= 8, got {topk} + "
                         f"{num_fused_shared_experts}")
    if out is None:
        tw = torch.empty(t, width, dtype=torch.float32, device=router_logits.device)
        tids = torch.empty(t, width, dtype=torch.int32, device=router_logits.device)
    else:
        tw, tids = out
        for name, buf, dt in (("out[0]", tw, torch.float32), ("out[1]", tids, torch.int32)):
            if tuple(buf.shape) != (t, width) or buf.dtype != dt or not buf.is_contiguous():
                raise ValueError(f"{name}: expected contiguous [{t}, {width}] {dt}, got {list(buf.shape)} {buf.dtype}")
    if t:
        c = _hash_topk_kernel[(triton.cdiv(t, 32),)](
            router_logits, input_ids, tid2eid, tw, tids, t, topk, num_fused_shared_experts, e,
            router_logits.stride(0), tid2eid.stride(0), 1.0 / routed_scaling_factor, BLOCK_T=32, K_POW2=8,
            num_warps=4,
        )  # fmt: skip
        guard_compiled("moe_mxfp4.hash_topk", c)
    return tw, tids
