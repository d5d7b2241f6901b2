"""mHC kernels (``sglang_sm120.kernels.mhc``) against the PyTorch oracle (``sglang_sm120.reference.mhc``).

CPU: the kernels run under the Triton interpreter with small hidden sizes; there ``tl.dot`` on fp32
operands is exact fp32, so post/comb match the fp32 oracle to ~1e-5.  bf16 outputs: 1 ulp on a GPU
(summation order / FMA contraction can flip a rounding); 2 ulp under the interpreter, whose
fp32 -> bf16 cast truncates instead of rounding to nearest (the normed output is rounded twice).
GPU: real shapes (hidden 4096, hc 4).  The pre-norm GEMM runs in TF32 (as DeepGEMM / TileLang do), so
mixes carry ~1e-3 relative error; post (in [0, 2]) and comb (in [0, 1]) are checked to 3e-3 absolute,
bf16 outputs to 2 % relative.  CUDA-graph replay must equal eager bit for bit.
"""

from __future__ import annotations

import os

import pytest
import torch

from sglang_sm120.kernels import mhc as kern
from sglang_sm120.reference import mhc as ref

EPS = 1e-6
SINKHORN_ITERS = 20
POST_MULT = 2.0
BF16_RTOL = 2**-6 if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else 2**-7


def _params(hidden: int, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = kern.HC_MULT * hidden
    fn = torch.randn(kern.N_MIX, k, generator=g) * (4.0 / k**0.5)
    scale = torch.tensor([0.8, 0.6, 1.5])
    base = torch.randn(kern.N_MIX, generator=g) * 0.5
    weight = (1.0 + 0.2 * torch.randn(hidden, generator=g)).to(torch.bfloat16)
    return [t.to(device) for t in (fn, scale, base, weight)]


def _residual(num_tokens: int, hidden: int, device: str = "cpu", seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, kern.HC_MULT, hidden, generator=g).to(torch.bfloat16).to(device)


def _prev_mix(num_tokens: int, hidden: int, device: str = "cpu", seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=g).to(torch.bfloat16)
    post = 2 * torch.rand(num_tokens, kern.HC_MULT, 1, generator=g)
    comb = torch.rand(num_tokens, kern.HC_MULT, kern.HC_MULT, generator=g)
    comb = comb / comb.sum(-1, keepdim=True)
    return x.to(device), post.to(device), comb.to(device)


def _pre_args():
    return (EPS, EPS, EPS, POST_MULT, SINKHORN_ITERS)


def _bf16_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.float(), b.float(), rtol=BF16_RTOL, atol=atol)


def _plans(op: str) -> list:
    """The distinct tile plans ``op`` ("pre", "fused", "post") can pick, in ``PLANS`` order."""
    return list(dict.fromkeys(plan for _, plan in kern.PLANS[op]))


def _plan_id(plan) -> str:
    return f"t{plan.block_t}-h{plan.block_h}-{'fma' if plan.dot == kern.DOT_FMA else 'tf32'}" + (
        "-fused" if plan.fused else ""
    )


def _force_plan(monkeypatch, plan) -> None:
    monkeypatch.setattr(kern, "_plan", lambda op, num_tokens: plan)


def _check_pre(out, expect, tol: float = 1e-5) -> None:
    post, comb, y = out
    post_r, comb_r, y_r = expect
    torch.testing.assert_close(post, post_r, rtol=tol, atol=tol)
    torch.testing.assert_close(comb, comb_r, rtol=tol, atol=tol)
    _bf16_close(y, y_r, atol=tol)


# ----------------------------------------------------------------------------- reference


