"""Bindings of the MXFP4 routed-experts MoE (``bindings/moe_mxfp4.py``, ``bindings/v0_5_*/moe_mxfp4.py``).

CPU: the runner-default family against the real 0.5.12 / 0.5.16 sources (fresh interpreters, emulate), the
quant-method family's registration, and the release-neutral expert computation on CPU tensors against a
dequantized fp32 oracle written here. GPU (``gpu``, SGLang 0.5.16 installed): SGLang's own
``Mxfp4MarlinMoEMethod`` swapped for ours by ``Fp8Config.get_quant_method``, ``create_weights`` +
``process_weights_after_loading`` + ``apply`` at DSV4-Flash shapes with CUDA-graph capture and replay, the
routed-scaling convention through SGLang's ``maybe_fuse_routed_scale_and_shared_add``, and SGLang's JIT
``hash_topk`` (the hash-routed layers keep it).
"""

from __future__ import annotations

import json

import pytest
import torch
from sglang_env import run_py

from sglang_sm120.bindings import moe_mxfp4 as bind
from sglang_sm120.reference.moe_mxfp4 import dequant_mxfp4, quant_mxfp4

EMULATE = {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"}


def oracle(x, w13, w2, s13, s2, tw, ids, limit):
    """fp32 dequantized experts: ``sum_k w_k * down(silu(min(g, L)) * clamp(u, -L, L))``, no routed scaling."""
    e, inter = w13.shape[0], w13.shape[1] // 2
    out = torch.zeros(x.shape[0], w13.shape[2] * 2)
    xf = torch.nn.functional.pad(x.float(), (0, out.shape[1] - x.shape[1]))
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            ex = int(ids[t, k])
            if not 0 <= ex < e:
                continue
            gu = dequant_mxfp4(w13[ex], s13[ex]) @ xf[t]
            g, u = gu[:inter].clamp(max=limit), gu[inter:].clamp(-limit, limit)
            out[t] += tw[t, k] * (dequant_mxfp4(w2[ex], s2[ex]) @ (torch.nn.functional.silu(g) * u))
    return out


def make_layer_weights(e: int, h: int, inter: int, fp32_scales: bool, seed: int = 0) -> bind.ExpertWeights:
    g = torch.Generator().manual_seed(seed)
    w13, s13 = quant_mxfp4(torch.randn(e, 2 * inter, h, generator=g) * 0.05)
    w2, s2 = quant_mxfp4(torch.randn(e, h, inter, generator=g) * 0.05)
    if fp32_scales:  # 0.5.12 keeps powers of two in fp32
        s13, s2 = torch.exp2(s13.float() - 127), torch.exp2(s2.float() - 127)
    return bind.ExpertWeights(w13.view(torch.int8), w2.view(torch.int8), s13, s2)


@pytest.mark.parametrize("fp32_scales,hidden", [(True, 256), (False, 256), (False, 200)])
def test_routed_experts_cpu_match_dequantized_oracle(fp32_scales, hidden):
    """E=8, H=256 (200: SGLang 0.5.16 pads H to the experts' width), I=128, top-2; -1 ids (other EP ranks)."""
    w = make_layer_weights(8, 256, 128, fp32_scales)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, hidden, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(5)]).int()
    ids[3, 1] = -1
    tw = torch.rand(5, 2, generator=g)
    out = bind.routed_experts(x, w, tw, ids, bind.swiglu_limit(0.5))
    ref = oracle(x, *w, tw, ids, 0.5)
    assert out.shape == (5, 256) and out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 2e-2 * ref.abs().max()
    if hidden < 256:
        assert torch.equal(out[:, :hidden], bind.routed_experts(x, w, tw, ids, 0.5)[:, :hidden])


