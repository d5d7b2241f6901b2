"""PyTorch oracle for SGLang's ``topk_transform_512`` (also the CPU fallback).

Per row r with length ``L = seq_lens[r]`` (only ``scores[r, :L]`` is read):

* ``L <= K``: raw indices ``0..L-1`` in order, then ``-1``;
* ``L > K``: the K largest scores; ties at the threshold go to the smallest indices; output in ascending
  index order (deterministic; SGLang's CUDA kernels emit an arbitrary order of the same set).

Raw index i becomes the slot ``page_table[r, i // page_size] * page_size + i % page_size``; a selected
``-inf`` score becomes ``-1`` (as SGLang's torch fallback does).
"""

from __future__ import annotations

import torch


def topk_transform_ref(
    scores: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    out_page_indices: torch.Tensor,
    page_size: int,
    out_raw_indices: torch.Tensor | None = None,
) -> None:
    """scores ``[R, W]`` fp32, seq_lens ``[R]``/``[R,1]`` int, page_table ``[R, P]`` int32,
    out_page_indices ``[R, K]`` int32 (written), out_raw_indices optional ``[R, K]`` int32 (written)."""
    rows, k = out_page_indices.shape
    lens = seq_lens.reshape(-1).long().clamp_min(0)
    raw = torch.full((rows, k), -1, dtype=torch.int64, device=scores.device)
    for r in range(rows):
        n = int(lens[r])
        if n <= k:
            raw[r, :n] = torch.arange(n, device=scores.device)
            continue
        n = min(n, scores.shape[1])
        row = scores[r, :n].float()
        # stable sort descending: equal scores keep ascending index order
        order = torch.sort(row, descending=True, stable=True).indices[:k]
        sel = torch.sort(order).values
        sel = torch.where(row[sel] == float("-inf"), torch.full_like(sel, -1), sel)
        raw[r] = sel
    valid = raw >= 0
    idx = raw.clamp_min(0)
    pages = torch.gather(page_table.long(), 1, (idx // page_size).clamp_max(page_table.shape[1] - 1))
    slots = torch.where(valid, pages * page_size + idx % page_size, torch.full_like(raw, -1))
    out_page_indices.copy_(slots.to(torch.int32))
    if out_raw_indices is not None:
        out_raw_indices.copy_(raw.to(torch.int32))
