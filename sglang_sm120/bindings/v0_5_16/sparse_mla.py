"""Sparse MLA for SGLang 0.5.16: ``flash_mla_with_kvcache_sm120`` backed by our kernel.

On SM12x (or under ``SGLANG_SM120=emulate``) ``DeepseekV4AttnBackend.forward``
(``srt/layers/attention/deepseek_v4_backend.py``) sends every DSV4 attention call (decode,
extend/prefill — FlashMLA sparse prefill is off on SM120 — MTP verify and draft) to
``sglang.kernels.ops.attention.flash_mla_sm120.flash_mla_with_kvcache_sm120``, imported inside the
function at call time, so replacing the module attribute reroutes it; ``_create_flashmla_metadata``
returns None there, so no FlashMLA / FlashInfer / tilelang call is left on the path.
"""

from __future__ import annotations

import torch

from sglang_sm120.kernels.sparse_mla import flash_mla_with_kvcache


def flash_mla_with_kvcache_sm120(
    *,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    head_dim_v: int,
    indices: torch.Tensor,
    softmax_scale: float | None = None,
    topk_length: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keyword-only, as the backend calls it; SGLang's data is passed through unchanged.

    q ``[T, 1, H, 512]`` bf16 (one row per token; ``H`` = per-rank heads padded to 64 at TP > 1,
    padded heads carry sink 0 and are discarded by the caller); k_cache ``[swa_pages, P, 1, 584]``
    uint8/fp8 view of the SWA pool (page stride = the pool's padded page bytes); indices
    ``[T, 1, K]`` int32 SWA slots (K a multiple of 64, -1 = none); topk_length ``[T]`` int32;
    attn_sink ``[H]`` fp32; extra_* the C4 (``[pages, 64, 1, 584]``, top-k 512/1024) or C128
    (``[pages, 2, 1, 584]``) cache, ``[T, 1, K']`` indices and ``[T]`` lengths, or None.
    Returns out ``[T, 1, H, 512]`` bf16 and lse ``[T, H, 1]`` fp32 (the caller keeps ``[0]``).
    CUDA tensors run the Triton kernel (graph-capturable: the split workspace is allocated once
    per device at the first eager call), CPU tensors the PyTorch reference.
    """
    return flash_mla_with_kvcache(
        q, k_cache, head_dim_v=head_dim_v, softmax_scale=softmax_scale, is_fp8_kvcache=True,
        indices=indices, topk_length=topk_length, attn_sink=attn_sink, extra_k_cache=extra_k_cache,
        extra_indices_in_kvcache=extra_indices_in_kvcache, extra_topk_length=extra_topk_length,
    )