def test_swiglu_limit_follows_sglang_and_fp16_round_trips():
    assert bind.swiglu_limit(None) is None and bind.swiglu_limit(0.0) is None and bind.swiglu_limit(7) == 7.0
    w = make_layer_weights(4, 128, 128, False)
    x = torch.randn(3, 128).half()
    ids = torch.tensor([[0, 1], [2, 3], [1, 2]], dtype=torch.int64)
    out = bind.routed_experts(x, w, torch.full((3, 2), 0.5), ids, None)
    assert out.dtype == torch.float16
    assert (out.float() - oracle(x, *w, torch.full((3, 2), 0.5), ids, float("inf"))).abs().max() < 2e-2 * (
        out.float().abs().max())


def test_expert_weights_rejects_a_wrong_scale_shape():
    w = make_layer_weights(2, 128, 128, False)
    layer = torch.nn.Module()
    for name, t in zip(("w13_weight", "w2_weight", "w13_weight_scale_inv", "w2_weight_scale_inv"), w, strict=True):
        layer.register_parameter(name, torch.nn.Parameter(t, requires_grad=False))
    assert bind.expert_weights(layer).w13.data_ptr() == layer.w13_weight.data_ptr()  # a view, no copy
    layer.w2_weight_scale_inv = torch.nn.Parameter(w.w2_scale[:, :, :2].contiguous(), requires_grad=False)
    with pytest.raises(ValueError, match=r"w2_weight_scale_inv: expected \[2, 128, 4\]"):
        bind.expert_weights(layer)


RUNNER_0_5_16 = """
import json, types
from sglang.srt.plugins import load_plugins
load_plugins()
import sglang.srt.arg_groups.overrides as ov
from sglang_sm120 import dispatch
rt = dispatch.runtime()
def view(arch, backend):
    cfg = types.SimpleNamespace(hf_config=types.SimpleNamespace(architectures=[arch]))
    return types.SimpleNamespace(get_model_config=lambda: cfg, moe_runner_backend=backend)
print(json.dumps({
    "auto": ov._deepseek_v4_sm120_moe(view("DeepseekV4ForCausalLM", "auto")),
    "explicit": ov._deepseek_v4_sm120_moe(view("DeepseekV4ForCausalLM", "flashinfer_mxfp4")),
    "other_model": ov._deepseek_v4_sm120_moe(view("DeepseekV3ForCausalLM", "auto")),
    "wrapped": hasattr(ov._deepseek_v4_sm120_moe, "__wrapped__"),
    "status": {k: v.state for k, v in (dispatch.live_status(rt).items() if rt else []) if k.startswith("moe-mxfp4")},
}))
"""


