"""SGLang bindings of the FP8 block GEMM (dense linears) and the DSV4 ``wo_a`` fp8_einsum.

CPU: the binding functions against a dequantise-then-matmul oracle; the patches against real SGLang
releases in fresh interpreters (``SGLANG_SM120=emulate``). ``deep_gemm`` is not installed on CPU machines,
so the wo_a tests give the interpreter a stand-in ``deep_gemm`` package whose kernels raise (the real
library has no SM12x kernels either). GPU (marked ``gpu``): the installed SGLang 0.5.16 with the plugin
active, DSV4-Flash shapes, CUDA-graph capture and replay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sglang_env import pth_installed, run_py

from sglang_sm120.bindings import fp8_gemm as shared
from sglang_sm120.bindings.v0_5_12 import fp8_gemm as b12
from sglang_sm120.bindings.v0_5_16 import fp8_gemm as b16
from sglang_sm120.reference.fp8_gemm import per_token_group_quant_fp8_ref, scale_to_float

EMULATE = {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"}
RELEASE_BINDINGS = {"0.5.12": b12, "0.5.16": b16}
RECIPES = {"0.5.12": (1, 1, 128), "0.5.16": (1, 128, 128)}  # what each release's wo_a passes DeepGEMM


def make_weight(n: int, k: int, blk: int, e8m0: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.5).to(torch.float8_e4m3fn)
    shape = (-(-n // blk), -(-k // blk))
    if e8m0:
        return w, torch.randint(118, 126, shape, generator=g, dtype=torch.uint8)
    return w, torch.rand(shape, generator=g) * 0.02 + 1e-3


def dequant_weight(w: torch.Tensor, s: torch.Tensor, blk: int) -> torch.Tensor:
    n, k = w.shape
    return w.float() * scale_to_float(s).repeat_interleave(blk, 0)[:n].repeat_interleave(blk, 1)[:, :k]


def dequant_act(x: torch.Tensor, blk: int) -> torch.Tensor:
    q, s = per_token_group_quant_fp8_ref(x, blk)
    return q.float() * s.repeat_interleave(blk, -1)[..., : x.shape[-1]]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


# ------------------------------------------------------------------ binding functions (CPU) ---------------


@pytest.mark.parametrize("blk,e8m0", [(128, False), (32, True)])
@pytest.mark.parametrize("shape", [(1,), (2, 5)])
def test_dense_binding_matches_dequant_matmul(blk, e8m0, shape):
    n, k = 320, 512  # N not a multiple of 128: a partial weight-scale block
    x = torch.randn(*shape, k).bfloat16()
    w, ws = make_weight(n, k, blk, e8m0)
    bias = torch.randn(n).bfloat16()
    linear = b16.dispatch_w8a8_block_fp8_linear()
    assert linear is b12.dispatch_w8a8_block_fp8_linear() is shared.w8a8_block_fp8_linear
    out = linear(input=x, weight=w, block_size=[blk, blk], weight_scale=ws, input_scale=None, bias=bias)
    ref = dequant_act(x.float(), blk) @ dequant_weight(w, ws, blk).T + bias.float()
    assert out.shape == (*shape, n) and out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 1e-2


def test_dense_binding_rejects_prequantised_input():
    w, ws = make_weight(128, 256, 128, False)
    with pytest.raises(ValueError, match="input_scale"):
        shared.w8a8_block_fp8_linear(torch.zeros(1, 256).bfloat16(), w, [128, 128], ws, torch.ones(1, 2))


def _wo_a_operands(t: int, groups: int, r: int, d: int, seed: int = 0):
    """What MQALayer.forward hands fp8_einsum: o quantised per token per 128 (fp32 scales), wo_a's weight
    viewed [G, R, D] and its raw block scales [G, R/128, D/128]."""
    o = torch.randn(t, groups, d, generator=torch.Generator().manual_seed(seed)).bfloat16()
    o_fp8, o_s = per_token_group_quant_fp8_ref(o.reshape(t * groups, d), 128)
    w, ws = make_weight(groups * r, d, 128, False, seed)
    ref = torch.einsum(
        "tgd,grd->tgr", dequant_act(o.float(), 128), dequant_weight(w, ws, 128).view(groups, r, d)
    )
    a = (o_fp8.view(t, groups, d), o_s.view(t, groups, -1))
    return a, (w.view(groups, r, d), ws.view(groups, r // 128, -1)), ref


@pytest.mark.parametrize("release", ["0.5.12", "0.5.16"])
def test_wo_a_einsum_binding_matches_dequant_einsum(release):
    a, b, ref = _wo_a_operands(t=3, groups=2, r=256, d=384)
    out = torch.empty(3, 2, 256, dtype=torch.bfloat16)
    RELEASE_BINDINGS[release].fp8_einsum("bhr,hdr->bhd", a, b, out, recipe=RECIPES[release])
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("release", ["0.5.12", "0.5.16"])
def test_wo_a_einsum_binding_rejects_deepgemm_layouts(release):
    a, (w, ws), _ = _wo_a_operands(t=1, groups=2, r=256, d=384)
    out = torch.empty(1, 2, 256, dtype=torch.bfloat16)
    other = RECIPES["0.5.16" if release == "0.5.12" else "0.5.12"]
    with pytest.raises(ValueError, match="recipe"):
        RELEASE_BINDINGS[release].fp8_einsum("bhr,hdr->bhd", a, (w, ws), out, recipe=other)
    per_row = ws.repeat_interleave(128, 1)  # DeepGEMM's per-row (1, 128) weight-scale layout
    with pytest.raises(ValueError, match="raw block scales"):
        RELEASE_BINDINGS[release].fp8_einsum("bhr,hdr->bhd", a, (w, per_row), out, recipe=RECIPES[release])


def test_0_5_12_wo_a_scale_setup_keeps_raw_block_scales():
    def layer(seed: int) -> SimpleNamespace:
        wo_a = torch.nn.Module()
        wo_a.weight = torch.nn.Parameter(torch.zeros(2 * 256, 384, dtype=torch.float8_e4m3fn), requires_grad=False)
        wo_a.weight_scale_inv = torch.nn.Parameter(torch.rand(4, 3, generator=torch.Generator().manual_seed(seed)),
                                                   requires_grad=False)
        wo_a.weight_scale_inv.format_ue8m0 = True  # what 0.5.12's MQALayer.__init__ sets
        return SimpleNamespace(self_attn=SimpleNamespace(n_local_groups=2, o_lora_rank=256, wo_a=wo_a))

    layers = [layer(i) for i in range(3)]
    before = [lyr.self_attn.wo_a.weight_scale_inv.data.clone() for lyr in layers]
    model = SimpleNamespace(model=SimpleNamespace(layers=layers, start_layer=1, end_layer=3, decoder=layers[0]))
    b12.setup_fp8_wo_a_scales(model, is_nextn=False)
    b12.setup_fp8_wo_a_scales(model, is_nextn=True)
    for lyr, raw in zip(layers, before):
        s = lyr.self_attn.wo_a.weight_scale_inv
        assert s.shape == (2, 2, 3) and s.is_contiguous() and torch.equal(s.data.view(4, 3), raw)
        assert s.format_ue8m0 is False
    assert "deep_gemm" not in sys.modules


# ------------------------------------------------------------------ patches in real SGLang (CPU) -----------

STAND_IN_DEEP_GEMM = '''
"""Stand-in for the deep_gemm package (not installed on CPU machines): its kernels raise."""
def fp8_einsum(expr, a, b, d, c=None, recipe=None):
    raise RuntimeError("stand-in DeepGEMM fp8_einsum ran")
def transform_sf_into_required_layout(*args, **kwargs):
    raise RuntimeError("stand-in DeepGEMM transform ran")
def get_num_sms():
    return 132
'''

WO_A = """
import json, sys, torch
sys.path.insert(0, {lib!r})
sys.path.insert(0, {tests!r})
import sglang  # the .pth bootstrap activates here and arms the import-time families
import deep_gemm
from sglang_sm120 import dispatch
from sglang_sm120.poison import SM120PoisonError
from test_bind_fp8_gemm import _wo_a_operands, rel_err
a, b, ref = _wo_a_operands(t=2, groups=2, r=256, d=384)
out = torch.empty(2, 2, 256, dtype=torch.bfloat16)
try:
    deep_gemm.fp8_einsum("bhr,hdr->bhd", a, b, out, recipe={recipe})  # the call MQALayer.forward makes
    err = rel_err(out, ref)
