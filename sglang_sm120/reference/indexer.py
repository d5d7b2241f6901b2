"""PyTorch oracles for the DeepSeek-V4 lightning-indexer logits (also the CPU fallback).

``logit[r, j] = k_scale[j] * sum_h w[r, h] * relu(<q8[r, h], k8[j]>)`` with fp8 e4m3 ``q8``/``k8``.

Paged cache (``[num_pages, 64, 1, 132]`` uint8): per page 64 x 128 e4m3 key bytes, then 64 fp32 scales.
Positions outside a row's valid range are ``-inf``.
"""

from __future__ import annotations

import torch

INDEX_HEAD_DIM = 128
PAGE_TOKENS = 64


def row_lengths(seq_lens: torch.Tensor, batch: int, next_n: int) -> torch.Tensor:
    """Valid key count per query row, ``[batch * next_n]`` int64.

    ``seq_lens`` ``[B]`` or ``[B, 1]``: the request's context length L; MTP row n sees ``L - next_n + n + 1``
    keys (causal among the draft tokens). ``[B, next_n]`` (next_n > 1): one length per row.
    """
    sl = seq_lens.to(torch.int64)
    if sl.dim() == 2 and sl.shape[1] == next_n and next_n > 1:
        return sl.reshape(-1)
    sl = sl.reshape(batch, 1)
    offs = torch.arange(next_n, device=sl.device) + 1 - next_n
    return (sl + offs[None, :]).reshape(-1)


def dequant_paged_k(kv_cache: torch.Tensor, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of ``pages`` (``[n]`` int64) as fp32 e4m3 values ``[n*64, 128]`` and scales ``[n*64]``."""
    flat = kv_cache.reshape(kv_cache.shape[0], -1)[pages]
    k = flat[:, : PAGE_TOKENS * INDEX_HEAD_DIM].contiguous().view(torch.float8_e4m3fn).float()
    s = flat[:, PAGE_TOKENS * INDEX_HEAD_DIM :].contiguous().view(torch.float32)
    return k.reshape(-1, INDEX_HEAD_DIM), s.reshape(-1)


def _scores(q: torch.Tensor, w: torch.Tensor, k: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """q ``[R, H, D]`` fp32, w ``[R, H]``, k ``[N, D]``, s ``[N]`` -> ``[R, N]`` fp32."""
    qk = torch.einsum("rhd,nd->rhn", q, k).relu_()
    return torch.einsum("rhn,rh->rn", qk, w.float()) * s[None, :]


def fp8_paged_mqa_logits_ref(
    q_fp8: torch.Tensor,
    kv_cache: torch.Tensor,
    weights: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    max_seq_len: int,
) -> torch.Tensor:
    """q ``[B, next_n, H, 128]`` e4m3, kv_cache ``[pages, 64, 1, 132]`` u8, weights ``[B*next_n, H]`` fp32,
    seq_lens ``[B]``/``[B,1]``/``[B,next_n]`` int, page_table ``[B, P]`` int -> ``[B*next_n, max_seq_len]`` fp32.
    """
    b, nn, h, d = q_fp8.shape
    lens = row_lengths(seq_lens, b, nn).clamp(0, min(max_seq_len, page_table.shape[1] * PAGE_TOKENS))
    out = torch.full((b * nn, max_seq_len), float("-inf"), dtype=torch.float32, device=q_fp8.device)
    qf = q_fp8.float().reshape(b, nn, h, d)
    for i in range(b):
        n_tok = int(lens[i * nn : (i + 1) * nn].max())
        if n_tok <= 0:
            continue
        n_pages = (n_tok + PAGE_TOKENS - 1) // PAGE_TOKENS
        k, s = dequant_paged_k(kv_cache, page_table[i, :n_pages].long())
        sc = _scores(qf[i], weights[i * nn : (i + 1) * nn], k[:n_tok], s[:n_tok])
        pos = torch.arange(n_tok, device=sc.device)
        sc = sc.masked_fill(pos[None, :] >= lens[i * nn : (i + 1) * nn, None], float("-inf"))
        out[i * nn : (i + 1) * nn, :n_tok] = sc
    return out


def fp8_mqa_logits_ref(
    q_fp8: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor],
    weights: torch.Tensor,
    cu_seq_len_k_start: torch.Tensor,
    cu_seq_len_k_end: torch.Tensor,
    max_seqlen_k: int = 0,
) -> torch.Tensor:
    """Ragged (prefill) logits. q ``[T, H, 128]`` e4m3; kv = (k ``[N, 128]`` e4m3, scale ``[N]`` fp32);
    weights ``[T, H]``; row t sees keys ``[ks[t], ke[t])``. Returns ``[T, N]`` (column = key index) or, with
    ``max_seqlen_k > 0``, ``[T, max_seqlen_k]`` (column = key index - ks[t]); ``-inf`` elsewhere.
    """
    k8, ks8 = kv
    n = k8.shape[0]
    sc = _scores(q_fp8.float(), weights, k8.float(), ks8.float())
    pos = torch.arange(n, device=sc.device)[None, :]
    lo, hi = cu_seq_len_k_start.long()[:, None], cu_seq_len_k_end.long()[:, None]
    sc = sc.masked_fill((pos < lo) | (pos >= hi), float("-inf"))
    if max_seqlen_k <= 0:
        return sc
    t = q_fp8.shape[0]
    out = torch.full((t, max_seqlen_k), float("-inf"), dtype=torch.float32, device=sc.device)
    for r in range(t):
        a, e = int(lo[r].clamp_min(0)), int(hi[r].clamp_max(n))
        w = min(max(e - a, 0), max_seqlen_k)
        out[r, :w] = sc[r, a : a + w]
    return out
