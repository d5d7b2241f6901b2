"""mHC bindings (``patches/mhc.toml``) against real SGLang 0.5.12 / 0.5.16, each in a fresh interpreter.

Cross-checks run SGLang's own PyTorch mHC code, cut verbatim out of the release's ``deepseek_v4.py``
(``hc_pre_torch_impl``, the ``hc_split_sinkhorn`` weighted sum, ``hc_post_torch_impl``), against the
bound entries (``sglang.kernels.ops.layernorm.mhc`` / ``sglang.srt.layers.mhc``) and our reference.

On this CPU machine ``sglang.srt.models.deepseek_v4`` and the DeepGEMM wrapper cannot be imported
(transformers / dill mismatch), so the ``mhc-model`` and ``mhc-prenorm`` families must be left native
*whole* here; on the GPU machine (SGLang 0.5.16 installed) the GPU tests check they apply and run.
"""

from __future__ import annotations

import json

import pytest
import torch
from sglang_env import run_py

from sglang_sm120.bindings import mhc as shared
from sglang_sm120.bindings.v0_5_16 import mhc as b16
from sglang_sm120.reference import mhc as ref

EMULATE = {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"}

# Shared by every subprocess: inputs, SGLang's torch mHC code from the release source, comparisons.
COMMON = r'''
import ast, json, textwrap, types
import torch
import torch.nn.functional as F
from sglang_sm120.reference import mhc as ref

EPS, ITERS, HC = 1e-6, 20, 4


def inputs(T, H, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    k = HC * H
    d = dict(
        r=torch.randn(T, HC, H, generator=g).bfloat16(),
        fn=torch.randn(24, k, generator=g) * (4.0 / k**0.5),
        scale=torch.tensor([0.8, 0.6, 1.5]),
        base=torch.randn(24, generator=g) * 0.5,
        w=(1.0 + 0.2 * torch.randn(H, generator=g)).bfloat16(),
        x=torch.randn(T, H, generator=g).bfloat16(),
        post=2 * torch.rand(T, HC, generator=g),
        comb=torch.softmax(torch.randn(T, HC, HC, generator=g), -1),
    )
    return {n: t.to(device) for n, t in d.items()}


def sglang_torch_impls(model_file):
    """SGLang's nested torch mHC functions, undecorated, bound to a layer namespace."""
    src = open(model_file).read()
    found = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name in ("hc_pre_torch_impl", "hc_post_torch_impl"):
            node.decorator_list = []
            found[node.name] = textwrap.dedent(ast.unparse(node))
    layer = types.SimpleNamespace(rms_norm_eps=EPS, hc_eps=EPS, hc_sinkhorn_iters=ITERS, hc_mult=HC)
    ns = {"torch": torch, "F": F, "self": layer}
    for code in found.values():
        exec(code, ns)
    return layer, ns["hc_pre_torch_impl"], ns["hc_post_torch_impl"]


def sglang_hc_pre(pre_impl, sinkhorn, x, fn, scale, base, w=None):
    """SGLang's torch hc_pre path (0.5.12/0.5.16 deepseek_v4.py) + RMSNorm.forward_native."""
    x_flat, mixes = pre_impl(x, fn)
    pre, post, comb = sinkhorn(mixes, scale, base, HC, ITERS, EPS)
    y = (pre.squeeze(1).unsqueeze(-1) * x_flat.view(x.size())).sum(dim=1).to(x.dtype)
    if w is not None:
        yf = y.float()
        y = (yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w
    return y, post.squeeze(1), comb.squeeze(1)


def close(a, b, what, atol=1e-5, rtol=2**-7):
    torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol, msg=lambda m: what + ": " + m)


def wraps_ours(sglang_fn, ours):
    """HookRegistry REPLACE installs a wrapper whose closure holds our function."""
    cells = getattr(sglang_fn, "__closure__", None) or ()
    return sglang_fn is ours or any(c.cell_contents is ours for c in cells)


def family_states(rt, family):
    """States of a family's code patches (its env defaults apply at bootstrap regardless)."""
    from sglang_sm120.dispatch import live_status
    st = live_status(rt)
    return sorted({st[p.id].state for p in rt.patches() if p.family == family and p.kind != "env"})
'''


def _run(code: str, version: str | None, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    proc = run_py(COMMON + code, version, env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


# ----------------------------------------------------------------------------- CPU, real SGLang 0.5.16

BIND_0_5_16 = r"""
import os, sys
from sglang.srt.plugins import load_plugins
load_plugins()
import sglang.kernels.ops.layernorm.mhc as k
from sglang_sm120 import dispatch
from sglang_sm120.bindings.v0_5_16 import mhc as ours

rt = dispatch.runtime()
assert family_states(rt, "mhc") == ["applied"], family_states(rt, "mhc")
for fam in ("mhc-model", "mhc-prenorm"):  # their modules do not import on this CPU machine
    assert family_states(rt, fam) in (["applied"], ["skipped"]), (fam, family_states(rt, fam))
assert os.environ["SGLANG_OPT_FUSE_MHC_POST_PRE"] == "1"
for name in ("mhc_pre", "mhc_post", "mhc_fused_post_pre", "hc_split_sinkhorn"):
    assert wraps_ours(getattr(k, name), getattr(ours, name)), name

layer, pre_impl, post_impl = sglang_torch_impls(sys.modules["sglang"].__path__[0] + "/srt/models/deepseek_v4.py")
T, H = 6, 256
d = inputs(T, H)
r, fn, scale, base, w, x = d["r"], d["fn"], d["scale"], d["base"], d["w"], d["x"]
norm = types.SimpleNamespace(weight=types.SimpleNamespace(data=w), variance_epsilon=EPS)

# hc_split_sinkhorn as the model calls it: mixes [T, 1, 24] from its own torch GEMM path.
x_flat, mixes = pre_impl(r, fn)
pre_s, post_s, comb_s = k.hc_split_sinkhorn(mixes, scale, base, HC, ITERS, EPS)
assert pre_s.shape == (T, 1, 4) and post_s.shape == (T, 1, 4) and comb_s.shape == (T, 1, 4, 4)
assert pre_s.dtype == post_s.dtype == comb_s.dtype == torch.float32

# mhc_pre, keyword call as DeepseekV4DecoderLayer.hc_pre's TileLang branch makes it.
post, comb, y = k.mhc_pre(residual=r, fn=fn, hc_scale=scale, hc_base=base, rms_eps=EPS, hc_pre_eps=EPS,
                          hc_sinkhorn_eps=EPS, hc_post_mult_value=2.0, sinkhorn_repeat=ITERS,
                          norm_weight=w, norm_eps=EPS)
assert post.shape == (T, 4, 1) and comb.shape == (T, 4, 4) and y.shape == (T, H)
assert (post.dtype, comb.dtype, y.dtype) == (torch.float32, torch.float32, torch.bfloat16)
post_r, comb_r, y_r = ref.mhc_pre(r, fn, scale, base, EPS, EPS, EPS, 2.0, ITERS, norm_weight=w, norm_eps=EPS)
close(post, post_r, "mhc_pre post vs reference", atol=0, rtol=0)
close(y, y_r, "mhc_pre y vs reference", atol=0, rtol=0)
y_s, post_sg, comb_sg = sglang_hc_pre(pre_impl, k.hc_split_sinkhorn, r, fn, scale, base, w)
close(post.squeeze(-1), post_sg, "mhc_pre post vs SGLang torch path", atol=1e-5, rtol=1e-5)
close(comb, comb_sg, "mhc_pre comb vs SGLang torch path", atol=1e-5, rtol=1e-5)
close(y, y_s, "mhc_pre y vs SGLang torch path + RMSNorm", atol=2e-2, rtol=2**-6)

# The model's hc_pre, bound: fused norm, post [T, 4].
y_h, post_h, comb_h, fused = ours.hc_pre(layer, r, fn, scale, base, norm=norm, forward_batch=None)
assert fused is True and post_h.shape == (T, 4)
close(y_h, y, "hc_pre y", atol=0, rtol=0)
close(post_h, post_sg, "hc_pre post", atol=1e-5, rtol=1e-5)
close(comb_h, comb_sg, "hc_pre comb", atol=1e-5, rtol=1e-5)
y_n, _, _, fused_n = ours.hc_pre(layer, r, fn, scale, base)
assert fused_n is False
close(y_n, sglang_hc_pre(pre_impl, k.hc_split_sinkhorn, r, fn, scale, base)[0], "hc_pre unnormed y")
e = ours.hc_pre(layer, r[:0], fn, scale, base, norm=norm)
assert [t.shape for t in e[:3]] == [(0, H), (0, 4), (0, 4, 4)] and e[1].dtype == torch.float32 and e[3] is False

# mhc_post, both post layouts, vs SGLang's hc_post_torch_impl.
p, c = d["post"], d["comb"]
expect = post_impl(x, r, p, c)
close(k.mhc_post(x, r, p, c), expect, "mhc_post [T,4]")
close(k.mhc_post(x, r, p.unsqueeze(-1), c), expect, "mhc_post [T,4,1]")
close(ours.hc_post(layer, x, r, p, c), expect, "hc_post")
assert ours.hc_post(layer, x[:0], r[:0], p[:0], c[:0]).shape == (0, 4, H)

# mhc_fused_post_pre as the model's forward calls it (positional, post [T, 4, 1]).
r_cur, post_f, comb_f, y_f = k.mhc_fused_post_pre(x, r, p.unsqueeze(-1), c, fn, scale, base, EPS, EPS, EPS, 2.0,
                                                  ITERS, norm_weight=w, norm_eps=EPS)
close(r_cur, expect, "fused residual_cur vs hc_post_torch_impl")
assert post_f.shape == (T, 4, 1) and comb_f.shape == (T, 4, 4) and y_f.shape == (T, H)
y_s, post_sg, comb_sg = sglang_hc_pre(pre_impl, k.hc_split_sinkhorn, r_cur, fn, scale, base, w)
close(post_f.squeeze(-1), post_sg, "fused post", atol=1e-5, rtol=1e-5)
close(comb_f, comb_sg, "fused comb", atol=1e-5, rtol=1e-5)
close(y_f, y_s, "fused layer_input", atol=2e-2, rtol=2**-6)

# The model's MhcOps table and fusion gate (bindings; their model module needs the GPU machine here).
assert ours.is_fused_mhc_post_pre_enabled() is True
print("OK")
"""


def test_0_5_16_bound_entries_match_sglang_torch_path_and_reference():
    assert _run(BIND_0_5_16, "0.5.16", EMULATE).strip().endswith("OK")


def test_0_5_16_fusion_gate_follows_the_user_switch():
    out = _run(
        "from sglang_sm120.bindings.v0_5_16 import mhc as ours\nprint(ours.is_fused_mhc_post_pre_enabled())",
        "0.5.16",
        {**EMULATE, "SGLANG_OPT_FUSE_MHC_POST_PRE": "0"},
    )
    assert out.strip().splitlines()[-1] == "False"


OFF = r"""
from sglang.srt.plugins import load_plugins
load_plugins()
import sglang.kernels.ops.layernorm.mhc as k
print(all(not hasattr(getattr(k, n), "__wrapped__") and getattr(k, n).__module__ == k.__name__
          for n in ("mhc_pre", "mhc_post", "mhc_fused_post_pre", "hc_split_sinkhorn")))
"""


def test_off_leaves_sglang_mhc_untouched():
    out = _run(OFF, "0.5.16", {"SGLANG_SM120": "off", "SGLANG_SM120_ASSUME_GPUS": "12.0"})
    assert out.strip().splitlines()[-1] == "True"


# ----------------------------------------------------------------------------- CPU, real SGLang 0.5.12

# 0.5.12's sglang/srt/layers/mhc.py and deepseek_v4.py do not import on this CPU machine (TileLang and
# transformers); there the families must be left native whole, and the bindings are checked directly
# against 0.5.12's own torch code.  Where they import, SGLang's entries must be ours.
BIND_0_5_12 = r"""
import sys
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang_sm120 import dispatch
from sglang_sm120.bindings.v0_5_12 import mhc as ours

rt = dispatch.runtime()
states = {fam: family_states(rt, fam) for fam in ("mhc", "mhc-model")}
assert all(s in (["applied"], ["skipped"]) for s in states.values()), states
if states["mhc"] == ["applied"]:
    import sglang.srt.layers.mhc as k
    for name in ("mhc_pre", "mhc_post", "hc_split_sinkhorn"):
        assert wraps_ours(getattr(k, name), getattr(ours, name)), name
if states["mhc-model"] == ["applied"]:
    import sglang.srt.models.deepseek_v4 as m
    assert wraps_ours(m.DeepseekV4DecoderLayer.hc_pre, ours.hc_pre)
    assert wraps_ours(m.DeepseekV4DecoderLayer.hc_post, ours.hc_post)

layer, pre_impl, post_impl = sglang_torch_impls(sys.modules["sglang"].__path__[0] + "/srt/models/deepseek_v4.py")
T, H = 5, 128
d = inputs(T, H, seed=3)
r, fn, scale, base, w, x = d["r"], d["fn"], d["scale"], d["base"], d["w"], d["x"]
norm = types.SimpleNamespace(weight=types.SimpleNamespace(data=w), variance_epsilon=EPS)

post, comb, y = ours.mhc_pre(residual=r, fn=fn, hc_scale=scale, hc_base=base, rms_eps=EPS, hc_pre_eps=EPS,
                             hc_sinkhorn_eps=EPS, hc_post_mult_value=2.0, sinkhorn_repeat=ITERS,
                             norm_weight=w, norm_eps=EPS)
assert post.shape == (T, 4, 1) and comb.shape == (T, 4, 4) and y.shape == (T, H)
y_s, post_sg, comb_sg = sglang_hc_pre(pre_impl, ours.hc_split_sinkhorn, r, fn, scale, base, w)
close(post.squeeze(-1), post_sg, "post vs SGLang torch path", atol=1e-5, rtol=1e-5)
close(comb, comb_sg, "comb vs SGLang torch path", atol=1e-5, rtol=1e-5)
close(y, y_s, "y vs SGLang torch path + RMSNorm", atol=2e-2, rtol=2**-6)

y_h, post_h, comb_h, fused = ours.hc_pre(layer, r, fn, scale, base, norm=norm)
assert fused is True and post_h.shape == (T, 4) and comb_h.shape == (T, 4, 4)
close(y_h, y, "hc_pre y", atol=0, rtol=0)
close(post_h, post_sg, "hc_pre post", atol=1e-5, rtol=1e-5)
close(comb_h, comb_sg, "hc_pre comb", atol=1e-5, rtol=1e-5)
y_n, _, _, fused_n = ours.hc_pre(layer, r, fn, scale, base)
assert fused_n is False
close(y_n, sglang_hc_pre(pre_impl, ours.hc_split_sinkhorn, r, fn, scale, base)[0], "hc_pre unnormed y")
e = ours.hc_pre(layer, r[:0], fn, scale, base, norm=norm)
assert [t.shape for t in e[:3]] == [(0, H), (0, 4), (0, 4, 4)] and e[1].dtype == torch.bfloat16 and e[3] is False

p, c = d["post"], d["comb"]
expect = post_impl(x, r, p, c)
close(ours.mhc_post(x, r, p, c), expect, "mhc_post")
close(ours.hc_post(layer, x, r, p, c), expect, "hc_post")
print(json.dumps(states))
"""


def test_0_5_12_families_whole_and_bindings_match_sglang_torch_path():
    proc = run_py(COMMON + BIND_0_5_12, "0.5.12", EMULATE)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    states = json.loads(proc.stdout.strip().splitlines()[-1])
    for fam, state in states.items():
        warn = [x for x in proc.stderr.splitlines() if f"family '{fam}' left native" in x]
        assert len(warn) == (state == ["skipped"]), (fam, state, warn)


# ----------------------------------------------------------------------------- bindings in-process (CPU)


def test_tf32_hc_prenorm_gemm_contract():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4 * 32, generator=g).bfloat16()
    b = torch.randn(24, 4 * 32, generator=g)
    d_r, s_r = ref.hc_prenorm_gemm(a, b)
    d, s = torch.full((3, 24), float("nan")), torch.full((3,), float("nan"))
    b16.tf32_hc_prenorm_gemm(a, b, d, s, None)
    torch.testing.assert_close((d, s), (d_r, s_r))
    d, s = torch.full((2, 3, 24), float("nan")), torch.full((2, 3), float("nan"))
    b16.tf32_hc_prenorm_gemm(a, b, d, s, 2)
    torch.testing.assert_close((d.sum(0), s.sum(0)), (d_r, s_r))
    b16.tf32_hc_prenorm_gemm(a[:0], b, d[:, :0], s[:, :0], 2)  # empty: no-op, no error


def test_hc_split_sinkhorn_rejects_bad_mixes():
    scale, base = torch.ones(3), torch.zeros(24)
    with pytest.raises(ValueError, match=r"mixes: expected a \[B, S, 24\]"):
        shared.hc_split_sinkhorn(torch.zeros(4, 24), scale, base)
    with pytest.raises(ValueError, match="mixes: expected fp32"):
        shared.hc_split_sinkhorn(torch.zeros(4, 1, 24, dtype=torch.bfloat16), scale, base)


# ----------------------------------------------------------------------------- GPU (SGLang 0.5.16 installed)

GPU = r"""
import importlib.metadata, sys
assert importlib.metadata.version("sglang").startswith("0.5.16"), importlib.metadata.version("sglang")
from sglang.srt.plugins import load_plugins
load_plugins()
import sglang.kernels.ops.layernorm.mhc as k
import sglang.srt.layers.deep_gemm_wrapper.entrypoint as ep
import sglang.srt.models.deepseek_v4 as m
from sglang_sm120 import dispatch
from sglang_sm120.bindings.v0_5_16 import mhc as ours

rt = dispatch.runtime()
for fam in ("mhc", "mhc-model", "mhc-prenorm"):
    assert family_states(rt, fam) == ["applied"], (fam, family_states(rt, fam))
L = m.DeepseekV4DecoderLayer
assert wraps_ours(L.hc_pre, ours.hc_pre) and wraps_ours(L.hc_post, ours.hc_post)
assert wraps_ours(ep.tf32_hc_prenorm_gemm, ours.tf32_hc_prenorm_gemm)
assert m._is_fused_mhc_post_pre_enabled() is True
ops = m._get_mhc_ops()
assert ops.mhc_fused_post_pre is ours.mhc_fused_post_pre and ops.hc_split_sinkhorn is ours.hc_split_sinkhorn

T, H = TOKENS, 4096
d = inputs(T, H, "cuda")
r, fn, scale, base, w, x, p, c = (d[n] for n in ("r", "fn", "scale", "base", "w", "x", "post", "comb"))
layer = types.SimpleNamespace(rms_norm_eps=EPS, hc_eps=EPS, hc_sinkhorn_iters=ITERS, hc_mult=HC)
norm = types.SimpleNamespace(weight=types.SimpleNamespace(data=w), variance_epsilon=EPS)
d_out = torch.empty(3, T, 24, device="cuda")
s_out = torch.empty(3, T, device="cuda")


def step():
    y, post, comb, fused = L.hc_pre(layer, r, fn, scale, base, norm=norm, forward_batch=None)
    r_post = L.hc_post(layer, x, r, p, c)
    r_cur, post_f, comb_f, y_f = ops.mhc_fused_post_pre(x, r, p.unsqueeze(-1), c, fn, scale, base, EPS, EPS, EPS,
                                                        2.0, ITERS, norm_weight=w, norm_eps=EPS)
    post_k, comb_k, y_k = k.mhc_pre(r, fn, scale, base, EPS, EPS, EPS, 2.0, ITERS)
    ep.tf32_hc_prenorm_gemm(r.view(T, -1), fn, d_out, s_out, 3)
    return y, post, comb, r_post, r_cur, post_f, comb_f, y_f, post_k, comb_k, y_k, k.mhc_post(x, r, p, c)


def check(out):
    y, post, comb, r_post, r_cur, post_f, comb_f, y_f, post_k, comb_k, y_k, r_post_k = out
    post_r, comb_r, y_r = ref.mhc_pre(r, fn, scale, base, EPS, EPS, EPS, 2.0, ITERS, norm_weight=w, norm_eps=EPS)
    close(post, post_r.squeeze(-1), "hc_pre post", atol=3e-3, rtol=0)
    close(comb, comb_r, "hc_pre comb", atol=3e-3, rtol=0)
    close(y, y_r, "hc_pre y", atol=2e-2, rtol=2e-2)
    r_post_r = ref.mhc_post(x, r, p, c)
    close(r_post, r_post_r, "hc_post")
    close(r_post_k, r_post_r, "mhc_post")
    torch.testing.assert_close(r_cur, r_post, rtol=0, atol=0)
    post_r, comb_r, y_r = ref.mhc_pre(r_cur, fn, scale, base, EPS, EPS, EPS, 2.0, ITERS, norm_weight=w, norm_eps=EPS)
    close(post_f, post_r, "fused post", atol=3e-3, rtol=0)
    close(comb_f, comb_r, "fused comb", atol=3e-3, rtol=0)
    close(y_f, y_r, "fused layer_input", atol=2e-2, rtol=2e-2)
    post_r, comb_r, y_r = ref.mhc_pre(r, fn, scale, base, EPS, EPS, EPS, 2.0, ITERS)
    close(post_k, post_r, "mhc_pre post", atol=3e-3, rtol=0)
    close(comb_k, comb_r, "mhc_pre comb", atol=3e-3, rtol=0)
    close(y_k, y_r, "mhc_pre y", atol=2e-2, rtol=2e-2)
    d_r, s_r = ref.hc_prenorm_gemm(r.view(T, -1), fn)
    close(d_out.sum(0), d_r, "prenorm gemm", atol=2e-2, rtol=2e-3)
    close(s_out.sum(0), s_r, "prenorm sqrsum", atol=1e-2, rtol=1e-5)


check(step())
stream = torch.cuda.Stream()
stream.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(stream):
    step()
torch.cuda.current_stream().wait_stream(stream)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    captured = step()
fresh = inputs(T, H, "cuda", seed=7)
for n, t in (("r", r), ("x", x), ("post", p), ("comb", c)):
    t.copy_(fresh[n])
graph.replay()
torch.cuda.synchronize()
check(captured)
print("OK")
"""


@pytest.mark.gpu
@pytest.mark.installed_sglang("0.5.16")
@pytest.mark.parametrize("num_tokens", [1, 7, 64, 4096])
def test_gpu_bound_0_5_16_entries_with_cuda_graph(num_tokens):
    """Needs SGLang 0.5.16 installed (all its dependencies) and this package pip-installed."""
    out = _run(GPU.replace("TOKENS", str(num_tokens)), None, {"SGLANG_SM120": "emulate"})
    assert out.strip().endswith("OK")
