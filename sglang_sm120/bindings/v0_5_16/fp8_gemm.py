"""FP8 block GEMM bindings for SGLang 0.5.16 (``patches/fp8_gemm.toml``).

* ``fp8_utils.dispatch_w8a8_block_fp8_linear`` -> our linear (0.5.16 on SM120 picks the SM120-only JIT
  CUTLASS ``fp8_blockwise_scaled_mm``): shared with 0.5.12, see :mod:`sglang_sm120.bindings.fp8_gemm`.
* ``deep_gemm.fp8_einsum`` -> :func:`fp8_einsum` for ``MQALayer.forward``'s FP8 ``wo_a`` branch
  (``deepseek_v4.py:1235-1264``). With DeepGEMM off (``DEEPGEMM_SCALE_UE8M0`` False, always on SM12x)
  that branch quantises ``o`` with ``sglang_per_token_group_quant_fp8`` (fp32 scales) and passes
  recipe ``(1, 128, 128)`` with the raw ``[G, R/128, D/128]`` fp32 scales ``_setup_fp8_wo_a_scales``
  leaves (it calls no DeepGEMM in that case), which is our kernel's layout.
"""

from __future__ import annotations

import torch

from sglang_sm120.bindings.fp8_gemm import dispatch_w8a8_block_fp8_linear, fp8_einsum_block_scaled

__all__ = ["dispatch_w8a8_block_fp8_linear", "fp8_einsum"]


def fp8_einsum(
    expr: str,
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None = None,
    recipe: tuple[int, int, int] | None = None,
) -> None:
    """``deep_gemm.fp8_einsum`` as 0.5.16's ``wo_a`` calls it: ``("bhr,hdr->bhd", (o_fp8 [T, G, D] e4m3,
    o_s [T, G, D/128] fp32), (W [G, R, D] e4m3, scales [G, R/128, D/128] fp32), out [T, G, R] bf16,
    recipe=(1, 128, 128))``; writes ``out``."""
    if recipe is None or tuple(recipe) != (1, 128, 128):
        raise ValueError(
            f"recipe: expected (1, 128, 128) (fp32 per-token and 128x128 block scales), got {recipe}; "
            "the UE8M0 (1, 1, 128) layout is DeepGEMM's own: keep SGLANG_ENABLE_JIT_DEEPGEMM=0"
        )
    fp8_einsum_block_scaled(expr, a, b, d, c, 128)
