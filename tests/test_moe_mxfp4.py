"""MXFP4 routed-experts MoE and hash routing vs the PyTorch oracles.

Tolerances: kernel and oracle decode identical E2M1 values and scales (exactly), accumulate in fp32 and round the
SwiGLU output and each expert's output to bf16 once, so they differ by summation order plus bf16 rounding
flips: 2^-8 relative per rounding on the GPU, 2^-7 under the interpreter (its fp32->bf16 cast truncates). We
allow 2e-2 of the largest output magnitude (interpreter) / 1e-2 (GPU), and a mean error 10x smaller on the GPU.
The routed path (above ``gemv_max_tokens(I)`` tokens; forced at small T by patching its constants) dequantises into a
bf16 ``tl.dot`` (fp32 dot under the interpreter); ``tl.dot_scaled`` is not used. The decode GEMV path decodes the
same values exactly and differs from the oracle by fp32 summation order only.
"""

from __future__ import annotations

import pytest
import torch

import sglang_sm120.kernels.moe_mxfp4 as moe
from sglang_sm120.kernels.moe_mxfp4 import fused_moe_mxfp4, hash_topk, moe_mxfp4_workspace
from sglang_sm120.reference.moe_mxfp4 import (
    dequant_mxfp4,
    dequant_mxfp8,
    fused_moe_mxfp4_ref,
    hash_topk_ref,
    quant_mxfp4,
    quant_mxfp8,
)

E8M0 = getattr(torch, "float8_e8m0fnu", torch.uint8)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


