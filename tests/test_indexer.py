"""Indexer logits (paged + ragged) and the chunked logits->top-k path vs the PyTorch oracles.

Tolerance: both sides multiply identical e4m3 values and accumulate in fp32; only the summation order
differs, so logits agree to ~1e-6 relative to the row's largest magnitude (we allow 1e-5).
"""

from __future__ import annotations

import os

import pytest
import torch

from sglang_sm120.kernels.indexer import fp8_mqa_logits, fp8_paged_mqa_logits, paged_indexer_topk
from sglang_sm120.kernels.topk import topk_transform_512, topk_workspace_numel
from sglang_sm120.reference.indexer import fp8_mqa_logits_ref, fp8_paged_mqa_logits_ref
from sglang_sm120.reference.topk import topk_transform_ref


def make_cache(pages: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = (torch.randn(pages, 64, 128, generator=g) * 2).to(torch.float8_e4m3fn).view(torch.uint8)
    s = (torch.rand(pages, 64, generator=g) + 0.5).view(torch.uint8).reshape(pages, 256)
    return torch.cat([k.reshape(pages, -1), s], 1).reshape(pages, 64, 1, 132).to(device)


def make_q(b: int, next_n: int, device: str = "cpu", seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, next_n, 64, 128, generator=g).to(torch.float8_e4m3fn)
    w = torch.randn(b * next_n, 64, generator=g)
    return q.to(device), w.to(device)


# mma.sync (DISABLE_MMA_V3=1, the SM12x instruction) and the interpreter accumulate FP8 products in fp32.
# Hopper's FP8 wgmma (Triton's default on an H100) keeps fewer accumulator mantissa bits, so the
# relative error there is ~1e-4 of the row's largest logit.
RTOL = 1e-5 if os.environ.get("DISABLE_MMA_V3") == "1" or not torch.cuda.is_available() else 1e-3


def assert_close_logits(out: torch.Tensor, ref: torch.Tensor) -> None:
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), fin)
    assert torch.equal(out[~fin], ref[~fin])
    if fin.any():
        scale = ref[fin].abs().max().clamp_min(1e-6)
        assert ((out - ref)[fin].abs().max() / scale) < RTOL


@pytest.mark.parametrize(
    "next_n,seq_lens_shape", [(1, "B"), (1, "B1"), (2, "B"), (3, "B1"), (4, "Bn")]
)
def test_paged_logits(next_n, seq_lens_shape):
    b, p, pages = 3, 3, 12
    cache = make_cache(pages)
    q, w = make_q(b, next_n)
    lens = [150, 1, 192]
    if seq_lens_shape == "Bn":
        sl = torch.tensor([[max(0, x - next_n + 1 + i) for i in range(next_n)] for x in lens], dtype=torch.int32)
    else:
        sl = torch.tensor(lens, dtype=torch.int32)
        sl = sl[:, None] if seq_lens_shape == "B1" else sl
    pt = torch.randperm(pages)[: b * p].reshape(b, p).int()
    out = fp8_paged_mqa_logits(q, cache, w, sl, pt, None, p * 64, False)
    assert out.shape == (b * next_n, p * 64) and out.dtype == torch.float32
    assert_close_logits(out, fp8_paged_mqa_logits_ref(q, cache, w, sl, pt, p * 64))


def test_multi_tile_chunks_and_dead_columns():
    """Programs of several key tiles (page boundaries inside a chunk), MTP rows, and chunks whose keys no
    row of the group sees: before the group's first key (ragged) and past its last (both layouts)."""
    b, p, pages = 2, 9, 20
    cache = make_cache(pages, seed=21)
    q, w = make_q(b, 2, seed=22)
    sl = torch.tensor([555, 130], dtype=torch.int32)
    pt = torch.randperm(pages)[: b * p].reshape(b, p).int()
    out = fp8_paged_mqa_logits(q, cache, w, sl, pt, None, p * 64 + 10, False)
    assert_close_logits(out, fp8_paged_mqa_logits_ref(q, cache, w, sl, pt, p * 64 + 10))
    g = torch.Generator().manual_seed(23)
    t, n = 6, 700
    qr = torch.randn(t, 64, 128, generator=g).to(torch.float8_e4m3fn)
    k = torch.randn(n, 128, generator=g).to(torch.float8_e4m3fn)
    s = torch.rand(n, generator=g) + 0.5
    wr = torch.randn(t, 64, generator=g)
    ks = torch.tensor([300, 320, 400, 650, 5, 0], dtype=torch.int32)
    ke = torch.tensor([700, 420, 690, 700, 5, 129], dtype=torch.int32)
    out = fp8_mqa_logits(qr, (k, s), wr, ks, ke, False, 0)
    assert_close_logits(out, fp8_mqa_logits_ref(qr, (k, s), wr, ks, ke, 0))