def test_0_5_16_dsv4_runner_default_becomes_marlin():
    proc = run_py(RUNNER_0_5_16, "0.5.16", EMULATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["auto"] == {"moe_runner_backend": "marlin"}  # SGLang's own pass says flashinfer_mxfp4 here
    assert out["explicit"] == {} and out["other_model"] == {} and out["wrapped"]
    assert out["status"]["moe-mxfp4-runner.dsv4-default@0.5.16"] == "applied"


def test_0_5_16_off_leaves_the_runner_default_native():
    proc = run_py(RUNNER_0_5_16, "0.5.16", {"SGLANG_SM120": "off", "SGLANG_SM120_ASSUME_GPUS": "12.0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["auto"] == {} and not out["wrapped"]  # no SM120 here: SGLang's own pass declares nothing
    assert set(out["status"].values()) == {"skipped"}


def test_0_5_12_dsv4_defaults_hook_is_applied():
    code = """
import json
from sglang.srt.plugins import load_plugins
load_plugins()
import sglang.srt.arg_groups.deepseek_v4_hook as hook
from sglang_sm120 import dispatch
st = dispatch.live_status(dispatch.runtime())
print(json.dumps({"state": st["moe-mxfp4-runner.dsv4-default@0.5.12"].state,
                  "wrapped": hook.apply_deepseek_v4_defaults.__wrapped__.__module__}))
"""
    proc = run_py(code, "0.5.12", EMULATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["state"] == "applied" and out["wrapped"] == "sglang.srt.arg_groups.deepseek_v4_hook"


@pytest.mark.parametrize("mode,expected", [("emulate", {"auto": "marlin", "triton": "triton"}),
                                           ("off", {"auto": "auto", "triton": "triton"})])
def test_0_5_12_auto_runner_becomes_marlin_on_sm12x(mode, expected):
    """The hook's decision with SGLang 0.5.12's real probe (``apply_deepseek_v4_defaults`` itself needs
    ServerArgs, whose import chain needs GPU-side packages, so its own defaults are replaced by a recorder):
    ``auto`` -> ``marlin`` only on SM12x (emulated here), after SGLang's defaults ran."""
    code = """
import json, types
import sglang.srt.utils.common
from sglang_sm120.bindings.moe_mxfp4 import marlin_instead_of_auto
out = {}
for backend in ("auto", "triton"):
    args, calls = types.SimpleNamespace(moe_runner_backend=backend), []
    marlin_instead_of_auto(lambda sa, arch: calls.append(arch), args, "DeepseekV4ForCausalLM")
    assert calls == ["DeepseekV4ForCausalLM"]
    out[backend] = args.moe_runner_backend
print(json.dumps(out))
"""
    proc = run_py(code, "0.5.12", {"SGLANG_SM120": mode, "SGLANG_SM120_ASSUME_GPUS": "9.0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize("version", ["0.5.12", "0.5.16"])
def test_quant_method_family_registered_or_left_native_whole(version):
    """Registered where ``sglang.srt.layers.quantization.fp8`` imports; on a CPU machine without SGLang's GPU
    packages the drift guard cannot import it and must skip the family whole, with one warning."""
    code = """
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang_sm120 import dispatch
st = dispatch.runtime().status
print(sorted({v.state for k, v in st.items() if k.startswith("moe-mxfp4.") and k.endswith(REL)}))
""".replace("REL", repr("@" + version))
    proc = run_py(code, version, EMULATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = proc.stdout.strip().splitlines()[-1]
    warn = [x for x in proc.stderr.splitlines() if "family 'moe-mxfp4' left native" in x]
    if states == "['registered']":
        assert not warn
    else:
        assert states == "['skipped']" and len(warn) == 1, proc.stderr


# ------------------------------------------------------------------ GPU (SGLang 0.5.16 installed) ---------------

def _marlin_runner():
    from sglang.srt.layers.moe.utils import MoeRunnerBackend
    from sglang.srt.runtime_context import get_flags

    get_flags().moe.runner_backend = MoeRunnerBackend.MARLIN


def _bound_layer(e: int, h: int, inter: int, topk: int, limit: float):
    """SGLang's own selection + create_weights + process_weights_after_loading, with random MXFP4 experts."""
    from sglang.srt.layers.moe.fused_moe_triton import FusedMoE
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.quantization.fp8 import Fp8Config

    from sglang_sm120.bindings.v0_5_16.moe_mxfp4 import Sm120Mxfp4MoEMethod, get_quant_method

    cfg = Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="dynamic", weight_block_size=[128, 128],
                    is_fp4_experts=True)
    probe = FusedMoE.__new__(FusedMoE)  # get_quant_method only dispatches on the type
    torch.nn.Module.__init__(probe)
    probe.use_triton_kernels = probe.use_flashinfer_trtllm_moe = False
    method = get_quant_method(Fp8Config.get_quant_method, cfg, probe, "model.layers.3.mlp.experts")
    assert type(method) is Sm120Mxfp4MoEMethod
    layer = torch.nn.Module()
    layer.hidden_size = h
    with torch.device("cuda"):
        method.create_weights(layer, e, h, inter, torch.bfloat16, weight_loader=None)
    method.create_moe_runner(layer, MoeRunnerConfig(num_experts=e, num_local_experts=e, hidden_size=h,
                                                    intermediate_size_per_partition=inter, top_k=topk,
                                                    swiglu_limit=limit, routed_scaling_factor=1.5))
    g = torch.Generator(device="cuda").manual_seed(0)
    layer.w13_weight.data.copy_(torch.randint(-128, 128, layer.w13_weight.shape, generator=g, device="cuda"))
    layer.w2_weight.data.copy_(torch.randint(-128, 128, layer.w2_weight.shape, generator=g, device="cuda"))
    for s in (layer.w13_weight_scale_inv, layer.w2_weight_scale_inv):
        s.data.view(torch.uint8).copy_(torch.randint(118, 124, s.shape, generator=g, device="cuda"))
    method.process_weights_after_loading(layer)
    assert layer._dsv4_mxfp4_backend == bind.BACKEND_TAG
    return method, layer


@pytest.mark.gpu
@pytest.mark.installed_sglang("0.5.16")
@pytest.mark.parametrize("tp", [1, 8])
def test_gpu_bound_method_dsv4_flash_with_cuda_graph(tp):
    _marlin_runner()
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput
    from sglang.srt.layers.quantization.mxfp4_flashinfer_trtllm_moe import maybe_fuse_routed_scale_and_shared_add

    e, h, inter, topk, limit = 256, 4096, 2048 // tp, 6, 10.0
    method, layer = _bound_layer(e, h, inter, topk, limit)
    w = bind.expert_weights(layer)
    for t in (1, 7, 64):
        g = torch.Generator(device="cuda").manual_seed(t)
        x = torch.randn(t, h, device="cuda", generator=g).bfloat16()
        ids = torch.stack([torch.randperm(e, device="cuda", generator=g)[:topk] for _ in range(t)]).int()
        tw = torch.rand(t, topk, device="cuda", generator=g)
        shared = torch.randn(t, h, device="cuda", generator=g).bfloat16()
        out_buf = torch.empty(t, h, device="cuda", dtype=torch.bfloat16)

        def step(x=x, tw=tw, ids=ids, shared=shared, out_buf=out_buf):
            d = StandardDispatchOutput(hidden_states=x, hidden_states_scale=None,
                                       topk_output=StandardTopKOutput(tw, ids, None))
            routed = method.apply(layer, d).hidden_states
            experts = type("Experts", (), {"quant_method": method})()
            out_buf.copy_(maybe_fuse_routed_scale_and_shared_add(experts, routed, shared.clone(), 1.5))

        step()
        ref = 1.5 * bind.routed_experts(x.cpu(), bind.ExpertWeights(*(p.cpu() for p in w)), tw.cpu(), ids.cpu(),
                                        limit).float() + shared.cpu().float()
        assert (out_buf.cpu().float() - ref).abs().max() <= 1e-2 * ref.abs().max(), (tp, t)
        eager = out_buf.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        out_buf.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out_buf, eager), (tp, t)


@pytest.mark.gpu
@pytest.mark.installed_sglang("0.5.16")
@pytest.mark.parametrize("ids_dtype", [torch.int64])
def test_gpu_sglang_hash_topk_is_kept(ids_dtype):
    """Hash-routed layers keep SGLang's JIT ``hash_topk`` (plain CUDA, int64 ids as SGLang passes them)."""
    _marlin_runner()
    from sglang.jit_kernel.dsv4 import hash_topk

    from sglang_sm120.reference.moe_mxfp4 import hash_topk_ref

    t, e, vocab, k = 37, 256, 1000, 6
    logits = torch.randn(t, e, device="cuda")
    input_ids = torch.randint(0, vocab, (t,), device="cuda", dtype=ids_dtype)
    tid2eid = torch.stack([torch.randperm(e)[:k] for _ in range(vocab)]).int().cuda()
    tw, tids = hash_topk(logits, input_ids, tid2eid, 0, 1.5)
    rw, rids = hash_topk_ref(logits, input_ids, tid2eid, 0, 1.5)
    assert torch.equal(tids, rids) and torch.allclose(tw, rw, rtol=1e-5, atol=1e-6)
