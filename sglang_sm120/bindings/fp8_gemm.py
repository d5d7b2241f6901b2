"""FP8 block-scaled dense GEMM and DSV4 ``wo_a`` einsum: the parts of the binding both releases share.

SGLang's block-FP8 linear contract is the same in 0.5.12 and 0.5.16 (``Fp8LinearMethod.apply`` calls the
function ``dispatch_w8a8_block_fp8_linear()`` returned at layer construction); the ``wo_a`` einsum differs
only in the DeepGEMM recipe each release passes (see ``v0_5_12`` / ``v0_5_16``). CUDA tensors go to
:mod:`sglang_sm120.kernels.fp8_gemm`, CPU tensors to :mod:`sglang_sm120.reference.fp8_gemm`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sglang_sm120.kernels import fp8_gemm as kernel
from sglang_sm120.reference.fp8_gemm import fp8_einsum_ref, w8a8_block_fp8_linear_ref

KERNEL_BLOCKS = ((128, 128), (32, 32))  # DSV4 (128) and DSV4.1 (32) weight blocks


def w8a8_block_fp8_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    block_size: list[int],
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """SGLang's ``triton_w8a8_block_fp8_linear`` contract: input ``[..., K]`` (bf16 on the DSV4 path),
    weight ``[N, K]`` e4m3 (as loaded, not transposed), block_size ``[bn, bk]``, weight_scale
    ``[ceil(N/bn), ceil(K/bk)]`` fp32 (``weight_scale_inv``; UE8M0 bytes also taken), bias ``[N]`` or None
    -> ``[..., N]`` in input's dtype. Activations are quantised here per token per ``bk`` group (SGLang's
    ``per_token_group_quant_fp8`` formula), so ``input_scale`` must be None as in SGLang's Triton path.

    bf16 with 128x128 / 32x32 blocks runs our kernel; other dtypes or blocks (no DSV4 layer has them) run
    SGLang's own Triton linear, which has no architecture-specific code."""
    if input_scale is not None:
        raise ValueError("input_scale: expected None (pre-quantised activations come only from ROCm paths)")
    if not input.is_cuda:
        out = w8a8_block_fp8_linear_ref(input, weight, (block_size[0], block_size[1]), weight_scale)
        return out if bias is None else out + bias
    if input.dtype == torch.bfloat16 and tuple(block_size) in KERNEL_BLOCKS:
        return kernel.w8a8_block_fp8_linear(input, weight, list(block_size), weight_scale, None, bias)
    from sglang.srt.layers.quantization.fp8_utils import triton_w8a8_block_fp8_linear

    return triton_w8a8_block_fp8_linear(input, weight, block_size, weight_scale, None, bias)


def dispatch_w8a8_block_fp8_linear() -> Callable[..., torch.Tensor]:
    """Replaces ``fp8_utils.dispatch_w8a8_block_fp8_linear``: every block-FP8 linear built afterwards
    (attention, indexer ``wq_b``, shared experts, MTP) binds :func:`w8a8_block_fp8_linear`, whatever
    ``--fp8-gemm-backend`` says (on SM12x SGLang's choices are untuned Triton, SM120-only JIT CUTLASS or
    DeepGEMM/FlashInfer kernels without SM12x builds)."""
    return w8a8_block_fp8_linear


def fp8_einsum_block_scaled(
    expr: str,
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None,
    block: int,
) -> None:
    """``d[t, g, n] = sum_k A[t, g, k] W[g, n, k]`` with a ``(o_fp8 [T, G, K] e4m3, o_s [T, G, K/block]
    fp32)`` and b ``(W [G, N, K] e4m3, raw block scales [G, N/block, K/block] fp32 or UE8M0)`` — i.e. the
    checkpoint's ``weight_scale_inv`` reshaped, not DeepGEMM's transformed layout; d ``[T, G, N]`` bf16,
    written in place."""
    if d.is_cuda:
        kernel.fp8_einsum(expr, a, b, d, c, recipe=(1, 1, block))
        return
    scales = kernel.check_fp8_einsum_args(expr, a, b, d, c, block)
    d.copy_(fp8_einsum_ref(a[0], a[1], b[0], scales, block))
