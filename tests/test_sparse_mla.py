"""Sparse MLA (FlashMLA replacement): reference vs naive dense math, Triton kernel vs reference.

Tolerances.  The kernel sees exactly the reference's inputs (bf16 q, the fp8 cache; dequantized
values are exact in bf16 because UE8M0 scales are powers of two), accumulates QK and PV in fp32,
but rounds the probabilities to bf16 before the PV MMA (as FlashMLA does) and the output to bf16:
about 2^-8 relative each, so ``out`` is checked at atol 2e-2 / rtol 2e-2 (|out| <= ~3 here) and
``lse`` (no bf16 rounding on its path) at 2e-3.  Under the interpreter everything is fp32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_sm120.kernels import sparse_mla as K
from sglang_sm120.reference import sparse_mla as R

OUT_TOL = {"atol": 2e-2, "rtol": 2e-2}
LSE_TOL = {"atol": 2e-3, "rtol": 1e-4}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _case(t, h, p, pages, k0, ep=None, epages=0, k1=0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    cache = R.pack_kv_cache(torch.randn(pages, p, 512, generator=g) * 2).to(device)
    q = torch.randn(t, h, 512, generator=g).bfloat16().to(device)
    idx = torch.randint(0, pages * p, (t, k0), generator=g, dtype=torch.int32).to(device)
    ecache = eidx = None
    if ep is not None:
        ecache = R.pack_kv_cache(torch.randn(epages, ep, 512, generator=g)).to(device)
        eidx = torch.randint(0, epages * ep, (t, k1), generator=g, dtype=torch.int32).to(device)
    sink = torch.randn(h, generator=g).to(device)
    return q, cache, idx, ecache, eidx, sink


def _run(q, cache, idx, ln, sink, ecache, eidx, eln, splits, rows_per_length=1):
    t, h, _ = q.shape
    out = torch.empty(t, h, 512, dtype=torch.bfloat16, device=q.device)
    lse = torch.empty(t, h, dtype=torch.float32, device=q.device)
    ws = K.SparseMLAWorkspace.allocate(t * h * splits, q.device)
    K.sparse_mla_fwd(
        q,
        cache,
        idx,
        ln,
        sink,
        ecache,
        eidx,
        eln,
        out,
        lse,
        ws,
        splits,
        rows_per_length=rows_per_length,
    )
    return out, lse


def _check(out, lse, ref_out, ref_lse):
    torch.testing.assert_close(out.float(), ref_out.float(), **OUT_TOL)
    torch.testing.assert_close(lse, ref_lse, **LSE_TOL)


# --------------------------------------------------------------------------- reference (CPU)


def test_pack_dequant_roundtrip():
    kv = torch.randn(3, 4, 512) * torch.logspace(-3, 2, 12).view(3, 4, 1)
    cache = R.pack_kv_cache(kv)
    assert cache.shape == (3, 4, 1, 584) and cache.stride(0) == R.page_bytes(4) == 2880
    deq = R.dequant_kv(cache, torch.arange(12)).view(3, 4, 512)
    amax = kv[..., :448].reshape(3, 4, 7, 64).abs().amax(-1, keepdim=True)
    err = (deq[..., :448] - kv[..., :448]).reshape(3, 4, 7, 64).abs()
    assert (err <= amax * 2.0**-3).all()  # e4m3: 3 mantissa bits, scale <= 2x amax/448
    torch.testing.assert_close(deq[..., 448:], kv[..., 448:].bfloat16().float())


def _naive(q, cache, idx, ln, sink, ecache, eidx, eln, scale=512**-0.5):
    """Row-by-row dense softmax with explicit candidate lists (duplicates count twice)."""
    t, h, _ = q.shape
    out = torch.zeros(t, h, 512)
    lse = torch.full((t, h), math.inf)
    for r in range(t):
        keys = []
        for c, ix, n in ((cache, idx, ln), (ecache, eidx, eln)):
            if c is None:
                continue
            lim = ix.shape[1] if n is None else min(int(n[r]), ix.shape[1])
            slots = [int(s) for s in ix[r, :lim] if s >= 0]
            if slots:
                keys.append(R.dequant_kv(c, torch.tensor(slots)).bfloat16().float())
        if not keys:
            continue
        kv = torch.cat(keys)
        z = q[r].float() @ kv.T * scale
        lse[r] = torch.logsumexp(z, -1)
        w = torch.softmax(torch.cat([z, sink[:, None]], 1), -1)[:, :-1]
        out[r] = w @ kv
    return out, lse


def test_reference_matches_naive():
    q, cache, idx, ecache, eidx, sink = _case(5, 4, 8, 4, 20, 2, 6, 9)
    idx[0, 2] = -1
    idx[1] = -1
    idx[2, 5] = idx[2, 6]  # duplicate
    eidx[1] = -1
    ln = torch.tensor([20, 20, 7, 0, 13], dtype=torch.int32)
    eln = torch.tensor([9, 3, 0, 9, 1], dtype=torch.int32)
    ref = R.sparse_mla_ref(q, cache, idx, ln, sink, ecache, eidx, eln)
    nv = _naive(q, cache, idx, ln, sink, ecache, eidx, eln)
    torch.testing.assert_close(ref[0].float(), nv[0], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ref[1], nv[1])
    assert (ref[1][1] == math.inf).all() and (ref[0][1] == 0).all()  # all-invalid row


# --------------------------------------------------------------------------- Triton kernel


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("h, extra", [(8, None), (16, 4), (8, 2)])
def test_kernel_vs_reference(splits, h, extra):
    q, cache, idx, ecache, eidx, sink = _case(4, h, 16, 5, 40, extra, 6, 24 if extra else 0, seed=h + splits)
    idx[0, 3] = -1
    idx[1, :] = -1
    idx[2, 10] = idx[2, 11]
    ln = torch.tensor([40, 0, 17, 33], dtype=torch.int32)
    eln = None
    if extra:
        eidx[1, :] = -1
        eln = torch.tensor([24, 0, 1, 20], dtype=torch.int32)
    out, lse = _run(q, cache, idx, ln, sink, ecache, eidx, eln, splits)
    _check(out, lse, *R.sparse_mla_ref(q, cache, idx, ln, sink, ecache, eidx, eln))
    assert (out[1] == 0).all() and (lse[1] == math.inf).all()


def test_kernel_no_lengths_no_sink_inf_sink():
    q, cache, idx, ecache, eidx, sink = _case(2, 8, 4, 8, 33, 2, 4, 5, seed=7)
    out, lse = _run(q, cache, idx, None, None, ecache, eidx, None, 2)
    _check(out, lse, *R.sparse_mla_ref(q, cache, idx, None, None, ecache, eidx, None))
    sink = torch.full((8,), math.inf)
    out, lse = _run(q, cache, idx, None, sink, ecache, eidx, None, 1)
    assert (out == 0).all() and torch.isfinite(lse).all()


def test_flash_mla_compat_mtp():
    """FlashMLA call shape: q [B, s_q, H, 512], indices [B, s_q, K], lengths [B]; lse [B, H, s_q]."""
    b, s_q, h = 2, 3, 8
    q, cache, idx, ecache, eidx, sink = _case(b * s_q, h, 8, 4, 16, 2, 5, 7, seed=3)
    ln = torch.tensor([16, 5], dtype=torch.int32)
    eln = torch.tensor([2, 7], dtype=torch.int32)
    meta, none = K.get_mla_metadata()
    assert none is None
    out, lse = K.flash_mla_with_kvcache(
        q=q.view(b, s_q, h, 512),
        k_cache=cache,
        head_dim_v=512,
        block_table=None,
        cache_seqlens=None,
        tile_scheduler_metadata=meta,
        softmax_scale=512**-0.5,
        is_fp8_kvcache=True,
        indices=idx.view(b, s_q, -1),
        topk_length=ln,
        attn_sink=sink,
        extra_k_cache=ecache,
        extra_indices_in_kvcache=eidx.view(b, s_q, -1),
        extra_topk_length=eln,
    )
    assert out.shape == (b, s_q, h, 512) and lse.shape == (b, h, s_q)
    ref_out, ref_lse = R.sparse_mla_ref(
        q, cache, idx, ln.repeat_interleave(s_q), sink, ecache, eidx, eln.repeat_interleave(s_q)
    )
    _check(out.reshape(b * s_q, h, 512), lse.transpose(1, 2).reshape(b * s_q, h), ref_out, ref_lse)


@settings(max_examples=6, deadline=None)
@given(
    t=st.integers(1, 3),
    k0=st.integers(1, 70),
    k1=st.integers(0, 40),
    splits=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_kernel_random_shapes(t, k0, k1, splits, seed):
    q, cache, idx, ecache, eidx, sink = _case(t, 8, 4, 9, k0, 2 if k1 else None, 7, k1, seed=seed)
    g = torch.Generator().manual_seed(seed)
    idx[torch.rand(idx.shape, generator=g) < 0.2] = -1
    ln = torch.randint(0, k0 + 1, (t,), generator=g, dtype=torch.int32)
    out, lse = _run(q, cache, idx, ln, sink, ecache, eidx, None, splits)
    _check(out, lse, *R.sparse_mla_ref(q, cache, idx, ln, sink, ecache, eidx, None))


@pytest.mark.parametrize("t, h, splits", [(3, 32, 1), (3, 32, 4), (24, 32, 1), (24, 32, 4), (12, 64, 3)])
def test_kernel_tiles(t, h, splits, monkeypatch):
    """Every tile at 32 / 64 heads (CPU: 8 SMs): 3 rows take the 16-head tile; 24 rows (12 at 64
    heads) the 32-head prefill tile unsplit, the 32-head decode tile split (interpreter: its L2
    prefetch off).  Block boundaries inside and across the two lists, short and empty lengths, empty
    splits.  The large decode tile is taken from 48 16-head programs here (shipped: 256) to keep the
    interpreter's rows few."""
    monkeypatch.setattr(K, "LARGE_DECODE_PROGRAMS", 48)
    q, cache, idx, ecache, eidx, sink = _case(t, h, 16, 6, 40, 4, 8, 37, seed=t + splits)
    idx[0, 5] = -1
    eidx[2, :9] = -1
    ln = torch.randint(0, 41, (t,), generator=torch.Generator().manual_seed(t), dtype=torch.int32)
    eln = torch.randint(0, 38, (t,), generator=torch.Generator().manual_seed(splits), dtype=torch.int32)
    ln[1], eln[1], ln[2], eln[2] = 0, 0, 17, 30
    out, lse = _run(q, cache, idx, ln, sink, ecache, eidx, eln, splits)
    _check(out, lse, *R.sparse_mla_ref(q, cache, idx, ln, sink, ecache, eidx, eln))
    assert (out[1] == 0).all() and (lse[1] == math.inf).all()


