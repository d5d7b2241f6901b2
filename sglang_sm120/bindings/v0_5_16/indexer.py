"""SGLang 0.5.16 DSV4 indexer logits -> our kernel.

On SM12x SGLang's server-arg hook (``server_args.py``, DeepseekV4 SM120 block) forces
``SGLANG_FP8_PAGED_MQA_LOGITS_TORCH=1`` and ``SGLANG_OPT_USE_TILELANG_INDEXER=1``, so
``C4IndexerBackendMixin.forward_c4_indexer`` picks, per call:

* TileLang: ``from sglang.kernels.ops.attention.dsa.tilelang_kernel import tilelang_fp8_paged_mqa_logits``
  (call-time import: patching the module attribute is enough), seq_lens passed as ``[T]``;
* torch (TileLang off): module global ``dsv4.indexer.fp8_paged_mqa_logits_torch_sm120``, seq_lens ``[T, 1]``.

Both are bound to :func:`fp8_paged_mqa_logits`. The DeepGEMM branches (paged ``fp8_paged_mqa_logits``,
and the non-paged prefill ``fp8_mqa_logits`` of ``_forward_nonpaged_indexer``) are unreachable while
``SGLANG_FP8_PAGED_MQA_LOGITS_TORCH`` is on (``_can_use_nonpaged_indexer`` returns False), which also makes
``PagedIndexerMetadata`` skip DeepGEMM / JIT ``get_paged_mqa_logits_metadata``.
"""

from sglang_sm120.bindings.indexer import fp8_paged_mqa_logits

__all__ = ["fp8_paged_mqa_logits"]
