"""The end-to-end smoke harness (sglang_sm120/smoke.py): tiny model files, seeded weights, the comparison
metric, the server reply check, the command line without a GPU; on the GPU machine, the in-process smoke.

SGLang's own config loading (``sglang.srt.utils.hf_transformers``) cannot be imported on this CPU box: its
module chain registers configs that the installed transformers (not SGLang's pin) already has and needs
packages absent here. The config is therefore loaded with ``transformers.DeepseekV3Config``, the class SGLang
0.5.16's ``deepseek_v4`` alias subclasses unchanged (``hf_transformers/common.py:139``); the GPU test loads
it through SGLang itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from sglang_sm120 import smoke

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke.write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ------------------------------------------------------------------------------------------------ model files


def test_config_keeps_real_geometry_as_sglang_reads_it(tiny: Path) -> None:
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config.from_pretrained(tiny)
    assert cfg.architectures == ["DeepseekV4ForCausalLM"]
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.qk_rope_head_dim) == (64, 1, 512, 64)
    assert cfg.head_dim - cfg.qk_rope_head_dim == 448
    assert (cfg.hidden_size, cfg.sliding_window, cfg.index_topk, cfg.index_head_dim) == (4096, 128, 512, 128)
    assert 4 * cfg.hidden_size in (16384, 28672)  # upstream tilelang mHC range
    assert cfg.q_lora_rank % 128 == 0 and cfg.moe_intermediate_size % 128 == 0
    assert (2 + cfg.hc_mult) * cfg.hc_mult <= 32
    ratios = cfg.compress_ratios
    assert len(ratios) == cfg.num_hidden_layers + 1 and ratios[-1] == 0
    assert set(ratios[:-1]) == {0, 4, 128}, "SWA-only, C4 and C128 layers"
    assert 0 < cfg.num_hash_layers < cfg.num_hidden_layers, "hash-routed and normally routed layers"
    assert cfg.rope_scaling["factor"] * cfg.rope_scaling["original_max_position_embeddings"] == (
        cfg.max_position_embeddings)
    assert cfg.quantization_config["scale_fmt"] == "ue8m0"
    assert cfg.vocab_size == smoke.VOCAB_SIZE


def test_tokenizer_covers_vocab_and_has_chat_template(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    assert len(tok) == smoke.VOCAB_SIZE
    assert tok.encode("w3 w77 w129279", add_special_tokens=False) == [3, 77, smoke.VOCAB_SIZE - 1]
    assert tok.decode([5, 6, smoke.VOCAB_SIZE - 1, 1], skip_special_tokens=True) == "w5 w6 w129279"
    text = tok.apply_chat_template([{"role": "user", "content": "w21 w22"}], add_generation_prompt=True,
                                   tokenize=False)
    assert "w21 w22" in text and text.rstrip().endswith("assistant :")
    assert tok.eos_token_id == 1


@pytest.mark.parametrize("layers,hash_layers", [(2, 1), (4, 0), (4, 4), (99, 1)])
def test_config_rejects_layer_mixes_without_every_kind(layers: int, hash_layers: int) -> None:
    with pytest.raises(ValueError, match="layers"):
        smoke.tiny_config(layers, hash_layers)


# ------------------------------------------------------------------------------------------------ seeded weights


class _Linear(nn.Module):
    """Parameters as SGLang's Fp8LinearMethod (block 128) or an unquantized BF16 linear create them."""

    def __init__(self, n: int, k: int, fp8: bool) -> None:
        super().__init__()
        if fp8:
            self.weight = nn.Parameter(torch.empty(n, k, dtype=torch.float8_e4m3fn), requires_grad=False)
            self.weight_scale_inv = nn.Parameter(torch.empty(-(-n // 128), -(-k // 128)), requires_grad=False)
        else:
            self.weight = nn.Parameter(torch.empty(n, k, dtype=torch.bfloat16), requires_grad=False)


class _Experts(nn.Module):
    """MXFP4 expert parameters as Fp8MoEMethod (fp32 scales) or the MXFP4 methods (e8m0 scales) create them."""

    def __init__(self, e: int, n: int, k: int, scale_dtype: torch.dtype) -> None:
        super().__init__()
        self.w13_weight = nn.Parameter(torch.empty(e, 2 * n, k // 2, dtype=torch.int8), requires_grad=False)
        self.w13_weight_scale_inv = nn.Parameter(torch.empty(e, 2 * n, k // 32, dtype=scale_dtype),
                                                 requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(e, k, n // 2, dtype=torch.int8), requires_grad=False)
        self.w2_weight_scale_inv = nn.Parameter(torch.empty(e, k, n // 32, dtype=scale_dtype), requires_grad=False)


class _HashTopK(nn.Module):
    def __init__(self, vocab: int, experts: int, topk: int) -> None:
        super().__init__()
        self.num_experts = experts
        self.tid2eid = nn.Parameter(torch.empty(vocab, topk, dtype=torch.int32), requires_grad=False)


def _layer(native: bool) -> nn.Module:
    """One layer's worth of parameter kinds; ``native`` picks the dtypes of the native path."""
    m = nn.Module()
    m.wo_a = _Linear(256, 384, fp8=native)  # FP8 natively, BF16 under SGLANG_OPT_FP8_WO_A_GEMM=0
    m.wo_b = _Linear(128, 256, fp8=True)
    m.experts = _Experts(4, 128, 256, torch.float32 if native else torch.float8_e8m0fnu)
    m.topk = _HashTopK(300, 16, 6)
    m.q_norm = nn.Module()
    m.q_norm.weight = nn.Parameter(torch.empty(64), requires_grad=False)
    m.attn_sink = nn.Parameter(torch.empty(8), requires_grad=False)
    m.hc_attn_scale = nn.Parameter(torch.empty(3), requires_grad=False)
    m.embed_tokens = nn.Module()
    m.embed_tokens.weight = nn.Parameter(torch.empty(300, 64, dtype=torch.bfloat16), requires_grad=False)
    return m


def test_refill_gives_both_paths_the_same_logical_weights() -> None:
    native, emulated = _layer(native=True), _layer(native=False)
    counts = smoke.refill_weights(native, seed=7)
    assert counts == {"fp8 linear": 2, "fp4 experts": 2, "tid2eid": 1, "norm": 1, "vector": 2, "embedding": 1}
    assert smoke.refill_weights(emulated, seed=7)["bf16 linear"] == 1
    w_fp8 = smoke.dequant_blocks(native.wo_a.weight, native.wo_a.weight_scale_inv)
    assert torch.equal(w_fp8.to(torch.bfloat16), emulated.wo_a.weight), "BF16 wo_a must equal the FP8 one"
    for name in ("w13", "w2"):
        assert torch.equal(getattr(native.experts, f"{name}_weight"), getattr(emulated.experts, f"{name}_weight"))
        fp32 = getattr(native.experts, f"{name}_weight_scale_inv")
        e8m0 = getattr(emulated.experts, f"{name}_weight_scale_inv")
        assert torch.equal(fp32, e8m0.float()), "fp32 and UE8M0 scales must be the same powers of two"
    emulated_params = dict(emulated.named_parameters())
    for name, a in native.named_parameters():
        b = emulated_params.get(name)
        if b is not None and a.dtype == b.dtype:
            assert torch.equal(a, b), name


def test_refill_values_are_well_formed_and_seeded() -> None:
    a, b, c = _layer(True), _layer(True), _layer(True)
    smoke.refill_weights(a, seed=1)
    smoke.refill_weights(b, seed=1)
    smoke.refill_weights(c, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.wo_b.weight.float(), c.wo_b.weight.float())
    scales = a.wo_b.weight_scale_inv
    assert torch.equal(torch.exp2(torch.log2(scales).round()), scales), "UE8M0: powers of two"
    w = smoke.dequant_blocks(a.wo_b.weight, scales)
    assert 0.3 < float(w.pow(2).mean().sqrt()) * math.sqrt(256) < 3, "rows ~ unit gain"
    fp4_scales = a.experts.w13_weight_scale_inv
    # SGLang's FP4 -> FP8 block dequant (SGLANG_DSV4_FP4_DEQUANT) is lossless while a block's scales span <= 2^6
    assert float(fp4_scales.max() / fp4_scales.min()) <= 2
    t = a.topk.tid2eid
    assert int(t.min()) >= 0 and int(t.max()) < 16
    assert all(len(set(row)) == 6 for row in t.tolist()), "distinct experts per token"
    assert torch.isfinite(a.q_norm.weight).all() and abs(float(a.q_norm.weight.mean()) - 1) < 0.1


class _Fp8Experts(nn.Module):
    """Expert parameters as Fp8MoEMethod creates them with FP4 experts off (0.5.12's native smoke path)."""

    def __init__(self, e: int, n: int, k: int) -> None:
        super().__init__()
        self.w13_weight = nn.Parameter(torch.empty(e, 2 * n, k, dtype=torch.float8_e4m3fn), requires_grad=False)
        self.w13_weight_scale_inv = nn.Parameter(torch.empty(e, 2 * n // 128, k // 128), requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(e, k, n, dtype=torch.float8_e4m3fn), requires_grad=False)
        self.w2_weight_scale_inv = nn.Parameter(torch.empty(e, k // 128, n // 128), requires_grad=False)


def _dequant_mxfp4(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Independent MXFP4 decode: ``codes [..., K/2]`` (low nibble first), ``scale [..., K/32]`` fp32."""
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    raw = codes.view(torch.uint8).long()
    nib = torch.stack((raw & 15, raw >> 4), -1).flatten(-2)
    mag = torch.tensor(e2m1)[nib & 7]
    return torch.where(nib >= 8, -mag, mag) * scale.float().repeat_interleave(32, -1)


def test_refill_fp8_experts_hold_the_same_mxfp4_weights() -> None:
    """FP8 experts (0.5.12 native) dequantize exactly to the MXFP4 experts the emulated path gets."""
    fp4 = nn.Module()
    fp4.experts = _Experts(3, 128, 256, torch.float8_e8m0fnu)
    fp8 = nn.Module()
    fp8.experts = _Fp8Experts(3, 128, 256)
    assert smoke.refill_weights(fp4, seed=5) == {"fp4 experts": 2}
    assert smoke.refill_weights(fp8, seed=5) == {"fp8 experts": 2}
    for name in ("w13", "w2"):
        want = _dequant_mxfp4(getattr(fp4.experts, f"{name}_weight"), getattr(fp4.experts, f"{name}_weight_scale_inv"))
        q, s = getattr(fp8.experts, f"{name}_weight"), getattr(fp8.experts, f"{name}_weight_scale_inv")
        assert torch.equal(torch.exp2(torch.log2(s).round()), s), "UE8M0 block scales"
        assert torch.equal(smoke.dequant_blocks(q, s), want), name
        assert float(want.abs().max()) > 0 and bool((want == 0).any())


def test_refill_fp8_experts_need_whole_blocks() -> None:
    m = nn.Module()
    m.experts = _Fp8Experts(2, 128, 256)
    m.experts.w2_weight = nn.Parameter(torch.empty(2, 256, 96, dtype=torch.float8_e4m3fn), requires_grad=False)
    with pytest.raises(ValueError, match="multiples of 128"):
        smoke.refill_weights(m, seed=0)


def test_refill_rejects_mismatched_scales() -> None:
    m = nn.Module()
    m.experts = _Experts(2, 128, 256, torch.float32)
    m.experts.w13_weight_scale_inv = nn.Parameter(torch.empty(2, 256, 4), requires_grad=False)
    with pytest.raises(ValueError, match="scale shape"):
        smoke.refill_weights(m, seed=0)


@pytest.mark.parametrize("order", ["0.5.12", "0.5.16"])
def test_install_refill_precedes_weight_processing(tmp_path: Path, order: str) -> None:
    """In a fresh interpreter: a loader module shaped like SGLang's (``_initialize_model``,
    ``initialize_dummy_weights`` filling U(-1e-3, 1e-3), a processing pass that doubles the weights, in 0.5.12's
    or 0.5.16's order) is wrapped at import: the model is refilled once, before processing, whatever the order;
    a non-dummy load is left alone."""
    (tmp_path / "fake_loader.py").write_text(textwrap.dedent(f"""
        import torch
        from torch import nn
        def initialize_dummy_weights(model, low=-1e-3, high=1e-3):
            for p in model.parameters():
                if p.dtype.is_floating_point:
                    p.data.uniform_(low, high)
        def _initialize_model(model_config, load_config, quant_config=None):
            m = nn.Module(); m.norm = nn.Module(); m.norm.weight = nn.Parameter(torch.empty(64))
            return m
        def process(model):
            model.norm.weight.data *= 2
        def load_model(load_format):
            model = _initialize_model(None, type("LoadConfig", (), {{"load_format": load_format}})())
            if {order!r} == "0.5.12":
                process(model)
                initialize_dummy_weights(model)
            else:
                initialize_dummy_weights(model)
                process(model)
            return model
    """))
    report = tmp_path / "report.jsonl"
    code = f"""
        import json, torch
        from sglang_sm120 import smoke
        smoke.install_refill(3, {str(report)!r}, module="fake_loader")
        import fake_loader
        smoke.install_refill(3, {str(report)!r}, module="fake_loader")  # again (a forked TP rank): no second wrap
        dummy = fake_loader.load_model("LoadFormat.DUMMY")
        real = fake_loader.load_model("auto")
        print(json.dumps([float(dummy.norm.weight.mean()), float(real.norm.weight.abs().max())]))
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dummy_mean, real_max = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(dummy_mean - 2) < 0.2  # refilled near 1, then doubled by processing
    assert 0 < real_max <= 2e-3 * 2  # the non-dummy load: the loader's own dummy init only
    lines = report.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["counts"] == {"norm": 1} and entry["plugin"]["enabled"] is False


def test_server_sitecustomize_installs_refill_and_chains(tmp_path: Path) -> None:
    """The sitecustomize the server gets arms the refill and still runs the one it shadows."""
    site, other = tmp_path / "site", tmp_path / "other"
    site.mkdir()
    other.mkdir()
    (site / "sitecustomize.py").write_text(smoke.SITECUSTOMIZE)
    (other / "sitecustomize.py").write_text("import builtins\nbuiltins.SHADOWED_RAN = True\n")
    code = "import builtins\nfrom sglang_sm120 import hooks\nprint(builtins.SHADOWED_RAN, hooks.pending())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(other), str(ROOT)]), smoke.SEED_ENV: "5"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"True {{'{smoke.LOADER_MODULE}': 1}}"


# ------------------------------------------------------------------------------------------------ comparison


def _logits(rows: int = 40, vocab: int = 4096, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_compare_passes_identical_and_slightly_noisy_logits() -> None:
    ref = _logits()
    assert smoke.compare_logits(ref, ref.clone()).passed
    noisy = ref + 0.01 * ref.std() * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    a = smoke.compare_logits(ref, noisy.to(torch.bfloat16))
    assert a.passed and a.cos_min > 0.999 and a.top1_tie_ok == a.rows


@pytest.mark.parametrize("kind", ["unrelated", "rows shuffled", "one row broken", "noisy", "nan"])
def test_compare_flags_real_mismatches(kind: str) -> None:
    ref = _logits()
    gen = torch.Generator().manual_seed(2)
    if kind == "unrelated":
        test = _logits(seed=9)
    elif kind == "rows shuffled":
        test = ref[torch.randperm(ref.shape[0], generator=gen)]
    elif kind == "one row broken":
        test = ref.clone()
        test[5] = -test[5]
    elif kind == "noisy":  # e.g. one layer's MoE output wrong: ~20% relative error in the logits
        test = ref + 0.2 * ref.std() * torch.randn(ref.shape, generator=gen)
    else:
        test = ref.clone()
        test[3, 7] = float("nan")
    a = smoke.compare_logits(ref, test)
    assert not a.passed
    if kind == "nan":
        assert not a.finite


def test_compare_excuses_near_ties_only() -> None:
    ref = torch.zeros(20, 100)
    ref[:, 10] = 5.0
    ref[:, 11] = 5.0 - 0.01  # near tie with the top-1
    ref[:, 12] = 2.0
    ref += 0.001 * torch.arange(100)  # keep std > 0 and a unique argmax
    tie = ref.clone()
    tie[:, 11] += 0.05  # flips top-1 to the near-tie token
    a = smoke.compare_logits(ref, tie)
    assert a.top1_exact == 0 and a.top1_tie_ok == 20 and a.passed
    far = ref.clone()
    far[:, 12] += 3.5  # flips top-1 to a token far below in the reference
    b = smoke.compare_logits(ref, far, smoke.Tolerance(min_cosine=0.0))
    assert b.top1_tie_ok == 0 and not b.passed


def test_compare_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="rows, V"):
        smoke.compare_logits(torch.zeros(3, 5), torch.zeros(3, 6))


def test_comparison_table_rows_and_verdict() -> None:
    def result(noise: float) -> dict:
        gen = torch.Generator().manual_seed(4)
        rounds = []
        for b in (1, 2):
            logits = torch.randn(3, b, 512, generator=torch.Generator().manual_seed(b))
            rounds.append({"bs": b, "logits": logits + noise * torch.randn(logits.shape, generator=gen)})
        return {"rounds": rounds}

    table, total = smoke.comparison_table(result(0.0), result(0.001), smoke.Tolerance())
    assert [r[:3] for r in table[1:]] == [["1", "prefill", "1"], ["1", "decode", "2"], ["2", "prefill", "2"],
                                          ["2", "decode", "4"], ["all", "", "9"]]
    assert total.passed
    assert not smoke.comparison_table(result(0.0), result(1.0), smoke.Tolerance())[1].passed
    assert "cos min" in smoke.format_table(table).splitlines()[0]


# ------------------------------------------------------------------------------------------------ server replies


def _reply(text: str, logprobs: list, chat: bool) -> dict:
    if chat:
        return {"choices": [{"message": {"content": text},
                             "logprobs": {"content": [{"logprob": v} for v in logprobs]}}]}
    return {"choices": [{"text": text, "logprobs": {"token_logprobs": logprobs}}]}


@pytest.mark.parametrize("chat", [False, True])
def test_check_completion(chat: bool) -> None:
    assert smoke.check_completion(200, _reply(" w5 w6", [-1.0, -2.5], chat), chat) is None
    assert "HTTP 500" in smoke.check_completion(500, "boom", chat)
    assert "empty" in smoke.check_completion(200, _reply("  ", [-1.0], chat), chat)
    assert "non-finite" in smoke.check_completion(200, _reply("w5", [-1.0, float("nan")], chat), chat)
    assert "non-finite" in smoke.check_completion(200, _reply("w5", [None], chat), chat)
    assert "no logprobs" in smoke.check_completion(200, _reply("w5", [], chat), chat)


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("cmd", [
    [sys.executable, "-m", "sglang_sm120", "smoke"],
    [sys.executable, str(ROOT / "scripts" / "smoke_cuda_graph.py"), "--mode", "inprocess"],
    [sys.executable, str(ROOT / "scripts" / "bench_e2e.py")],
], ids=["cli", "script", "bench"])
def test_no_gpu_exits_2_with_a_message(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == smoke.NO_GPU_EXIT, proc.stderr[-2000:]
    assert "no CUDA GPU visible" in proc.stderr
    assert not list(tmp_path.iterdir()), "nothing written without a GPU"


def test_cli_lists_smoke() -> None:
    from sglang_sm120 import cli

    assert cli.COMMANDS["smoke"] == "sglang_sm120.smoke"


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_smoke_inprocess_on_gpu(tmp_path: Path) -> None:
    """Native vs emulated in-process smoke (decode graphs bs 1..4, 8 greedy steps) on the GPU machine."""
    if importlib.util.find_spec("sglang") is None:
        pytest.skip("SGLang is not installed")
    proc = subprocess.run([sys.executable, "-m", "sglang_sm120", "smoke", "--mode", "inprocess",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    print(proc.stdout[-20000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "in-process smoke: PASS" in proc.stdout


@pytest.mark.parametrize("release,experts,dequant", [("0.5.12", "0", None), ("0.5.16", "1", "1"), (None, "1", "1")])
def test_native_path_builds_fp8_experts_on_0_5_12(release: str | None, experts: str, dequant: str | None,
                                                  monkeypatch) -> None:
    """0.5.12 has no FP4 -> FP8 dequant switch: its native child builds FP8 experts instead (refilled as the
    same MXFP4 values); later releases dequantize the FP4 experts at load; the emulated path keeps FP4."""
    monkeypatch.setattr(smoke, "installed_sglang", lambda: None)
    env = smoke.child_env(smoke.NATIVE, release=release)
    assert env["SGLANG_DSV4_FP4_EXPERTS"] == experts and env.get("SGLANG_DSV4_FP4_DEQUANT") == dequant
    assert env["SGLANG_SM120"] == "off"
    assert smoke.child_env(smoke.EMULATED, release=release)["SGLANG_DSV4_FP4_EXPERTS"] == "1"


def test_bench_e2e_check_compares_each_emulated_path_with_native() -> None:
    """``bench_e2e.py --check``: one table per emulated path; a path whose logits drift fails, as does a missing
    native run."""
    import argparse

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_e2e

    def res(noise: float, plugin: bool) -> dict:
        g = torch.Generator().manual_seed(0)
        rounds = []
        for b in (1, 2):
            lg = torch.randn(3, b, 64, generator=g)
            rounds.append({"bs": b, "logits": lg + noise * torch.randn(lg.shape, generator=g),
                           "tokens": lg.argmax(-1), "graph_steps": [True, True]})
        return {"rounds": rounds, "capture_bs": [1, 2, 8],
                "plugin": {"enabled": plugin, "emulate": plugin, "reason": ""}}

    args = argparse.Namespace(check=True, check_max_bs=2, batch_sizes=[1, 8])
    lines, problems = bench_e2e.check({"native": res(0, False), "emulated": res(1e-3, True)}, args)
    assert problems == [] and any("`emulated` vs `native`" in line and "PASS" in line for line in lines)
    _, problems = bench_e2e.check({"native": res(0, False), "emulated": res(3.0, True)}, args)
    assert problems == ["emulated: logits do not agree with native within the smoke tolerance"]
    _, problems = bench_e2e.check({"native": None, "emulated": res(0, True)}, args)
    assert "native path did not run: nothing to compare against" in problems


def test_bench_e2e_report_lists_profiled_prefill_kernels() -> None:
    """``--profile-top``: the report gets one kernel table per path that returned a prefill profile, with each
    kernel's share of the profiled GPU time."""
    import argparse

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_e2e

    bench = {1: {"prefill_ms": 10.0, "decode_ms": 1.0, "graph": True}}
    common = {"device": "GPU", "sglang": "0.5.16", "torch": "2.11", "bench": bench}
    prof = {"bs": 1, "total_us": 2000.0, "kernels": [("_routed_gemm", 8, 1500.0), ("sparse_attend", 4, 500.0)]}
    args = argparse.Namespace(layers=4, input_len=256, repeats=3, decode_steps=16, batch_sizes=[1])
    report = bench_e2e.markdown({"native": common, "emulated": {**common, "prefill_profile": prof}}, {}, args)
    assert "### Prefill kernels, `emulated` (bs 1, one profiled prefill, 2.00 ms of GPU kernel time)" in report
    assert "| `_routed_gemm` | 8 | 1500 | 75.0 |" in report
    assert "Prefill kernels, `native`" not in report


def test_saved_result_reused_only_for_identical_settings(tmp_path) -> None:
    """``bench_e2e.py --reuse``: a child's saved result is taken only when its recorded spec equals the new one."""
    spec = {"job": "bench", "seed": 0, "batch_sizes": [1], "server_args": ["--model-path", "m"]}
    assert smoke.saved_result(smoke.NATIVE, spec, tmp_path) is None
    full = smoke._child_spec(smoke.NATIVE, spec, tmp_path)
    (tmp_path / "bench-native.json").write_text(json.dumps(full))
    torch.save({"bench": {1: {"prefill_ms": 1.0}}}, full["out"])
    assert smoke.saved_result(smoke.NATIVE, spec, tmp_path)["bench"][1]["prefill_ms"] == 1.0
    assert smoke.saved_result(smoke.NATIVE, {**spec, "seed": 1}, tmp_path) is None


def test_child_env_sets_only_its_paths_moe_activation(monkeypatch) -> None:
    """A user's SGLANG_SM120_MOE_ACT never leaks into a child: only ``emulated-w4a8`` sets it."""
    monkeypatch.setenv("SGLANG_SM120_MOE_ACT", "mxfp8")
    assert "SGLANG_SM120_MOE_ACT" not in smoke.child_env(smoke.EMULATED)
    w4a8 = smoke.child_env(smoke.EMULATED_W4A8)
    assert w4a8["SGLANG_SM120_MOE_ACT"] == "mxfp8" and w4a8["DISABLE_MMA_V3"] == "1"
    assert w4a8["SGLANG_SM120"] == "emulate"


def _inprocess_args(reuse: bool = False, native_from: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(max_bs=2, decode_steps=1, seed=0, timeout=1.0, min_cosine=0.99, min_top1=0.95,
                              tie_margin=0.1, reuse=reuse, native_from=native_from, tp=1)


def test_inprocess_runs_emulated_alone_when_native_fails(tmp_path: Path, monkeypatch) -> None:
    """A native child that fails (e.g. 0.5.12 without DeepSeek's flash_mla) still gets the emulated child run,
    untethered (no teacher forcing) and checked on its own; the in-process result stays FAIL."""
    calls = []

    def fake_run_child(path, spec, workdir, timeout):
        calls.append((path.name, "force" in spec))
        if path is smoke.NATIVE:
            raise RuntimeError("child native failed (exit 1)")
        rnd = {"bs": 1, "logits": torch.zeros(2, 1, 4), "tokens": torch.zeros(2, 1), "graph_steps": [True]}
        return {"capture_bs": [1, 2], "rounds": [rnd], "plugin": {"enabled": True, "emulate": True, "reason": ""}}

    monkeypatch.setattr(smoke, "run_child", fake_run_child)
    assert smoke.run_inprocess(tmp_path / "m", tmp_path, _inprocess_args()) is False
    assert calls == [("native", False), ("emulated", False)]


def test_inprocess_reuse_takes_the_saved_native_result(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(smoke, "saved_result", lambda path, spec, workdir: {"saved": path.name})

    def fake_run_child(path, spec, workdir, timeout):
        calls.append((path.name, "force" in spec))
        raise RuntimeError("stop here")

    monkeypatch.setattr(smoke, "run_child", fake_run_child)
    assert smoke.run_inprocess(tmp_path / "m", tmp_path, _inprocess_args(reuse=True)) is False
    assert calls == [("emulated", True)]


def _saved_native(tmp_path: Path, **over) -> Path:
    spec = {"seed": 0, "batch_sizes": [1, 2], "decode_steps": 1}
    res = {"rounds": [], "compare_spec": spec, "plugin": {"enabled": False}, "device": "GPU X", "sglang": "0.5.16",
           **over}
    path = tmp_path / "compare-native.pt"
    torch.save(res, path)
    return path


@pytest.mark.parametrize("over,match", [
    ({"compare_spec": {"seed": 1, "batch_sizes": [1, 2], "decode_steps": 1}}, "same --seed"),
    ({"plugin": {"enabled": True}}, "no native result"),
    ({"device": "GPU Y"}, "this GPU is GPU X"),
])
def test_native_from_rejects_results_that_do_not_compare(tmp_path: Path, over: dict, match: str) -> None:
    spec = {"seed": 0, "batch_sizes": [1, 2], "decode_steps": 1}
    assert smoke.load_native_result(_saved_native(tmp_path), spec, "GPU X")["sglang"] == "0.5.16"
    with pytest.raises(ValueError, match=match):
        smoke.load_native_result(_saved_native(tmp_path, **over), spec, "GPU X")
    with pytest.raises(ValueError, match="no such file"):
        smoke.load_native_result(tmp_path / "missing.pt", spec, "GPU X")


def test_native_from_forces_the_emulated_child_with_that_file(tmp_path: Path, monkeypatch) -> None:
    """``--native-from``: no native child; the emulated child is teacher-forced with the given file's tokens."""
    saved = _saved_native(tmp_path)
    calls = []

    def fake_run_child(path, spec, workdir, timeout):
        calls.append((path.name, spec.get("force")))
        raise RuntimeError("stop here")

    monkeypatch.setattr(smoke, "run_child", fake_run_child)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "GPU X")
    assert smoke.run_inprocess(tmp_path / "m", tmp_path / "w", _inprocess_args(native_from=str(saved))) is False
    assert calls == [("emulated", str(saved))]


# ------------------------------------------------------------------------------------------------ tensor parallel


def test_server_argv_sets_the_tp_size() -> None:
    argv = smoke.server_argv("m", [1, 2], 0, tp=2)
    assert argv[argv.index("--tp-size") + 1] == "2"
    default = smoke.server_argv("m", [1], 0)
    assert default[default.index("--tp-size") + 1] == "1"


def _report(tmp_path: Path, *plugins: dict) -> Path:
    path = tmp_path / "refill.jsonl"
    path.write_text("".join(json.dumps({"pid": 100 + i, "counts": {}, "plugin": p}) + "\n"
                            for i, p in enumerate(plugins)))
    return path


def test_server_report_needs_the_plugin_in_every_tp_rank(tmp_path: Path) -> None:
    on = {"enabled": True, "emulate": True, "bootstrapped": True}
    off = {**on, "enabled": False}
    assert smoke._server_report(_report(tmp_path, on, on), tp=2) == []
    assert "expected one per TP rank (2)" in smoke._server_report(_report(tmp_path, on), tp=2)[0]
    assert "model process 101" in smoke._server_report(_report(tmp_path, on, off), tp=2)[0]


def test_tp_beyond_the_visible_gpus_exits_2(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert smoke.require_gpu("smoke", 1) is None
    assert smoke.require_gpu("smoke", 2) == smoke.NO_GPU_EXIT
    assert "1 CUDA GPU(s) visible, --tp 2 needs 2" in capsys.readouterr().err


class _TpArgs:
    tp_size = 3


@pytest.mark.parametrize("failing_rank", [None, 1])
def test_child_runs_one_process_per_tp_rank(tmp_path: Path, monkeypatch, failing_rank: int | None) -> None:
    """``--tp-size`` N in a child's server arguments: N rank processes; a failing rank stops the others (they
    would wait in NCCL forever) and fails the child."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"seed": 0, "label": "t", "batch_sizes": [1], "server_args": []}))

    def fake_rank(spec_, server_args, port_args, rank):
        (tmp_path / f"rank{rank}").write_text("ran")
        if rank == failing_rank:
            raise SystemExit(3)
        if failing_rank is not None:
            time.sleep(90)  # a healthy rank blocked on its failed peer (past the 60 s bound below)

    monkeypatch.setattr(smoke, "install_refill", lambda *a, **k: None)
    monkeypatch.setattr(smoke, "_server_args", lambda argv: (_TpArgs(), None))
    monkeypatch.setattr(smoke, "_rank_main", fake_rank)
    # fork, so the ranks see these patches (SGLang's launch code sets spawn, whose ranks re-import the module)
    monkeypatch.setattr(multiprocessing, "Process", multiprocessing.get_context("fork").Process)
    t0 = time.monotonic()
    rc = smoke.child_main(str(spec))
    assert time.monotonic() - t0 < 60
    ran = sorted(p.name for p in tmp_path.glob("rank*"))
    if failing_rank is None:
        assert ran == ["rank0", "rank1", "rank2"] and rc == 0
    else:  # the others may be stopped before they start
        assert "rank1" in ran and rc == 1


def test_bench_e2e_report_has_the_best_prefill_of_the_rounds() -> None:
    """The prefill's host part swings between rounds: the report adds a best-of-rounds table and its ratio."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_e2e

    def res(median: float, best: float) -> dict:
        bench = {1: {"prefill_ms": median, "decode_ms": 1.0, "prefill_min_ms": best, "decode_min_ms": 1.0,
                     "graph": True}}
        return {"device": "GPU", "sglang": "0.5.16", "torch": "2.11", "bench": bench}

    args = argparse.Namespace(layers=4, input_len=256, repeats=5, decode_steps=16, batch_sizes=[1])
    report = bench_e2e.markdown({"native": res(30.0, 20.0), "emulated": res(33.0, 22.0)}, {}, args)
    best = report[report.index("### Prefill, best of 5 rounds"):]
    assert "| 1 | 20.000 | 22.000 | 1.10 |" in best
    assert "| 1 | 30.000 | 33.000 | 1.10 |" in report