def test_tile_choice():
    """16-head tile below LARGE_DECODE_PROGRAMS 16-head programs or under 32 heads, the 32-head L2
    tile from there on, the prefill tile only unsplit at >= 2 x SMs 32-head programs."""
    dev = torch.device("cpu")
    sms = 8  # num_sms off CUDA
    small, large, prefill = K._CFG_DECODE_SMALL, K._CFG_DECODE_LARGE, K._CFG_PREFILL
    assert (small.block_h, small.block_n, small.l2_ahead) == (16, 16, 0)
    assert (large.block_h, large.block_n, large.l2_ahead) == (32, 32, 2)
    # a flat QK needs an mma tile of its output per warp
    for cfg in (small, large, prefill, K._CFG_PREFILL_BF16):
        assert not cfg.flat_qk or cfg.block_h * cfg.block_n >= 128 * cfg.num_warps
    assert K.LARGE_DECODE_PROGRAMS == 256
    for h in (8, 16):
        assert K._pick_cfg(1000, h, dev, split=False) is small
    assert K._pick_cfg(127, 32, dev, split=True) is small
    assert K._pick_cfg(128, 32, dev, split=True) is large
    assert K._pick_cfg(63, 64, dev, split=True) is small
    assert K._pick_cfg(64, 64, dev, split=True) is large
    assert K._pick_cfg(32, 128, dev, split=True) is large
    assert K._pick_cfg(2 * sms, 32, dev, split=False) is prefill
    assert K._pick_cfg(2 * sms - 1, 32, dev, split=False) is small  # 15 rows = 30 16-head programs


