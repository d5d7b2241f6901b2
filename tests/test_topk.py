"""top-k 512/1024 + page transform vs the PyTorch oracle (CPU: interpreter, small shapes; GPU: real)."""

from __future__ import annotations

import pytest
import torch

from sglang_sm120.kernels.topk import topk_transform_512
from sglang_sm120.reference.topk import topk_transform_ref


def _case(rows: int, width: int, lens: list[int], pages: int, device: str = "cpu", ties: bool = False):
    g = torch.Generator().manual_seed(rows * 7919 + width)
    scores = torch.randn(rows, width, generator=g)
    if ties:
        scores = torch.randint(0, 3, (rows, width), generator=g).float()
    pt = torch.randperm(pages * rows * 2, generator=g)[: rows * pages].reshape(rows, pages).int()
    return scores.to(device), torch.tensor(lens, dtype=torch.int32, device=device), pt.to(device)


def _run_both(scores, lens, pt, k=512, page_size=64, lens_2d=False):
    rows = scores.shape[0]
    out = torch.empty(rows, k, dtype=torch.int32, device=scores.device)
    raw = torch.empty_like(out)
    sl = lens[:, None] if lens_2d else lens
    topk_transform_512(scores, sl, pt, out, page_size, raw)
    ref, ref_raw = torch.empty_like(out), torch.empty_like(out)
    topk_transform_ref(scores, lens, pt, ref, page_size, ref_raw)
    return out, raw, ref, ref_raw


@pytest.mark.parametrize("lens_2d", [False, True])
def test_short_and_long_rows(lens_2d):
    scores, lens, pt = _case(5, 1300, [0, 1, 511, 512, 1300], 21)
    out, raw, ref, ref_raw = _run_both(scores, lens, pt, lens_2d=lens_2d)
    assert torch.equal(out, ref) and torch.equal(raw, ref_raw)
    assert (out[0] == -1).all() and (out[1, 1:] == -1).all()


def test_ties_and_neg_inf_and_k1024():
    scores, lens, pt = _case(3, 1200, [1200, 700, 1100], 19, ties=True)
    scores[2, :900] = float("-inf")  # fewer finite values than K: selected -inf -> -1
    out, raw, ref, ref_raw = _run_both(scores, lens, pt)
    assert torch.equal(out, ref) and torch.equal(raw, ref_raw)
    assert (out[2] == -1).sum() == 512 - 200
    out, raw, ref, ref_raw = _run_both(scores, lens, pt, k=1024)
    assert torch.equal(out, ref) and torch.equal(raw, ref_raw)


def test_strided_scores_and_page_size():
    base, lens, pt = _case(2, 1500, [1400, 900], 12)
    scores = base[:, :1400]  # row stride 1500
    out, raw, ref, ref_raw = _run_both(scores, lens, pt, page_size=128)
    assert torch.equal(out, ref) and torch.equal(raw, ref_raw)


def test_bad_input():
    scores, lens, pt = _case(2, 600, [600, 600], 10)
    out = torch.empty(2, 512, dtype=torch.int32)
    with pytest.raises(ValueError, match="scores"):
        topk_transform_512(scores.double(), lens, pt, out, 64)
    with pytest.raises(ValueError, match="seq_lens"):
        topk_transform_512(scores, lens.long(), pt, out, 64)
    with pytest.raises(ValueError, match="page_size"):
        topk_transform_512(scores, lens, pt, out, 48)
    with pytest.raises(ValueError, match="out_page_indices"):
        topk_transform_512(scores, lens, pt, torch.empty(2, 300, dtype=torch.int32), 64)


@pytest.mark.gpu
@pytest.mark.parametrize("bs", [1, 8, 64])
@pytest.mark.parametrize("ctx", [8192, 32768, 131072])
def test_gpu_matches_reference(bs, ctx):
    width = ctx // 4
    lens = [max(1, width - 97 * i) for i in range(bs)]
    lens[0] = min(lens[0], 300)  # a short row
    scores, sl, pt = _case(bs, width, lens, width // 64, device="cuda", ties=bs == 8)
    out, raw, ref, ref_raw = _run_both(scores, sl, pt)
    # exact: both select ties by smallest index and emit ascending index order
    assert torch.equal(out, ref) and torch.equal(raw, ref_raw)
    # set equality with torch.topk where values are distinct (non-tie rows)
    if bs != 8:
        for r in range(bs):
            n = lens[r]
            if n > 512:
                want = torch.topk(scores[r, :n], 512).indices.sort().values.int()
                assert torch.equal(raw[r], want)


@pytest.mark.gpu
def test_gpu_cuda_graph():
    scores, sl, pt = _case(16, 8192, [8192 - 300 * i for i in range(16)], 128, device="cuda")
    out = torch.empty(16, 512, dtype=torch.int32, device="cuda")
    topk_transform_512(scores, sl, pt, out, 64)  # warm up / compile
    eager = out.clone()
    out.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        topk_transform_512(scores, sl, pt, out, 64)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
