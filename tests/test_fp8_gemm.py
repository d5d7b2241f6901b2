"""FP8 block-scaled GEMM, activation quant and fp8_einsum vs the PyTorch oracles.

Tolerances: the kernel and the oracle multiply identical e4m3 values with identical scales and accumulate in
fp32, so fp32 outputs agree to summation-order noise (1e-5 of the largest magnitude). bf16 outputs add one
bf16 rounding (2^-8 relative; under the interpreter fp32->bf16 truncates, so 2^-7): we allow 1e-2.
Activation quantisation is bit-exact (same formula; the interpreter path pre-rounds to the e4m3 grid).
"""

from __future__ import annotations

import pytest
import torch

from sglang_sm120.kernels.fp8_gemm import (
    CONFIGS,
    MAX_SPLITS,
    config_for,
    fp8_einsum,
    per_token_group_quant_fp8,
    w8a8_block_fp8_linear,
    w8a8_block_fp8_matmul,
)
from sglang_sm120.reference.fp8_gemm import (
    block_fp8_matmul_ref,
    fp8_einsum_ref,
    per_token_group_quant_fp8_ref,
    w8a8_block_fp8_linear_ref,
)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


def make_weight(n: int, k: int, blk: int, e8m0: bool, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.5).to(torch.float8_e4m3fn)
    shape = (-(-n // blk), -(-k // blk))
    if e8m0:
        s = torch.randint(118, 126, shape, generator=g, dtype=torch.uint8)
    else:
        s = torch.rand(shape, generator=g) * 0.02 + 0.001
    return w.to(device), s.to(device)


@pytest.mark.parametrize("blk", [128, 32])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_quant_exact(blk, m):
    x = (torch.randn(m, 384) * 3).bfloat16()
    x[0, :7] = 0  # an all-zero group prefix; eps keeps the scale finite
    q, s = per_token_group_quant_fp8(x, blk)
    q_ref, s_ref = per_token_group_quant_fp8_ref(x, blk)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.float(), q_ref.float())


@pytest.mark.parametrize("blk", [128, 32])
@pytest.mark.parametrize("e8m0", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 256, 512), (16, 192, 400), (40, 256, 384), (70, 256, 256)])
def test_matmul_fp32_exact(blk, e8m0, m, n, k):
    g = torch.Generator().manual_seed(m)
    a, sa = per_token_group_quant_fp8_ref(torch.randn(m, k, generator=g), blk)
    w, ws = make_weight(n, k, blk, e8m0)
    out = w8a8_block_fp8_matmul(a, w, sa, ws, [blk, blk], torch.float32)
    assert rel_err(out, block_fp8_matmul_ref(a, sa, w, ws, (blk, blk), torch.float32)) < 1e-5


@pytest.mark.parametrize("blk", [128, 32])
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 9), (300,)])
def test_linear(blk, shape):
    n, k = 320, 512  # N not a multiple of 128: partial weight-scale block
    x = torch.randn(*shape, k).bfloat16()
    w, ws = make_weight(n, k, blk, e8m0=blk == 32)
    out = w8a8_block_fp8_linear(x, w, [blk, blk], ws)
    assert out.shape == (*shape, n) and out.dtype == torch.bfloat16
    assert rel_err(out, w8a8_block_fp8_linear_ref(x, w, (blk, blk), ws)) < 1e-2


def test_linear_bias_and_workspace():
    x = torch.randn(3, 256).bfloat16()
    w, ws = make_weight(128, 256, 128, False)
    bias = torch.randn(128).bfloat16()
    out = w8a8_block_fp8_linear(x, w, [128, 128], ws, None, bias, workspace=torch.empty(1 << 16))
    assert rel_err(out, w8a8_block_fp8_linear_ref(x, w, (128, 128), ws) + bias) < 1e-2


