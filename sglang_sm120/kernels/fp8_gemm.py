"""FP8 (e4m3) block-scaled dense GEMM and ``fp8_einsum`` for SM12x (Triton, ``mma.sync``).

Replaces SGLang's ``triton_w8a8_block_fp8_linear`` / ``w8a8_block_fp8_matmul_triton`` and DeepGEMM
``fp8_einsum("bhr,hdr->bhd", recipe=(1, 1, 128))`` (DeepSeek-V4 ``wo_a``).
``C[b, m, n] = sum_kb dot(A8[b, m, kb], W8[b, n, kb]) * sa[b, m, kb] * sw[b, n // bn, kb]`` in fp32, where
``kb`` runs over K blocks of ``bk`` (the weight block's K size, 128 for V4 and 32 for V4.1), activations are
quantised per token per ``bk`` group (SGLang's ``per_token_group_quant_fp8``) and weight scales are fp32 or
UE8M0 bytes.

One kernel; a :class:`GemmConfig` per M regime (``decode`` M <= 16, ``mid`` M <= 64, ``prefill``) in
:data:`CONFIGS` picks the tile, the K loop tile (the scale block or half of it), split-K (fp32 partials summed by
a second kernel) and whether bf16 activations are quantised in registers inside the GEMM (decode: a linear is
one or two launches) or by a separate kernel first. No swap-AB is needed: ``mma.sync`` tiles are 16 rows tall,
so BLOCK_M = 16 already wastes nothing on the weight side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.platform import guard_compiled, num_sms

FP8_MAX = 448.0
MAX_SPLITS = 64  # split-K never exceeds this: a workspace of MAX_SPLITS * batch * M * N fp32 always suffices
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_E8M0 = (torch.uint8, getattr(torch, "float8_e8m0fnu", torch.uint8))
_QUANT_GROUPS = 16  # activation-quant kernel: K groups per program
_REDUCE_BLOCK, _REDUCE_CHUNK = 512, 8  # split-K reduce: columns per program, partials loaded per step


@dataclass(frozen=True)
class GemmConfig:
    """One launch configuration of the GEMM kernel.

    ``waves``: split K until ``waves * SMs`` programs run (at most :data:`MAX_SPLITS` splits; fp32 partials +
    a reduce launch). ``block_k``: K loop tile, the scale block (0) or half of it (scales are then re-read per
    half tile). ``fuse_quant``: bf16 activations are quantised in registers inside the GEMM (needs ``block_k``
    = the scale block); else :func:`per_token_group_quant_fp8` runs first.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    waves: int
    block_k: int = 0
    fuse_quant: bool = False


_DECODE_MAX_M, _MID_MAX_M = 16, 64
# scale block -> regime -> config. 128 (V4): the fastest of an H100 sweep (mma.sync, CUDA-graph replays) on the
# DSV4 wq_a / wq_b / wo_a / wo_b shapes. Decode: 16x32 tiles, fused quant (7-13 us at M 1 and 16). Mid: fused
# quant took 1.35-1.85x the time of a separate quant launch plus 64x64 tiles. Prefill: 128x64 with 64-wide K
# tiles on 4 warps took 11-23 % less time than 128x64 on 8 warps and 128x128 at M = 4096 (BLOCK_K 128 spilled
# at 128x64 on 4 warps then; since the weight scale is folded into the row scale it fits in 255 registers, not
# timed yet: scripts/tune_fp8_gemm.py). 32 (V4.1): not swept.
CONFIGS: dict[int, dict[str, GemmConfig]] = {
    128: {
        "decode": GemmConfig(16, 32, 4, 4, waves=2, fuse_quant=True),
        "mid": GemmConfig(64, 64, 4, 4, waves=1),
        "prefill": GemmConfig(128, 64, 4, 4, waves=1, block_k=64),
    },
    32: {
        "decode": GemmConfig(16, 64, 4, 8, waves=2, fuse_quant=True),
        "mid": GemmConfig(64, 128, 4, 4, waves=1),
        "prefill": GemmConfig(128, 128, 8, 4, waves=1),
    },
}


