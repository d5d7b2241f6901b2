"""Triton mHC kernels for SM12x: pre-norm GEMM, Sinkhorn mix, weighted stream sum (+RMSNorm), hc_post.

Replaces DeepGEMM ``tf32_hc_prenorm_gemm`` and SGLang's TileLang mHC kernels with two kernels:

* ``_mhc_stream_kernel`` — grid ``(cdiv(T, BLOCK_T), S)``; split ``s`` covers hidden positions
  ``[s*h_per_split, (s+1)*h_per_split)`` of all ``hc`` streams.  ``DO_POST`` computes
  ``R'[t, j, h] = bf16(post[t, j] * x[t, h] + sum_i comb[t, i, j] * R[t, i, h])`` and writes it
  (hc_post); ``DO_MIX`` accumulates the split-K partial ``R_flat @ fn.T`` (TF32 ``mma.sync``, like
  DeepGEMM/TileLang) and ``sum(R_flat**2)`` of that split into ``mix [S, T, N]`` / ``sq [S, T]`` fp32.
  With both, hc_post of layer i is fused with the pre-norm GEMM of layer i+1 (SGLang 0.5.16
  ``mhc_fused_post_pre``).
* ``_mhc_finalize_kernel`` — one program per token: sum the splits, ``rsqrt`` pre-norm, sigmoid
  pre/post, Sinkhorn comb, ``layer_input = sum_i pre_i * R_i`` and optional fused RMSNorm.

So ``mhc_pre`` and ``mhc_fused_post_pre`` are two launches each, ``mhc_post`` one.  No host syncs;
grids depend only on shapes.  Layouts (all contiguous): residual ``[T, hc, H]`` bf16,
``fn [N, hc*H]`` fp32 with ``N = (2 + hc) * hc``, ``post [T, hc]`` fp32, ``comb [T, hc, hc]`` fp32
(``comb[t, i, j]``: input stream ``i`` -> output stream ``j``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot
from sglang_sm120.platform import guard_compiled, num_sms

HC_MULT = 4
N_MIX = (2 + HC_MULT) * HC_MULT  # 24
_BLOCK_N = 32
_BLOCK_S = 64  # splits summed per step by the finalize kernel
_MAX_SPLITS = 64
# Stream kernel (DO_POST, DO_MIX) -> (BLOCK_T, BLOCK_H, num_warps, num_stages) for decode-sized T and
# for T > _LARGE_T; chosen for 0 spills with and without the JIT's 16-divisibility specialisation.
_STREAM_TILES = {
    (False, True): ((16, 64, 4, 2), (64, 32, 8, 2)),  # pre-norm GEMM
    (True, False): ((16, 64, 4, 2), (64, 32, 8, 2)),  # hc_post
    (True, True): ((16, 32, 8, 2), (32, 32, 8, 2)),  # fused hc_post + pre-norm GEMM (16x64 spills)
}
_STREAM_NAMES = {(False, True): "mhc.prenorm", (True, False): "mhc.post", (True, True): "mhc.fused"}
_LARGE_T = 128
SUPPORTED_HIDDEN = (4096,)  # DSV4-Flash; the kernels take hidden as a constexpr on the GPU
_FINALIZE_WARPS = 8


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _mhc_stream_kernel(
    res_ptr,  # bf16 [T, HC, H]: residual (R of the previous layer when DO_POST)
    x_ptr,  # bf16 [T, H]: sub-layer output (DO_POST)
    post_ptr,  # fp32 [T, HC] (DO_POST)
    comb_ptr,  # fp32 [T, HC, HC] (DO_POST)
    fn_ptr,  # fp32 [N, HC*H] (DO_MIX)
    res_out_ptr,  # bf16 [T, HC, H] (DO_POST)
    mix_ptr,  # fp32 [S, T, N] (DO_MIX)
    sq_ptr,  # fp32 [S, T] (DO_MIX)
    T,
    N,
    h_per_split,
    H: tl.constexpr,
    HC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DO_POST: tl.constexpr,
    DO_MIX: tl.constexpr,
):
    tl.static_assert(HC == 4, "hc_post is unrolled for hc_mult == 4")
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    t0 = pid_t * BLOCK_T
    offs_t = t0 + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # 64-bit block bases, 32-bit offsets inside the block.
    res_ptr += t0.to(tl.int64) * (HC * H)
    res_out_ptr += t0.to(tl.int64) * (HC * H)
    x_ptr += t0.to(tl.int64) * H
    row = tl.arange(0, BLOCK_T)[:, None] * (HC * H)
    h_lo = tl.multiple_of(pid_s * h_per_split, BLOCK_H)

    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    sq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for h0 in range(0, h_per_split, BLOCK_H):
        offs_h = h_lo + h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        mask_th = mask_t[:, None] & mask_h[None, :]
        if DO_POST:
            x = tl.load(x_ptr + tl.arange(0, BLOCK_T)[:, None] * H + offs_h[None, :], mask=mask_th, other=0.0)
            r0 = tl.load(res_ptr + row + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
            r1 = tl.load(res_ptr + row + H + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
            r2 = tl.load(res_ptr + row + 2 * H + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
            r3 = tl.load(res_ptr + row + 3 * H + offs_h[None, :], mask=mask_th, other=0.0).to(tl.float32)
        for j in tl.static_range(HC):
            off_j = row + j * H + offs_h[None, :]
            if DO_POST:
                cb = comb_ptr + offs_t * (HC * HC) + j  # comb[t, i, j] at cb + i * HC
                v = tl.load(post_ptr + offs_t * HC + j, mask=mask_t, other=0.0)[:, None] * x.to(tl.float32)
                v += tl.load(cb, mask=mask_t, other=0.0)[:, None] * r0
                v += tl.load(cb + HC, mask=mask_t, other=0.0)[:, None] * r1
                v += tl.load(cb + 2 * HC, mask=mask_t, other=0.0)[:, None] * r2
                v += tl.load(cb + 3 * HC, mask=mask_t, other=0.0)[:, None] * r3
                vb = v.to(tl.bfloat16)
                tl.store(res_out_ptr + off_j, vb, mask=mask_th)
                v = vb.to(tl.float32)  # the pre-norm GEMM reads the bf16-rounded residual
            else:
                v = tl.load(res_ptr + off_j, mask=mask_th, other=0.0).to(tl.float32)
            if DO_MIX:
                sq += tl.sum(v * v, axis=1)
                w = tl.load(
                    fn_ptr + offs_n[:, None] * (HC * H) + j * H + offs_h[None, :],
                    mask=mask_n[:, None] & mask_h[None, :],
                    other=0.0,
                )
                acc = tl.dot(v, tl.trans(w), acc, input_precision="tf32")
    if DO_MIX:
        split_row = (pid_s * T + offs_t).to(tl.int64)
        tl.store(mix_ptr + split_row[:, None] * N + offs_n[None, :], acc, mask=mask_t[:, None] & mask_n[None, :])
        tl.store(sq_ptr + split_row, sq, mask=mask_t)


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
    H,
    S,
    sinkhorn_iters,
    rms_eps,
    pre_eps,
    sinkhorn_eps,
    post_mult,
    norm_eps,
    HC: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    NM: tl.constexpr = (2 + HC) * HC
    t = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, HC)
    offs_s = tl.arange(0, BLOCK_S)

    pre_acc = tl.zeros([BLOCK_S, HC], dtype=tl.float32)
    post_acc = tl.zeros([BLOCK_S, HC], dtype=tl.float32)
    comb_acc = tl.zeros([BLOCK_S, HC, HC], dtype=tl.float32)
    sq_acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + offs_s
        ms = s < S
        base = (s.to(tl.int64) * T + t) * NM
        pre_acc += tl.load(mix_ptr + base[:, None] + c[None, :], mask=ms[:, None], other=0.0)
        post_acc += tl.load(mix_ptr + base[:, None] + HC + c[None, :], mask=ms[:, None], other=0.0)
        comb_acc += tl.load(
            mix_ptr + base[:, None, None] + 2 * HC + c[None, :, None] * HC + c[None, None, :],
            mask=ms[:, None, None],
            other=0.0,
        )
        sq_acc += tl.load(sq_ptr + s.to(tl.int64) * T + t, mask=ms, other=0.0)

    rms = tl.rsqrt(tl.sum(sq_acc, axis=0) / (HC * H) + rms_eps)
    pre = tl.sigmoid(tl.sum(pre_acc, axis=0) * rms * tl.load(scale_ptr) + tl.load(base_ptr + c)) + pre_eps
    post = tl.sigmoid(tl.sum(post_acc, axis=0) * rms * tl.load(scale_ptr + 1) + tl.load(base_ptr + HC + c))
    tl.store(post_ptr + t * HC + c, post * post_mult)

    # Sinkhorn: row softmax (+eps), column normalise, then (row, column) normalise iters-1 times.
    cm = tl.sum(comb_acc, axis=0) * rms * tl.load(scale_ptr + 2)
    cm += tl.load(base_ptr + 2 * HC + c[:, None] * HC + c[None, :])
    cm = tl.exp(cm - tl.max(cm, axis=1)[:, None])
    cm = cm / tl.sum(cm, axis=1)[:, None] + sinkhorn_eps
    cm = cm / (tl.sum(cm, axis=0)[None, :] + sinkhorn_eps)
    for _ in range(sinkhorn_iters - 1):
        cm = cm / (tl.sum(cm, axis=1)[:, None] + sinkhorn_eps)
        cm = cm / (tl.sum(cm, axis=0)[None, :] + sinkhorn_eps)
    tl.store(comb_ptr + t * (HC * HC) + c[:, None] * HC + c[None, :], cm)

    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    out = tl.zeros([BLOCK_H], dtype=tl.float32)
    for i in tl.static_range(HC):
        pre_i = tl.sum(tl.where(c == i, pre, 0.0), axis=0)
        r_i = tl.load(res_ptr + t * (HC * H) + i * H + offs_h, mask=mask_h, other=0.0)
        out += pre_i * r_i.to(tl.float32)
    if HAS_NORM:
        # SGLang's fused norm: RMS of the fp32 sum, applied to its bf16 rounding.
        rs = tl.rsqrt(tl.sum(out * out, axis=0) / H + norm_eps)
        w = tl.load(w_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
        out = out.to(tl.bfloat16).to(tl.float32) * rs * w
    tl.store(y_ptr + t * H + offs_h, out.to(tl.bfloat16), mask=mask_h)


_STREAM_SIGNATURE = {
    "res_ptr": "*bf16",
    "x_ptr": "*bf16",
    "post_ptr": "*fp32",
    "comb_ptr": "*fp32",
    "fn_ptr": "*fp32",
    "res_out_ptr": "*bf16",
    "mix_ptr": "*fp32",
    "sq_ptr": "*fp32",
    "T": "i32",
    "N": "i32",
    "h_per_split": "i32",
}
for (_post, _mix), _tiles in _STREAM_TILES.items():
    register_aot(
        _STREAM_NAMES[_post, _mix],
        _mhc_stream_kernel,
        signature=_STREAM_SIGNATURE,
        configs=[
            AotConfig(
                {"H": hidden, "HC": HC_MULT, "BLOCK_T": bt, "BLOCK_H": bh, "BLOCK_N": _BLOCK_N, "DO_POST": _post,
                 "DO_MIX": _mix},
                num_warps=nw,
                num_stages=ns,
            )
            for bt, bh, nw, ns in _tiles
            for hidden in SUPPORTED_HIDDEN
        ],
    )  # fmt: skip
register_aot(
    "mhc.finalize",
    _mhc_finalize_kernel,
    signature={
        "mix_ptr": "*fp32", "sq_ptr": "*fp32", "scale_ptr": "*fp32", "base_ptr": "*fp32",
        "res_ptr": "*bf16", "w_ptr": "*bf16", "post_ptr": "*fp32", "comb_ptr": "*fp32", "y_ptr": "*bf16",
        "T": "i32", "H": "i32", "S": "i32", "sinkhorn_iters": "i32", "rms_eps": "fp32", "pre_eps": "fp32",
        "sinkhorn_eps": "fp32", "post_mult": "fp32", "norm_eps": "fp32",
    },
    configs=[
        AotConfig({"HC": HC_MULT, "BLOCK_S": _BLOCK_S, "BLOCK_H": triton.next_power_of_2(hidden),
                   "HAS_NORM": norm}, num_warps=_FINALIZE_WARPS, num_stages=1)
        for hidden in SUPPORTED_HIDDEN
        for norm in (False, True)
    ],
)  # fmt: skip


# ----------------------------------------------------------------------------- host side


def _split_plan(
    mode: tuple[bool, bool], num_tokens: int, hidden: int, device: torch.device, num_splits: int | None = None
) -> tuple[int, int, int, int, int, int]:
    """Tile and split-K plan ``(BLOCK_T, BLOCK_H, num_warps, num_stages, S, h_per_split)``; host ints only."""
    bt, bh, nw, ns = _STREAM_TILES[mode][num_tokens > _LARGE_T]
    n_hblk = triton.cdiv(hidden, bh)
    if num_splits is None:
        want = max(1, 2 * num_sms(device) // triton.cdiv(num_tokens, bt))
        num_splits = min(1 << (want.bit_length() - 1), n_hblk, _MAX_SPLITS)
    h_per_split = triton.cdiv(n_hblk, num_splits) * bh
    return bt, bh, nw, ns, num_splits, h_per_split


def _check(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {shape} and dtype {dtype}, got {type(t)}")
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise ValueError(f"{name}: expected shape {tuple(shape)} {dtype}, got {tuple(t.shape)} {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor of shape {tuple(shape)}")


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


def _launch_stream(
    residual: torch.Tensor,
    x: torch.Tensor | None,
    post: torch.Tensor | None,
    comb: torch.Tensor | None,
    fn: torch.Tensor | None,
    res_out: torch.Tensor | None,
    mix: torch.Tensor | None,
    sq: torch.Tensor | None,
    num_tokens: int,
    hidden: int,
    n_out: int,
    num_splits: int | None = None,
) -> None:
    """Launch ``_mhc_stream_kernel``; ``mix``/``sq`` (when given) must hold the planned split count."""
    do_post, do_mix = res_out is not None, mix is not None
    bt, bh, nw, ns, splits, h_per_split = _split_plan(
        (do_post, do_mix), num_tokens, hidden, residual.device, num_splits
    )
    dummy = residual
    compiled = _mhc_stream_kernel[(triton.cdiv(num_tokens, bt), splits)](
        residual,
        x if do_post else dummy,
        post if do_post else dummy,
        comb if do_post else dummy,
        fn if do_mix else dummy,
        res_out if do_post else dummy,
        mix if do_mix else dummy,
        sq if do_mix else dummy,
        num_tokens,
        n_out,
        h_per_split,
        H=hidden,
        HC=HC_MULT,
        BLOCK_T=bt,
        BLOCK_H=bh,
        BLOCK_N=_BLOCK_N,
        DO_POST=do_post,
        DO_MIX=do_mix,
        num_warps=nw,
        num_stages=ns,
    )
    guard_compiled(_STREAM_NAMES[do_post, do_mix], compiled)


def _finalize(
    mix: torch.Tensor,
    sq: torch.Tensor,
    residual: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    norm_weight: torch.Tensor | None,
    norm_eps: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_tokens, hc, hidden = residual.shape
    post = torch.empty(num_tokens, hc, dtype=torch.float32, device=residual.device)
    comb = torch.empty(num_tokens, hc, hc, dtype=torch.float32, device=residual.device)
    y = torch.empty(num_tokens, hidden, dtype=torch.bfloat16, device=residual.device)
    block_h = triton.next_power_of_2(hidden)
    compiled = _mhc_finalize_kernel[(num_tokens,)](
        mix,
        sq,
        hc_scale,
        hc_base,
        residual,
        norm_weight if norm_weight is not None else residual,
        post,
        comb,
        y,
        num_tokens,
        hidden,
        mix.shape[0],
        sinkhorn_repeat,
        rms_eps,
        hc_pre_eps,
        hc_sinkhorn_eps,
        hc_post_mult_value,
        norm_eps if norm_eps is not None else 0.0,
        HC=hc,
        BLOCK_S=_BLOCK_S,
        BLOCK_H=block_h,
        HAS_NORM=norm_weight is not None,
        num_warps=_FINALIZE_WARPS,
        num_stages=1,
    )
    guard_compiled("mhc.finalize", compiled)
    return post, comb, y


def _empty_outputs(outer: tuple[int, ...], hc: int, hidden: int, device: torch.device):
    return (
        torch.empty(*outer, hc, 1, dtype=torch.float32, device=device),
        torch.empty(*outer, hc, hc, dtype=torch.float32, device=device),
        torch.empty(*outer, hidden, dtype=torch.bfloat16, device=device),
    )


def hc_prenorm_gemm(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, s: torch.Tensor, num_splits: int | None = None
) -> None:
    """DeepGEMM ``tf32_hc_prenorm_gemm``: ``d = a.float() @ b.T`` (TF32), ``s = sum(a.float()**2, -1)``.

    ``a [M, K]`` bf16, ``b [N, K]`` fp32 (``N <= 32``, ``K % 4 == 0``); ``d [M, N]`` / ``s [M]`` fp32, or
    with ``num_splits`` ``d [num_splits, M, N]`` / ``s [num_splits, M]`` split-K partials to be summed
    over dim 0 by the caller.  Writes in place.
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
    lead = () if num_splits is None else (num_splits,)
    _check("d", d, (*lead, m, n), torch.float32)
    _check("s", s, (*lead, m), torch.float32)
    if m == 0:
        return
    _launch_stream(a, None, None, None, b, None, d, s, m, k // HC_MULT, n, num_splits or 1)


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
    splits = _split_plan((False, True), num_tokens, hidden, residual.device)[4]
    mix = torch.empty(splits, num_tokens, N_MIX, dtype=torch.float32, device=residual.device)
    sq = torch.empty(splits, num_tokens, dtype=torch.float32, device=residual.device)
    _launch_stream(r, None, None, None, fn, None, mix, sq, num_tokens, hidden, N_MIX, splits)
    post, comb, y = _finalize(
        mix, sq, r, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
        sinkhorn_repeat, weight, norm_eps,
    )  # fmt: skip
    return post.view(*outer, hc, 1), comb.view(*outer, hc, hc), y.view(*outer, hidden)


def _check_post_args(
    x: torch.Tensor, residual: torch.Tensor, post_layer_mix: torch.Tensor, comb_res_mix: torch.Tensor
) -> tuple[int, int, int]:
    if not isinstance(residual, torch.Tensor) or residual.dim() < 2 or residual.shape[-2] != HC_MULT:
        raise ValueError(f"residual: expected a [..., {HC_MULT}, hidden] bf16 tensor")
    outer, hc, hidden = tuple(residual.shape[:-2]), residual.shape[-2], residual.shape[-1]
    _check("residual", residual, (*outer, hc, hidden), torch.bfloat16)
    _check_hidden("residual", hidden)
    _check("x", x, (*outer, hidden), torch.bfloat16)
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
        _launch_stream(residual, x, post_layer_mix, comb_res_mix, None, out, None, None, num_tokens, hidden, 0)
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
    splits = _split_plan((True, True), num_tokens, hidden, residual.device)[4]
    mix = torch.empty(splits, num_tokens, N_MIX, dtype=torch.float32, device=residual.device)
    sq = torch.empty(splits, num_tokens, dtype=torch.float32, device=residual.device)
    _launch_stream(residual, x, post_layer_mix, comb_res_mix, fn, r_cur, mix, sq, num_tokens, hidden, N_MIX, splits)
    post, comb, y = _finalize(
        mix, sq, r_cur, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
        sinkhorn_repeat, weight, norm_eps,
    )  # fmt: skip
    return residual_cur, post.view(*outer, hc, 1), comb.view(*outer, hc, hc), y.view(*outer, hidden)
