"""FP8 block GEMM bindings for SGLang 0.5.12 (``patches/fp8_gemm.toml``).

* ``fp8_utils.dispatch_w8a8_block_fp8_linear`` -> our linear (0.5.12 on SM120 picks untuned Triton):
  shared with 0.5.16, see :mod:`sglang_sm120.bindings.fp8_gemm`.
* FP8 ``wo_a`` (``MQALayer.forward``, ``deepseek_v4.py:588-605``): 0.5.12 always converts the block
  scales with DeepGEMM's ``transform_sf_into_required_layout`` at load and calls ``deep_gemm.fp8_einsum``
  with recipe ``(1, 1, 128)``. :func:`setup_fp8_wo_a_scales` keeps the raw block scales instead and
  :func:`fp8_einsum` reads them; activations come from ``sglang_per_token_group_quant_fp8`` (fp32).
"""

from __future__ import annotations

from typing import Any

import torch

from sglang_sm120.bindings.fp8_gemm import dispatch_w8a8_block_fp8_linear, fp8_einsum_block_scaled

__all__ = ["dispatch_w8a8_block_fp8_linear", "fp8_einsum", "setup_fp8_wo_a_scales"]


def fp8_einsum(
    expr: str,
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None = None,
    recipe: tuple[int, int, int] | None = None,
) -> None:
    """``deep_gemm.fp8_einsum`` as 0.5.12's ``wo_a`` calls it: ``("bhr,hdr->bhd", (o_fp8 [T, G, D] e4m3,
    o_s [T, G, D/128] fp32), (W [G, R, D] e4m3, raw scales [G, R/128, D/128] fp32 as
    :func:`setup_fp8_wo_a_scales` leaves them), out [T, G, R] bf16, recipe=(1, 1, 128))``; writes ``out``."""
    if recipe is None or tuple(recipe) != (1, 1, 128):
        raise ValueError(f"recipe: expected (1, 1, 128) as SGLang 0.5.12's wo_a passes it, got {recipe}")
    fp8_einsum_block_scaled(expr, a, b, d, c, 128)


def setup_fp8_wo_a_scales(self: Any, is_nextn: bool) -> None:
    """Replaces ``DeepseekV4ForCausalLM._setup_fp8_wo_a_scales`` (run by ``post_load_weights``, also for
    the MTP draft model): each ``wo_a.weight_scale_inv`` becomes the contiguous ``[G, R/128, D/128]`` fp32
    block-scale tensor :func:`fp8_einsum` reads, instead of DeepGEMM's transformed layout."""
    if is_nextn:
        layers = [self.model.decoder]
    else:
        layers = [self.model.layers[i] for i in range(self.model.start_layer, self.model.end_layer)]
    for layer in layers:
        attn = layer.self_attn
        groups, rank, dim = attn.n_local_groups, attn.o_lora_rank, attn.wo_a.weight.shape[1]
        scale = attn.wo_a.weight_scale_inv
        scale.data = scale.data.view(groups, rank // 128, dim // 128).contiguous()
        scale.format_ue8m0 = False
