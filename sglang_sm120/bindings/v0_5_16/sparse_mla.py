"""Sparse MLA for SGLang 0.5.16: ``flash_mla_with_kvcache_sm120`` backed by our kernel, and the sparse prefill
path turned back on.

On SM12x (or under ``SGLANG_SM120=emulate``) ``DeepseekV4AttnBackend.forward``
(``srt/layers/attention/deepseek_v4_backend.py``) sends every DSV4 attention call (decode,
extend/prefill, MTP verify and draft) to
``sglang.kernels.ops.attention.flash_mla_sm120.flash_mla_with_kvcache_sm120``, imported inside the
function at call time, so replacing the module attribute reroutes it; ``_create_flashmla_metadata``
returns None there, so no FlashMLA / FlashInfer / tilelang call is left on the path.

Family ``attention-prefill``: on SM90 the same ``forward`` sends extend batches (``SGLANG_OPT_FLASHMLA_SPARSE_PREFILL``,
on by default) to ``_forward_prefill_sparse``, which dequantises each context token once into a flat bf16
workspace (SGLang's Triton kernels) and runs ``sgl_kernel.flash_mla.flash_mla_sparse_fwd`` on it; the branch is
gated ``not _is_sm120``, so on SM12x every query re-dequantises its candidates.  :func:`forward` takes that
branch on SM12x too, and :func:`flash_mla_sparse_fwd` (our kernel) replaces the sgl-kernel entry it imports at
call time.
"""

from __future__ import annotations

from typing import Any

import torch

from sglang_sm120.kernels.sparse_mla import flash_mla_sparse_fwd, flash_mla_with_kvcache

__all__ = ["flash_mla_sparse_fwd", "flash_mla_with_kvcache_sm120", "forward"]


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


def forward(
    original: Any,
    self: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layer: Any,
    forward_batch: Any,
    compress_ratio: int,
    save_kv_cache: bool = True,
    attn_sink: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Around ``DeepseekV4AttnBackend.forward``: extend batches go to ``self._forward_prefill_sparse`` under
    SGLang's own condition minus its ``not _is_sm120`` term (q ``[T, H, 512]`` or ``[T, 1, H, 512]`` bf16 ->
    out ``[T, H, 512]`` bf16, the SWA cache stored first as ``forward`` does); everything else unchanged."""
    from sglang.srt.environ import envs
    from sglang.srt.layers.attention import deepseek_v4_backend as backend

    meta = getattr(self.forward_metadata, "core_attn_metadata", None)
    if (
        isinstance(meta, backend.DSV4AttnMetadata)
        and forward_batch.forward_mode.is_extend_without_speculative()
        and (q.shape[0] > backend._LARGE_INDEXER_QUERY_THRESHOLD or envs.SGLANG_OPT_FLASHMLA_SPARSE_PREFILL.get())
    ):
        if k is not v or attn_sink is None:
            raise ValueError("DeepseekV4 sparse prefill: expected k is v (shared KV) and an attn_sink [H] fp32")
        if save_kv_cache:
            self.store_cache(layer.layer_id, k, forward_batch)
        return self._forward_prefill_sparse(
            q=q.unsqueeze(1) if q.ndim == 3 else q,
            layer_id=layer.layer_id,
            compress_ratio=compress_ratio,
            forward_batch=forward_batch,
            token_to_kv_pool=self.token_to_kv_pool,
            core_attn_metadata=meta,
            attn_sink=attn_sink,
        )
    return original(self, q, k, v, layer, forward_batch, compress_ratio, save_kv_cache, attn_sink, **kwargs)