except Exception as exc:
    err = type(exc).__name__
try:
    deep_gemm.transform_sf_into_required_layout(None)
    transform = "ran"
except SM120PoisonError:
    transform = "poisoned"
except RuntimeError:
    transform = "native"
rt = dispatch.runtime()
print(json.dumps({{"impl": deep_gemm.fp8_einsum.__module__, "err": err, "transform": transform,
                  "status": {{k: v.state for k, v in (rt.status.items() if rt else ()) if k.startswith("fp8-gemm")}}}}))
"""


def _run_wo_a(version: str, env: dict[str, str], tmp_path: Path) -> dict:
    (tmp_path / "deep_gemm").mkdir(exist_ok=True)
    (tmp_path / "deep_gemm" / "__init__.py").write_text(STAND_IN_DEEP_GEMM)
    code = WO_A.format(lib=str(tmp_path), tests=str(Path(__file__).parent), recipe=RECIPES[version])
    proc = run_py(code, version, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", ["0.5.12", "0.5.16"])
def test_wo_a_einsum_bound_when_deep_gemm_is_imported(version, tmp_path):
    out = _run_wo_a(version, EMULATE, tmp_path)
    tag = version.replace(".", "_")
    assert out["impl"] == f"sglang_sm120.bindings.v{tag}.fp8_gemm"
    assert isinstance(out["err"], float) and out["err"] < 1e-2, out
    assert out["transform"] == "poisoned"  # the rest of DeepGEMM stays poisoned under emulate
    assert out["status"][f"fp8-gemm-wo-a.einsum@{version}"] == "applied"


def test_wo_a_einsum_untouched_when_off(tmp_path):
    out = _run_wo_a("0.5.16", {"SGLANG_SM120": "off", "SGLANG_SM120_ASSUME_GPUS": "12.0"}, tmp_path)
    assert out["impl"] == "deep_gemm" and out["err"] == "RuntimeError" and out["transform"] == "native"
    assert out["status"] == {}


DENSE = """
import json, sys, torch
sys.path.insert(0, {tests!r})
try:
    import sglang.srt.layers.quantization.fp8 as fp8