def test_reference_matches_sglang_torch_path():
    """Oracle == a literal transcription of SGLang 0.5.12 hc_pre torch path + mhc_post torch path."""
    hidden = 64
    fn, scale, base, weight = _params(hidden)
    r = _residual(5, hidden)
    post, comb, y = ref.mhc_pre(r, fn, scale, base, *_pre_args())

    x_flat = r.flatten(1).float()
    mixes = torch.nn.functional.linear(x_flat, fn) * torch.rsqrt(x_flat.square().mean(-1, keepdim=True) + EPS)
    pre_s, post_s, comb_s = ref.hc_split_sinkhorn(mixes[:, None], scale, base, 4, SINKHORN_ITERS, EPS)
    y_s = (pre_s.squeeze(1).unsqueeze(-1) * x_flat.view(r.shape)).sum(dim=1).to(torch.bfloat16)
    torch.testing.assert_close(post.squeeze(-1), post_s.squeeze(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(comb, comb_s.squeeze(1), rtol=1e-6, atol=1e-6)
    _bf16_close(y, y_s)
    # The last Sinkhorn step normalises columns.
    torch.testing.assert_close(comb.sum(-2), torch.ones_like(comb.sum(-2)), atol=1e-4, rtol=0)

    x, p, c = _prev_mix(5, hidden)
    expect = (p * x.unsqueeze(1) + (c.unsqueeze(-1) * r.unsqueeze(2)).sum(dim=1)).type_as(x)
    _bf16_close(ref.mhc_post(x, r, p, c), expect)


# ----------------------------------------------------------------------------- interpreter / GPU kernels


@pytest.mark.parametrize("num_tokens,hidden", [(1, 128), (7, 256), (20, 64), (130, 64)])
@pytest.mark.parametrize("with_norm", [False, True])
def test_mhc_pre(num_tokens, hidden, with_norm):
    fn, scale, base, weight = _params(hidden)
    r = _residual(num_tokens, hidden)
    kw = dict(norm_weight=weight, norm_eps=EPS) if with_norm else {}
    post, comb, y = kern.mhc_pre(r, fn, scale, base, *_pre_args(), **kw)
    post_r, comb_r, y_r = ref.mhc_pre(r, fn, scale, base, *_pre_args(), **kw)
    assert post.shape == (num_tokens, 4, 1) and post.dtype == torch.float32
    assert comb.shape == (num_tokens, 4, 4) and comb.dtype == torch.float32
    assert y.shape == (num_tokens, hidden) and y.dtype == torch.bfloat16
    _check_pre((post, comb, y), (post_r, comb_r, y_r))


def test_plan_table():
    """Each op's table ends with a catch-all; the small-T FMA plan is the only in-kernel finalize."""
    for op in ("pre", "fused", "post"):
        assert kern.PLANS[op][-1][0] is None
        assert all(plan.fused == (plan.dot == kern.DOT_FMA) for plan in _plans(op))
    assert kern._plan("pre", 2).fused and not kern._plan("pre", 3).fused
    assert kern._plan("fused", 2).fused and not kern._plan("fused", 3).fused


def _plan_tokens(plan) -> int:
    """Two token blocks plus a partial one (masked rows) for the plan's BLOCK_T."""
    return 2 * plan.block_t + 1


@pytest.mark.parametrize("plan", _plans("pre"), ids=_plan_id)
def test_mhc_pre_plans(plan, monkeypatch):
    """Every mhc_pre plan (FMA with in-kernel finalize / TF32 with a finalize launch) vs the oracle."""
    hidden = 64
    num_tokens = _plan_tokens(plan)
    fn, scale, base, weight = _params(hidden)
    r = _residual(num_tokens, hidden)
    kw = dict(norm_weight=weight, norm_eps=EPS)
    _force_plan(monkeypatch, plan)
    out = kern.mhc_pre(r, fn, scale, base, *_pre_args(), **kw)
    _check_pre(out, ref.mhc_pre(r, fn, scale, base, *_pre_args(), **kw))


@pytest.mark.parametrize("tile", list(dict.fromkeys(t for _, t in kern.FIN_TILES)), ids=lambda t: f"t{t[0]}w{t[1]}")
def test_mhc_pre_finalize_tiles(tile, monkeypatch):
    """Every finalize tile (tokens per program sharing one Sinkhorn, warps), a partial last block included."""
    hidden, num_tokens = 64, 2 * tile[0] + 3
    fn, scale, base, weight = _params(hidden)
    r = _residual(num_tokens, hidden)
    kw = dict(norm_weight=weight, norm_eps=EPS)
    _force_plan(monkeypatch, _plans("pre")[1])  # a TF32 plan: the separate finalize launch
    monkeypatch.setattr(kern, "_fin_tile", lambda num_tokens: tile)
    out = kern.mhc_pre(r, fn, scale, base, *_pre_args(), **kw)
    _check_pre(out, ref.mhc_pre(r, fn, scale, base, *_pre_args(), **kw))


def test_mhc_pre_chunked_finalize():
    """DSV4's hidden 4096 with the 4-warp fused plan: the finalize walks H in chunks (two passes for the norm)."""
    hidden, num_tokens = 4096, 2
    fn, scale, base, weight = _params(hidden)
    r = _residual(num_tokens, hidden)
    kw = dict(norm_weight=weight, norm_eps=EPS)
    plan = kern._plan("pre", num_tokens)
    assert plan.fused and kern._fin_block_h(hidden, plan.warps) < hidden
    out = kern.mhc_pre(r, fn, scale, base, *_pre_args(), **kw)
    _check_pre(out, ref.mhc_pre(r, fn, scale, base, *_pre_args(), **kw))


@pytest.mark.parametrize("num_tokens,hidden", [(3, 128), (130, 64)])
def test_mhc_post(num_tokens, hidden):
    r = _residual(num_tokens, hidden)
    x, post, comb = _prev_mix(num_tokens, hidden)
    for p in (post, post.squeeze(-1)):
        _bf16_close(kern.mhc_post(x, r, p, comb), ref.mhc_post(x, r, p, comb))


def test_mhc_post_masked_columns():
    hidden, num_tokens = 600, 3  # not a multiple of BLOCK_H (512): masked columns
    r = _residual(num_tokens, hidden)
    x, post, comb = _prev_mix(num_tokens, hidden)
    _bf16_close(kern.mhc_post(x, r, post, comb), ref.mhc_post(x, r, post, comb))


@pytest.mark.parametrize("num_tokens,hidden", [(2, 128), (130, 64)])
def test_mhc_fused_post_pre(num_tokens, hidden):
    fn, scale, base, weight = _params(hidden)
    r = _residual(num_tokens, hidden)
    x, post_prev, comb_prev = _prev_mix(num_tokens, hidden)
    kw = dict(norm_weight=weight, norm_eps=EPS)
    r_cur, *out = kern.mhc_fused_post_pre(x, r, post_prev, comb_prev, fn, scale, base, *_pre_args(), **kw)
    _bf16_close(r_cur, ref.mhc_post(x, r, post_prev, comb_prev))
    # A 1-ulp flip in r_cur moves the mixes; judge the pre half on the kernel's own r_cur.
    _check_pre(out, ref.mhc_pre(r_cur, fn, scale, base, *_pre_args(), **kw))


@pytest.mark.parametrize("plan", _plans("fused"), ids=_plan_id)
def test_mhc_fused_post_pre_plans(plan, monkeypatch):
    hidden = 64
    num_tokens = _plan_tokens(plan)
    fn, scale, base, weight = _params(hidden)
    r = _residual(num_tokens, hidden)
    x, post_prev, comb_prev = _prev_mix(num_tokens, hidden)
    kw = dict(norm_weight=weight, norm_eps=EPS)
    _force_plan(monkeypatch, plan)
    r_cur, *out = kern.mhc_fused_post_pre(x, r, post_prev, comb_prev, fn, scale, base, *_pre_args(), **kw)
    _bf16_close(r_cur, ref.mhc_post(x, r, post_prev, comb_prev))
    _check_pre(out, ref.mhc_pre(r_cur, fn, scale, base, *_pre_args(), **kw))


@pytest.mark.parametrize("num_splits", [None, 3])
@pytest.mark.parametrize("m", [2, 9, 20])  # FMA plan, TF32 16-token blocks, TF32 64-token blocks
def test_hc_prenorm_gemm(num_splits, m):
    hidden = 96
    fn = _params(hidden)[0]
    a = _residual(m, hidden).view(m, -1)
    lead = () if num_splits is None else (num_splits,)
    d = torch.full((*lead, m, kern.N_MIX), float("nan"))
    s = torch.full((*lead, m), float("nan"))
    kern.hc_prenorm_gemm(a, fn, d, s, num_splits=num_splits)
    d_r, s_r = ref.hc_prenorm_gemm(a, fn)
    if num_splits is not None:
        d, s = d.sum(0), s.sum(0)
    torch.testing.assert_close(d, d_r, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s, s_r, rtol=1e-5, atol=1e-3)


def test_empty_batch():
    hidden = 64
    fn, scale, base, weight = _params(hidden)
    r = _residual(0, hidden)
    post, comb, y = kern.mhc_pre(r, fn, scale, base, *_pre_args())
    assert post.shape == (0, 4, 1) and comb.shape == (0, 4, 4) and y.shape == (0, hidden)
    x, p, c = _prev_mix(0, hidden)
    assert kern.mhc_post(x, r, p, c).shape == (0, 4, hidden)
    outs = kern.mhc_fused_post_pre(x, r, p, c, fn, scale, base, *_pre_args())
    assert [tuple(o.shape) for o in outs] == [(0, 4, hidden), (0, 4, 1), (0, 4, 4), (0, hidden)]


def test_bad_input():
    hidden = 64
    fn, scale, base, weight = _params(hidden)
    r = _residual(2, hidden)
    with pytest.raises(ValueError, match="residual"):
        kern.mhc_pre(r.float(), fn, scale, base, *_pre_args())
    with pytest.raises(ValueError, match="hc_mult"):
        kern.mhc_pre(r[:, :3].contiguous(), fn, scale, base, *_pre_args())
    with pytest.raises(ValueError, match="fn"):
        kern.mhc_pre(r, fn[:, :-1].contiguous(), scale, base, *_pre_args())
    with pytest.raises(ValueError, match="fn"):
        kern.mhc_pre(r, fn.bfloat16(), scale, base, *_pre_args())
    with pytest.raises(ValueError, match="hc_scale"):
        kern.mhc_pre(r, fn, scale[:2], base, *_pre_args())
    with pytest.raises(ValueError, match="norm_eps"):
        kern.mhc_pre(r, fn, scale, base, *_pre_args(), norm_weight=weight)
    with pytest.raises(ValueError, match="norm_weight"):
        kern.mhc_pre(r, fn, scale, base, *_pre_args(), norm_weight=weight[:-1], norm_eps=EPS)
    x, p, c = _prev_mix(2, hidden)
    with pytest.raises(ValueError, match="x"):
        kern.mhc_post(x[:1], r, p, c)
    with pytest.raises(ValueError, match="comb_res_mix"):
        kern.mhc_post(x, r, p, c.double())
    with pytest.raises(ValueError, match="post_layer_mix"):
        kern.mhc_fused_post_pre(x, r, p[:, :2], c, fn, scale, base, *_pre_args())
    with pytest.raises(ValueError, match="b"):
        kern.hc_prenorm_gemm(r.view(2, -1), fn[:, :8].contiguous(), torch.empty(2, 24), torch.empty(2))


def _offset(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose base is one element past a 16-byte boundary."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)[1:]
    return flat.view(t.shape).copy_(t)


def test_unaligned_bases_are_rejected():
    """The stream kernel vectorises residual / x / fn accesses on 16-byte aligned bases (its hints)."""
    hidden = 64
    fn, scale, base, _ = _params(hidden)
    r = _residual(2, hidden)
    x, p, c = _prev_mix(2, hidden)
    with pytest.raises(ValueError, match="residual: expected a 16-byte aligned base"):
        kern.mhc_pre(_offset(r), fn, scale, base, *_pre_args())
    with pytest.raises(ValueError, match="fn: expected a 16-byte aligned base"):
        kern.mhc_fused_post_pre(x, r, p, c, _offset(fn), scale, base, *_pre_args())
    with pytest.raises(ValueError, match="x: expected a 16-byte aligned base"):
        kern.mhc_post(_offset(x), r, p, c)
    with pytest.raises(ValueError, match="a: expected a 16-byte aligned base"):
        kern.hc_prenorm_gemm(_offset(r.view(2, -1)), fn, torch.empty(2, 24), torch.empty(2))
    kern.mhc_post(x, r, p, c)  # the aligned originals pass


# ----------------------------------------------------------------------------- GPU: real shapes, graphs

GPU_TOKENS = [1, 7, 64, 4096]
HIDDEN = 4096


def _gpu_close(out, expect) -> None:
    post, comb, y = out
    post_r, comb_r, y_r = expect
    torch.testing.assert_close(post, post_r, rtol=0, atol=3e-3)
    torch.testing.assert_close(comb, comb_r, rtol=0, atol=3e-3)
    torch.testing.assert_close(y.float(), y_r.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", GPU_TOKENS)
@pytest.mark.parametrize("with_norm", [False, True])
def test_gpu_mhc_pre(num_tokens, with_norm):
    fn, scale, base, weight = _params(HIDDEN, "cuda")
    r = _residual(num_tokens, HIDDEN, "cuda")
    kw = dict(norm_weight=weight, norm_eps=EPS) if with_norm else {}
    _gpu_close(
        kern.mhc_pre(r, fn, scale, base, *_pre_args(), **kw),
        ref.mhc_pre(r, fn, scale, base, *_pre_args(), **kw),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", GPU_TOKENS)
def test_gpu_mhc_post_and_fused(num_tokens):
    fn, scale, base, weight = _params(HIDDEN, "cuda")
    r = _residual(num_tokens, HIDDEN, "cuda")
    x, post_prev, comb_prev = _prev_mix(num_tokens, HIDDEN, "cuda")
    r_post = kern.mhc_post(x, r, post_prev, comb_prev)
    _bf16_close(r_post, ref.mhc_post(x, r, post_prev, comb_prev))
    kw = dict(norm_weight=weight, norm_eps=EPS)
    r_cur, *out = kern.mhc_fused_post_pre(x, r, post_prev, comb_prev, fn, scale, base, *_pre_args(), **kw)
    torch.testing.assert_close(r_cur, r_post, rtol=0, atol=0)
    _gpu_close(out, ref.mhc_pre(r_cur, fn, scale, base, *_pre_args(), **kw))


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", GPU_TOKENS)
def test_gpu_hc_prenorm_gemm(num_tokens):
    fn = _params(HIDDEN, "cuda")[0]
    a = _residual(num_tokens, HIDDEN, "cuda").view(num_tokens, -1)
    d = torch.empty(4, num_tokens, kern.N_MIX, device="cuda")
    s = torch.empty(4, num_tokens, device="cuda")
    kern.hc_prenorm_gemm(a, fn, d, s, num_splits=4)
    d_r, s_r = ref.hc_prenorm_gemm(a, fn)
    torch.testing.assert_close(d.sum(0), d_r, rtol=2e-3, atol=2e-2)  # TF32 products
    torch.testing.assert_close(s.sum(0), s_r, rtol=1e-5, atol=1e-2)  # exact squares, fp32 sums


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 64, 1000])
@pytest.mark.parametrize(
    "op,plan",
    [(op, p) for op in ("pre", "fused", "post") for p in _plans(op)],
    ids=lambda v: v if isinstance(v, str) else _plan_id(v),
)
def test_gpu_plans(op, plan, num_tokens, monkeypatch):
    """Every plan of ``PLANS`` at every size (the tests above cover each only in its own T range)."""
    fn, scale, base, weight = _params(HIDDEN, "cuda")
    r = _residual(num_tokens, HIDDEN, "cuda")
    x, post_prev, comb_prev = _prev_mix(num_tokens, HIDDEN, "cuda")
    kw = dict(norm_weight=weight, norm_eps=EPS)
    _force_plan(monkeypatch, plan)
    if op == "post":
        _bf16_close(kern.mhc_post(x, r, post_prev, comb_prev), ref.mhc_post(x, r, post_prev, comb_prev))
    elif op == "pre":
        expect = ref.mhc_pre(r, fn, scale, base, *_pre_args(), **kw)
        _gpu_close(kern.mhc_pre(r, fn, scale, base, *_pre_args(), **kw), expect)
    else:
        r_cur, *out = kern.mhc_fused_post_pre(x, r, post_prev, comb_prev, fn, scale, base, *_pre_args(), **kw)
        _bf16_close(r_cur, ref.mhc_post(x, r, post_prev, comb_prev))
        _gpu_close(out, ref.mhc_pre(r_cur, fn, scale, base, *_pre_args(), **kw))


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", GPU_TOKENS)
def test_gpu_cuda_graph(num_tokens):
    fn, scale, base, weight = _params(HIDDEN, "cuda")
    r = _residual(num_tokens, HIDDEN, "cuda")
    x, post_prev, comb_prev = _prev_mix(num_tokens, HIDDEN, "cuda")
    kw = dict(norm_weight=weight, norm_eps=EPS)

    def step():
        pre_out = kern.mhc_pre(r, fn, scale, base, *_pre_args(), **kw)
        fused = kern.mhc_fused_post_pre(x, r, post_prev, comb_prev, fn, scale, base, *_pre_args(), **kw)
        return (*pre_out, *fused, kern.mhc_post(x, r, post_prev, comb_prev))

    eager = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up (compiles) outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for t in captured:
        t.zero_()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