def test_fp8_cache_needs_chunks_of_one_scale_block():
    """The bf16-workspace prefill tile has 128-column chunks; over the fp8 cache (one UE8M0 scale per 64
    columns, applied per chunk; the 64 RoPE columns read as the last chunk) it must not compile rather than
    scale half its columns wrongly, nor must 32-column chunks (AOT compile for sm_120a, in a process without
    the interpreter)."""
    assert K._CFG_PREFILL_BF16.nc < 8 == K._CFG_PREFILL.nc
    code = (
        "import dataclasses\n"
        "from sglang_sm120.aot import check_config\n"
        "from sglang_sm120.kernels import sparse_mla as K\n"
        "from sglang_sm120.kernels.registry import registered\n"
        "k = next(k for k in registered() if k.name == 'sparse_mla.attend')\n"
        "for cfg, bf16 in ((K._CFG_PREFILL_BF16, False), (dataclasses.replace(K._CFG_PREFILL, nc=16), False),\n"
        "                  (K._CFG_PREFILL_BF16, True)):\n"
        "    print(bf16, check_config(k, K._aot_config(cfg, False, bf16), 120).problems)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 3, proc.stdout + proc.stderr
    for line in lines[:2]:
        assert line.startswith("False [") and "CompileTimeAssertionFailure" in line, lines
    assert lines[2] == "True []", lines


def test_split_choice_and_workspace():
    """Splits never exceed one program per SM (when rows x head blocks fit) nor the tile's
    min_blocks per split; workspace_for covers every row count."""
    dev = torch.device("cpu")
    sms = 8  # num_sms off CUDA
    for h in K.SUPPORTED_HEADS:
        need = 0
        for rows in range(1, 64):
            cfg = K._pick_cfg(rows, h, dev, split=True)
            s = K.choose_num_splits(rows, h, 128, 512, dev)
            programs = rows * -(-h // cfg.block_h)
            blocks = -(-128 // cfg.block_n) - (-512 // cfg.block_n)
            assert s == 1 or (programs * s <= sms * cfg.per_sm and s * cfg.min_blocks <= blocks), (h, rows, s)
            need = max(need, rows * s * h if s > 1 else 0)
        assert K.workspace_for(63, h, 128, 512, dev).capacity >= need


def _rejects(fn, args, pos, value, match):
    """``fn(*args)`` with ``args[pos]`` replaced by ``value`` raises ValueError matching ``match``."""
    a = list(args)
    a[pos] = value
    with pytest.raises(ValueError, match=match):
        fn(*a)


def test_bad_inputs():
    q, cache, idx, ecache, eidx, sink = _case(2, 8, 4, 4, 8, 2, 4, 4)
    out = torch.empty(2, 8, 512, dtype=torch.bfloat16)
    lse = torch.empty(2, 8)
    bad = functools.partial(_rejects, K.sparse_mla_fwd, [q, cache, idx, None, sink, ecache, eidx, None, out, lse])

    bad(0, q.float(), r"q: expected bf16 \[T, H, 512\]")
    bad(0, q[:, :, :448], r"q: expected bf16 \[T, H, 512\]")
    bad(0, torch.zeros(2, 12, 512, dtype=torch.bfloat16), r"q: head count 12")
    short = cache.view(torch.uint8).as_strided((4, 4, 1, 576), cache.stride())
    bad(1, short, r"k_cache: expected \[num_pages")
    bad(1, torch.zeros(4, 4, 1, 584, dtype=torch.float32), "k_cache: expected uint8")
    bad(1, torch.zeros(4, 3, 1, 584, dtype=torch.uint8), r"k_cache: page_size \(dim 1\) must be a power of two")
    odd = torch.zeros(4 * 2344 + 8, dtype=torch.uint8).as_strided((4, 4, 1, 584), (2344, 584, 584, 1))
    bad(1, odd, "k_cache: expected a 16-byte aligned")
    bad(
        1,
        torch.zeros(4 * 2880 + 1, dtype=torch.uint8)[1:].as_strided((4, 4, 1, 584), (2880, 584, 584, 1)),
        "k_cache: expected a 16-byte aligned",
    )
    bad(2, idx.long(), r"indices: expected int32 \[2, topk\]")
    bad(3, torch.zeros(3, dtype=torch.int32), r"topk_length: expected int32 \[2\]")
    bad(4, sink[:4], r"attn_sink: expected fp32 \[8\]")
    bad(6, None, "extra_k_cache and extra_indices")
    bad(8, out[:, :4], r"out: expected bf16 \[2, 8, 512\]")
    with pytest.raises(ValueError, match=r"q: expected \[B, s_q, H, 512\]"):
        K.flash_mla_with_kvcache(q=q, k_cache=cache, head_dim_v=512, indices=idx.unsqueeze(1))
    with pytest.raises(ValueError, match=r"indices: expected \[2, 1, topk\]"):
        K.flash_mla_with_kvcache(q=q.unsqueeze(1), k_cache=cache, head_dim_v=512, indices=idx)


# --------------------------------------------------------------------------- flat bf16 KV (prefill layout)


def _bf16_case(t, h, n, k, seed=0, device="cpu"):
    """Rows ``kv [n, 1, 512]`` bf16, indices with -1 and >= n slots, duplicates, a truncated length and an
    all-invalid row."""
    g = torch.Generator().manual_seed(seed)
    kv = (torch.randn(n, 1, 512, generator=g) * 2).bfloat16()
    q = torch.randn(t, h, 512, generator=g).bfloat16()
    idx = torch.randint(0, n, (t, k), generator=g, dtype=torch.int32)
    idx[0, 1] = idx[0, 0]  # duplicate
    idx[0, 2] = n + 5  # past the rows: invalid, as in FlashMLA's contract
    idx[:, -3:] = -1
    idx[-1] = -1  # no valid candidate
    ln = torch.full((t,), k, dtype=torch.int32)
    ln[1 % t] = k // 3  # truncation
    sink = torch.randn(h, generator=g)
    return [x.to(device) for x in (q, kv, idx, ln, sink)]


def _run_bf16(q, kv, idx, ln, sink):
    out = torch.empty(*q.shape, dtype=torch.bfloat16, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    K.sparse_mla_bf16_fwd(q, kv, idx, ln, sink, out, lse)
    return out, lse


@pytest.mark.parametrize("flat_qk", [True, False])
@pytest.mark.parametrize("t, h, k, with_len, with_sink", [(4, 16, 40, True, True), (3, 8, 33, False, False)])
def test_bf16_kernel_vs_reference(t, h, k, with_len, with_sink, flat_qk, monkeypatch):
    """The shipped bf16-workspace tile (flat QK) and the same tile with the chunk-batched QK."""
    monkeypatch.setattr(K, "_CFG_PREFILL_BF16", dataclasses.replace(K._CFG_PREFILL_BF16, flat_qk=flat_qk))
    q, kv, idx, ln, sink = _bf16_case(t, h, 50, k)
    ln, sink = (ln if with_len else None), (sink if with_sink else None)
    out, lse = _run_bf16(q, kv, idx, ln, sink)
    _check(out, lse, *R.sparse_mla_bf16_ref(q, kv, idx, ln, sink))
    assert torch.isinf(lse[-1]).all() and (out[-1] == 0).all()


def test_bf16_reference_is_the_fp8_one_on_dequantised_rows():
    """Prefill's bf16 workspace holds the fp8 cache dequantised: both references then agree exactly."""
    q, cache, idx, _, _, sink = _case(3, 8, 4, 5, 12)
    ln = torch.tensor([12, 5, 0], dtype=torch.int32)
    rows = R.dequant_kv(cache, torch.arange(20)).bfloat16()
    got = R.sparse_mla_bf16_ref(q, rows.view(20, 1, 512), idx, ln, sink)
    want = R.sparse_mla_ref(q, cache, idx, ln, sink)
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)


def test_bf16_bad_inputs():
    q, kv, idx, ln, sink = _bf16_case(2, 8, 10, 6)
    out = torch.empty(2, 8, 512, dtype=torch.bfloat16)
    lse = torch.empty(2, 8)
    bad = functools.partial(_rejects, K.sparse_mla_bf16_fwd, [q, kv, idx, ln, sink, out, lse])

    bad(0, q.float(), r"q: expected bf16 \[T, H, 512\]")
    bad(1, kv.float(), r"kv: expected bf16 \[N, 1, 512\]")
    bad(1, torch.zeros(10, 513, dtype=torch.bfloat16)[:, :512], "kv: expected .* 16-byte aligned")
    bad(1, torch.zeros(10 * 512 + 1, dtype=torch.bfloat16)[1:].view(10, 512), "kv: expected .* 16-byte aligned")
    bad(2, idx[:, None], r"indices: expected int32 \[2, topk\]")
    bad(3, ln[:1], r"topk_length: expected int32 \[2\]")
    bad(4, sink[:4], r"attn_sink: expected fp32 \[8\]")
    bad(6, lse[:1], r"lse: expected fp32 \[2, 8\]")


def test_flash_mla_sparse_fwd_contract():
    """FlashMLA's sparse-prefill call (indices ``[s_q, 1, topk]``, ``(out, max_logits, lse)``) runs our kernel."""
    q, kv, idx, ln, sink = _bf16_case(3, 16, 40, 24, seed=4)
    out, max_logits, lse = K.flash_mla_sparse_fwd(q, kv, idx[:, None], 0.07, 512, sink, ln)
    assert max_logits is None and lse is None
    torch.testing.assert_close(out.float(), R.sparse_mla_bf16_ref(q, kv, idx, ln, sink, 0.07)[0].float(), **OUT_TOL)
    with pytest.raises(ValueError, match="d_v: expected 512, got 448"):
        K.flash_mla_sparse_fwd(q, kv, idx[:, None], 0.07, 448)
    with pytest.raises(ValueError, match=r"indices: expected \[s_q, 1, topk\] int32 \(one KV head\), got \(3, 24\)"):
        K.flash_mla_sparse_fwd(q, kv, idx, 0.07)


# --------------------------------------------------------------------------- GPU (DSV4 shapes)

SWA_P, C4_P, C128_P = 256, 64, 2


def _dsv4_case(t, h, layer, topk, seed=0, swa_len=128):
    """SWA window of 128 (page 256) plus the layer's compressed list, as SGLang builds them."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = "cuda"
    swa = R.pack_kv_cache(torch.randn(64, SWA_P, 512, device=dev, generator=g))
    q = torch.randn(t, h, 512, device=dev, generator=g).bfloat16()
    idx = torch.randint(0, 64 * SWA_P, (t, 128), device=dev, generator=g, dtype=torch.int32)
    ln = torch.randint(1, swa_len + 1, (t,), device=dev, generator=g, dtype=torch.int32)
    sink_all = torch.randn(64, device=dev, generator=g)
    rank = 1 if h < 64 else 0
    sink = sink_all[rank * h : (rank + 1) * h]  # this rank's slice of the global head range
    ecache = eidx = eln = None
    if layer:
        p = C4_P if layer == 4 else C128_P
        pages = max(4, 4 * topk // p)
        ecache = R.pack_kv_cache(torch.randn(pages, p, 512, device=dev, generator=g))
        eidx = torch.randint(0, pages * p, (t, topk), device=dev, generator=g, dtype=torch.int32)
        eidx[:, -7:] = -1
        eidx[0, 1] = eidx[0, 0]
        eln = torch.randint(1, topk + 1, (t,), device=dev, generator=g, dtype=torch.int32)
        eln[-1] = topk
    if t > 1:
        idx[1] = -1  # all-invalid SWA row
        if eidx is not None:
            eidx[1] = -1
    return q, swa, idx, ln, sink, ecache, eidx, eln


def _ref_chunked(q, swa, idx, ln, sink, ecache, eidx, eln, chunk=256):
    outs, lses = [], []
    for s in range(0, q.shape[0], chunk):
        e = slice(s, s + chunk)
        o, lse = R.sparse_mla_ref(
            q[e], swa, idx[e], ln[e], sink, ecache, None if eidx is None else eidx[e], None if eln is None else eln[e]
        )
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


@pytest.mark.gpu
@pytest.mark.parametrize("h", [8, 16, 32, 64])
@pytest.mark.parametrize(
    "layer, topk", [(0, 0), (4, 128), (4, 192), (4, 256), (4, 512), (4, 1152), (4, 2048), (128, 64), (128, 512)]
)
@pytest.mark.parametrize("t", [1, 8, 64])
def test_gpu_decode_matrix(h, layer, topk, t):
    case = _dsv4_case(t, h, layer, topk, seed=h * 7 + topk + t)
    q = case[0]
    splits = K.choose_num_splits(t, h, 128, topk, q.device)
    out, lse = _run(*case, splits=splits)
    _check(out, lse, *_ref_chunked(*case))


@pytest.mark.gpu
@pytest.mark.parametrize("s_q", [1, 2, 3, 4])
def test_gpu_mtp_compat(s_q):
    b, h = 16, 32
    q, swa, idx, _, sink, ecache, eidx, _ = _dsv4_case(b * s_q, h, 4, 512, seed=s_q)
    ln = torch.randint(1, 129, (b,), device="cuda", dtype=torch.int32)
    eln = torch.randint(1, 513, (b,), device="cuda", dtype=torch.int32)
    out, lse = K.flash_mla_with_kvcache(
        q=q.view(b, s_q, h, 512),
        k_cache=swa,
        head_dim_v=512,
        block_table=None,
        cache_seqlens=None,
        tile_scheduler_metadata=K.get_mla_metadata()[0],
        softmax_scale=512**-0.5,
        is_fp8_kvcache=True,
        indices=idx.view(b, s_q, -1),
        topk_length=ln,
        attn_sink=sink,
        extra_k_cache=ecache,
        extra_indices_in_kvcache=eidx.view(b, s_q, -1),
        extra_topk_length=eln,
    )
    ref = _ref_chunked(q, swa, idx, ln.repeat_interleave(s_q), sink, ecache, eidx, eln.repeat_interleave(s_q))
    _check(out.reshape(b * s_q, h, 512), lse.transpose(1, 2).reshape(b * s_q, h), *ref)


@pytest.mark.gpu
@pytest.mark.parametrize("h, layer, topk", [(64, 4, 512), (32, 128, 64), (16, 0, 0), (32, 4, 2048)])
def test_gpu_prefill(h, layer, topk):
    case = _dsv4_case(2048, h, layer, topk, seed=11)
    out, lse = _run(*case, splits=1)
    _check(out, lse, *_ref_chunked(*case))


@pytest.mark.gpu
@pytest.mark.parametrize("h, k", [(64, 640), (32, 192), (16, 128)])
def test_gpu_bf16_prefill(h, k):
    """The flat bf16 workspace at DSV4 shapes: 2048 rows, SWA 128 + compressed top-k candidates."""
    g = torch.Generator(device="cuda").manual_seed(3)
    n = 4096
    kv = torch.randn(n, 1, 512, device="cuda", generator=g).bfloat16()
    q = torch.randn(2048, h, 512, device="cuda", generator=g).bfloat16()
    idx = torch.randint(0, n, (2048, k), device="cuda", generator=g, dtype=torch.int32)
    idx[::7, -5:] = -1
    idx[5] = -1
    ln = torch.randint(1, k + 1, (2048,), device="cuda", generator=g, dtype=torch.int32)
    sink = torch.randn(h, device="cuda", generator=g)
    out, lse = _run_bf16(q, kv, idx, ln, sink)
    ref = [torch.cat(x) for x in zip(*(R.sparse_mla_bf16_ref(q[i : i + 256], kv, idx[i : i + 256], ln[i : i + 256],
                                                               sink) for i in range(0, 2048, 256)))]  # fmt: skip
    _check(out, lse, *ref)


@pytest.mark.gpu
@pytest.mark.parametrize("h, k", [(64, 640), (128, 1152)])
def test_gpu_flash_mla_sparse_fwd_vs_native(h, k):
    """Ours and sgl-kernel's FlashMLA ``flash_mla_sparse_fwd`` (SM90) on one SGLang-shaped prefill workspace call:
    SWA + compressed candidates rebased into a flat bf16 workspace, -1 padded to a multiple of 128."""
    native = pytest.importorskip("sgl_kernel.flash_mla").flash_mla_sparse_fwd
    g = torch.Generator(device="cuda").manual_seed(5)
    n, t, width = 6000, 1024, -(-k // 128) * 128
    kv = torch.randn(n, 1, 512, device="cuda", generator=g).bfloat16()
    q = torch.randn(t, h, 512, device="cuda", generator=g).bfloat16()
    idx = torch.full((t, 1, width), -1, device="cuda", dtype=torch.int32)
    idx[:, 0, :k] = torch.randint(0, n, (t, k), device="cuda", generator=g, dtype=torch.int32)
    ln = torch.randint(1, k + 1, (t,), device="cuda", generator=g, dtype=torch.int32)
    sink = torch.randn(h, device="cuda", generator=g)
    ours = K.flash_mla_sparse_fwd(q, kv, idx, 512**-0.5, 512, sink, ln)[0]
    theirs = native(q, kv, idx, 512**-0.5, 512, sink, ln)[0]
    torch.testing.assert_close(ours.float(), theirs.float(), **OUT_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("h, layer, topk", [(32, 4, 512), (64, 4, 512), (32, 128, 64), (32, 0, 0)])
@pytest.mark.parametrize("t", [11, 24, 63, 64, 127, 128])
def test_gpu_tile_switch(h, layer, topk, t):
    """Row counts around the small / large decode tile switch (128 rows at 32 heads, 64 at 64) and the small
    tile's split counts (two programs per SM)."""
    case = _dsv4_case(t, h, layer, topk, seed=h + topk + t)
    splits = K.choose_num_splits(t, h, 128, topk, case[0].device)
    out, lse = _run(*case, splits=splits)
    _check(out, lse, *_ref_chunked(*case))


@pytest.mark.gpu
@pytest.mark.parametrize("t, h", [(1, 32), (8, 32), (32, 32), (64, 64)])
def test_gpu_cuda_graph_replay(t, h):
    q, swa, idx, ln, sink, ecache, eidx, eln = _dsv4_case(t, h, 4, 512, seed=5)
    ws = K.workspace_for(t, h, 128, 512, "cuda")
    splits = K.choose_num_splits(t, h, 128, 512, q.device)
    out = torch.empty(t, h, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(t, h, dtype=torch.float32, device="cuda")

    def step():
        K.sparse_mla_fwd(q, swa, idx, ln, sink, ecache, eidx, eln, out, lse, ws, splits)

    step()  # compile outside capture
    eager = out.clone(), lse.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager[0]) and torch.equal(lse, eager[1])
    # new inputs copied into the captured buffers give the new eager result
    q.copy_(torch.randn_like(q))
    eidx.copy_(torch.randint_like(eidx, 0, ecache.shape[0] * C4_P))
    graph.replay()
    got = out.clone(), lse.clone()
    step()
    assert torch.equal(got[0], out) and torch.equal(got[1], lse)