@pytest.mark.parametrize("recipe", [(1, 1, 128), (1, 1, 32)])
@pytest.mark.parametrize("t", [1, 20, 70])  # decode, mid, prefill configs
def test_einsum(recipe, t):
    blk = recipe[2]
    g_, n, k = 3, 256, 384
    o = torch.randn(t, g_, k)
    a, sa = per_token_group_quant_fp8_ref(o.reshape(t * g_, k), blk)
    a, sa = a.view(t, g_, k), sa.view(t, g_, -1)
    w, ws = make_weight(g_ * n, k, blk, e8m0=blk == 128)
    d = torch.empty(t, g_, n, dtype=torch.bfloat16)
    fp8_einsum("bhr,hdr->bhd", (a, sa), (w.view(g_, n, k), ws), d, recipe=recipe)
    ref = fp8_einsum_ref(a, sa, w.view(g_, n, k), ws.view(g_, n // blk, -1), blk)
    assert rel_err(d, ref) < 1e-2


def test_config_table():
    """Each scale block has a config per M regime; the kernel's constraints on them hold."""
    for sk, regs in CONFIGS.items():
        assert set(regs) == {"decode", "mid", "prefill"}
        for cfg in regs.values():
            assert (cfg.block_k or sk) in (sk, sk // 2) and (cfg.block_k or sk) >= 32
            assert not cfg.fuse_quant or (cfg.block_k or sk) == sk
            assert cfg.waves >= 1
    for m, reg in ((1, "decode"), (16, "decode"), (17, "mid"), (64, "mid"), (65, "prefill"), (4096, "prefill")):
        assert config_for(m, 128) is CONFIGS[128][reg]
        assert config_for(m, 32) is CONFIGS[32][reg]


def test_half_scale_block_k_tiles_fp32_exact():
    """The 128-block prefill config loops over 64-wide K tiles (the scale is re-read per half tile); with the
    interpreter's 8 "SMs" it also splits K (2 splits of 5 tiles: the boundary falls inside a scale block).
    fp32 output exact."""
    m, n, k = 70, 256, 640
    assert config_for(m, 128).block_k == 64
    a, sa = per_token_group_quant_fp8_ref(torch.randn(m, k), 128)
    w, ws = make_weight(n, k, 128, e8m0=True)
    out = w8a8_block_fp8_matmul(a, w, sa, ws, [128, 128], torch.float32)
    assert rel_err(out, block_fp8_matmul_ref(a, sa, w, ws, (128, 128), torch.float32)) < 1e-5


def test_many_splits_and_workspace():
    """Decode split-K beyond one reduce chunk (14 splits over 70 K tiles), caller workspace sized by MAX_SPLITS."""
    m, n, k = 3, 64, 32 * 70
    x = torch.randn(m, k).bfloat16()
    w, ws = make_weight(n, k, 32, e8m0=True)
    out = w8a8_block_fp8_linear(x, w, [32, 32], ws, workspace=torch.empty(MAX_SPLITS * m * n))
    assert rel_err(out, w8a8_block_fp8_linear_ref(x, w, (32, 32), ws)) < 1e-2
    with pytest.raises(ValueError, match="workspace"):
        w8a8_block_fp8_linear(x, w, [32, 32], ws, workspace=torch.empty(16))


def test_bad_input():
    x = torch.randn(2, 256).bfloat16()
    w, ws = make_weight(128, 256, 128, False)
    with pytest.raises(ValueError, match="block_size"):
        w8a8_block_fp8_linear(x, w, [64, 64], ws)
    with pytest.raises(ValueError, match="weight_scale"):
        w8a8_block_fp8_linear(x, w, [128, 128], ws[:, :1])
    with pytest.raises(ValueError, match="input/weight"):
        w8a8_block_fp8_linear(x.float(), w, [128, 128], ws)
    with pytest.raises(ValueError, match="weight"):
        w8a8_block_fp8_linear(x, w.float(), [128, 128], ws)
    w2, ws2 = make_weight(128, 200, 128, False)
    with pytest.raises(ValueError, match="multiples of 16"):
        w8a8_block_fp8_linear(torch.randn(2, 200).bfloat16(), w2, [128, 128], ws2)
    a = torch.zeros(1, 2, 256, dtype=torch.float8_e4m3fn)
    sa = torch.ones(1, 2, 2)
    d = torch.empty(1, 2, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="expr"):
        fp8_einsum("bhd,hdr->bhr", (a, sa), (w.view(2, 64, 256), ws), d)
    with pytest.raises(ValueError, match="recipe"):
        fp8_einsum("bhr,hdr->bhd", (a, sa), (w.view(1, 128, 256), ws), d[:, :1], recipe=(1, 128, 128))


# ---------------------------------------------------------------- GPU (DSV4 shapes) ----------------------------


def _dsv4_linear_shapes():
    # (N, K): wq_a, wkv, wq_b/TP2, wo_b/TP2, shared expert gate_up / down (TP1), indexer wq_b
    return [(1024, 4096), (512, 4096), (16384, 1024), (4096, 4096), (4096, 4096), (4096, 2048), (8192, 1024)]


@pytest.mark.gpu
@pytest.mark.parametrize("blk", [128, 32])
@pytest.mark.parametrize("m", [1, 7, 16, 64, 200, 4096])  # 200: prefill config with split-K on small N
def test_gpu_linear_dsv4(blk, m):
    for n, k in _dsv4_linear_shapes():
        x = torch.randn(m, k, device="cuda").bfloat16()
        w, ws = make_weight(n, k, blk, e8m0=blk == 32, device="cuda")
        out = w8a8_block_fp8_linear(x, w, [blk, blk], ws)
        # bf16 output rounding plus fp32 summation order: 1e-2 of the largest magnitude
        assert rel_err(out, w8a8_block_fp8_linear_ref(x, w, (blk, blk), ws)) < 1e-2, (n, k)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 7, 64, 4096])
@pytest.mark.parametrize("groups", [8, 4, 2, 1])  # wo_a at TP 1/2/4/8
def test_gpu_einsum_wo_a(t, groups):
    n, k = 1024, 4096
    o = torch.randn(t * groups, k, device="cuda")
    a, sa = per_token_group_quant_fp8_ref(o, 128)
    a, sa = a.view(t, groups, k), sa.view(t, groups, -1)
    w, ws = make_weight(groups * n, k, 128, e8m0=False, device="cuda")
    d = torch.empty(t, groups, n, dtype=torch.bfloat16, device="cuda")
    fp8_einsum("bhr,hdr->bhd", (a, sa), (w.view(groups, n, k), ws), d, recipe=(1, 1, 128))
    ref = fp8_einsum_ref(a, sa, w.view(groups, n, k), ws.view(groups, n // 128, -1))
    assert rel_err(d, ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 40, 64])
def test_gpu_cuda_graph(m):
    n, k = 4096, 4096
    x = torch.randn(m, k, device="cuda").bfloat16()
    w, ws = make_weight(n, k, 128, e8m0=False, device="cuda")
    ws_buf = torch.empty(64 * m * n, device="cuda")
    w8a8_block_fp8_linear(x, w, [128, 128], ws, workspace=ws_buf)  # warm-up: compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = w8a8_block_fp8_linear(x, w, [128, 128], ws, workspace=ws_buf)
    x.copy_(torch.randn_like(x))
    eager = w8a8_block_fp8_linear(x, w, [128, 128], ws, workspace=ws_buf).clone()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
