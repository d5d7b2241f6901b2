"""mHC bindings for SGLang 0.5.16 (``patches/mhc.toml``).

* ``sglang.kernels.ops.layernorm.mhc``: ``mhc_pre``, ``mhc_post``, ``mhc_fused_post_pre``,
  ``hc_split_sinkhorn`` (family ``mhc``);
* ``sglang.srt.models.deepseek_v4``: ``DeepseekV4DecoderLayer.hc_pre`` / ``hc_post``, ``_get_mhc_ops``
  and the cross-layer fusion gate ``_is_fused_mhc_post_pre_enabled`` (family ``mhc-model``,
  self-contained: it never reaches SGLang's TileLang module);
* ``sglang.srt.layers.deep_gemm_wrapper.entrypoint.tf32_hc_prenorm_gemm`` (family ``mhc-prenorm``).

As in SGLang, ``layer_input`` lives in the NCCL symmetric pool when ``--enable-symm-mem`` is on.
"""

from __future__ import annotations

from typing import Any

import torch

from sglang_sm120.bindings import mhc as shared
from sglang_sm120.bindings.mhc import hc_split_sinkhorn, mhc_post, tf32_hc_prenorm_gemm

__all__ = [
    "get_mhc_ops",
    "hc_post",
    "hc_pre",
    "hc_split_sinkhorn",
    "is_fused_mhc_post_pre_enabled",
    "mhc_fused_post_pre",
    "mhc_post",
    "mhc_pre",
    "tf32_hc_prenorm_gemm",
]


def _symmetric(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a copy in the NCCL symmetric pool where SGLang 0.5.16 allocates ``layer_input`` there
    (``--enable-symm-mem``, TP > 1, symmetric allocation); host-side checks only."""
    from sglang.srt.distributed.device_communicators.pynccl_allocator import (
        is_symmetric_memory_enabled,
        use_symmetric_memory,
    )

    if not is_symmetric_memory_enabled():
        return t
    from sglang.srt.distributed.parallel_state import get_tp_group
    from sglang.srt.layers.dp_attention import is_allocation_symmetric

    group = get_tp_group()
    if group.world_size == 1 or not is_allocation_symmetric():
        return t
    with use_symmetric_memory(group):
        out = torch.empty_like(t)
    return out.copy_(t)


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
    """``mhc_pre``: ``residual [..., 4, H]`` bf16 -> ``post [..., 4, 1]`` fp32, ``comb [..., 4, 4]`` fp32,
    ``layer_input [..., H]`` bf16 (normed with ``norm_weight`` when given)."""
    post, comb, y = shared.mhc_pre(
        residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
        sinkhorn_repeat, norm_weight=norm_weight, norm_eps=norm_eps,
    )  # fmt: skip
    return post, comb, _symmetric(y)


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
    """``mhc_fused_post_pre`` -> ``(residual_cur [..., 4, H] bf16, post [..., 4, 1] fp32,
    comb [..., 4, 4] fp32, layer_input [..., H] bf16)``."""
    r_cur, post, comb, y = shared.mhc_fused_post_pre(
        x, residual, post_layer_mix, comb_res_mix, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
        hc_post_mult_value, sinkhorn_repeat, norm_weight=norm_weight, norm_eps=norm_eps,
    )  # fmt: skip
    return r_cur, post, comb, _symmetric(y)


def hc_pre(
    self: Any,
    x: torch.Tensor,
    hc_fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    norm: Any = None,
    forward_batch: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """``DeepseekV4DecoderLayer.hc_pre``: ``x [T, 4, H]`` bf16 -> ``(y [T, H] bf16, post [T, 4] fp32,
    comb [T, 4, 4] fp32, norm_fused)``; one fused pre-norm GEMM + Sinkhorn + weighted sum (+ the RMSNorm
    ``norm`` when given, then ``norm_fused`` is True)."""
    return shared.layer_hc_pre(self, x, hc_fn, hc_scale, hc_base, norm, pre=mhc_pre, empty_mix_dtype=torch.float32)


def hc_post(self: Any, x: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """``DeepseekV4DecoderLayer.hc_post`` -> new residual ``[T, 4, H]`` bf16."""
    return shared.layer_hc_post(self, x, residual, post, comb)


def get_mhc_ops() -> Any:
    """``deepseek_v4._get_mhc_ops``: the model's ``MhcOps`` (Sinkhorn split, fused post+pre) bound to ours."""
    from sglang.srt.models.deepseek_v4 import MhcOps

    return MhcOps(hc_split_sinkhorn, mhc_fused_post_pre, None)


def is_fused_mhc_post_pre_enabled() -> bool:
    """``deepseek_v4._is_fused_mhc_post_pre_enabled``: ``SGLANG_OPT_FUSE_MHC_POST_PRE`` alone decides.

    SGLang also requires its TileLang pre/post switches (SM120 forces the pre one off); with both
    halves bound to our kernels those switches no longer apply (SGLang 0.5.23 exempts SM120 likewise).
    """
    from sglang.srt.environ import envs

    return bool(envs.SGLANG_OPT_FUSE_MHC_POST_PRE.get())
