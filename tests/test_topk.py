"""top-k 512/1024 + page transform vs the PyTorch oracle (CPU: interpreter, small shapes; GPU: real)."""

from __future__ import annotations

import pytest
import torch

from sglang_sm120.kernels import topk as topk_mod
from sglang_sm120.kernels.topk import topk_transform_512, topk_workspace_numel
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


@pytest.mark.parametrize("k", [512, 1024])
def test_multi_level_tree(k):
    """Rows longer than one chunk: chunk-local top-K lists, then further levels, then the final select.

    K 512: one non-final level, final over 3072 candidates (block 4096); K 1024: two non-final levels
    (the second from lists), final over 2048 (block 2048)."""
    chunk = topk_mod._CHUNK
    width = 5 * chunk + 300
    lens = [width, width - 1000, 700, chunk + 1, 3 * chunk]
    scores, sl, pt = _case(5, width, lens, width // 64 + 1)
    scores[1, ::3] = float("-inf")
    scores[2] = torch.randint(0, 4, (width,)).float()  # ties across chunks: smallest indices win
    scores[4, : 3 * chunk - k // 2] = float("-inf")  # fewer finite scores than K
    out, raw, ref, ref_raw = _run_both(scores, sl, pt, k=k)
    assert torch.equal(out, ref) and torch.equal(raw, ref_raw)
    ties = torch.randint(0, 2, (5, width)).float()
    ws = torch.empty(topk_workspace_numel(5, width, k), dtype=torch.int32)
    got = torch.empty(5, k, dtype=torch.int32)
    topk_transform_512(ties, sl, pt, got, 64, workspace=ws)
    want = torch.empty_like(got)
    topk_transform_ref(ties, sl, pt, want, 64)
    assert torch.equal(got, want)


def test_cached_scratch():
    """Without ``workspace`` a multi-level call uses the per-device cached scratch, reused by later calls."""
    topk_mod._SCRATCH.clear()
    scores, lens, pt = _case(2, 4500, [4500, 4400], 71)
    out, raw, ref, ref_raw = _run_both(scores, lens, pt)
    assert torch.equal(out, ref) and torch.equal(raw, ref_raw)
    (bufs,) = topk_mod._SCRATCH.values()
    assert len(bufs) == 1 and bufs[0].numel() >= topk_workspace_numel(2, 4500)
    out2, raw2, _, _ = _run_both(scores[:1], lens[:1], pt[:1])
    assert len(bufs) == 1 and torch.equal(out2, ref[:1]) and torch.equal(raw2, ref_raw[:1])


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
    with pytest.raises(ValueError, match="workspace"):
        wide = torch.randn(2, 20000)
        topk_transform_512(wide, lens, pt, out, 64, workspace=torch.empty(10, dtype=torch.int32))


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
@pytest.mark.parametrize("warm", [True, False])
def test_gpu_cuda_graph(warm):
    """The bindings' call (no workspace): with an eager warm-up the capture uses the cached scratch, without
    one it allocates from the graph pool; a later eager call that grows the cache keeps the graph valid."""
    topk_mod._SCRATCH.clear()
    scores, sl, pt = _case(16, 8192, [8192 - 300 * i for i in range(16)], 128, device="cuda")
    out = torch.empty(16, 512, dtype=torch.int32, device="cuda")
    ref = torch.empty_like(out)
    topk_transform_ref(scores, sl, pt, ref, 64)
    if warm:
        topk_transform_512(scores, sl, pt, out, 64)  # warm up / compile, sizes the cached scratch
        assert torch.equal(out, ref)
        out.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        topk_transform_512(scores, sl, pt, out, 64)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, ref)
    wide, wsl, wpt = _case(16, 32768, [32768] * 16, 512, device="cuda")
    topk_transform_512(wide, wsl, wpt, torch.empty_like(out), 64)  # grows the cache
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, ref)