def test_paged_logits_strided_pages_and_wider_output():
    pages = 6
    big = make_cache(pages)
    buf = torch.zeros(pages, 64 * 132 + 64, dtype=torch.uint8)  # padded page stride 8512 B
    buf[:, : 64 * 132] = big.reshape(pages, -1)
    cache = buf[:, : 64 * 132].view(pages, 64, 1, 132)
    q, w = make_q(2, 1)
    sl = torch.tensor([128, 100], dtype=torch.int32)
    pt = torch.tensor([[5, 2], [0, 3]], dtype=torch.int32)
    out = fp8_paged_mqa_logits(q, cache, w, sl, pt, None, 200, True)  # width > 2 pages
    assert_close_logits(out, fp8_paged_mqa_logits_ref(q, big, w, sl, pt, 200))


@pytest.mark.parametrize("max_seqlen_k", [0, 100])
def test_ragged_logits(max_seqlen_k):
    g = torch.Generator().manual_seed(3)
    t, n = 7, 150
    q = torch.randn(t, 64, 128, generator=g).to(torch.float8_e4m3fn)
    k = torch.randn(n, 128, generator=g).to(torch.float8_e4m3fn)
    s = torch.rand(n, generator=g) + 0.5
    w = torch.randn(t, 64, generator=g)
    ks = torch.tensor([0, 0, 10, 100, 3, 140, 0], dtype=torch.int32)
    ke = torch.tensor([5, 150, 90, 149, 3, 150, 64], dtype=torch.int32)
    out = fp8_mqa_logits(q, (k, s), w, ks, ke, clean_logits=False, max_seqlen_k=max_seqlen_k)
    assert_close_logits(out, fp8_mqa_logits_ref(q, (k, s), w, ks, ke, max_seqlen_k))


def test_chunked_indexer_topk_matches_unchunked():
    b, p, pages = 5, 10, 60
    cache = make_cache(pages, seed=5)
    q, w = make_q(b, 1, seed=6)
    sl = torch.tensor([640, 513, 12, 600, 512], dtype=torch.int32)
    pt = torch.randperm(pages)[: b * p].reshape(b, p).int()
    out = torch.empty(b, 512, dtype=torch.int32)
    raw = torch.empty_like(out)
    # cap of 2 rows' logits -> 3 chunks
    paged_indexer_topk(q, cache, w, sl[:, None], pt, out, raw, max_logits_bytes=2 * p * 64 * 4)
    logits = fp8_paged_mqa_logits_ref(q, cache, w, sl, pt, p * 64)
    ref, ref_raw = torch.empty_like(out), torch.empty_like(out)
    topk_transform_ref(logits, sl, pt, ref, 64, ref_raw)
    assert torch.equal(raw, ref_raw) and torch.equal(out, ref)


def test_bad_input():
    cache = make_cache(4)
    q, w = make_q(2, 1)
    sl = torch.tensor([10, 20], dtype=torch.int32)
    pt = torch.zeros(2, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="q_fp8"):
        fp8_paged_mqa_logits(q.float(), cache, w, sl, pt, None, 128)
    with pytest.raises(ValueError, match="kv_cache_fp8"):
        fp8_paged_mqa_logits(q, cache.view(4, 32, 2, 132), w, sl, pt, None, 128)
    with pytest.raises(ValueError, match="weights"):
        fp8_paged_mqa_logits(q, cache, w[:1], sl, pt, None, 128)
    with pytest.raises(ValueError, match="seq_lens"):
        fp8_paged_mqa_logits(q, cache, w, sl[:, None].expand(2, 3), pt, None, 128)
    with pytest.raises(ValueError, match="seq_lens"):
        fp8_paged_mqa_logits(q, cache, w, sl.long(), pt, None, 128)
    with pytest.raises(ValueError, match="page_table"):
        fp8_paged_mqa_logits(q, cache, w, sl, pt[:1], None, 128)
    with pytest.raises(ValueError, match="topk_workspace"):
        idx = torch.empty(2, 512, dtype=torch.int32)
        tws = torch.empty(10, dtype=torch.int32)
        paged_indexer_topk(q, cache, w, sl, torch.zeros(2, 80, dtype=torch.int32), idx, topk_workspace=tws)
    with pytest.raises(ValueError, match="cu_seq_len_k_end"):
        fp8_mqa_logits(q[:, 0], (cache[0, :, 0, :128].contiguous().view(torch.float8_e4m3fn), torch.ones(64)),
                       w, sl, sl[:1])


# ---------------------------------------------------------------- GPU (real shapes)


def _gpu_case(bs: int, ctx: int, next_n: int, seed: int = 0):
    c4 = ctx // 4
    p = c4 // 64
    pages = bs * p + 7
    cache = make_cache(pages, "cuda", seed)
    q, w = make_q(bs, next_n, "cuda", seed + 1)
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, c4 + 1, (bs,), generator=g)
    lens[0] = c4
    if bs > 1:
        lens[1] = min(300, c4)  # a row shorter than 512
    pt = torch.randperm(pages, generator=g)[: bs * p].reshape(bs, p).int()
    return cache, q, w, lens.int().cuda(), pt.cuda(), p * 64


