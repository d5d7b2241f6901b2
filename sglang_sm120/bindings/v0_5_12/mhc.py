"""mHC bindings for SGLang 0.5.12 (``patches/mhc.toml``).

* ``sglang.srt.models.deepseek_v4.DeepseekV4DecoderLayer.hc_pre`` / ``hc_post`` (family ``mhc-model``):
  the whole DeepSeek-V4 path, never reaching ``sglang.srt.layers.mhc`` (which imports TileLang);
* ``sglang.srt.layers.mhc``: ``mhc_pre``, ``hc_split_sinkhorn``, ``mhc_post`` (family ``mhc``) for
  any other caller.  0.5.12 has no fused post+pre path and calls DeepGEMM's pre-norm GEMM only from
  ``mhc_pre`` / ``hc_pre``, both replaced here.
"""

from __future__ import annotations

from typing import Any

import torch

from sglang_sm120.bindings import mhc as shared
from sglang_sm120.bindings.mhc import hc_split_sinkhorn, mhc_post, mhc_pre

__all__ = ["hc_post", "hc_pre", "hc_split_sinkhorn", "mhc_post", "mhc_pre"]


def hc_pre(
    self: Any,
    x: torch.Tensor,
    hc_fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    norm: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """``DeepseekV4DecoderLayer.hc_pre``: ``x [T, 4, H]`` bf16 -> ``(y [T, H] bf16, post [T, 4] fp32,
    comb [T, 4, 4] fp32, norm_fused)``; the RMSNorm ``norm`` is fused when given (``norm_fused`` True).
    An empty batch returns what 0.5.12 returns (``post`` / ``comb`` in ``x.dtype``)."""
    return shared.layer_hc_pre(self, x, hc_fn, hc_scale, hc_base, norm, empty_mix_dtype=x.dtype)


def hc_post(self: Any, x: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """``DeepseekV4DecoderLayer.hc_post`` -> new residual ``[T, 4, H]`` bf16."""
    return shared.layer_hc_post(self, x, residual, post, comb)
