"""MXFP4 routed-experts MoE (W4A16, opt-in W4A8) and hash routing for DeepSeek-V4 on SM12x (Triton, ``mma.sync``).

Replaces SGLang's ``fused_marlin_moe`` for ``Mxfp4MarlinMoEMethod`` on the weights as ``create_weights`` makes
them, *before* Marlin repacking: ``w13 [E, 2I, H/2]`` int8/uint8 (rows ``[gate; up]``, two E2M1 per byte, low
nibble = even k), ``w2 [E, H, I/2]``, scales ``[E, 2I, H/32]`` / ``[E, H, I/32]`` as fp32 powers of two
(0.5.12) or UE8M0 bytes (``uint8`` / ``float8_e8m0fnu``, 0.5.16).

Decode (up to 40 tokens, 64 for I/TP < 512: :func:`gemv_max_tokens`; 2 launches, no routing pass): GEMV on CUDA
cores, one program per (row tile, slot) for gate/up + SwiGLU and per (row tile, token) for the down projection
with the top-k sum fused (:func:`_fp4_gemv`: 16-byte weight loads, two E2M1 decoded per 32-bit op, one scale per
32-group sum).
The weights of an expert picked by several tokens are read once per slot (from L2 after the first).

Prefill (above that; 6 launches, graph-safe, no host sync; grids depend on shapes only):

1. ``count``: per (token, k) slot, ``rank = atomic_add(counts[expert], 1)`` (ids outside ``[0, E)``, e.g. SGLang's
   ``-1`` for padded tokens, are skipped);
2. ``offsets`` (one program): experts' row ranges padded to ``BLOCK_M`` (16..128 by the mean rows per expert,
   :func:`_routed_tile`), the expert of each row block,
   padding sentinels; resets ``counts`` to zero for the next call;
3. ``scatter``: ``sorted[offset[expert] + rank] = slot``;
4. GEMM1 (grouped, one ``BLOCK_M`` block of one expert per program): ``x[slot // topk] @ [gate; up]^T`` with the
   FP4 weights decoded in registers (:func:`_e2m1_pairs`: exact bf16 bit patterns two per 32-bit op, the UE8M0
   scale applied by one bf16x2 multiply per two values) and a bf16 ``tl.dot``; epilogue
   ``h = silu(min(g, L)) * clamp(u, -L, L)`` (``L = swiglu_limit``, SGLang's ``swiglu_limit_func``) stored bf16;
5. GEMM2: ``y[slot] = h[slot] @ w2^T`` (bf16);
6. ``sum``: ``out[t] = scale * sum_k topk_weights[t, k] * y[t * topk + k]`` in fp32 (scale = ``routed_scaling_factor``
   or 1: a subclass of ``Mxfp4MarlinMoEMethod`` must pass None, SGLang scales afterwards).

W4A8 (``act="mxfp8"``, opt-in: :func:`moe_act`): before GEMM1 x is quantised to MXFP8 (e4m3 + UE8M0 per 32,
:func:`_mxfp8_quant_kernel`); both GEMMs decode the FP4 weights to e4m3 in registers (:func:`_e2m1_e4m3`) and run
one ``tl.dot_scaled`` per K block, which Triton lowers to the block-scaled ``mma ... kind::mxf8f6f4`` on sm_120a
(decomposed to bf16 MMAs elsewhere); GEMM1 stores the SwiGLU output as MXFP8 for GEMM2. Activations are stored
in *pair-split* order (per 32-group: even k, then odd k), the order in which packed nibbles decode for free.

No E2M1 lookup table exists on the device.
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
MAX_EXPERTS = 512
K_ALIGN = 128  # H and I must be multiples of this (the largest BLOCK_K)
# GEMV up to this many tokens, the routed tl.dot pipeline above (:func:`gemv_max_tokens`). H100, mma.sync build,
# session 6 (`scripts/bench_moe_gemm.py --sections moe --moe-routed-too`, DSV4-Flash): the routed path overtakes
# the GEMV between 32 and 64 tokens for wide experts (I/TP 2048: 1.30 vs 1.17 ms at 32, 1.87 vs 2.29 ms at 64;
# I/TP 1024: 0.68 vs 0.61, 0.98 vs 1.20 ms; both cross near 40) and only past 64 for narrow ones (I/TP 256:
# 319 vs 303 us at 64). I/TP 512 was not timed: it takes the wide rule.
GEMV_MAX_TOKENS = 64
GEMV_MAX_TOKENS_WIDE = 40
WIDE_INTER = 512
_SLOT_BLOCK = 256  # count / scatter kernels: slots per program
_OFF_CHUNK = 32  # offsets kernel: row blocks per step
_SUM_BLOCK = 1024
_QUANT_BLOCKS = (1024, 512, 256, 128)  # MXFP8 quantisation of x: columns per program, the largest dividing H
# Routed path tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), one per row-block size, the same for
# GEMM1 and GEMM2. Decoding the FP4 weights costs the same per block whatever BLOCK_M, so an expert with r rows
# costs ~cdiv(r, BLOCK_M) decodes of its weights: :func:`_routed_tile` takes the smallest block that holds the
# mean rows per expert with room (<= 3/4 full). ``scripts/sass_stats.py moe_mxfp4.gemm1`` (sm_120a): K-loop
# instructions per mma.sync 19.6 / 11.5 / 6.6 / 5.0 for these tiles (session-4 16-row kernel: 55.1), <= 32 KB
# smem, 0 spills in every AOT build (a 32-row tile with BLOCK_K 64 spilled in some). H100 (session 6): 4.6x faster
# than the session-4 kernel at 4096 tokens (10.8 ms at TP 1, 115 TFLOP/s). `scripts/tune_moe_routed.py --tp 1`
# (session 8, H100, mma.sync build): the 64-row tile with 3 stages beats the 128-row one from 2048 to 8192 tokens
# (4096: 8.0 vs 10.8 ms, 8192: 13.9 vs 20.5 ms; 2048: 4.2 vs 4.6 ms with 2 stages), so it is the last tile.
_ROUTED_TILES = ((16, 64, 128, 4, 2), (32, 64, 128, 4, 2), (64, 64, 64, 4, 3))
# W4A8, same row-block sizes, BLOCK_K 64 throughout (the 16- and 32-row GEMM1 with BLOCK_K 128 spill 8-12 B for
# sm_121a). Static K loop on sm_120a (sass_stats, GEMM1): 10-18 instructions per block-scaled QMMA, each QMMA
# the work of two bf16 mma.sync. Not yet timed or run on a GPU.
_ROUTED_TILES_W4A8 = ((16, 64, 64, 4, 2), (32, 64, 64, 4, 2), (64, 64, 64, 4, 2), (128, 64, 64, 8, 2))
_BLOCK_MS = tuple(sorted({t[0] for t in _ROUTED_TILES + _ROUTED_TILES_W4A8}))  # the workspace is sized for all


def gemv_max_tokens(inter: int) -> int:
    """The most tokens the GEMV path takes for per-rank intermediate size ``inter`` (more: the routed path)."""
    return min(GEMV_MAX_TOKENS, GEMV_MAX_TOKENS_WIDE) if inter >= WIDE_INTER else GEMV_MAX_TOKENS


def _routed_tile(slots: int, num_experts: int, act_fp8: bool = False) -> tuple[int, int, int, int, int]:
    """The routed tile for ``slots`` (token, expert) pairs over ``num_experts`` experts (host ints only)."""
    mean = slots / max(num_experts, 1)
    tiles = _ROUTED_TILES_W4A8 if act_fp8 else _ROUTED_TILES
    return next((t for t in tiles if 4 * mean <= 3 * t[0]), tiles[-1])


class _GemvTile(NamedTuple):
    """GEMV tile rule: the widest ``BLOCK_N`` (32 down to 2; to 8 for the down projection) giving
    ``>= waves * SMs`` programs, ``BLOCK_K`` = ``values`` / rows per program (a power of two dividing K,
    128..4096); ``prefetch``: register double-buffering of the weight words (Triton does not pipeline loads that
    feed no tl.dot)."""

    waves: int
    values: int
    num_warps: int
    prefetch: bool


# H100 sweep (mma.sync build, DSV4-Flash, 1-64 tokens, TP 1/2/8): _WIDE is up to 15 % faster where its down
# projection still loops over >= 2 K blocks (TP 1-2 from 2-3 tokens); where it would not, prefetching a single
# block only costs (up to 8 % at TP 8 and at TP 2 / 1 token) and _SMALL wins.
_WIDE = _GemvTile(2, 16384, 8, True)
_SMALL = _GemvTile(4, 8192, 4, False)


def _gemv_block(tile: _GemvTile, n: int, k: int, gated: bool, programs: int, sms: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) of one GEMV launch: N rows (x2 when gated) over ``programs`` slots or tokens."""
    bn, bn_min = 32, 2 if gated else 8  # down, BLOCK_N 4 / 2: ptxas spills (8 B) in some all16 builds
    while bn > bn_min and n // bn * programs < tile.waves * sms:
        bn //= 2
    bk = max(128, min(4096, tile.values // (2 * bn if gated else bn)))
    while k % bk:
        bk //= 2
    return bn, bk


_GemvPlan = tuple[_GemvTile, tuple[int, int], tuple[int, int]]


def _gemv_plan(tokens: int, topk: int, hidden: int, inter: int, sms: int) -> _GemvPlan:
    """(tile, (BLOCK_N, BLOCK_K) of gate/up, (BLOCK_N, BLOCK_K) of down) of the decode GEMV path."""

    def plan(tile: _GemvTile) -> _GemvPlan:
        up = _gemv_block(tile, inter, hidden, True, tokens * topk, sms)
        return tile, up, _gemv_block(tile, hidden, inter, False, tokens, sms)

    wide = plan(_WIDE)
    return wide if inter >= 2 * wide[2][1] else plan(_SMALL)


@triton.jit
def _e2m1_bf16_bits(q, HIGH: tl.constexpr):
    """Packed bytes ``q`` (int32) -> the bf16 bit pattern (int32, low 16 bits) of ``E2M1(nibble) * 2^-126``: the
    nibble's sign to bit 15 and its 3-bit code e1e0m to bits 6..8 (exponent field e1e0, mantissa bit m). Exact:
    code 1 (0.5) lands on the bf16 subnormal 2^-127, code 0 on +-0. The interpreter's reference of
    :func:`_e2m1_pairs`."""
    n = (q >> 4) & 0xF if HIGH else q & 0xF
    return ((n & 7) << 6) | ((n & 8) << 12)


@triton.jit
def _pow2_f32(e):
    """fp32 ``2^e`` for int32 ``-126 <= e <= 127``."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _pow2_bf16(e):
    """bf16 ``2^e`` for int32 ``-126 <= e <= 127``."""
    return ((e + 127) << 7).to(tl.int16).to(tl.bfloat16, bitcast=True)


def _e2m1_pairs_asm() -> str:
    """PTX of :func:`_e2m1_pairs`: ``$4`` = 4 packed bytes, ``$5`` / ``$6`` = the multipliers of bytes 0-1 / 2-3;
    ``$0`` / ``$1`` = the low nibbles of bytes 0-1 / 2-3, ``$2`` / ``$3`` the high ones. A nibble at bit ``b`` of a
    spread word reaches the bf16 code field (bits 6..8) by ``<< (6 - b)`` and its sign bit (15) by ``<< (12 - b)``."""
    lines = ["{", ".reg .b32 t<2>, c, g;", "prmt.b32 t0, $4, 0, 0x4140;", "prmt.b32 t1, $4, 0, 0x4342;"]
    for out, (nibble, word) in enumerate((n, w) for n in (0, 4) for w in (0, 1)):
        lines += [
            f"shl.b32 c, t{word}, {6 - nibble};",
            f"shl.b32 g, t{word}, {12 - nibble};",
            "and.b32 c, c, 0x01C001C0;",
            "and.b32 g, g, 0x80008000;",
            "or.b32 c, c, g;",
            f"mul.rn.bf16x2 ${out}, c, ${5 + word};",
        ]
    return "\n".join([*lines, "}"])


_E2M1_PAIRS_ASM = tl.constexpr(_e2m1_pairs_asm())


@triton.jit
def _e2m1_pairs(q, mult):
    """uint8 ``q`` (two E2M1, low nibble = even k) and bf16 ``mult`` -> bf16 ``(even, odd)`` = the nibbles'
    ``E2M1 * 2^-126`` (:func:`_e2m1_bf16_bits`) times ``mult``: two bytes are spread to the halves of a 32-bit
    word (PRMT), so each shift / mask decodes two values and one ``mul.rn.bf16x2`` rescales two (exact for a
    power-of-two ``mult`` while the product stays a normal bf16)."""
    return tl.inline_asm_elementwise(
        _E2M1_PAIRS_ASM, "=r,=r,=r,=r,r,r,r", [q, mult], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4
    )


@triton.jit
def _per_16_bytes(x, KH: tl.constexpr, BN: tl.constexpr):
    """``[KH / 16, BN]`` per-32-value quantities -> ``[KH, BN]``, one per packed byte."""
    return tl.reshape(tl.broadcast_to(tl.expand_dims(x, 1), (KH // 16, 16, BN)), (KH, BN))


@triton.jit
def _ue8m0(s, S_FP32: tl.constexpr):
    """Scales as loaded (fp32 powers of two when S_FP32, else UE8M0 bytes) -> their UE8M0 exponent byte, int32:
    an exact fp32 power of two's exponent field is that byte."""
    if S_FP32:
        return (s.to(tl.int32, bitcast=True) >> 23) & 0xFF
    return s.to(tl.int32)


@triton.jit
def _scales_big(s_ptrs, K, BLOCK_K: tl.constexpr, S_FP32: tl.constexpr):
    """Whether any scale in ``s_ptrs`` ``[BLOCK_K/32, BLOCK_N]`` + k blocks up to K exceeds 128 (|W| > 12): one
    pass over the scales (1/16 of the weight bytes) so the main loop branches on a uniform scalar."""
    s_max = tl.zeros(s_ptrs.shape, dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        s_max = tl.maximum(s_max, _ue8m0(tl.load(s_ptrs + k0 // 32), S_FP32))
    return tl.max(tl.max(s_max, 1), 0) > 128


@triton.jit
def _fp4_dot(acc, a_ev, a_od, w_ptrs, s_ptrs, big, S_FP32: tl.constexpr, UPCAST: tl.constexpr):
    """``acc += a_ev @ W[even k] + a_od @ W[odd k]``; ``w_ptrs`` ``[BLOCK_K/2, BLOCK_N]`` packed bytes,
    ``s_ptrs`` ``[BLOCK_K/32, BLOCK_N]`` per-32 UE8M0 scales ``s`` (broadcast over their 16 bytes in registers).

    W = ``E2M1 * 2^-126`` (exact bf16 bit patterns) times ``2^(s - 1)``. That multiplier is a bf16 for s <= 128
    (|W| <= 12); ``big`` (some scale of the program's weights is larger, see :func:`_scales_big`) adds a second
    multiply by ``2^(max(s, 128) - 128)``."""
    KH: tl.constexpr = w_ptrs.shape[0]
    BN: tl.constexpr = w_ptrs.shape[1]
    q = tl.load(w_ptrs)
    s = tl.load(s_ptrs)
    s = _ue8m0(s, S_FP32)
    e1 = _per_16_bytes(tl.minimum(s, 128) - 1, KH, BN)
    if UPCAST:  # interpreter: no inline PTX, its bf16 dot is wrong and its bf16 casts lose subnormals: the same
        qi = q.to(tl.int32)  # bf16 patterns as fp32 (bits << 16), the same multipliers in fp32
        m1 = _pow2_f32(e1)
        lo = (_e2m1_bf16_bits(qi, False) << 16).to(tl.float32, bitcast=True) * m1
        hi = (_e2m1_bf16_bits(qi, True) << 16).to(tl.float32, bitcast=True) * m1
    else:
        lo, hi = _e2m1_pairs(q, _pow2_bf16(e1))
    if big:
        e2 = _per_16_bytes(tl.maximum(s, 128) - 128, KH, BN)
        m2 = _pow2_f32(e2) if UPCAST else _pow2_bf16(e2)
        lo = lo * m2
        hi = hi * m2
    acc = tl.dot(a_ev, lo, acc)
    return tl.dot(a_od, hi, acc)


def _e2m1_e4m3_asm() -> str:
    """PTX of :func:`_e2m1_e4m3`: ``$2`` = 4 packed bytes -> ``$0`` / ``$1`` = the e4m3 bytes of their low / high
    nibbles: sign to bit 7, 3-bit code e1e0m to bits 2..4 (exponent field e1e0, mantissa m00)."""
    return "\n".join([
        "{", ".reg .b32 a, b;",
        "shl.b32 a, $2, 2;", "and.b32 a, a, 0x1C1C1C1C;", "shl.b32 b, $2, 4;", "and.b32 b, b, 0x80808080;",
        "or.b32 $0, a, b;",
        "shr.b32 a, $2, 2;", "and.b32 a, a, 0x1C1C1C1C;", "and.b32 b, $2, 0x80808080;", "or.b32 $1, a, b;",
        "}",
    ])  # fmt: skip


_E2M1_E4M3_ASM = tl.constexpr(_e2m1_e4m3_asm())


@triton.jit
def _e2m1_e4m3(q, UPCAST: tl.constexpr):
    """Packed bytes ``q`` ``[KH, BN]`` uint8 (low nibble = even k) -> ``[2 KH, BN]`` e4m3 in *pair-split* k order
    (per 32-group: its 16 even k, then its 16 odd k; :func:`_pair_split`), each the nibble's ``E2M1 * 2^-6``
    (exact: e4m3's exponent bias is 6 more than E2M1's; code 1 = 0.5 lands on the e4m3 subnormal 2^-7). In that
    order the low and high nibbles of 16 bytes stay whole registers: no byte shuffles before the MMA. Four bytes
    per 32-bit op on the GPU, plain integer ops under the interpreter."""
    if UPCAST:
        qi = q.to(tl.int32)
        lo = (((qi << 2) & 0x1C) | ((qi << 4) & 0x80)).to(tl.uint8)
        hi = (((qi >> 2) & 0x1C) | (qi & 0x80)).to(tl.uint8)
    else:
        lo, hi = tl.inline_asm_elementwise(
            _E2M1_E4M3_ASM, "=r,=r,r", [q], dtype=(tl.uint8, tl.uint8), is_pure=True, pack=4
        )
    KH: tl.constexpr = q.shape[0]
    BN: tl.constexpr = q.shape[1]
    w = tl.join(tl.reshape(lo, (KH // 16, 16, BN)), tl.reshape(hi, (KH // 16, 16, BN)))  # [G, 16, BN, 2]
    return tl.reshape(tl.permute(w, (0, 3, 1, 2)), (2 * KH, BN)).to(tl.float8e4nv, bitcast=True)


@triton.jit
def _pair_split(x):
    """``[R, C]`` -> the same values with each 32-column group reordered as its 16 even then its 16 odd columns:
    the k order of :func:`_e2m1_e4m3`, so MXFP8 activations stored this way meet decoded weights in the same
    order (a dot over K does not depend on the order, and every 32-group keeps its scale)."""
    R: tl.constexpr = x.shape[0]
    C: tl.constexpr = x.shape[1]
    return tl.reshape(tl.permute(tl.reshape(x, (R, C // 32, 16, 2)), (0, 1, 3, 2)), (R, C))


@triton.jit
def _mxfp8(x, UPCAST: tl.constexpr):
    """fp32 ``[R, C]`` -> MXFP8 (``reference.moe_mxfp4.quant_mxfp8``): e4m3 bytes ``[R, C]`` uint8 in pair-split
    column order (:func:`_pair_split`) and UE8M0 ``[R, C / 32]`` uint8, s = the smallest power of two with
    ``amax <= 448 * 2^(s - 127)`` per 32 columns."""
    R: tl.constexpr = x.shape[0]
    C: tl.constexpr = x.shape[1]
    g = tl.reshape(x, (R, C // 32, 32))
    bits = tl.max(tl.abs(g), 2).to(tl.int32, bitcast=True)
    s = ((bits >> 23) & 0xFF) - 8 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    s = tl.minimum(tl.maximum(s, 0), 254)  # finite amax: s <= 247, so 2^(127 - s) is a normal fp32
    q = tl.reshape(g * _pow2_f32(127 - s)[:, :, None], (R, C))
    if UPCAST:  # the interpreter's cast rounds ties away and flushes subnormals: round to e4m3 values first
        b = q.to(tl.int32, bitcast=True)
        normal = ((b + 0x7FFFF + ((b >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)  # 3 mantissa bits
        sub = (q + 24576.0) - 24576.0  # 1.5 * 2^14: the sum's ulp is the subnormal step 2^-9
        q = tl.where(tl.abs(q) < 0.015625, tl.where(sub == 0.0, q * 0.0, sub), normal)
    return _pair_split(q.to(tl.float8e4nv).to(tl.uint8, bitcast=True)), s.to(tl.uint8)


@triton.jit
def _mxfp8_quant_kernel(x_ptr, q_ptr, s_ptr, stride_x, stride_q, stride_s, BLOCK: tl.constexpr, UPCAST: tl.constexpr):
    """Grid (rows, K / BLOCK): :func:`_mxfp8` of ``x [rows, K]`` bf16 into ``q`` ``[rows, K]`` (pair-split order)
    and ``s`` ``[rows, K / 32]`` uint8."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    q, s = _mxfp8(tl.load(x_ptr + r * stride_x + c).to(tl.float32)[None, :], UPCAST)
    tl.store(q_ptr + r * stride_q + c[None, :], q)
    tl.store(s_ptr + r * stride_s + (tl.program_id(1) * (BLOCK // 32) + tl.arange(0, BLOCK // 32))[None, :], s)


@triton.jit
def _mx_dot(acc, a_ptrs, as_ptrs, w_ptrs, s_ptrs, S_FP32: tl.constexpr, UPCAST: tl.constexpr):
    """W4A8: ``acc += A @ W`` with A ``[BM, BK]`` MXFP8 (e4m3 bytes in pair-split k order at ``a_ptrs``, UE8M0
    ``[BM, BK/32]`` at ``as_ptrs``) and W the packed E2M1 ``[BK/2, BN]`` at ``w_ptrs`` with per-32 scales
    ``[BK/32, BN]``: decoded to e4m3 in the same order (:func:`_e2m1_e4m3`, ``E2M1 * 2^-6``, so its UE8M0 scale is
    s + 6), one block-scaled ``tl.dot_scaled`` (native ``mma ... kind::mxf8f6f4.block_scale`` on sm_120a). The
    interpreter dequantises to fp32 instead."""
    KH: tl.constexpr = w_ptrs.shape[0]
    BN: tl.constexpr = w_ptrs.shape[1]
    BM: tl.constexpr = a_ptrs.shape[0]
    G: tl.constexpr = KH // 16
    a = tl.load(a_ptrs).to(tl.float8e4nv, bitcast=True)
    sa = tl.load(as_ptrs)
    w = _e2m1_e4m3(tl.load(w_ptrs), UPCAST)
    s = tl.load(s_ptrs)
    s = _ue8m0(s, S_FP32)
    sw = tl.minimum(s + 6, 254)
    if UPCAST:  # interpreter: no dot_scaled there
        af = tl.reshape(a.to(tl.float32), (BM, G, 32)) * _pow2_f32(tl.maximum(sa.to(tl.int32) - 127, -126))[:, :, None]
        wf = tl.reshape(w.to(tl.float32), (G, 32, BN)) * _pow2_f32(sw - 127)[:, None, :]
        return tl.dot(tl.reshape(af, (BM, 2 * KH)), tl.reshape(wf, (2 * KH, BN)), acc)
    return tl.dot_scaled(a, sa, "e4m3", w, tl.trans(sw.to(tl.uint8)), "e4m3", acc)


@triton.jit
def _to_bf16(x, UPCAST: tl.constexpr):
    """fp32 -> bf16, round to nearest even: the GPU's cast; under the interpreter (whose cast truncates and whose
    "rtne" drops the carry into the exponent) on the bits."""
    if UPCAST:
        b = x.to(tl.int32, bitcast=True)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(tl.bfloat16)


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
    as_ptr,
    cs_ptr,
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
    stride_asm,
    stride_csm,
    limit,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATED: tl.constexpr,
    S_FP32: tl.constexpr,
    ACT_FP8: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), row blocks). Row block b holds ``sorted[b*BM : (b+1)*BM]`` (slots, or
    ``num_slots`` = padding) of expert ``block_expert[b]``; A row = ``slot // a_div``. W ``[E, rows, K/2]``
    bytes with rows ``[gate (N); up (N)]`` when GATED. C ``[slots, N]`` bf16, row = slot: GATED -> SwiGLU.
    ACT_FP8 (W4A8): A is MXFP8 (e4m3 bytes + UE8M0 ``as [rows, K/32]``, :func:`_mx_dot`) and a GATED C is
    stored MXFP8 too (e4m3 bytes, scales in ``cs [slots, N/32]``); else A is bf16 and ``as`` / ``cs`` unused."""
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
    kp = tl.arange(0, KH)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = tl.multiple_of(a_ptr + rows[:, None] * stride_am + offs_k[None, :], [16, 16])  # checked by the wrapper
    w_ptrs = w_ptr + expert * stride_we + (w_rows[None, :] * stride_wn + kp[:, None])
    w_ptrs = tl.multiple_of(w_ptrs, [16, 16])
    kg = tl.arange(0, BLOCK_K // 32)
    s_ptrs = s_ptr + expert * stride_se + (w_rows[None, :] * stride_sn + kg[:, None])
    big = False
    if not ACT_FP8:  # the W4A8 path applies scales in the MMA: any UE8M0 value
        big = _scales_big(s_ptrs, K, BLOCK_K, S_FP32)
        if GATED:
            big |= _scales_big(s_ptrs + N * stride_sn, K, BLOCK_K, S_FP32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # padding rows read row 0 (finite: its products land in rows that are never stored)
    as_ptrs = as_ptr + rows[:, None] * stride_asm + tl.arange(0, BLOCK_K // 32)[None, :]
    for _ in range(0, K, BLOCK_K):
        if ACT_FP8:
            acc = _mx_dot(acc, a_ptrs, as_ptrs, w_ptrs, s_ptrs, S_FP32, UPCAST)
            if GATED:
                acc_u = _mx_dot(acc_u, a_ptrs, as_ptrs, w_ptrs + N * stride_wn, s_ptrs + N * stride_sn, S_FP32, UPCAST)
            as_ptrs += BLOCK_K // 32
        else:
            a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
            a_ev, a_od = tl.split(tl.reshape(a, (BLOCK_M, KH, 2)))
            if UPCAST:  # the interpreter's bf16 dot is wrong
                a_ev = a_ev.to(tl.float32)
                a_od = a_od.to(tl.float32)
            acc = _fp4_dot(acc, a_ev, a_od, w_ptrs, s_ptrs, big, S_FP32, UPCAST)
            if GATED:
                acc_u = _fp4_dot(
                    acc_u, a_ev, a_od, w_ptrs + N * stride_wn, s_ptrs + N * stride_sn, big, S_FP32, UPCAST
                )
        a_ptrs += BLOCK_K
        w_ptrs += KH
        s_ptrs += BLOCK_K // 32

    row_out = tl.where(m_ok, slots, 0).to(tl.int64)
    c_ptrs = c_ptr + row_out[:, None] * stride_cm + offs_n[None, :]
    c_mask = m_ok[:, None] & n_ok[None, :]
    if GATED:
        acc = _swiglu(acc, acc_u, limit)
    if GATED and ACT_FP8:
        q, sc = _mxfp8(acc, UPCAST)
        tl.store(c_ptrs, q, mask=c_mask)
        g = pid_n * (BLOCK_N // 32) + tl.arange(0, BLOCK_N // 32)
        tl.store(cs_ptr + row_out[:, None] * stride_csm + g[None, :], sc, mask=m_ok[:, None] & (g < N // 32)[None, :])
    else:
        tl.store(c_ptrs, _to_bf16(acc, UPCAST), mask=c_mask)


_ACT_SCALE = tl.constexpr(2.0**64)  # activations are pre-multiplied by this, the scales by 2^(126 - 64): see _fp4_gemv


@triton.jit
def _pair_fma(part, w, a, Q: tl.constexpr):
    """``part += W[j] * a[j]`` for the nibbles j = Q, Q + 4 of the words ``w`` (``a`` ``[.., 2]`` = those j)."""
    if Q < 2:
        code = w << (6 - 4 * Q)
    else:
        code = w >> (4 * Q - 6)
    pair = (code & 0x01C001C0) | ((w << (12 - 4 * Q)) & 0x80008000)
    a_lo, a_hi = tl.split(a)
    lo = (pair << 16).to(tl.float32, bitcast=True)
    hi = (pair & 0xFFFF0000).to(tl.float32, bitcast=True)
    return part + lo * a_lo[None, :, :] + hi * a_hi[None, :, :]


@triton.jit
def _fp4_gemv(a_ptr, w_ptrs, s_ptrs, K, BLOCK_K: tl.constexpr, S_FP32: tl.constexpr, PREFETCH: tl.constexpr):
    """``sum_k a[k] * W[r, k]`` -> ``[R]`` fp32 over ``K`` (a multiple of BLOCK_K), CUDA cores only.

    a_ptr: the bf16 activation row; w_ptrs ``[R, 4 G]`` uint32 words of the first K block (G = BLOCK_K / 32;
    word ``4 g + i`` holds k = 32 g + 8 i + j at bits 4j..4j+3); s_ptrs ``[R, G]`` their per-32 scales.
    Decode, two nibbles (j, j + 4) per 32-bit op: sign to bit 15 / 31 and the 3-bit code to bits 6..8 / 22..24
    make the bf16 pair ``E2M1 * 2^-126`` (code 1 = 0.5 lands on the bf16 subnormal 2^-127, code 0 on +-0,
    both exact); each half is an fp32 by one shift / mask. Products with ``a * 2^64`` are exact and normal
    for ``2^-63 <= |a| < 2^64``; each 32-group sum is then scaled once by ``2^(s - 127) * 2^62``
    (``s <= 192``). PREFETCH: the next block's words are loaded before this block is decoded."""
    G: tl.constexpr = BLOCK_K // 32
    R: tl.constexpr = w_ptrs.shape[0]
    acc = tl.zeros((R, G, 1), dtype=tl.float32)
    if PREFETCH:
        w_next = tl.load(w_ptrs)
    for k0 in range(0, K, BLOCK_K):
        if PREFETCH:  # the next block's words are in flight while this one is decoded
            w = tl.reshape(w_next, (R, G, 4))
            w_next = tl.load(w_ptrs + BLOCK_K // 8, mask=k0 + BLOCK_K < K, other=0)
        else:
            w = tl.reshape(tl.load(w_ptrs), (R, G, 4))
        s = tl.reshape(tl.load(s_ptrs), (R, G, 1))
        s = _ue8m0(s, S_FP32)
        s = ((s + 62) << 23).to(tl.float32, bitcast=True)  # 2^(s - 65)
        a = tl.load(a_ptr + k0 + tl.arange(0, BLOCK_K)).to(tl.float32) * _ACT_SCALE
        a_ev, a_od = tl.split(tl.reshape(a, (G, 4, 2, 2, 2)))  # k % 8 = 4 b2 + 2 b1 + b0: split b0, b1
        a0, a2 = tl.split(a_ev)
        a1, a3 = tl.split(a_od)
        part = tl.zeros((R, G, 4), dtype=tl.float32)
        part = _pair_fma(part, w, a0, 0)
        part = _pair_fma(part, w, a1, 1)
        part = _pair_fma(part, w, a2, 2)
        part = _pair_fma(part, w, a3, 3)
        acc += tl.sum(part, 2, keep_dims=True) * s
        w_ptrs += BLOCK_K // 8
        s_ptrs += G
    return tl.sum(tl.sum(acc, 2), 1)


@triton.jit
def _moe_gemv_kernel(
    a_ptr,
    w_ptr,
    s_ptr,
    c_ptr,
    ids_ptr,
    tw_ptr,
    N,
    K,
    topk,
    num_experts,
    stride_am,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_cm,
    limit,
    scale,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATED: tl.constexpr,
    S_FP32: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    """Decode path, no routing pass (N a multiple of BLOCK_N, K of BLOCK_K; W ``[E, rows, K/2]`` bytes).

    GATED, grid (N / BLOCK_N, T * topk): one slot, ``c[slot, n] = SwiGLU(a[slot // topk] @ [gate; up]^T)``
    (bf16; W rows ``[gate (N); up (N)]``); a slot whose expert id is outside ``[0, E)`` is skipped.
    Else, grid (N / BLOCK_N, T): one token, ``c[t, n] = scale * sum_k tw[t, k] * bf16(a[t * topk + k] @ W[e_k]^T)``
    over its valid slots (the down projection with the top-k sum fused)."""
    R: tl.constexpr = 2 * BLOCK_N if GATED else BLOCK_N
    # the wrapper guarantees 16-byte rows: vectorised weight loads
    stride_wn = stride_wn // 16 * 4  # in 32-bit words
    stride_we = stride_we // 16 * 4
    n0 = tl.program_id(0) * BLOCK_N
    r = tl.arange(0, R)
    if GATED:
        rows = n0 + r % BLOCK_N + (r // BLOCK_N) * N
    else:
        rows = n0 + r
    w_off = rows[:, None] * stride_wn + tl.arange(0, BLOCK_K // 8)[None, :]
    s_off = rows[:, None] * stride_sn + tl.arange(0, BLOCK_K // 32)[None, :]
    w32 = w_ptr.to(tl.pointer_type(tl.uint32))
    offs_n = n0 + tl.arange(0, BLOCK_N)
    if GATED:
        slot = tl.program_id(1)
        expert = tl.load(ids_ptr + slot).to(tl.int64)
        if (expert < 0) | (expert >= num_experts):
            return
        acc = _fp4_gemv(
            a_ptr + (slot // topk).to(tl.int64) * stride_am,
            w32 + expert * stride_we + w_off,
            s_ptr + expert * stride_se + s_off,
            K,
            BLOCK_K,
            S_FP32,
            PREFETCH,
        )
        g, u = tl.split(tl.trans(tl.reshape(acc, (2, BLOCK_N))))
        tl.store(c_ptr + slot.to(tl.int64) * stride_cm + offs_n, _swiglu(g, u, limit).to(c_ptr.dtype.element_ty))
    else:
        t = tl.program_id(1).to(tl.int64)
        out = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k in range(topk):
            slot = t * topk + k
            expert = tl.load(ids_ptr + slot).to(tl.int64)
            if (expert >= 0) & (expert < num_experts):
                y = _fp4_gemv(
                    a_ptr + slot * stride_am,
                    w32 + expert * stride_we + w_off,
                    s_ptr + expert * stride_se + s_off,
                    K,
                    BLOCK_K,
                    S_FP32,
                    PREFETCH,
                )
                out += tl.load(tw_ptr + slot) * y.to(tl.bfloat16).to(tl.float32)
        tl.store(c_ptr + t * stride_cm + offs_n, (out * scale).to(c_ptr.dtype.element_ty))


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
def _moe_sum_kernel(y_ptr, tw_ptr, ids_ptr, out_ptr, H, topk, num_experts, stride_out, scale, BLOCK: tl.constexpr):
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


def _gemm_signature(s: str, gated: bool, act_fp8: bool) -> dict[str, str]:
    sig = {
        "a_ptr": "*u8" if act_fp8 else "*bf16",
        "w_ptr": "*u8",
        "s_ptr": s,
        "c_ptr": "*u8" if act_fp8 and gated else "*bf16",
        "as_ptr": "*u8",
        "cs_ptr": "*u8",
        "sorted_ptr": "*i32",
        "block_expert_ptr": "*i32",
        "total_ptr": "*i32",
    }
    for name in (
        "N",
        "K",
        "num_slots",
        "a_div",
        "stride_am",
        "stride_we",
        "stride_wn",
        "stride_se",
        "stride_sn",
        "stride_cm",
        "stride_asm",
        "stride_csm",
    ):
        sig[name] = _INT
    sig["limit"] = "fp32"
    return sig


def _gemm_config(tile: tuple[int, int, int, int, int], gated: bool, s_fp32: bool, act_fp8: bool = False) -> AotConfig:
    bm, bn, bk, nw, ns = tile
    consts = {
        "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GATED": gated, "S_FP32": s_fp32, "ACT_FP8": act_fp8,
        "UPCAST": False,
    }  # fmt: skip
    return AotConfig(consts, num_warps=nw, num_stages=ns)


for _s, _sf in (("*fp32", True), ("*u8", False)):
    for _name, _gated in (("gemm1", True), ("gemm2", False)):
        for _act, _fp8 in (("", False), ("_w4a8", True)):
            register_aot(
                f"moe_mxfp4.{_name}{_act}[s={_s[1:]}]",
                _moe_gemm_kernel,
                signature=_gemm_signature(_s, _gated, _fp8),
                configs=[_gemm_config(t, _gated, _sf, _fp8) for t in (_ROUTED_TILES_W4A8 if _fp8 else _ROUTED_TILES)],
            )
register_aot(
    "moe_mxfp4.mxfp8_quant",
    _mxfp8_quant_kernel,
    signature={"x_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*u8", "stride_x": _INT, "stride_q": _INT, "stride_s": _INT},
    configs=[AotConfig({"BLOCK": b, "UPCAST": False}, num_warps=4, num_stages=1) for b in _QUANT_BLOCKS],
)


def _gemv_signature(s: str, ids: str) -> dict[str, str]:
    sig = {"a_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": s, "c_ptr": "*bf16", "ids_ptr": ids, "tw_ptr": "*fp32"}
    for name in (
        "N",
        "K",
        "topk",
        "num_experts",
        "stride_am",
        "stride_we",
        "stride_wn",
        "stride_se",
        "stride_sn",
        "stride_cm",
    ):
        sig[name] = _INT
    return {**sig, "limit": "fp32", "scale": "fp32"}


def _gemv_aot_configs(s_fp32: bool) -> list[AotConfig]:
    """The GEMV builds :func:`_gemv_plan` picks for DSV4-Flash (E 256, top-6, H 4096, I 2048 / TP 1-8) at
    1..GEMV_MAX_TOKENS tokens on 48-188 SMs (GB10, H100, RTX 5090, RTX PRO 6000)."""
    builds = set()
    for sms in (48, 132, 170, 188):
        for inter in (2048, 1024, 512, 256):
            for t in range(1, GEMV_MAX_TOKENS + 1):
                tile, up, down = _gemv_plan(t, 6, 4096, inter, sms)
                builds.update({(True, *up, tile), (False, *down, tile)})
    return [
        AotConfig(
            {"BLOCK_N": bn, "BLOCK_K": bk, "GATED": gated, "S_FP32": s_fp32, "PREFETCH": tile.prefetch},
            num_warps=tile.num_warps,
            num_stages=1,
        )
        for gated, bn, bk, tile in sorted(builds)
    ]


for _s, _sf in (("*fp32", True), ("*u8", False)):
    _configs = _gemv_aot_configs(_sf)
    for _ids in ("*i32", "*i64"):
        register_aot(
            f"moe_mxfp4.gemv[s={_s[1:]},ids={_ids[1:]}]",
            _moe_gemv_kernel,
            signature=_gemv_signature(_s, _ids),
            configs=_configs,
        )
for _ids in ("i32", "i64"):
    register_aot(
        f"moe_mxfp4.count[ids={_ids}]",
        _moe_count_kernel,
        signature={
            "ids_ptr": f"*{_ids}",
            "counts_ptr": "*i32",
            "rank_ptr": "*i32",
            "num_slots": _INT,
            "num_experts": _INT,
        },
        configs=[AotConfig({"BLOCK": _SLOT_BLOCK}, num_warps=4, num_stages=1)],
    )
    register_aot(
        f"moe_mxfp4.scatter[ids={_ids}]",
        _moe_scatter_kernel,
        signature={
            "ids_ptr": f"*{_ids}",
            "rank_ptr": "*i32",
            "offsets_ptr": "*i32",
            "sorted_ptr": "*i32",
            "num_slots": _INT,
            "num_experts": _INT,
        },
        configs=[AotConfig({"BLOCK": _SLOT_BLOCK}, num_warps=4, num_stages=1)],
    )
    register_aot(
        f"moe_mxfp4.sum[ids={_ids}]",
        _moe_sum_kernel,
        signature={
            "y_ptr": "*bf16",
            "tw_ptr": "*fp32",
            "ids_ptr": f"*{_ids}",
            "out_ptr": "*bf16",
            "H": _INT,
            "topk": _INT,
            "num_experts": _INT,
            "stride_out": _INT,
            "scale": "fp32",
        },
        configs=[AotConfig({"BLOCK": _SUM_BLOCK}, num_warps=4, num_stages=1)],
    )
    register_aot(
        f"moe_mxfp4.hash_topk[ids={_ids}]",
        _hash_topk_kernel,
        signature={
            "logits_ptr": "*fp32",
            "ids_ptr": f"*{_ids}",
            "tid2eid_ptr": "*i32",
            "tw_ptr": "*fp32",
            "tids_ptr": "*i32",
            "T": _INT,
            "topk": _INT,
            "n_shared": _INT,
            "num_experts": _INT,
            "stride_l": _INT,
            "stride_map": _INT,
            "shared_weight": "fp32",
        },
        configs=[AotConfig({"BLOCK_T": 32, "K_POW2": 8}, num_warps=4, num_stages=1)],
    )
register_aot(
    "moe_mxfp4.offsets",
    _moe_offsets_kernel,
    signature={
        "counts_ptr": "*i32",
        "offsets_ptr": "*i32",
        "block_expert_ptr": "*i32",
        "sorted_ptr": "*i32",
        "total_ptr": "*i32",
        "num_experts": _INT,
        "num_slots": _INT,
        "max_blocks": _INT,
    },
    configs=[
        AotConfig({"BLOCK_M": bm, "E_MAX": MAX_EXPERTS, "CHUNK": _OFF_CHUNK}, num_warps=4, num_stages=1)
        for bm in _BLOCK_MS
    ],
)

# ------------------------------------------------------------------ host side -----------------------------------


def _max_blocks(num_slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound on routed row blocks: each non-empty expert pads to a block multiple and owns >= 1 slot."""
    return min(num_slots, triton.cdiv(num_slots, block_m) + min(num_experts, num_slots))


class MoeWorkspace(NamedTuple):
    """Scratch of :func:`fused_moe_mxfp4` for up to ``max_tokens`` tokens (see :func:`moe_mxfp4_workspace`).
    ``counts`` must be all zero before the first call (each call leaves it zero)."""

    counts: torch.Tensor  # [E] int32
    offsets: torch.Tensor  # [E] int32
    rank: torch.Tensor  # [T*topk] int32
    sorted_ids: torch.Tensor  # [max over the routed tiles of max_blocks * BLOCK_M] int32
    block_expert: torch.Tensor  # [max_blocks] int32
    total: torch.Tensor  # [1] int32
    inter: torch.Tensor  # [T*topk, I] bf16 (SwiGLU output)
    y: torch.Tensor  # [T*topk, H] bf16 (per-slot expert outputs, routed path)
    max_tokens: int


def moe_mxfp4_workspace(
    max_tokens: int, topk: int, num_experts: int, hidden: int, inter: int, device: torch.device | str
) -> MoeWorkspace:
    """Allocate (zeroed where needed) scratch for :func:`fused_moe_mxfp4` calls with ``<= max_tokens`` tokens."""
    slots = max_tokens * topk
    blocks = max(_max_blocks(slots, num_experts, bm) for bm in _BLOCK_MS)
    rows = max(_max_blocks(slots, num_experts, bm) * bm for bm in _BLOCK_MS)

    def i32(n: int) -> torch.Tensor:
        return torch.zeros(max(n, 1), dtype=torch.int32, device=device)

    return MoeWorkspace(
        counts=i32(num_experts), offsets=i32(num_experts), rank=i32(slots), sorted_ids=i32(rows),
        block_expert=i32(blocks), total=i32(1),
        inter=torch.empty(slots, inter, dtype=torch.bfloat16, device=device),
        y=torch.empty(slots, hidden, dtype=torch.bfloat16, device=device), max_tokens=max_tokens,
    )  # fmt: skip


def _mx_buffers(ws: MoeWorkspace, t: int, h: int, slots: int, inter: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    """W4A8 scratch as byte views of the bf16 buffers it replaces: ``(xq [T, H], xs [T, H/32])`` inside ``y``
    (written only by GEMM2, after GEMM1 has read x), ``(hq [slots, I], hs [slots, I/32])`` inside ``inter``."""

    def split(buf: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = buf.view(-1).view(torch.uint8), rows * cols
        return b[:n].view(rows, cols), b[n : n + n // 32].view(rows, cols // 32)

    return split(ws.y, t, h), split(ws.inter, slots, inter)


def _packed(name: str, w: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if w.dtype not in (torch.int8, torch.uint8) or tuple(w.shape) != shape:
        raise ValueError(f"{name}: expected {list(shape)} int8/uint8 (packed E2M1), got {list(w.shape)} {w.dtype}")
    if w.stride(2) != 1 or w.stride(1) % 16 or w.stride(0) % 16 or w.data_ptr() % 16:
        raise ValueError(f"{name}: the packed K dimension must be contiguous with 16-byte aligned rows")
    return w.view(torch.uint8)


def _scales(name: str, s: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    if s.dtype not in (torch.float32, *_E8M0) or tuple(s.shape) != shape or s.stride(2) != 1:
        raise ValueError(
            f"{name}: expected {list(shape)} float32 (powers of two) or UE8M0 bytes with the last "
            f"dim contiguous, got {list(s.shape)} {s.dtype}"
        )
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
    act: str | None = None,
) -> torch.Tensor:
    """Routed MXFP4 experts, ``fused_marlin_moe`` semantics on unrepacked weights.

    hidden_states ``[T, H]`` bf16 (row stride a multiple of 16); w13 ``[E, 2I, H/2]`` and w2 ``[E, H, I/2]`` int8/uint8;
    w13_scale ``[E, 2I, H/32]`` and w2_scale ``[E, H, I/32]`` fp32 powers of two or UE8M0 bytes; topk_weights
    ``[T, k]`` fp32 and topk_ids ``[T, k]`` int32/int64 (contiguous; ids outside ``[0, E)`` contribute nothing).
    ``swiglu_limit`` (SGLang ``clamp_limit``): ``silu(min(g, L)) * clamp(u, -L, L)``; None = plain SwiGLU.
    ``routed_scaling_factor``: None = not applied (Marlin MXFP4 convention). H and I must be multiples of 128.
    Pass ``out`` ``[T, H]`` bf16 and ``workspace`` (:func:`moe_mxfp4_workspace`) for CUDA-graph capture.
    Up to :func:`gemv_max_tokens` tokens: the GEMV path; above: the routed ``tl.dot`` path. Returns ``out``.
    ``act`` (default: :func:`moe_act`): the routed path's activations, ``"bf16"`` (W4A16) or ``"mxfp8"`` (W4A8:
    x and the SwiGLU output quantised to MXFP8, block-scaled FP8 MMA on SM12x); the GEMV path is always W4A16.
    """
    act = moe_act(act)
    x = hidden_states
    if x.dim() != 2 or x.dtype != torch.bfloat16 or x.stride(1) != 1 or x.stride(0) % 16 or x.data_ptr() % 16:
        raise ValueError(
            f"hidden_states: expected [T, H] bfloat16, rows contiguous with a row stride that is a "
            f"multiple of 16 and a 16-byte aligned pointer, got {list(x.shape)} {x.dtype}"
        )
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
        raise ValueError(
            f"topk_ids: expected contiguous [{t}, k] int32/int64, got {list(topk_ids.shape)} {topk_ids.dtype}"
        )
    topk = topk_ids.shape[1]
    if (
        tuple(topk_weights.shape) != (t, topk)
        or topk_weights.dtype != torch.float32
        or not topk_weights.is_contiguous()
    ):
        raise ValueError(
            f"topk_weights: expected contiguous [{t}, {topk}] float32, got "
            f"{list(topk_weights.shape)} {topk_weights.dtype}"
        )
    if out is None:
        out = torch.empty(t, h, dtype=torch.bfloat16, device=x.device)
    elif tuple(out.shape) != (t, h) or out.dtype != torch.bfloat16 or out.stride(1) != 1:
        raise ValueError(f"out: expected [{t}, {h}] bfloat16 with contiguous rows, got {list(out.shape)} {out.dtype}")
    if workspace is None:
        workspace = moe_mxfp4_workspace(t, topk, e, h, inter, x.device)
    elif (
        workspace.max_tokens < t
        or workspace.counts.numel() < e
        or workspace.inter.shape[1] != inter
        or workspace.y.shape[1] != h
        or workspace.rank.numel() < t * topk
    ):
        raise ValueError(
            f"workspace: built for fewer tokens/experts or other sizes than T={t}, topk={topk}, E={e}, H={h}, I={inter}"
        )
    if t == 0:
        return out
    ws = workspace
    slots = t * topk
    limit = float("inf") if swiglu_limit is None else float(swiglu_limit)
    scale = 1.0 if routed_scaling_factor is None else float(routed_scaling_factor)
    experts = _Experts(w13b, s13, s13_fp32, w2b, s2, s2_fp32)
    if t <= gemv_max_tokens(inter):
        _gemv(x, experts, topk_weights, topk_ids, out, ws.inter[:slots], limit, scale)
    else:
        _routed(x, experts, topk_weights, topk_ids, out, ws, limit, scale, act == "mxfp8")
    return out


MOE_ACTS = ("bf16", "mxfp8")
MOE_ACT_ENV = "SGLANG_SM120_MOE_ACT"


def moe_act(act: str | None = None) -> str:
    """The routed path's activation format: ``act``, else ``$SGLANG_SM120_MOE_ACT``, else ``"bf16"``. W4A8
    (``"mxfp8"``) is opt-in until its block-scaled MMA path has been run on a GPU (its numerics are checked
    against ``fused_moe_mxfp4_ref(act="mxfp8")``)."""
    value = os.environ.get(MOE_ACT_ENV, "bf16") if act is None else act
    if value not in MOE_ACTS:
        source = "act" if act is not None else MOE_ACT_ENV
        raise ValueError(f"{source}: expected one of {MOE_ACTS}, got {value!r}")
    return value


class _Experts(NamedTuple):
    """Validated expert weights: packed E2M1 as uint8, scales as fp32 or UE8M0 uint8 (``*_fp32`` says which)."""

    w13: torch.Tensor
    s13: torch.Tensor
    s13_fp32: bool
    w2: torch.Tensor
    s2: torch.Tensor
    s2_fp32: bool


def _gemv(
    x: torch.Tensor,
    ex: _Experts,
    tw: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor,
    inter_out: torch.Tensor,
    limit: float,
    scale: float,
) -> None:
    """Decode: gate/up + SwiGLU into ``inter_out`` ``[slots, I]``, then the down projection + top-k sum."""
    t, h = x.shape
    w13, s13, s13_fp32, w2, s2, s2_fp32 = ex
    e, inter, topk = w13.shape[0], w13.shape[1] // 2, ids.shape[1]
    tile, (bn1, bk1), (bn2, bk2) = _gemv_plan(t, topk, h, inter, num_sms(x.device))
    opts = {"PREFETCH": tile.prefetch, "num_warps": tile.num_warps, "num_stages": 1}
    c = _moe_gemv_kernel[(inter // bn1, t * topk)](
        x, w13, s13, inter_out, ids, tw, inter, h, topk, e, x.stride(0), w13.stride(0), w13.stride(1),
        s13.stride(0), s13.stride(1), inter_out.stride(0), limit, 1.0,
        BLOCK_N=bn1, BLOCK_K=bk1, GATED=True, S_FP32=s13_fp32, **opts,
    )  # fmt: skip
    guard_compiled("moe_mxfp4.gemv1", c)
    c = _moe_gemv_kernel[(h // bn2, t)](
        inter_out, w2, s2, out, ids, tw, h, inter, topk, e, inter_out.stride(0), w2.stride(0), w2.stride(1),
        s2.stride(0), s2.stride(1), out.stride(0), limit, scale,
        BLOCK_N=bn2, BLOCK_K=bk2, GATED=False, S_FP32=s2_fp32, **opts,
    )  # fmt: skip
    guard_compiled("moe_mxfp4.gemv2", c)


def _routed(
    x: torch.Tensor,
    ex: _Experts,
    tw: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor,
    ws: MoeWorkspace,
    limit: float,
    scale: float,
    act_fp8: bool,
) -> None:
    """Prefill: route slots into per-expert ``BLOCK_M`` row blocks, grouped GEMM1 + SwiGLU, GEMM2, top-k sum.
    ``act_fp8``: x is first quantised to MXFP8 and GEMM1 stores MXFP8 (the byte views of :func:`_mx_buffers`)."""
    t, h = x.shape
    w13, s13, s13_fp32, w2, s2, s2_fp32 = ex
    e, inter, topk = w13.shape[0], w13.shape[1] // 2, ids.shape[1]
    slots = t * topk
    bm, bn, bk, nw, ns = _routed_tile(slots, e, act_fp8)
    max_blocks = _max_blocks(slots, e, bm)
    grid = (triton.cdiv(slots, _SLOT_BLOCK),)
    c = _moe_count_kernel[grid](ids, ws.counts, ws.rank, slots, e, BLOCK=_SLOT_BLOCK, num_warps=4)
    guard_compiled("moe_mxfp4.count", c)
    c = _moe_offsets_kernel[(1,)](
        ws.counts, ws.offsets, ws.block_expert, ws.sorted_ids, ws.total, e, slots, max_blocks,
        BLOCK_M=bm, E_MAX=MAX_EXPERTS, CHUNK=_OFF_CHUNK, num_warps=4,
    )  # fmt: skip
    guard_compiled("moe_mxfp4.offsets", c)
    c = _moe_scatter_kernel[grid](ids, ws.rank, ws.offsets, ws.sorted_ids, slots, e, BLOCK=_SLOT_BLOCK, num_warps=4)
    guard_compiled("moe_mxfp4.scatter", c)

    route = (ws.sorted_ids, ws.block_expert, ws.total)
    y = ws.y[:slots]
    if act_fp8:
        (xq, xs), (hq, hs) = _mx_buffers(ws, t, h, slots, inter)
        qb = next(b for b in _QUANT_BLOCKS if h % b == 0)
        c = _mxfp8_quant_kernel[(t, h // qb)](
            x, xq, xs, x.stride(0), xq.stride(0), xs.stride(0), BLOCK=qb, UPCAST=_INTERPRET, num_warps=4, num_stages=1
        )
        guard_compiled("moe_mxfp4.mxfp8_quant", c)
        steps = (("gemm1_w4a8", xq, xs, w13, s13, s13_fp32, hq, hs, inter, h, topk, True),
                 ("gemm2_w4a8", hq, hs, w2, s2, s2_fp32, y, hs, h, inter, 1, False))  # fmt: skip
    else:
        h_out = ws.inter[:slots]
        steps = (("gemm1", x, w13, w13, s13, s13_fp32, h_out, w13, inter, h, topk, True),
                 ("gemm2", h_out, w2, w2, s2, s2_fp32, y, w2, h, inter, 1, False))  # fmt: skip
    for name, a, a_s, w, s, s_fp32, c_out, c_s, n, k, a_div, gated in steps:
        # bf16: a_s / c_s are unused stand-ins (uint8 tensors, as in the AOT signature)
        c = _moe_gemm_kernel[(triton.cdiv(n, bn), max_blocks)](
            a, w, s, c_out, a_s, c_s, *route, n, k, slots, a_div, a.stride(0), w.stride(0), w.stride(1),
            s.stride(0), s.stride(1), c_out.stride(0), a_s.stride(0), c_s.stride(0), limit,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GATED=gated, S_FP32=s_fp32, ACT_FP8=act_fp8, UPCAST=_INTERPRET,
            num_warps=nw, num_stages=ns,
        )  # fmt: skip
        guard_compiled(f"moe_mxfp4.{name}", c)
    c = _moe_sum_kernel[(t, triton.cdiv(h, _SUM_BLOCK))](
        y, tw, ids, out, h, topk, e, out.stride(0), scale, BLOCK=_SUM_BLOCK, num_warps=4
    )
    guard_compiled("moe_mxfp4.sum", c)


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
        raise ValueError(
            f"router_logits: expected [T, E] float32 (last dim contiguous), got "
            f"{list(router_logits.shape)} {router_logits.dtype}"
        )
    t, e = router_logits.shape
    if input_ids.dim() != 1 or input_ids.shape[0] != t or input_ids.dtype not in _IDS or input_ids.stride(0) != 1:
        raise ValueError(
            f"input_ids: expected contiguous [{t}] int32/int64, got {list(input_ids.shape)} {input_ids.dtype}"
        )
    if tid2eid.dim() != 2 or tid2eid.dtype != torch.int32 or tid2eid.stride(1) != 1:
        raise ValueError(
            f"tid2eid: expected [vocab, k] int32 (last dim contiguous), got {list(tid2eid.shape)} {tid2eid.dtype}"
        )
    topk = tid2eid.shape[1]
    width = topk + num_fused_shared_experts
    if topk < 1 or width > 8:
        raise ValueError(
            f"tid2eid/num_fused_shared_experts: need 1 <= k and k + shared <= 8, got {topk} + "
            f"{num_fused_shared_experts}"
        )
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
