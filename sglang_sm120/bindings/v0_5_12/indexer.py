"""SGLang 0.5.12 DSV4 indexer logits -> our kernel.

With ``SGLANG_FP8_PAGED_MQA_LOGITS_TORCH=1`` (our env default) ``C4IndexerBackendMixin.forward_c4_indexer``
calls the module global ``dsv4.indexer.fp8_paged_mqa_logits_torch`` (looked up at call time) with seq_lens
``[T, 1]`` (the shipped fallback asserts ``[T]`` and syncs per row); ``PagedIndexerMetadata`` then skips
DeepGEMM / JIT ``get_paged_mqa_logits_metadata``. 0.5.12 has no non-paged (ragged) prefill logits path:
prefill, decode and MTP rows all come through this call.
"""

from sglang_sm120.bindings.indexer import fp8_paged_mqa_logits

__all__ = ["fp8_paged_mqa_logits"]
