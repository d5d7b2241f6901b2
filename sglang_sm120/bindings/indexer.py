"""DeepSeek-V4 C4 indexer bindings shared by SGLang 0.5.12 and 0.5.16: paged logits and the top-k transform.

Both releases call the logits through one DeepGEMM-shaped contract from
``C4IndexerBackendMixin.forward_c4_indexer`` (``dsv4/indexer.py``)::

    fn(q_fp8, kvcache_fp8, weight, seq_lens, page_table, deep_gemm_metadata, max_seq_len, clean_logits)

q ``[T, 1, 64, 128]`` e4m3 (one row per query token; MTP draft tokens are rows too), kvcache
``[pages, 64, 1, 132]`` uint8 (132 B/token: 64x128 e4m3 keys then 64 fp32 scales per 64-token page),
weight ``[T, 64]`` fp32, seq_lens ``[T]`` or ``[T, 1]`` int32 (the row's causal C4 length),
page_table ``[T, P]`` int32, ``deep_gemm_metadata`` None, ``max_seq_len = P * 64``, ``clean_logits`` False.
Then ``topk_transform_512(logits, seq_lens[T], page_table, out[T, 512|1024], 64, raw_indices|None)``.

CUDA tensors go to our Triton kernels (no host sync, CUDA-graph capturable); CPU tensors to the PyTorch
references, so CPU tests can run SGLang's real call sites.
"""

from __future__ import annotations

import torch

from sglang_sm120.kernels import indexer as indexer_kernels
from sglang_sm120.kernels import topk as topk_kernels
from sglang_sm120.reference.indexer import fp8_paged_mqa_logits_ref
from sglang_sm120.reference.topk import topk_transform_ref

_INT_DTYPES = (torch.int32, torch.int64)


def _int32(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` as int32 (a device-side cast for int64, as SGLang's metadata may hold either)."""
    if t.dtype not in _INT_DTYPES:
        raise ValueError(f"{name}: expected int32 (or int64), got {t.dtype}")
    return t if t.dtype == torch.int32 else t.to(torch.int32)


def fp8_paged_mqa_logits(
    q_fp8: torch.Tensor,
    kvcache_fp8: torch.Tensor,
    weight: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    deep_gemm_metadata: object,
    max_seq_len: int,
    clean_logits: bool = True,
) -> torch.Tensor:
    """SGLang's paged indexer-logits contract (module docstring) -> ``[T * next_n, max_seq_len]`` fp32.

    ``deep_gemm_metadata`` and ``clean_logits`` are ignored: columns at or past a row's length are always
    ``-inf`` (SGLang's top-k reads only ``[:seq_len]``, so this is a superset of every native variant).
    """
    del deep_gemm_metadata, clean_logits
    if q_fp8.dtype != torch.float8_e4m3fn:
        raise ValueError(f"q_fp8: expected float8_e4m3fn [T, next_n, 64, 128], got {q_fp8.dtype}")
    if weight.dtype != torch.float32:
        weight = weight.float()
    seq_lens = _int32("seq_lens", seq_lens)
    page_table = _int32("page_table", page_table)
    if q_fp8.is_cuda:
        return indexer_kernels.fp8_paged_mqa_logits(q_fp8, kvcache_fp8, weight, seq_lens, page_table, None, max_seq_len)
    return fp8_paged_mqa_logits_ref(q_fp8, kvcache_fp8, weight, seq_lens, page_table, max_seq_len)


def topk_transform_512(
    scores: torch.Tensor,
    seq_lens: torch.Tensor,
    page_tables: torch.Tensor,
    out_page_indices: torch.Tensor,
    page_size: int,
    out_raw_indices: torch.Tensor | None = None,
) -> None:
    """SGLang's JIT ``topk_transform_512`` contract; K = ``out_page_indices.shape[1]`` (512 or 1024).

    scores ``[T, W]`` fp32, seq_lens ``[T]`` (or ``[T, 1]``) int32, page_tables ``[T, P]`` int32,
    out_page_indices ``[T, K]`` int32 (written: slot ``page_tables[t, i // page_size] * page_size +
    i % page_size`` of the selected raw index i, ``-1`` padding), out_raw_indices optional ``[T, K]``
    int32 (written: raw indices, ``-1`` padding). Rows with ``seq_len <= K`` select ``0..seq_len-1``.
    Selected indices come in ascending order (SGLang's kernels give the same set in any order).
    """
    seq_lens = _int32("seq_lens", seq_lens)
    page_tables = _int32("page_tables", page_tables)
    if scores.is_cuda:
        topk_kernels.topk_transform_512(scores, seq_lens, page_tables, out_page_indices, page_size, out_raw_indices)
    else:
        topk_transform_ref(scores, seq_lens, page_tables, out_page_indices, page_size, out_raw_indices)