def make_experts(e: int, h: int, inter: int, scale_dtype: torch.dtype = torch.uint8, device: str = "cpu", seed=0):
    """Random packed bytes (every E2M1 code, incl. -0) and UE8M0 scales around 2^-6 (DSV4-like magnitudes)."""
    g = torch.Generator(device=device).manual_seed(seed)
    w13 = torch.randint(0, 256, (e, 2 * inter, h // 2), generator=g, device=device, dtype=torch.uint8)
    w2 = torch.randint(0, 256, (e, h, inter // 2), generator=g, device=device, dtype=torch.uint8)
    s13 = torch.randint(118, 124, (e, 2 * inter, h // 32), generator=g, device=device, dtype=torch.uint8)
    s2 = torch.randint(118, 124, (e, h, inter // 32), generator=g, device=device, dtype=torch.uint8)
    if scale_dtype == torch.float32:
        s13, s2 = torch.exp2(s13.float() - 127), torch.exp2(s2.float() - 127)
    elif scale_dtype != torch.uint8:
        s13, s2 = s13.view(scale_dtype), s2.view(scale_dtype)
    return w13.view(torch.int8), w2.view(torch.int8), s13, s2


def make_routing(t: int, e: int, k: int, dtype=torch.int32, device: str = "cpu", skew: bool = False, seed=0):
    """Distinct experts per token; ``skew``: every token picks experts 0..k-2 plus one of the rest (imbalance,
    most experts empty)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    if skew:
        ids[:, : k - 1] = torch.arange(k - 1)
        ids[:, k - 1] = k - 1 + torch.randint(0, 2, (t,), generator=g)
    w = torch.rand(t, k, generator=g) + 0.1
    return (w / w.sum(1, keepdim=True)).to(device), ids.to(dtype).to(device)


def test_quant_dequant_roundtrip():
    w = torch.randn(4, 64) * 0.01
    q, s = quant_mxfp4(w)
    assert q.shape == (4, 32) and s.shape == (4, 2)
    d = dequant_mxfp4(q, s)
    assert ((d - w).abs() <= w.abs().amax() * 0.26).all()  # E2M1 spacing: <= 1/4 of the group amax
    q = torch.zeros(1, 16, dtype=torch.uint8)
    q[0, :2] = torch.tensor([0x21, 0xF8])  # low nibble first: 0.5, 1, -0, -6
    d = dequant_mxfp4(q, torch.tensor([[126]], dtype=torch.uint8))
    assert torch.equal(d[0, :4], torch.tensor([0.25, 0.5, -0.0, -3.0])) and not d[0, 4:].any()


def force_routed(monkeypatch, routed: bool = True) -> None:
    """Send every batch size down the routed ``tl.dot`` path (the GEMV path when ``routed`` is False)."""
    for name in ("GEMV_MAX_TOKENS", "GEMV_MAX_TOKENS_WIDE"):
        monkeypatch.setattr(moe, name, 0 if routed else 1 << 20)


@pytest.mark.parametrize(
    "t,scale_dtype,ids_dtype,limit,routed",
    [
        (1, torch.uint8, torch.int32, 10.0, False),
        (1, torch.uint8, torch.int32, 10.0, True),
        (7, E8M0, torch.int64, 10.0, False),
        (7, E8M0, torch.int64, 10.0, True),
        (70, torch.float32, torch.int32, 1.0, None),
        (3, torch.uint8, torch.int64, None, False),
        (3, torch.float32, torch.int32, 10.0, False),
    ],
)
def test_moe(monkeypatch, t, scale_dtype, ids_dtype, limit, routed):
    """``routed``: force the routed path (True) or the GEMV (False); None: the shipped token threshold (70 tokens
    take the routed path; the GEMV at 70 tokens, past any shipped limit, took 150 s of the CI's interpreter time)."""
    e, h, inter, k = 8, 256, 128, 6
    w13, w2, s13, s2 = make_experts(e, h, inter, scale_dtype)
    tw, ids = make_routing(t, e, k, ids_dtype)
    x = (torch.randn(t, h, generator=torch.Generator().manual_seed(t)) * 2).bfloat16()
    if routed is not None:
        force_routed(monkeypatch, routed)
    else:
        assert t > moe.gemv_max_tokens(inter)
    out = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=limit)
    ref = fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=limit)
    assert out.shape == (t, h) and out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 2e-2


WIDE_ON_H100 = {(1, 2), (1, 4), (1, 8), (2, 3), (2, 8), (2, 64)}  # (TP, T); small tiles at every other pair


@pytest.mark.parametrize("tp,t", [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 3), (2, 8), (2, 64), (4, 8),
                                  (8, 1), (8, 8), (8, 64)])  # fmt: skip
def test_gemv_plan_dsv4(tp, t):
    """The GEMV tile rule on DSV4-Flash shapes with an H100's 132 SMs picks the H100 sweep's winners: wide
    prefetching tiles at TP 1 from 2 tokens and TP 2 from 3, small tiles without prefetch elsewhere."""
    tile, _, (_, bk) = moe._gemv_plan(t, 6, 4096, 2048 // tp, 132)
    wide = (tp, t) in WIDE_ON_H100
    assert (tile is moe._WIDE) == wide and tile.prefetch == wide
    assert not wide or 2048 // tp >= 2 * bk  # the down projection loops over >= 2 K blocks


@pytest.mark.parametrize("inter", [256, 1024], ids=["small", "wide"])
@pytest.mark.parametrize("scale_dtype", [torch.uint8, torch.float32])
def test_moe_gemv_scale_and_activation_range(scale_dtype, inter):
    """GEMV path: scales 2^-60..2^60 and activations 2^-20..2^40 (the 2^64 / 2^62 rescaling stays exact and
    finite); both tiles, the K loops over several blocks (with and without prefetch)."""
    e, h, k, t = 4, 512, 3, 2
    tile, (_, bk), _ = moe._gemv_plan(t, k, h, inter, 8)
    assert (tile is moe._WIDE) == (inter == 1024) and h >= 2 * bk
    w13, w2, s13, s2 = make_experts(e, h, inter)
    g = torch.Generator().manual_seed(3)
    s13 = torch.randint(67, 100, s13.shape, generator=g, dtype=torch.uint8)
    s2 = torch.randint(150, 188, s2.shape, generator=g, dtype=torch.uint8)
    if scale_dtype == torch.float32:
        s13, s2 = torch.exp2(s13.float() - 127), torch.exp2(s2.float() - 127)
    x = torch.randn(t, h, generator=g) * torch.exp2(torch.randint(-20, 41, (t, h), generator=g).float())
    x = x.bfloat16()
    tw, ids = make_routing(t, e, k)
    out = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids)
    assert rel_err(out, fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids)) < 2e-2


@pytest.mark.parametrize("t,block_m", [(5, 16), (20, 32), (40, 64), (65, 64)])
def test_moe_routed_tiles_and_scale_range(monkeypatch, t, block_m):
    """Routed path, every row-block size (picked by the mean rows per expert: 8 experts, top-6; past 3/4 of the
    largest, the largest), UE8M0 scales 100..140 (GEMM1: > 128 takes the second multiply) and 0..30 (GEMM2: down
    to 2^-127, bf16 subnormal weights); the same tiles and decode as on the GPU, fp32 dot."""
    e, h, inter, k = 8, 256, 128, 6
    assert moe._routed_tile(t * k, e)[0] == block_m
    w13, w2, _, _ = make_experts(e, h, inter)
    g = torch.Generator().manual_seed(t)
    s13 = torch.randint(100, 141, (e, 2 * inter, h // 32), generator=g, dtype=torch.uint8)
    s2 = torch.randint(0, 31, (e, h, inter // 32), generator=g, dtype=torch.uint8)
    x = torch.randn(t, h, generator=g).bfloat16()
    tw, ids = make_routing(t, e, k)
    force_routed(monkeypatch)
    out = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids)
    ref = fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids)
    assert ref.abs().max() > 0 and rel_err(out, ref) < 1e-2


def mxfp8_inputs(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """bf16 values over 2^-40..2^40 with an all-zero group, a group whose amax mantissa is exactly 1.75 (amax
    lands on 448 * 2^k) and one just above it, plus e4m3 rounding ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.exp2(torch.randint(-40, 41, (rows, cols), generator=g).float())
    x[0, :32] = 0.0
    x[1, :32] = torch.linspace(-1.75, 1.75, 32)
    x[1, 32:64] = torch.linspace(-1.7578125, 1.5, 32)  # amax mantissa 0.7578125 > 0.75: one power of two up
    x[2, :32] = (torch.arange(32) * 2 + 1) / 64 * 2.0**-5  # odd multiples of half the subnormal step: ties
    return x.bfloat16()


def test_quant_mxfp8_reference_scales_are_the_smallest_power_of_two():
    x = mxfp8_inputs(4, 256).float()
    q, s = quant_mxfp8(x)
    amax = x.unflatten(-1, (-1, 32)).abs().amax(-1)
    bound = 448 * torch.exp2(s.float() - 127)
    live = amax > 0
    assert (amax <= bound).all() and (amax[live] > bound[live] / 2).all() and (s[~live] == 0).all()
    assert s[1, 0] == s[1, 1] - 1  # 1.75 * 2^k fits the lower scale, 1.7578125 * 2^k does not
    err = (dequant_mxfp8(q, s) - x).abs()
    assert (err <= torch.maximum(x.abs() * 2.0**-4, torch.exp2(s.float() - 127 - 10).repeat_interleave(32, -1))).all()


@pytest.mark.parametrize("block", moe._QUANT_BLOCKS)
def test_mxfp8_quant_kernel_is_bit_exact(block):
    x = mxfp8_inputs(3, 1024, seed=block)
    q = torch.empty(3, 1024, dtype=torch.uint8)
    s = torch.empty(3, 32, dtype=torch.uint8)
    moe._mxfp8_quant_kernel[(3, 1024 // block)](x, q, s, 1024, 1024, 32, BLOCK=block, UPCAST=True)
    qr, sr = quant_mxfp8(x.float())
    pair_split = qr.view(torch.uint8).unflatten(-1, (-1, 16, 2)).transpose(-1, -2).flatten(-3)
    assert torch.equal(s, sr) and torch.equal(q, pair_split)


@pytest.mark.parametrize(
    "t,scale_dtype,limit,s_range",
    [
        (7, torch.uint8, 10.0, None),
        (20, E8M0, 10.0, (1, 128)),
        (70, torch.float32, 1.0, None),
        (40, torch.uint8, 10.0, (100, 200)),
    ],
)
def test_moe_w4a8(monkeypatch, t, scale_dtype, limit, s_range):
    """W4A8 routed path (``act="mxfp8"``): the same math as the W4A8 reference up to fp32 summation order, and
    close to the W4A16 reference; 16/32/64-row tiles, every scale dtype, GEMM1 UE8M0 scales 2^-126..2^73 (SwiGLU
    clamped, so the outputs stay finite)."""
    # seen on the CPU: rel_err 0.004-0.006 vs the W4A8 reference, 0.03-0.08 vs W4A16 (3 mantissa bits in x, h)
    e, h, inter, k = 8, 256, 128, 6
    w13, w2, s13, s2 = make_experts(e, h, inter, scale_dtype)
    if s_range is not None:
        g = torch.Generator().manual_seed(t)
        s13 = torch.randint(*s_range, s13.shape, generator=g, dtype=torch.uint8).view(scale_dtype)
    tw, ids = make_routing(t, e, k)
    x = (torch.randn(t, h, generator=torch.Generator().manual_seed(t)) * 2).bfloat16()
    force_routed(monkeypatch)
    out = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=limit, act="mxfp8")
    ref8 = fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=limit, act="mxfp8")
    ref16 = fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=limit)
    assert ref8.abs().max() > 0 and rel_err(out, ref8) < 1e-2
    if s_range is None:  # huge scales saturate the clamped SwiGLU, where A8 rounding can flip a gate's sign
        assert rel_err(out, ref16) < 0.1


def test_moe_act_setting(monkeypatch):
    monkeypatch.delenv(moe.MOE_ACT_ENV, raising=False)
    assert moe.moe_act() == "bf16" and moe.moe_act("mxfp8") == "mxfp8"
    monkeypatch.setenv(moe.MOE_ACT_ENV, "mxfp8")
    assert moe.moe_act() == "mxfp8"
    monkeypatch.setenv(moe.MOE_ACT_ENV, "fp4")
    with pytest.raises(ValueError, match="SGLANG_SM120_MOE_ACT: expected one of"):
        moe.moe_act()
    with pytest.raises(ValueError, match="act: expected one of"):
        moe.moe_act("int8")


def test_moe_padding_ids_imbalance_and_scaling(monkeypatch):
    """Padded tokens (ids -1), out-of-range ids, empty experts, routed_scaling_factor, a reused workspace (its
    routing buffers sized for every routed row-block size: 16-row blocks at 5 tokens, 64-row at 70; the GEMV up to
    40 tokens, the wide experts' limit)."""
    e, h, inter, k = 8, 256, 128, 4
    w13, w2, s13, s2 = make_experts(e, h, inter)
    ws = moe_mxfp4_workspace(80, k, e, h, inter, "cpu")
    for t, skew, routed in ((40, True, False), (5, False, False), (5, False, True), (70, True, True)):
        force_routed(monkeypatch, routed)
        tw, ids = make_routing(t, e, k, skew=skew, seed=t)
        ids[-1] = -1
        ids[0, 1] = e
        x = torch.randn(t, h, generator=torch.Generator().manual_seed(t)).bfloat16()
        out = torch.full((t, h), float("nan"), dtype=torch.bfloat16)
        fused_moe_mxfp4(
            x,
            w13,
            w2,
            s13,
            s2,
            tw,
            ids,
            swiglu_limit=10.0,
            routed_scaling_factor=1.5,
            out=out,
            workspace=ws,
        )
        ref = fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0, routed_scaling_factor=1.5)
        assert rel_err(out, ref) < 2e-2
        assert torch.equal(out[-1], torch.zeros(h, dtype=torch.bfloat16))
        assert not ws.counts.any()  # left zero for the next call


def test_moe_no_tokens():
    w13, w2, s13, s2 = make_experts(4, 128, 128)
    out = fused_moe_mxfp4(
        torch.empty(0, 128).bfloat16(), w13, w2, s13, s2, torch.empty(0, 2), torch.empty(0, 2, dtype=torch.int32)
    )
    assert out.shape == (0, 128)


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shared", [0, 1])
def test_hash_topk(ids_dtype, shared):
    t, e, vocab, k = 37, 16, 1000, 6
    g = torch.Generator().manual_seed(1)
    tid2eid = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(vocab)]).int()
    logits = torch.randn(t, e, generator=g) * 3
    input_ids = torch.randint(0, vocab, (t,), generator=g).to(ids_dtype)
    tw, tids = hash_topk(logits, input_ids, tid2eid, shared, 1.5)
    tw_ref, tids_ref = hash_topk_ref(logits, input_ids, tid2eid, shared, 1.5)
    assert torch.equal(tids, tids_ref)
    torch.testing.assert_close(tw, tw_ref, rtol=1e-5, atol=1e-6)


def test_bad_input():
    e, h, inter = 4, 128, 128
    w13, w2, s13, s2 = make_experts(e, h, inter)
    tw, ids = make_routing(2, e, 2)
    x = torch.randn(2, h).bfloat16()
    with pytest.raises(ValueError, match="hidden_states"):
        fused_moe_mxfp4(x.float(), w13, w2, s13, s2, tw, ids)
    with pytest.raises(ValueError, match="w13"):
        fused_moe_mxfp4(x, w13.float(), w2, s13, s2, tw, ids)
    with pytest.raises(ValueError, match="w2"):
        fused_moe_mxfp4(x, w13, w2[:, :64], s13, s2, tw, ids)
    with pytest.raises(ValueError, match="w13_scale"):
        fused_moe_mxfp4(x, w13, w2, s13.half(), s2, tw, ids)
    with pytest.raises(ValueError, match="w2_scale"):
        fused_moe_mxfp4(x, w13, w2, s13, s2[..., :1], tw, ids)
    with pytest.raises(ValueError, match="topk_ids"):
        fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids.short())
    with pytest.raises(ValueError, match="topk_weights"):
        fused_moe_mxfp4(x, w13, w2, s13, s2, tw.half(), ids)
    with pytest.raises(ValueError, match="multiples of 128"):
        w13b, w2b, s13b, s2b = make_experts(e, 96, inter)
        fused_moe_mxfp4(torch.randn(2, 96).bfloat16(), w13b, w2b, s13b, s2b, tw, ids)
    with pytest.raises(ValueError, match="workspace"):
        fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, workspace=moe_mxfp4_workspace(1, 2, e, h, inter, "cpu"))
    with pytest.raises(ValueError, match="input_ids"):
        hash_topk(torch.randn(2, e), torch.zeros(2, dtype=torch.int16), torch.zeros(10, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="scoring_func"):
        hash_topk(
            torch.randn(2, e),
            torch.zeros(2, dtype=torch.int32),
            torch.zeros(10, 2, dtype=torch.int32),
            scoring_func="softmax",
        )


# ---------------------------------------------------------------- GPU (DSV4-Flash shapes) ----------------------

DSV4_E, DSV4_H, DSV4_I, DSV4_K = 256, 4096, 2048, 6


@pytest.fixture(scope="module", params=[1, 2, 4, 8], ids=lambda tp: f"tp{tp}")
def dsv4_experts(request):
    inter = DSV4_I // request.param
    return make_experts(DSV4_E, DSV4_H, inter, torch.uint8, device="cuda")


def _check_gpu(out: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (out.float() - ref.float()).abs()
    peak = ref.float().abs().max()
    assert (diff.max() / peak).item() < 1e-2
    assert (diff.mean() / ref.float().abs().mean()).item() < 1e-2


@pytest.mark.gpu
# GEMV up to 40 tokens at TP 1-4 (64 at TP 8), routed above: 16-row blocks to 512 tokens, 32 at 1024, 64 at 2048,
# 128 at 4096
@pytest.mark.parametrize("t", [1, 2, 3, 7, 16, 40, 41, 64, 65, 512, 1024, 2048, 4096])
@pytest.mark.parametrize("skew", [False, True], ids=["uniform", "skewed"])
def test_gpu_moe_dsv4(dsv4_experts, t, skew):
    w13, w2, s13, s2 = dsv4_experts
    tw, ids = make_routing(t, DSV4_E, DSV4_K, device="cuda", skew=skew)
    x = torch.randn(t, DSV4_H, device="cuda").bfloat16()
    out = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0)
    _check_gpu(out, fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0))


@pytest.mark.gpu
@pytest.mark.parametrize("t", [65, 700])  # GEMV below, routed m16 / m32
def test_gpu_moe_scale_range(t):
    """UE8M0 scales 100..140 (> 128: the routed path's second multiply) and 0..30 (bf16-subnormal weights)."""
    g = torch.Generator(device="cuda").manual_seed(t)
    w13, w2, s13, s2 = make_experts(DSV4_E, DSV4_H, DSV4_I // 2, device="cuda")
    s13 = torch.randint(100, 141, s13.shape, generator=g, device="cuda", dtype=torch.uint8)
    s2 = torch.randint(0, 31, s2.shape, generator=g, device="cuda", dtype=torch.uint8)
    tw, ids = make_routing(t, DSV4_E, DSV4_K, device="cuda")
    x = torch.randn(t, DSV4_H, device="cuda", generator=g).bfloat16()
    out = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids)
    _check_gpu(out, fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids))


@pytest.mark.gpu
@pytest.mark.parametrize("t", [65, 1024, 4096])  # routed m16 / m32 / m128
@pytest.mark.parametrize("scale_dtype", [torch.uint8, torch.float32])
def test_gpu_moe_w4a8(dsv4_experts, t, scale_dtype):
    """W4A8 (``act="mxfp8"``) at DSV4 shapes vs the W4A8 reference: on sm_120a the block-scaled MMA, on Hopper
    Triton's decomposition of the same ``tl.dot_scaled``; also replayed from a CUDA graph."""
    w13, w2, s13, s2 = dsv4_experts
    if scale_dtype == torch.float32:
        s13, s2 = torch.exp2(s13.float() - 127), torch.exp2(s2.float() - 127)
    tw, ids = make_routing(t, DSV4_E, DSV4_K, device="cuda")
    x = torch.randn(t, DSV4_H, device="cuda").bfloat16()
    ref = fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0, act="mxfp8")
    out = torch.empty_like(x)
    ws = moe_mxfp4_workspace(t, DSV4_K, DSV4_E, DSV4_H, w2.shape[2] * 2, "cuda")
    run = lambda: fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0, out=out, workspace=ws, act="mxfp8")  # noqa: E731
    run()
    _check_gpu(out, ref)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    out.zero_()
    graph.replay()
    _check_gpu(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("scale_dtype", [torch.float32, E8M0])
def test_gpu_moe_scale_dtypes_int64_ids(scale_dtype):
    w13, w2, s13, s2 = make_experts(DSV4_E, DSV4_H, DSV4_I // 2, scale_dtype, device="cuda")
    tw, ids = make_routing(33, DSV4_E, DSV4_K, torch.int64, device="cuda")
    ids[-3:] = -1
    x = torch.randn(33, DSV4_H, device="cuda").bfloat16()
    out = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0)
    _check_gpu(out, fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0))


@pytest.mark.gpu
@pytest.mark.parametrize("t,tp", [(64, 1), (1, 8), (1, 2), (8, 2), (4096, 2)])
def test_gpu_cuda_graph(t, tp):
    """Replay == eager, bit-exact (no atomics in the arithmetic)."""
    w13, w2, s13, s2 = make_experts(DSV4_E, DSV4_H, DSV4_I // tp, device="cuda")
    tw, ids = make_routing(t, DSV4_E, DSV4_K, device="cuda")
    x = torch.randn(t, DSV4_H, device="cuda").bfloat16()
    ws = moe_mxfp4_workspace(t, DSV4_K, DSV4_E, DSV4_H, DSV4_I // tp, "cuda")
    out = torch.empty(t, DSV4_H, dtype=torch.bfloat16, device="cuda")
    fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0, out=out, workspace=ws)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0, out=out, workspace=ws)
    tw2, ids2 = make_routing(t, DSV4_E, DSV4_K, device="cuda", seed=7)
    x.copy_(torch.randn_like(x))
    tw.copy_(tw2)
    ids.copy_(ids2)
    eager = fused_moe_mxfp4(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0, workspace=ws).clone()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
    _check_gpu(out, fused_moe_mxfp4_ref(x, w13, w2, s13, s2, tw, ids, swiglu_limit=10.0))


@pytest.mark.gpu
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_gpu_hash_topk(ids_dtype):
    vocab, t = 129280, 4096
    tid2eid = torch.randint(0, DSV4_E, (vocab, DSV4_K), device="cuda", dtype=torch.int32)
    logits = torch.randn(t, DSV4_E, device="cuda")
    input_ids = torch.randint(0, vocab, (t,), device="cuda").to(ids_dtype)
    input_ids[0] = vocab - 1
    tw, tids = hash_topk(logits, input_ids, tid2eid)
    tw_ref, tids_ref = hash_topk_ref(logits, input_ids, tid2eid)
    assert torch.equal(tids, tids_ref)
    torch.testing.assert_close(tw, tw_ref, rtol=1e-5, atol=1e-6)


def test_gemv_token_limit_by_expert_width():
    """Wide experts (I/TP >= 512) leave the GEMV path after 40 tokens, narrow ones after 64."""
    assert moe.gemv_max_tokens(2048) == moe.gemv_max_tokens(512) == 40
    assert moe.gemv_max_tokens(256) == moe.GEMV_MAX_TOKENS == 64
