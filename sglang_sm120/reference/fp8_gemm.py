"""PyTorch oracles for FP8 block-scaled GEMMs (also the CPU fallback).

Weights ``W [N, K]`` e4m3 with one scale per ``block_n x block_k`` block (``[ceil(N/bn), ceil(K/bk)]``, fp32
or UE8M0 bytes); activations quantised per token and per ``block_k`` group along K (SGLang's
``per_token_group_quant_fp8``: ``s = max(amax, eps) / 448``, ``q = clamp(x / s, +-448)`` in e4m3).
``C = sum_kb (A8[:, kb] @ W8[:, kb]^T) * sa[:, kb] * sw[n // bn, kb]`` accumulated in fp32.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0


def scale_to_float(scale: torch.Tensor) -> torch.Tensor:
    """fp32 scales as they are; UE8M0 bytes (``uint8``/``float8_e8m0fnu``) -> ``2^(s - 127)``."""
    if scale.dtype in (torch.uint8, getattr(torch, "float8_e8m0fnu", torch.uint8)):
        return torch.exp2(scale.view(torch.uint8).float() - 127)
    return scale.float()


def per_token_group_quant_fp8_ref(
    x: torch.Tensor, group: int, eps: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[..., K]`` -> (e4m3 ``[..., K]``, fp32 scales ``[..., ceil(K/group)]``)."""
    k = x.shape[-1]
    kg = -(-k // group)
    xf = torch.nn.functional.pad(x.float(), (0, kg * group - k)).unflatten(-1, (kg, group))
    s = xf.abs().amax(-1).clamp_min(eps) / FP8_MAX
    q = (xf * (1.0 / s)[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.flatten(-2)[..., :k], s


def block_fp8_matmul_ref(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    block_size: tuple[int, int],
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """a ``[M, K]`` e4m3, a_scale ``[M, ceil(K/bk)]`` fp32, b ``[N, K]`` e4m3,
    b_scale ``[ceil(N/bn), ceil(K/bk)]`` fp32/UE8M0 -> ``[M, N]`` ``out_dtype``."""
    bn, bk = block_size
    m, k = a.shape
    n = b.shape[0]
    kb = -(-k // bk)
    af = torch.nn.functional.pad(a.float(), (0, kb * bk - k)).view(m, kb, bk)
    bf = torch.nn.functional.pad(b.float(), (0, kb * bk - k)).view(n, kb, bk)
    sw = scale_to_float(b_scale).repeat_interleave(bn, 0)[:n]  # [N, kb]
    sa = a_scale.float()
    out = torch.zeros(m, n, dtype=torch.float32, device=a.device)
    for i in range(kb):
        out += (af[:, i] @ bf[:, i].t()) * sa[:, i, None] * sw[None, :, i]
    return out.to(out_dtype)


def w8a8_block_fp8_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, block_size: tuple[int, int], weight_scale: torch.Tensor
) -> torch.Tensor:
    """SGLang ``triton_w8a8_block_fp8_linear``: x ``[..., K]`` bf16 -> ``[..., N]`` in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s = per_token_group_quant_fp8_ref(x2, block_size[1])
    return block_fp8_matmul_ref(q, s, weight, weight_scale, block_size, x.dtype).view(*x.shape[:-1], -1)


def fp8_einsum_ref(
    a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, block: int = 128
) -> torch.Tensor:
    """DeepGEMM ``fp8_einsum("bhr,hdr->bhd", recipe=(1, 1, block))``: a ``[T, G, K]`` e4m3, a_scale
    ``[T, G, K/block]`` fp32, b ``[G, N, K]`` e4m3, b_scale ``[G, N/block, K/block]`` -> ``[T, G, N]`` bf16."""
    outs = [
        block_fp8_matmul_ref(a[:, g], a_scale[:, g], b[g], b_scale[g], (block, block), torch.float32)
        for g in range(a.shape[1])
    ]
    return torch.stack(outs, 1).to(torch.bfloat16)
