"""mHC bindings shared by SGLang 0.5.12 and 0.5.16: SGLang's call contracts on our kernels.

CUDA tensors go to :mod:`sglang_sm120.kernels.mhc` (Triton), CPU tensors to
:mod:`sglang_sm120.reference.mhc`.  Layouts (contiguous): residual ``[T, hc, H]`` bf16, ``fn [24, hc*H]``,
``hc_scale [3]``, ``hc_base [24]`` fp32, ``hc = 4``.  No host syncs: every branch depends on shapes,
dtypes and devices only, so all of this is CUDA-graph capturable.
"""

from __future__ import annotations

from typing import Any

import torch

from sglang_sm120.kernels import mhc as kern
from sglang_sm120.reference import mhc as ref

HC_POST_MULT = 2.0  # DeepSeek-V4 ``hc_post_mult_value`` (``_MHC_POST_MULT_VALUE`` in 0.5.16)


def _impl(t: torch.Tensor) -> Any:
    return kern if t.is_cuda else ref


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
    """SGLang ``mhc_pre``: ``residual [..., 4, H]`` bf16 -> ``post [..., 4, 1]`` fp32, ``comb [..., 4, 4]`` fp32,
    ``layer_input [..., H]`` bf16 (RMS-normed with ``norm_weight [H]`` when given).  ``n_splits*`` are ignored."""
    return _impl(residual).mhc_pre(
        residual.contiguous(), fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
        sinkhorn_repeat, norm_weight=norm_weight, norm_eps=norm_eps,
    )  # fmt: skip


def mhc_post(
    x: torch.Tensor, residual: torch.Tensor, post_layer_mix: torch.Tensor, comb_res_mix: torch.Tensor
) -> torch.Tensor:
    """SGLang ``mhc_post``: ``x [T, H]`` bf16, ``residual [T, 4, H]`` bf16, ``post [T, 4(, 1)]`` fp32,
    ``comb [T, 4, 4]`` fp32 -> new residual ``[T, 4, H]`` bf16 (a new tensor; inputs are not written)."""
    return _impl(residual).mhc_post(
        x.contiguous(), residual.contiguous(), post_layer_mix.contiguous(), comb_res_mix.contiguous()
    )


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
    """SGLang 0.5.16 ``mhc_fused_post_pre`` -> ``(residual_cur [..., 4, H] bf16, post [..., 4, 1] fp32,
    comb [..., 4, 4] fp32, layer_input [..., H] bf16)``.  ``n_splits`` / ``tile_n`` are ignored."""
    return _impl(residual).mhc_fused_post_pre(
        x.contiguous(), residual.contiguous(), post_layer_mix.contiguous(), comb_res_mix.contiguous(), fn,
        hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
        norm_weight=norm_weight, norm_eps=norm_eps,
    )  # fmt: skip


def hc_split_sinkhorn(
    mixes: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    hc_mult: int = 4,
    sinkhorn_iters: int = 20,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SGLang ``hc_split_sinkhorn``: RMS-normalised ``mixes [B, S, (2+hc)*hc]`` fp32 -> ``pre [B, S, hc]``,
    ``post [B, S, hc]`` (``2 * sigmoid``), ``comb [B, S, hc, hc]`` fp32.

    Off the hot path (our ``hc_pre`` fuses the split), so it runs as PyTorch ops on every device:
    graph-capturable, no TileLang.
    """
    n_mix = (2 + hc_mult) * hc_mult
    if not isinstance(mixes, torch.Tensor) or mixes.dim() != 3 or mixes.shape[-1] != n_mix:
        raise ValueError(f"mixes: expected a [B, S, {n_mix}] fp32 tensor, got {getattr(mixes, 'shape', mixes)}")
    if mixes.dtype != torch.float32:
        raise ValueError(f"mixes: expected fp32, got {mixes.dtype}")
    return ref.hc_split_sinkhorn(mixes, hc_scale, hc_base, hc_mult, sinkhorn_iters, eps)


def tf32_hc_prenorm_gemm(
    x: torch.Tensor, fn: torch.Tensor, out: torch.Tensor, sqrsum: torch.Tensor, num_splits: int | None
) -> None:
    """DeepGEMM ``tf32_hc_prenorm_gemm``: ``out = x.float() @ fn.T``, ``sqrsum = sum(x.float()**2, -1)``,
    written in place; ``x [M, K]`` bf16, ``fn [N, K]`` fp32, ``out [M, N]`` / ``sqrsum [M]`` fp32, or
    ``[num_splits, M, N]`` / ``[num_splits, M]`` split-K partials the caller sums over dim 0."""
    if x.shape[0] == 0:
        return
    if x.is_cuda:
        kern.hc_prenorm_gemm(x, fn, out, sqrsum, num_splits)
        return
    d, s = ref.hc_prenorm_gemm(x, fn)
    if num_splits is None:
        out.copy_(d)
        sqrsum.copy_(s)
    else:
        out.zero_()
        sqrsum.zero_()
        out[0].copy_(d)
        sqrsum[0].copy_(s)


def layer_hc_pre(
    layer: Any,
    x: torch.Tensor,
    hc_fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    norm: Any,
    pre: Any = mhc_pre,
    empty_mix_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Body of ``DeepseekV4DecoderLayer.hc_pre``: ``x [T, 4, H]`` bf16 -> ``(y [T, H] bf16, post [T, 4] fp32,
    comb [T, 4, 4] fp32, norm_fused)``; with ``norm`` (an RMSNorm) ``y`` is already normed, as on SGLang's
    TileLang path.  ``pre`` is the release's ``mhc_pre`` binding; an empty batch returns empty ``post`` /
    ``comb`` in ``empty_mix_dtype`` (the release's upstream choice) and ``norm_fused`` False."""
    if x.shape[0] == 0:
        y = torch.empty((0, x.shape[-1]), dtype=x.dtype, device=x.device)
        post = torch.empty((0, layer.hc_mult), dtype=empty_mix_dtype, device=x.device)
        comb = torch.empty((0, layer.hc_mult, layer.hc_mult), dtype=empty_mix_dtype, device=x.device)
        return y, post, comb, False
    norm_kwargs = {} if norm is None else {"norm_weight": norm.weight.data, "norm_eps": norm.variance_epsilon}
    post, comb, y = pre(
        x, hc_fn, hc_scale, hc_base, layer.rms_norm_eps, layer.hc_eps, layer.hc_eps, HC_POST_MULT,
        layer.hc_sinkhorn_iters, **norm_kwargs,
    )  # fmt: skip
    return y, post.squeeze(-1), comb, norm is not None


def layer_hc_post(
    layer: Any, x: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """``DeepseekV4DecoderLayer.hc_post``: ``x [T, H]``, ``residual [T, 4, H]`` bf16, ``post [T, 4(, 1)]``,
    ``comb [T, 4, 4]`` fp32 -> new residual ``[T, 4, H]`` in ``x.dtype``."""
    if x.shape[0] == 0:
        return torch.empty((0, layer.hc_mult, x.shape[-1]), dtype=x.dtype, device=x.device)
    return mhc_post(x, residual, post, comb)