def config_for(m: int, scale_k: int) -> GemmConfig:
    """The :data:`CONFIGS` entry serving ``m`` rows with ``scale_k``-wide scale blocks."""
    regime = "decode" if m <= _DECODE_MAX_M else ("mid" if m <= _MID_MAX_M else "prefill")
    return CONFIGS[scale_k][regime]


@triton.jit
def _to_e4m3(x, EXACT_ROUND: tl.constexpr):
    """fp32 (|x| <= 448) -> e4m3, round to nearest even. EXACT_ROUND first rounds onto the e4m3 grid in fp32
    (the Triton interpreter's own cast is not RNE); the GPU's cvt already is."""
    if EXACT_ROUND:
        bits = x.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
        subnormal = ((x * 512.0 + 12582912.0) - 12582912.0) * (1.0 / 512.0)  # grid 2^-9 below 2^-6
        x = tl.where(tl.abs(x) < 0.015625, subnormal, normal)
    return x.to(tl.float8e4nv)


@triton.jit
def _fp8_gemm_kernel(
    a_ptr,
    as_ptr,
    b_ptr,
    bs_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_ab,
    stride_am,
    stride_sab,
    stride_sam,
    stride_sak,
    stride_bb,
    stride_bn,
    stride_sbb,
    stride_sbn,
    stride_sbk,
    stride_cs,
    stride_cb,
    stride_cm,
    kt_per_split,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SCALE_K: tl.constexpr,
    QUANT_A: tl.constexpr,
    B_E8M0: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Grid (m_tiles * n_tiles, splits, batch). A ``[b, M, K]`` e4m3 bytes (or bf16 when QUANT_A), B
    ``[b, N, K]`` e4m3 bytes, K contiguous; scales per ``SCALE_K`` x ``SCALE_K`` weight block and per
    ``SCALE_K`` activation group; BLOCK_K (the K loop tile) divides SCALE_K (equals it when QUANT_A). Split s
    covers K tiles ``[s * kt_per_split, (s + 1) * kt_per_split)`` and writes ``c + s * stride_cs`` (fp32
    partials or the final output, whatever c's element type is)."""
    GROUP_M: tl.constexpr = 8
    TILES_PER_SCALE: tl.constexpr = SCALE_K // BLOCK_K
    # a tile no wider than a weight-scale block lies in one (both powers of two): one weight scale per K block,
    # folded into the per-row activation scale, so each K block costs one FFMA per accumulator element
    SB_SCALAR: tl.constexpr = BLOCK_N <= SCALE_K
    # the wrappers guarantee these (16-byte rows): vectorised, pipelined loads even when the JIT cannot see it
    K = K // 16 * 16
    stride_ab = stride_ab // 16 * 16
    stride_am = stride_am // 16 * 16
    stride_bb = stride_bb // 16 * 16
    stride_bn = stride_bn // 16 * 16
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % rows_in_group
    pid_n = (pid % (GROUP_M * grid_n)) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    kt0 = pid_s * kt_per_split
    kt1 = tl.minimum(kt0 + kt_per_split, tl.cdiv(K, BLOCK_K))
    offs_k = kt0 * BLOCK_K + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + pid_b * stride_ab + (offs_m[:, None] * stride_am + offs_k[None, :])
    b_ptrs = b_ptr + pid_b * stride_bb + (offs_n[None, :] * stride_bn + offs_k[:, None])
    a_ptrs = tl.multiple_of(a_ptrs, [16, 16])  # base pointers are 16-byte aligned (checked by the wrappers)
    b_ptrs = tl.multiple_of(b_ptrs, [16, 16])
    sa_row = as_ptr + pid_b * stride_sab + offs_m * stride_sam
    if SB_SCALAR:
        sb_row = bs_ptr + pid_b * stride_sbb + (pid_n * BLOCK_N // SCALE_K) * stride_sbn
    else:
        sb_row = bs_ptr + pid_b * stride_sbb + (offs_n // SCALE_K) * stride_sbn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(kt0, kt1):
        k_ok = offs_k < K
        ks = kt // TILES_PER_SCALE
        if QUANT_A:
            # SGLang per_token_group_quant_fp8: s = max(amax, 1e-10) / 448, q = clamp(x * (1/s))
            x = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            sa = tl.maximum(tl.max(tl.abs(x), 1), 1e-10) / 448.0
            a = _to_e4m3(tl.clamp(x * (1.0 / sa)[:, None], -448.0, 448.0), UPCAST)
        else:
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            if a.dtype == tl.uint8:  # the interpreter gets fp8 tensors as bytes
                a = a.to(tl.float8e4nv, bitcast=True)
            sa = tl.load(sa_row + ks * stride_sak, mask=m_ok, other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if b.dtype == tl.uint8:
            b = b.to(tl.float8e4nv, bitcast=True)
        if SB_SCALAR:
            sb = tl.load(sb_row + ks * stride_sbk)
        else:
            sb = tl.load(sb_row + ks * stride_sbk, mask=n_ok, other=0)
        if B_E8M0:
            sb = (sb.to(tl.int32) << 23).to(tl.float32, bitcast=True)
        if UPCAST:  # the interpreter has no fp8 dot
            part = tl.dot(a.to(tl.float32), b.to(tl.float32))
        else:
            part = tl.dot(a, b)
        if SB_SCALAR:
            acc += part * (sa * sb)[:, None]
        else:
            acc += part * sa[:, None] * sb[None, :]
        offs_k += BLOCK_K
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    c_ptrs = c_ptr + pid_s.to(tl.int64) * stride_cs + pid_b * stride_cb
    c_ptrs += offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _splitk_reduce_kernel(
    p_ptr, c_ptr, M, N, splits, stride_ps, stride_cb, stride_cm, BLOCK: tl.constexpr, CHUNK: tl.constexpr
):
    """Grid (batch * M, cdiv(N, BLOCK)): ``c[b, m, :] = sum_s p[s, b, m, :]`` (p contiguous fp32), CHUNK
    partials loaded at once (independent loads in flight; fixed summation order)."""
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    src = p_ptr + row.to(tl.int64) * N + offs
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s0 in range(0, splits, CHUNK):
        s = s0 + tl.arange(0, CHUNK)
        p = tl.load(src[None, :] + s.to(tl.int64)[:, None] * stride_ps, mask=(s < splits)[:, None] & ok[None, :])
        acc += tl.sum(p, 0)
    b = row // M
    dst = c_ptr + b.to(tl.int64) * stride_cb + (row % M).to(tl.int64) * stride_cm + offs
    tl.store(dst, acc.to(c_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _act_quant_kernel(
    x_ptr, q_ptr, s_ptr, K, stride_x, GROUP: tl.constexpr, GROUPS: tl.constexpr, EXACT_ROUND: tl.constexpr
):
    """Grid (M, cdiv(K, GROUP * GROUPS)): per-token-group e4m3 quant of bf16 ``x [M, K]`` into
    contiguous ``q [M, K]`` (bytes) and ``s [M, cdiv(K, GROUP)]`` fp32 (SGLang's formula)."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    k = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    ok = k < K
    x = tl.load(x_ptr + row * stride_x + k, mask=ok, other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(x), 1), 1e-10) / 448.0
    q = _to_e4m3(tl.clamp(x * (1.0 / s)[:, None], -448.0, 448.0), EXACT_ROUND)
    tl.store(q_ptr + row * K + k, q.to(tl.uint8, bitcast=True), mask=ok)
    tl.store(s_ptr + row * tl.cdiv(K, GROUP) + g, s, mask=g < tl.cdiv(K, GROUP))


def _gemm_signature(a: str, bs: str, c: str) -> dict[str, str]:
    # with in-kernel activation quantisation as_ptr is unused and receives A itself
    sig = {"a_ptr": a, "as_ptr": "*fp32" if a == "*fp8e4nv" else a, "b_ptr": "*fp8e4nv", "bs_ptr": bs, "c_ptr": c}
    for name in ("M", "N", "K"):
        sig[name] = "i32"
    for name in ("stride_ab", "stride_am", "stride_sab", "stride_sam", "stride_sak", "stride_bb", "stride_bn",
                 "stride_sbb", "stride_sbn", "stride_sbk", "stride_cs", "stride_cb", "stride_cm"):
        sig[name] = "i32"  # what the runtime JIT passes for ints < 2^31
    sig["kt_per_split"] = "i32"
    return sig


def _aot_config(cfg: GemmConfig, scale_k: int, quant_a: bool, e8m0: bool) -> AotConfig:
    consts = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k or scale_k, "SCALE_K": scale_k,
              "QUANT_A": quant_a, "B_E8M0": e8m0, "UPCAST": False}
    return AotConfig(consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# Every config with fp8 activations (einsum, matmul, separately quantised linear); the fuse_quant ones also with
# bf16 activations. C: fp32 (split-K partials, fp32 output) or bf16; weight scales fp32 or UE8M0.
for _a, _qa in (("*fp8e4nv", False), ("*bf16", True)):
    for _c in ("*fp32", "*bf16"):
        for _bs, _e8 in (("*fp32", False), ("*u8", True)):
            register_aot(
                f"fp8_gemm.gemm[a={_a[1:]},c={_c[1:]},s={_bs[1:]}]",
                _fp8_gemm_kernel,
                signature=_gemm_signature(_a, _bs, _c),
                configs=[
                    _aot_config(cfg, sk, _qa, _e8)
                    for sk, regimes in CONFIGS.items()
                    for cfg in regimes.values()
                    if cfg.fuse_quant or not _qa
                ],
            )
register_aot(
    "fp8_gemm.splitk_reduce",
    _splitk_reduce_kernel,
    signature={"p_ptr": "*fp32", "c_ptr": "*bf16", "M": "i32", "N": "i32", "splits": "i32", "stride_ps": "i32",
               "stride_cb": "i32", "stride_cm": "i32"},
    configs=[AotConfig({"BLOCK": _REDUCE_BLOCK, "CHUNK": _REDUCE_CHUNK}, num_warps=4, num_stages=1)],
)
register_aot(
    "fp8_gemm.act_quant",
    _act_quant_kernel,
    signature={"x_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*fp32", "K": "i32", "stride_x": "i32"},
    configs=[
        AotConfig({"GROUP": g, "GROUPS": _QUANT_GROUPS, "EXACT_ROUND": False}, num_warps=4, num_stages=1)
        for g in (128, 32)
    ],
)


def _check_block(block_size) -> tuple[int, int]:
    if len(block_size) != 2 or tuple(block_size) not in ((128, 128), (32, 32)):
        raise ValueError(f"block_size: expected [128, 128] or [32, 32], got {list(block_size)}")
    return int(block_size[0]), int(block_size[1])


def _fp8(name: str, t: torch.Tensor) -> torch.Tensor:
    """e4m3 operand as the kernel takes it: float8_e4m3fn on the GPU, its bytes under the interpreter."""
    if t.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise ValueError(f"{name}: expected float8_e4m3fn (or its uint8 bytes), got {t.dtype}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: the K dimension must be contiguous")
    return t.view(torch.uint8 if _INTERPRET else torch.float8_e4m3fn)


def _weight_scale(name: str, s: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    if s.dtype not in (torch.float32, *_E8M0) or tuple(s.shape) != shape:
        raise ValueError(f"{name}: expected {list(shape)} float32 or UE8M0 bytes, got {list(s.shape)} {s.dtype}")
    e8m0 = s.dtype != torch.float32
    return (s.view(torch.uint8) if e8m0 else s), e8m0


def _launch(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out: torch.Tensor,
    scale_k: int,
    b_e8m0: bool,
    workspace: torch.Tensor | None,
) -> None:
    """a ``[B, M, K]`` (u8 or bf16), a_scale ``[B, M, KB]`` or None (then quantised in-kernel), b ``[B, N, K]``
    u8, b_scale ``[B, NB, KB]``, out ``[B, M, N]`` (last dim contiguous); config :func:`config_for` M."""
    batch, m, k = a.shape
    n = b.shape[1]
    if batch == 0 or m == 0 or n == 0:
        return
    for name, t in (("A", a), ("B", b)):
        if k % 16 or any(st % 16 for st in t.stride()[:2]) or t.data_ptr() % 16:
            raise ValueError(f"{name}: K ({k}), the row/batch strides {t.stride()[:2]} and the data pointer "
                             "must be multiples of 16")
    cfg = config_for(m, scale_k)
    bk = cfg.block_k or scale_k
    quant_a = a_scale is None
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    ktiles = triton.cdiv(k, bk)
    want = min(ktiles, MAX_SPLITS, triton.cdiv(cfg.waves * num_sms(a.device), tiles * batch))
    per = triton.cdiv(ktiles, max(1, want))
    splits = triton.cdiv(ktiles, per)
    if splits > 1:
        need = splits * batch * m * n
        if workspace is None:
            workspace = torch.empty(need, dtype=torch.float32, device=a.device)
        elif workspace.dtype != torch.float32 or workspace.numel() < need or not workspace.is_contiguous():
            raise ValueError(f"workspace: expected >= {need} contiguous float32, got {workspace.numel()}")
        target, stride_cs, stride_cb, stride_cm = workspace, batch * m * n, m * n, n
    else:
        target, stride_cs, stride_cb, stride_cm = out, 0, out.stride(0), out.stride(1)
    sa = a if quant_a else a_scale
    sa_strides = (0, 0, 0) if quant_a else a_scale.stride()
    compiled = _fp8_gemm_kernel[(tiles, splits, batch)](
        a, sa, b, b_scale, target, m, n, k,
        a.stride(0), a.stride(1), *sa_strides, b.stride(0), b.stride(1), *b_scale.stride(),
        stride_cs, stride_cb, stride_cm, per,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk, SCALE_K=scale_k, QUANT_A=quant_a, B_E8M0=b_e8m0,
        UPCAST=_INTERPRET, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    guard_compiled("fp8_gemm.gemm", compiled)
    if splits > 1:
        compiled = _splitk_reduce_kernel[(batch * m, triton.cdiv(n, _REDUCE_BLOCK))](
            workspace, out, m, n, splits, batch * m * n, out.stride(0), out.stride(1),
            BLOCK=_REDUCE_BLOCK, CHUNK=_REDUCE_CHUNK, num_warps=4,
        )  # fmt: skip
        guard_compiled("fp8_gemm.splitk_reduce", compiled)


def per_token_group_quant_fp8(
    x: torch.Tensor, group_size: int, *, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[M, K]`` bf16 (K contiguous) -> (q ``[M, K]`` float8_e4m3fn, s ``[M, ceil(K/group)]`` fp32)."""
    if x.dim() != 2 or x.dtype != torch.bfloat16 or x.stride(1) != 1:
        raise ValueError(f"x: expected [M, K] bfloat16 with contiguous K, got {list(x.shape)} {x.dtype}")
    if group_size not in (128, 32):
        raise ValueError(f"group_size: expected 128 or 32, got {group_size}")
    m, k = x.shape
    kg = triton.cdiv(k, group_size)
    if out is None:
        q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
        s = torch.empty((m, kg), dtype=torch.float32, device=x.device)
    else:
        q, s = out
        if q.shape != (m, k) or q.dtype != torch.float8_e4m3fn or not q.is_contiguous():
            raise ValueError(f"out[0]: expected [{m}, {k}] contiguous float8_e4m3fn, got {list(q.shape)}")
        if s.shape != (m, kg) or s.dtype != torch.float32 or not s.is_contiguous():
            raise ValueError(f"out[1]: expected [{m}, {kg}] contiguous float32, got {list(s.shape)}")
    if m and k:
        compiled = _act_quant_kernel[(m, triton.cdiv(kg, _QUANT_GROUPS))](
            x, q.view(torch.uint8), s, k, x.stride(0), GROUP=group_size, GROUPS=_QUANT_GROUPS,
            EXACT_ROUND=_INTERPRET, num_warps=4,
        )
        guard_compiled("fp8_gemm.act_quant", compiled)
    return q, s


def w8a8_block_fp8_matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    As: torch.Tensor,
    Bs: torch.Tensor,
    block_size: list[int],
    output_dtype: torch.dtype = torch.bfloat16,
    *,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """SGLang ``w8a8_block_fp8_matmul_triton``: A ``[..., K]`` e4m3, B ``[N, K]`` e4m3, As ``[..., ceil(K/bk)]``
    fp32 (row-major), Bs ``[ceil(N/bn), ceil(K/bk)]`` fp32 or UE8M0 -> ``[..., N]`` ``output_dtype``
    (bf16/fp16/fp32). ``workspace``: fp32 split-K scratch (>= ``MAX_SPLITS * M * N``) to avoid an allocation in
    graph capture."""
    bn, bk = _check_block(block_size)
    if A.dim() < 1 or B.dim() != 2 or A.shape[-1] != B.shape[1]:
        raise ValueError(f"A/B: expected A [..., K] and B [N, K], got {list(A.shape)} and {list(B.shape)}")
    k = A.shape[-1]
    n = B.shape[0]
    a2 = _fp8("A", A).reshape(-1, k)
    b8 = _fp8("B", B)
    m = a2.shape[0]
    kb = triton.cdiv(k, bk)
    if As.dtype != torch.float32 or tuple(As.shape) != (*A.shape[:-1], kb):
        raise ValueError(f"As: expected {[*A.shape[:-1], kb]} float32, got {list(As.shape)} {As.dtype}")
    bs, e8m0 = _weight_scale("Bs", Bs, (triton.cdiv(n, bn), kb))
    if output_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"output_dtype: expected bfloat16, float16 or float32, got {output_dtype}")
    if out is None:
        out = torch.empty((*A.shape[:-1], n), dtype=output_dtype, device=A.device)
    elif tuple(out.shape) != (*A.shape[:-1], n) or out.dtype != output_dtype or not out.is_contiguous():
        raise ValueError(f"out: expected {[*A.shape[:-1], n]} contiguous {output_dtype}, got {list(out.shape)}")
    _launch(a2[None], As.reshape(1, m, kb), b8[None], bs[None], out.view(1, m, n), bk, e8m0, workspace)
    return out


def w8a8_block_fp8_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    block_size: list[int],
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """SGLang ``triton_w8a8_block_fp8_linear``: input ``[..., K]`` bf16, weight ``[N, K]`` e4m3,
    weight_scale ``[ceil(N/bn), ceil(K/bk)]`` fp32/UE8M0 -> ``[..., N]`` bf16. Activations are quantised per
    token per ``bk`` group (in registers inside the GEMM when M <= 16, else by a separate kernel first).
    ``workspace``: as :func:`w8a8_block_fp8_matmul`."""
    if input_scale is not None:
        raise ValueError("input_scale: must be None (activations are quantised dynamically)")
    bn, bk = _check_block(block_size)
    if input.dtype != torch.bfloat16 or weight.dim() != 2 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input/weight: expected bf16 [..., K] and [N, K], got {list(input.shape)} "
                         f"{input.dtype} and {list(weight.shape)}")
    k = input.shape[-1]
    n = weight.shape[0]
    x = input.reshape(-1, k)
    if x.stride(1) != 1 or x.stride(0) % 16:
        x = x.contiguous()
    w8 = _fp8("weight", weight)
    ws, e8m0 = _weight_scale("weight_scale", weight_scale, (triton.cdiv(n, bn), triton.cdiv(k, bk)))
    m = x.shape[0]
    out = torch.empty((m, n), dtype=torch.bfloat16, device=input.device)
    if config_for(m, bk).fuse_quant:
        _launch(x[None], None, w8[None], ws[None], out[None], bk, e8m0, workspace)
    else:
        q, s = per_token_group_quant_fp8(x, bk)
        _launch(_fp8("q", q)[None], s[None], w8[None], ws[None], out[None], bk, e8m0, workspace)
    if bias is not None:
        out += bias
    return out.view(*input.shape[:-1], n)


def fp8_einsum(
    expr: str,
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None = None,
    recipe: tuple[int, int, int] = (1, 1, 128),
    *,
    workspace: torch.Tensor | None = None,
) -> None:
    """DeepGEMM ``fp8_einsum("bhr,hdr->bhd", (a, sa), (b, sb), d, recipe=(1, 1, 128))`` (DSV4 ``wo_a``).

    a ``[T, G, K]`` e4m3 (K contiguous), sa ``[T, G, ceil(K/128)]`` fp32 (any strides); b ``[G, N, K]`` e4m3,
    sb the *raw* block scales ``[G, N/128, ceil(K/128)]`` (or ``[G*N/128, ceil(K/128)]``) fp32 or UE8M0 —
    i.e. SGLang's ``_setup_fp8_wo_a_scales`` transform must be skipped; d ``[T, G, N]`` bf16 (N contiguous),
    written in place. ``recipe`` (1, 1, 32) selects V4.1's 32x32 blocks. ``workspace``: fp32 split-K scratch
    (>= ``MAX_SPLITS * T * G * N``).
    """
    if tuple(recipe) not in ((1, 1, 128), (1, 1, 32)):
        raise ValueError(f"recipe: expected (1, 1, 128) or (1, 1, 32), got {tuple(recipe)}")
    blk = recipe[2]
    sb3 = check_fp8_einsum_args(expr, a, b, d, c, blk)
    e8m0 = sb3.dtype != torch.float32
    (a8, sa), (b8, _) = a, b
    _launch(
        _fp8("a", a8).transpose(0, 1), sa.transpose(0, 1), _fp8("b", b8), sb3.view(torch.uint8) if e8m0 else sb3,
        d.transpose(0, 1), blk, e8m0, workspace,
    )


def check_fp8_einsum_args(
    expr: str,
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None,
    blk: int,
) -> torch.Tensor:
    """Validates :func:`fp8_einsum`'s operands for ``blk`` x ``blk`` blocks (also for the PyTorch
    reference path) and returns b's raw block scales viewed ``[G, N/blk, ceil(K/blk)]`` (fp32 or UE8M0)."""
    if expr != "bhr,hdr->bhd":
        raise ValueError(f"expr: only 'bhr,hdr->bhd' is supported, got {expr!r}")
    if c is not None:
        raise ValueError("c: accumulation into d is not supported (must be None)")
    (a8, sa), (b8, sb) = a, b
    if a8.dim() != 3 or b8.dim() != 3 or a8.shape[1] != b8.shape[0] or a8.shape[2] != b8.shape[2]:
        raise ValueError(f"a/b: expected [T, G, K] and [G, N, K], got {list(a8.shape)} and {list(b8.shape)}")
    t, g, k = a8.shape
    n = b8.shape[1]
    kb = triton.cdiv(k, blk)
    if n % blk:
        raise ValueError(f"b: N = {n} must be a multiple of {blk}")
    if sa.dtype != torch.float32 or tuple(sa.shape) != (t, g, kb):
        raise ValueError(f"a scale: expected [{t}, {g}, {kb}] float32, got {list(sa.shape)} {sa.dtype}")
    if sb.numel() != g * (n // blk) * kb:
        raise ValueError(f"b scale: expected [{g}, {n // blk}, {kb}] raw block scales, got {list(sb.shape)}")
    sb3 = sb.reshape(g, n // blk, kb)
    _weight_scale("b scale", sb3, (g, n // blk, kb))
    if tuple(d.shape) != (t, g, n) or d.dtype != torch.bfloat16 or d.stride(2) != 1:
        raise ValueError(f"d: expected [{t}, {g}, {n}] bfloat16 (last dim contiguous), got {list(d.shape)}")
    return sb3