except ModuleNotFoundError as exc:
    if (exc.name or "").startswith("sglang"):
        raise
    print(json.dumps({{"missing": exc.name or str(exc)}}))
    raise SystemExit(0)
from sglang.srt.plugins import load_plugins
load_plugins()  # what every scheduler does before it builds the model
from sglang_sm120.bindings import fp8_gemm as shared
from test_bind_fp8_gemm import dequant_act, dequant_weight, make_weight, rel_err
method = fp8.Fp8LinearMethod(fp8.Fp8Config(is_checkpoint_fp8_serialized=True, weight_block_size=[128, 128]))
layer = torch.nn.Module()
w, ws = make_weight(256, 512, 128, False)
layer.weight = torch.nn.Parameter(w, requires_grad=False)
layer.weight_scale_inv = torch.nn.Parameter(ws, requires_grad=False)
ours = method.w8a8_block_fp8_linear is shared.w8a8_block_fp8_linear
err = None
if ours:  # SGLang's own Triton linear cannot run on a CPU
    x = torch.randn(3, 512).bfloat16()
    y = method.apply(layer, x)
    err = rel_err(y, dequant_act(x.float(), 128) @ dequant_weight(w, ws, 128).T)
print(json.dumps({{"ours": ours, "name": method.w8a8_block_fp8_linear.__qualname__, "err": err}}))
"""


@pytest.mark.parametrize("version,mode", [("0.5.12", "emulate"), ("0.5.16", "emulate"), ("0.5.16", "off")])
def test_fp8_linear_layer_built_after_activation_uses_our_kernel(version, mode):
    env = EMULATE if mode == "emulate" else {"SGLANG_SM120": "off", "SGLANG_SM120_ASSUME_GPUS": "12.0"}
    proc = run_py(DENSE.format(tests=str(Path(__file__).parent)), version, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "missing" in out:
        pytest.skip(f"SGLang {version}'s quantization package needs {out['missing']!r}, not installed here")
    assert out["ours"] is (mode == "emulate"), out
    if mode == "emulate":
        assert out["err"] < 1e-2


# ------------------------------------------------------------------ GPU: installed SGLang 0.5.16 ---------

GPU_DENSE = """
import json, torch
from sglang.srt.plugins import load_plugins
load_plugins()
import sglang.srt.layers.quantization.fp8 as fp8
from sglang_sm120.bindings import fp8_gemm as shared
from test_bind_fp8_gemm import dequant_act, dequant_weight, make_weight, rel_err
res = {}
# (N, K): wqkv_a, wq_b/TP1, wo_b, shared expert gate_up / down, indexer wq_b, MTP e_proj/h_proj
for n, k in [(1536, 4096), (32768, 1024), (4096, 8192), (4096, 4096), (4096, 2048), (8192, 1024)]:
    method = fp8.Fp8LinearMethod(fp8.Fp8Config(is_checkpoint_fp8_serialized=True, weight_block_size=[128, 128]))
    assert method.w8a8_block_fp8_linear is shared.w8a8_block_fp8_linear
    layer = torch.nn.Module()
    w, ws = make_weight(n, k, 128, False)
    layer.weight = torch.nn.Parameter(w.cuda(), requires_grad=False)
    layer.weight_scale_inv = torch.nn.Parameter(ws.cuda(), requires_grad=False)
    method.process_weights_after_loading(layer)
    assert layer.weight_scale_inv.dtype == torch.float32  # no UE8M0 requant for our runner
    wd = dequant_weight(w, ws, 128).cuda()
    for m in (1, 16, 4096):
        x = torch.randn(m, k, device="cuda").bfloat16()
        method.apply(layer, x)  # compile outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = method.apply(layer, x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        eager = method.apply(layer, x)
        ref = dequant_act(x.float(), 128) @ wd.T
        res[f"{n}x{k}@{m}"] = [rel_err(y, ref), bool(torch.equal(y, eager))]
