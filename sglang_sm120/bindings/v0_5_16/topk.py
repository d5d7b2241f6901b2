"""SGLang 0.5.16 DSV4 top-k transform -> our kernel.

``dsv4.indexer`` binds ``topk_transform_512`` at import (``from sglang.jit_kernel.dsv4 import ...``);
``forward_c4_indexer`` calls it with ``(logits, c4_seq_lens[T], page_table, c4_sparse_page_indices[T, K],
64, raw_indices|None)`` whenever ``SGLANG_OPT_USE_TOPK_V2`` is off (forced off on SM120; the v2 cluster
kernel stays poisoned).
"""

from sglang_sm120.bindings.indexer import topk_transform_512

__all__ = ["topk_transform_512"]