@pytest.mark.gpu
@pytest.mark.parametrize("bs,ctx", [(1, 131072), (8, 32768), (32, 8192), (64, 8192), (4, 131072)])
@pytest.mark.parametrize("next_n", [1, 2, 4])
def test_gpu_paged_logits(bs, ctx, next_n):
    cache, q, w, sl, pt, width = _gpu_case(bs, ctx, next_n)
    out = fp8_paged_mqa_logits(q, cache, w, sl[:, None], pt, None, width, False)
    assert_close_logits(out, fp8_paged_mqa_logits_ref(q, cache, w, sl, pt, width))


@pytest.mark.gpu
def test_gpu_ragged_logits():
    g = torch.Generator().manual_seed(9)
    t, n = 1000, 4096
    q = torch.randn(t, 64, 128, generator=g).to(torch.float8_e4m3fn).cuda()
    k = torch.randn(n, 128, generator=g).to(torch.float8_e4m3fn).cuda()
    s = (torch.rand(n, generator=g) + 0.5).cuda()
    w = torch.randn(t, 64, generator=g).cuda()
    ke = (torch.arange(t) * 4 + 4).clamp_max(n).int().cuda()
    ks = (ke - 3000).clamp_min(0).int()
    for msk in (0, 3072):
        out = fp8_mqa_logits(q, (k, s), w, ks, ke, False, msk)
        assert_close_logits(out, fp8_mqa_logits_ref(q, (k, s), w, ks, ke, msk))


@pytest.mark.gpu
@pytest.mark.parametrize("bs,ctx", [(1, 131072), (32, 32768), (64, 8192)])
def test_gpu_indexer_topk_sets(bs, ctx):
    cache, q, w, sl, pt, width = _gpu_case(bs, ctx, 1, seed=4)
    out = torch.empty(bs, 512, dtype=torch.int32, device="cuda")
    raw = torch.empty_like(out)
    paged_indexer_topk(q, cache, w, sl, pt, out, raw, max_logits_bytes=width * 4 * 3)
    logits = fp8_paged_mqa_logits_ref(q, cache, w, sl, pt, width)
    for r in range(bs):
        n = int(sl[r])
        got = raw[r][raw[r] >= 0]
        if n <= 512:
            assert torch.equal(got.long().cpu(), torch.arange(n))
            continue
        # compare as sets with a value check: rounding may swap near-ties at the threshold
        ref_vals = torch.topk(logits[r, :n], 512).values
        got_vals = logits[r, got.long()].sort(descending=True).values
        assert got.numel() == 512 and got.unique().numel() == 512
        assert torch.allclose(got_vals, ref_vals, rtol=RTOL, atol=RTOL * ref_vals.abs().max().item())
    slots = pt.long().gather(1, (raw.clamp_min(0) // 64).long()) * 64 + raw.clamp_min(0) % 64
    assert torch.equal(torch.where(raw >= 0, slots, -1).int(), out)


@pytest.mark.gpu
@pytest.mark.parametrize("next_n", [1, 4])
def test_gpu_cuda_graph_replay(next_n):
    cache, q, w, sl, pt, width = _gpu_case(16, 32768, next_n, seed=7)
    out = torch.empty(16 * next_n, width, dtype=torch.float32, device="cuda")
    idx = torch.empty(16, 512, dtype=torch.int32, device="cuda")
    ws = torch.empty(4 * width, dtype=torch.float32, device="cuda")
    tws = torch.empty(topk_workspace_numel(4, width), dtype=torch.int32, device="cuda")

    def step():
        fp8_paged_mqa_logits(q, cache, w, sl[:, None], pt, None, width, False, out=out)
        if next_n == 1:
            paged_indexer_topk(
                q, cache, w, sl, pt, idx, max_logits_bytes=4 * width * 4, workspace=ws, topk_workspace=tws
            )

    step()
    eager_out, eager_idx = out.clone(), idx.clone()
    out.zero_()
    idx.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager_out)
    if next_n == 1:  # top-k runs only for next_n == 1; otherwise idx is never written
        assert torch.equal(idx, eager_idx)
    sl.sub_(5)  # new lengths, same graph
    graph.replay()
    fresh = fp8_paged_mqa_logits(q, cache, w, sl[:, None], pt, None, width, False)
    torch.cuda.synchronize()
    assert torch.equal(out, fresh)


def test_topk_binding_shapes_from_logits():
    """The logits output feeds topk_transform_512 directly (SGLang's two-call sequence)."""
    cache = make_cache(30, seed=11)
    q, w = make_q(2, 1, seed=12)
    sl = torch.tensor([[700], [64]], dtype=torch.int32)
    pt = torch.randperm(30)[:24].reshape(2, 12).int()
    logits = fp8_paged_mqa_logits(q, cache, w, sl, pt, None, 12 * 64, False)
    out = torch.empty(2, 512, dtype=torch.int32)
    topk_transform_512(logits, sl[:, 0], pt, out, 64)
    ref = torch.empty_like(out)
    topk_transform_ref(fp8_paged_mqa_logits_ref(q, cache, w, sl, pt, 12 * 64), sl[:, 0], pt, ref, 64)
    assert torch.equal(out, ref)
