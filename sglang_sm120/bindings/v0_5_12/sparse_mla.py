"""Sparse MLA for SGLang 0.5.12: a ``flash_mla`` module backed by our kernel (a ``shim``).

0.5.12 has no SM120 path: ``srt/layers/attention/deepseek_v4_backend.py`` does ``import flash_mla``
inside ``_create_flashmla_metadata`` (``flash_mla.get_mla_metadata()[0]``, recreated every forward,
also during CUDA-graph capture) and inside ``DeepseekV4AttnBackend.forward``
(``flash_mla.flash_mla_with_kvcache(q=[T, 1, H, 512], k_cache=..., block_table=None,
cache_seqlens=None, tile_scheduler_metadata=..., is_fp8_kvcache=True, indices=..., ...)[0]``, for
decode, extend/prefill and MTP alike).  ``sys.modules["flash_mla"]`` = :data:`flash_mla` answers
both imports, whether or not the real FlashMLA package is installed.
"""

from __future__ import annotations

import importlib.machinery
import types

from sglang_sm120.kernels.sparse_mla import flash_mla_with_kvcache, get_mla_metadata

flash_mla = types.ModuleType(
    "flash_mla",
    "sglang-sm120 stand-in for FlashMLA: get_mla_metadata and flash_mla_with_kvcache (sparse fp8 V4 cache) "
    "on sglang_sm120.kernels.sparse_mla (Triton on CUDA tensors, PyTorch reference on CPU tensors).",
)
flash_mla.__spec__ = importlib.machinery.ModuleSpec("flash_mla", None)
flash_mla.get_mla_metadata = get_mla_metadata
flash_mla.flash_mla_with_kvcache = flash_mla_with_kvcache
flash_mla.__all__ = ["flash_mla_with_kvcache", "get_mla_metadata"]
