"""Plain-PyTorch oracle (and CPU fallback) for DeepSeek-V4 sparse MLA attention.

KV cache layout ("V4"/FlashMLA MODEL1, 584 B per token), one page of ``P`` tokens::

    [P x 576 B data rows: 448 float8_e4m3fn NoPE | 64 bf16 RoPE][P x 8 B: 7 UE8M0 scales | pad]
    page stride = ceil(P * 584 / 576) * 576 bytes

A slot index is ``page * P + offset``; ``-1`` marks an invalid slot.  Attention of query row
``t`` over the union of the main and extra candidate lists, with a per-head sink logit in the
softmax denominator (FlashMLA semantics: the returned lse excludes the sink; a row without any
valid candidate gives ``out = 0`` and ``lse = +inf``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

NOPE_DIM = 448
ROPE_DIM = 64
HEAD_DIM = NOPE_DIM + ROPE_DIM  # 512
DATA_BYTES = NOPE_DIM + 2 * ROPE_DIM  # 576
SCALE_BYTES = 8  # 7 UE8M0 + 1 pad
TOKEN_BYTES = DATA_BYTES + SCALE_BYTES  # 584
QUANT_TILE = 64
NUM_TILES = NOPE_DIM // QUANT_TILE  # 7
DEFAULT_SCALE = HEAD_DIM**-0.5


def page_bytes(page_size: int) -> int:
    """Byte stride of one page of ``page_size`` tokens (padded to a multiple of 576)."""
    return math.ceil(page_size * TOKEN_BYTES / DATA_BYTES) * DATA_BYTES


def pack_kv_cache(kv: torch.Tensor) -> torch.Tensor:
    """Quantize ``kv [num_pages, P, 512]`` (float) into the 584 B/token layout.

    Returns the SGLang/FlashMLA view ``[num_pages, P, 1, 584]`` uint8 whose ``stride(0)`` is
    the padded page stride (same as ``buffer[:, :P*584].view(num_pages, P, 1, 584)``).
    UE8M0 scale per 64 NoPE values: ``2^ceil(log2(max(amax, 1e-4) / 448))`` (SGLang's writer).
    """
    if kv.ndim != 3 or kv.shape[-1] != HEAD_DIM:
        raise ValueError(f"kv: expected [num_pages, page_size, {HEAD_DIM}], got {tuple(kv.shape)}")
    num_pages, p, _ = kv.shape
    x = kv.float()
    nope = x[..., :NOPE_DIM].reshape(num_pages, p, NUM_TILES, QUANT_TILE)
    amax = nope.abs().amax(-1).clamp_min(1e-4)
    exp = torch.ceil(torch.log2(amax / 448.0))
    q8 = (nope / torch.exp2(exp)[..., None]).to(torch.float8_e4m3fn).view(torch.uint8)
    buf = torch.zeros(num_pages, page_bytes(p), dtype=torch.uint8, device=kv.device)
    data = buf[:, : p * DATA_BYTES].view(num_pages, p, DATA_BYTES)
    data[..., :NOPE_DIM] = q8.reshape(num_pages, p, NOPE_DIM)
    data[..., NOPE_DIM:] = x[..., NOPE_DIM:].to(torch.bfloat16).contiguous().view(torch.uint8)
    scales = buf[:, p * DATA_BYTES : p * TOKEN_BYTES].view(num_pages, p, SCALE_BYTES)
    scales[..., :NUM_TILES] = (exp + 127).to(torch.uint8)
    return buf[:, : p * TOKEN_BYTES].view(num_pages, p, 1, TOKEN_BYTES)


def raw_pages(k_cache: torch.Tensor) -> torch.Tensor:
    """``[num_pages, page_stride]`` uint8 view of a ``[num_pages, P, 1, 584]`` cache view."""
    stride = k_cache.stride(0)
    return k_cache.view(torch.uint8).as_strided((k_cache.shape[0], stride), (stride, 1))


def dequant_kv(k_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Dequantize the rows ``slots [N]`` (int, >= 0) of ``k_cache``; returns ``[N, 512]`` fp32."""
    p = k_cache.shape[1]
    rows = raw_pages(k_cache)[torch.div(slots, p, rounding_mode="floor").long()]
    off = (slots % p).long()
    ar = torch.arange(DATA_BYTES, device=slots.device)
    data = torch.gather(rows, 1, (off * DATA_BYTES)[:, None] + ar)
    sidx = (p * DATA_BYTES + off * SCALE_BYTES)[:, None] + torch.arange(NUM_TILES, device=slots.device)
    scale = torch.exp2(torch.gather(rows, 1, sidx).float() - 127.0)
    nope = data[:, :NOPE_DIM].contiguous().view(torch.float8_e4m3fn).float().view(-1, NUM_TILES, QUANT_TILE)
    rope = data[:, NOPE_DIM:].contiguous().view(torch.bfloat16).float()
    return torch.cat([(nope * scale[:, :, None]).view(-1, NOPE_DIM), rope], 1)


def _gather(
    fetch: Callable[[torch.Tensor], torch.Tensor], indices: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[T, K, 512]`` fp32 (``fetch``: slots ``[n]`` -> bf16 rows ``[n, 512]``; invalid ones zeroed) and the
    invalid mask ``[T, K]`` (-1 or past the row's length)."""
    t, k = indices.shape
    bad = indices < 0
    if lengths is not None:
        bad = bad | (torch.arange(k, device=indices.device)[None, :] >= lengths[:, None].long())
    rows = fetch(indices.clamp_min(0).reshape(-1)).float()
    return rows.view(t, k, HEAD_DIM).masked_fill(bad[..., None], 0.0), bad


def _fp8_rows(k_cache: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Slots -> dequantised rows of a paged fp8 cache, bf16-rounded like FlashMLA."""
    return lambda slots: dequant_kv(k_cache, slots).to(torch.bfloat16)


def sparse_mla_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    softmax_scale: float = DEFAULT_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse MLA over paged fp8 caches.

    q ``[T, H, 512]`` bf16; k_cache / extra_k_cache ``[pages, P, 1, 584]`` uint8 views;
    indices ``[T, K]`` / extra_indices ``[T, K']`` int32 slots (-1 invalid); lengths ``[T]``
    int32 (only the first ``len`` slots count); attn_sink ``[H]`` fp32 logits.
    Returns out ``[T, H, 512]`` bf16 and lse ``[T, H]`` fp32 (natural log, sink excluded).
    """
    kv, bad = _gather(_fp8_rows(k_cache), indices, topk_length)
    if extra_k_cache is not None:
        kv1, bad1 = _gather(_fp8_rows(extra_k_cache), extra_indices, extra_topk_length)
        kv, bad = torch.cat([kv, kv1], 1), torch.cat([bad, bad1], 1)
    return _attend(q, kv, bad, attn_sink, softmax_scale)


def sparse_mla_bf16_ref(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    softmax_scale: float = DEFAULT_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse MLA over flat bf16 rows ``kv [N, 1, 512]`` (or ``[N, 512]``), indices ``>= N`` invalid like -1; the
    rest as :func:`sparse_mla_ref`."""
    rows = kv.reshape(-1, HEAD_DIM)
    indices = indices.masked_fill(indices >= rows.shape[0], -1)
    return _attend(q, *_gather(lambda slots: rows[slots.long()], indices, topk_length), attn_sink, softmax_scale)


def _attend(
    q: torch.Tensor, kv: torch.Tensor, bad: torch.Tensor, attn_sink: torch.Tensor | None, softmax_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q ``[T, H, 512]`` over gathered rows ``kv [T, K, 512]`` fp32 (``bad [T, K]`` masked)."""
    z = torch.einsum("thd,tkd->thk", q.float(), kv) * softmax_scale
    z = z.masked_fill(bad[:, None, :], float("-inf"))
    lse = torch.logsumexp(z, -1)
    lonely = lse == float("-inf")
    denom = lse if attn_sink is None else torch.logaddexp(lse, attn_sink.float()[None, :].expand_as(lse))
    denom = denom.masked_fill(lonely, float("inf"))
    out = torch.einsum("thk,tkd->thd", torch.exp(z - denom[..., None]), kv)
    return out.to(torch.bfloat16), lse.masked_fill(lonely, float("inf"))