print(json.dumps(res))
"""

GPU_WO_A = """
import json, torch
import sglang
import deep_gemm
from sglang.kernels.ops.quantization.fp8_kernel import sglang_per_token_group_quant_fp8
from test_bind_fp8_gemm import dequant_act, dequant_weight, make_weight, rel_err
assert deep_gemm.fp8_einsum.__module__ == "sglang_sm120.bindings.v0_5_16.fp8_gemm"
res = {}
for groups in (8, 4):  # wo_a at attention TP 1 / 2 (DSV4-Flash: o_groups 8, o_lora_rank 1024, D 4096)
    r, d = 1024, 4096
    w, ws = make_weight(groups * r, d, 128, False)
    wv, sv = w.cuda().view(groups, r, d), ws.cuda().view(groups, r // 128, d // 128)
    wd = dequant_weight(w, ws, 128).cuda().view(groups, r, d)
    for t in (1, 16, 4096):
        o = torch.randn(t, groups, d, device="cuda").bfloat16()
        out = torch.empty(t, groups, r, device="cuda", dtype=torch.bfloat16)
        def step():  # MQALayer.forward's FP8 wo_a branch, 0.5.16, DEEPGEMM_SCALE_UE8M0 False
            q, s = sglang_per_token_group_quant_fp8(o.reshape(t * groups, d).contiguous(), group_size=128,
                                                    scale_ue8m0=False)
            deep_gemm.fp8_einsum("bhr,hdr->bhd", (q.view(t, groups, d), s.view(t, groups, -1)), (wv, sv), out,
                                 recipe=(1, 128, 128))
        step()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        o.copy_(torch.randn_like(o))
        graph.replay()
        torch.cuda.synchronize()
        ref = torch.einsum("tgd,grd->tgr", dequant_act(o.float(), 128), wd)
        res[f"G{groups}@{t}"] = rel_err(out, ref)
print(json.dumps(res))
"""


def _run_installed(code: str) -> dict:
    """Fresh interpreter on the installed SGLang (no stubs, no unpacked release), plugin in emulate mode."""
    if not pth_installed():
        pytest.fail("sglang-sm120 must be pip-installed on the GPU machine (its .pth bootstrap is missing)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG") and k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parent
    env.update(EMULATE, PYTHONPATH=os.pathsep.join([str(root.parent), str(root)]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=1200, cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.gpu
def test_gpu_dense_linears_dsv4_shapes_with_cuda_graph():
    res = _run_installed(GPU_DENSE)
    # bf16 output rounding plus fp32 summation order: 1e-2 of the largest magnitude; replay == eager exactly
    assert all(err < 1e-2 and same for err, same in res.values()), res


@pytest.mark.gpu
@pytest.mark.installed_sglang("0.5.16")
def test_gpu_wo_a_einsum_dsv4_shapes_with_cuda_graph():
    res = _run_installed(GPU_WO_A)
    assert all(err < 1e-2 for err in res.values()), res
