"""``sglang-sm120 smoke``: end-to-end CUDA-graph smoke test of DeepSeek-V4 through real SGLang (0.5.16, 0.5.12).

It writes a tiny DeepSeek-V4 (real head geometry: 64 heads x 512 = 448 NoPE + 64 RoPE, window 128, index_topk
512, hidden 4096, 256 experts; layers SWA-only / C4 / C128, the first two hash-routed, MXFP4 experts) plus a
word-level tokenizer with a chat template, and runs it with ``--load-format dummy`` and decode CUDA graphs on.

* ``inprocess``: one child process per path builds a ``ModelRunner`` the way ``sglang.bench_one_batch`` does
  (the plugin reaches it through its ``ModelRunner.__init__`` hook, ``plugin.load_plugins_first``), captures
  the decode graphs for batch sizes 1..N, then for every batch size b runs one prefill of b prompts (up to 2200
  tokens, so C4 layers really select top-512) and K greedy decode steps, dumping the logits to a ``.pt`` file.
  The native SM90 path (``SGLANG_SM120=off``) runs first; the emulated plugin path (``SGLANG_SM120=emulate``,
  ``SGLANG_SM120_POISON=1``, ``DISABLE_MMA_V3=1``) is teacher-forced with the native greedy tokens so every
  decode step is comparable. The parent compares them (:class:`Tolerance`).
* ``server``: a real ``python -m sglang.launch_server`` with ``SGLANG_SM120=emulate`` (the plugin arrives only
  through its installed ``.pth`` and entry point), ``/v1/completions`` and ``/v1/chat/completions``, each must
  answer 200 with non-empty text and finite logprobs; then a clean shutdown.

``--tp N`` runs both modes with N tensor-parallel ranks on N GPUs (in-process: one rank process per GPU, as
``bench_one_batch`` does; server: every rank's model process must report the plugin active). Sharded parameters
are refilled per rank from the same seed, so the native and emulated paths at the same N see the same weights.

Dummy weights: SGLang's dummy loader fills floating parameters with U(-1e-3, 1e-3) and leaves integer ones
alone, so :func:`install_refill` refills the model right after the loader builds it (before
``process_weights_after_loading``, which 0.5.12 runs before its dummy init) and :func:`refill_weights` rewrites
every parameter from a seed,
keyed by parameter name, so both paths get the same logical weights: FP8 linears as e4m3 values with UE8M0
(power-of-two) 128x128 block scales, and the same values dequantized where a path keeps a weight in BF16 (e.g.
``wo_a`` under ``SGLANG_OPT_FP8_WO_A_GEMM=0``); MXFP4 expert bytes with UE8M0 scales (fp32 powers of two or
e8m0 bytes, whichever the MoE method created); the hash-routing table ``tid2eid``; norms near 1.

Native MoE choice: on SM90 SGLang 0.5.16 has no working FP4-expert runner under CUDA graphs (``auto`` ->
Triton fails with "Hidden size mismatch"; ``marlin`` did not finish capture), so the native child sets
``SGLANG_DSV4_FP4_DEQUANT=1``: ``Fp8MoEMethod`` converts the same FP4 bytes + UE8M0 scales to FP8 blocks at
load (``cast_e2m1fn_to_e4m3fn``, lossless for our scales: per 128x128 block they span 2x) and runs the Triton
FP8 fused MoE. 0.5.12 has no such switch (and its Marlin MoE is JIT-compiled by nvcc at first use), so its
native child builds FP8 experts (``SGLANG_DSV4_FP4_EXPERTS=0``) and :func:`refill_weights` fills them with the
lossless FP8 image of the same seeded MXFP4 experts: routed-expert weights are MXFP4 values in every layout.
0.5.12's native attention also needs DeepSeek's standalone ``flash_mla`` package (not an SGLang dependency);
where it is missing the native child fails and the emulated child still runs alone (its own greedy tokens) for
its own checks, and the in-process result is FAIL. ``--native-from`` compares instead with the native result
another release saved on the same GPU (e.g. 0.5.16's ``compare-native.pt``: same seeded model, same prompts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SEED_ENV = "SGLANG_SM120_SMOKE_SEED"
REPORT_ENV = "SGLANG_SM120_SMOKE_REPORT"
LOADER_MODULE = "sglang.srt.model_loader.loader"
NO_GPU_EXIT = 2
VOCAB_SIZE = 129280
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} \n{% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
SERVED_NAME = "sm120-smoke"
_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress line with wall clock and seconds since start, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# Tiny model: config + tokenizer
# --------------------------------------------------------------------------------------------------------------

RATIO_CYCLE = (0, 4, 128, 4, 128, 0, 4, 128)  # layer i -> compress ratio (0 = SWA only, 4 = C4, 128 = C128)


def tiny_config(layers: int = 4, num_hash_layers: int = 2, max_position: int = 65536) -> dict[str, Any]:
    """DeepSeek-V4-Flash ``config.json`` values with ``layers`` decoder layers.

    Every V4 key is explicit (missing keys fall back to DeepseekV3 defaults in SGLang's config alias). Layers
    0..num_hash_layers-1 are hash-routed, the rest use sqrtsoftplus top-6; compress ratios follow
    :data:`RATIO_CYCLE` (with 4 layers: SWA/hash, C4/hash, C128, C4), plus the trailing MTP entry.
    """
    if not 3 <= layers <= len(RATIO_CYCLE):
        raise ValueError(f"layers must be in 3..{len(RATIO_CYCLE)} to cover SWA, C4 and C128 layers, got {layers}")
    if not 1 <= num_hash_layers < layers:
        raise ValueError(f"num_hash_layers must be in 1..{layers - 1} (hash and normal routing), got {num_hash_layers}")
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "torch_dtype": "bfloat16",
        "vocab_size": VOCAB_SIZE, "hidden_size": 4096, "num_hidden_layers": layers,
        "compress_ratios": [*RATIO_CYCLE[:layers], 0], "num_nextn_predict_layers": 1,
        "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512, "qk_rope_head_dim": 64,
        "q_lora_rank": 1024, "o_lora_rank": 1024, "o_groups": 8, "sliding_window": 128,
        "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
        "rope_theta": 10000, "compress_rope_theta": 160000,
        "rope_scaling": {"type": "yarn", "factor": 16, "beta_fast": 32, "beta_slow": 1,
                         "original_max_position_embeddings": max_position // 16},
        "max_position_embeddings": max_position,
        "moe_intermediate_size": 2048, "n_routed_experts": 256, "num_experts_per_tok": 6, "n_shared_experts": 1,
        "num_hash_layers": num_hash_layers, "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc",
        "norm_topk_prob": True, "routed_scaling_factor": 1.5, "swiglu_limit": 10.0, "hidden_act": "silu",
        "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 1, "initializer_range": 0.02, "use_cache": True,
        "expert_dtype": "fp4",
        "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
    }


def write_tiny_model(out: str | os.PathLike[str], layers: int = 4, num_hash_layers: int = 2) -> Path:
    """Write config.json, generation_config.json and a word-level tokenizer (``w<id>`` words covering the
    whole vocabulary, so every generated id decodes to text) with a chat template into ``out``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(layers, num_hash_layers)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), VOCAB_SIZE)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": cfg["max_position_embeddings"], "chat_template": CHAT_TEMPLATE,
    }))
    return path


# --------------------------------------------------------------------------------------------------------------
# Seeded weights (replacing what the dummy loader leaves)
# --------------------------------------------------------------------------------------------------------------

FP8_BLOCK = 128
FP8_SPREAD = 16.0  # e4m3 values ~ N(0, 16^2), well inside +-448
FP4_BLOCK = 32
FP4_RMS = math.sqrt(sum(v * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)) / 8)  # RMS of a uniformly random E2M1 code
SCALE_JITTER = 1  # per-block exponent offset in [-1, 0]: scales span 2x inside any 128x128 block


def _generator(device: torch.device, seed: int, name: str) -> torch.Generator:
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return gen


def _pow2_exponents(shape: Sequence[int], fan_in: int, rms: float, gen: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """int32 exponents e with 2^e ~ 1 / (rms * sqrt(fan_in)), lowered by 0..SCALE_JITTER per block."""
    import torch

    base = round(-math.log2(rms * math.sqrt(fan_in)))
    return base - torch.randint(0, SCALE_JITTER + 1, tuple(shape), generator=gen, device=device,
                                dtype=torch.int32)


def fp8_block_weight(shape: Sequence[int], seed: int, name: str,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logical FP8 block-quantized weight ``[..., N, K]``: e4m3 values and fp32 power-of-two (UE8M0) scales
    ``[..., ceil(N/128), ceil(K/128)]``; dequantized rows have RMS ~ 1/sqrt(K)."""
    import torch

    *lead, n, k = shape
    gen = _generator(device, seed, name)
    q = (torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32) * FP8_SPREAD).clamp_(-448, 448)
    q = q.to(torch.float8_e4m3fn)
    sshape = (*lead, -(-n // FP8_BLOCK), -(-k // FP8_BLOCK))
    scale = torch.exp2(_pow2_exponents(sshape, k, FP8_SPREAD, gen, device).float())
    return q, scale


def dequant_blocks(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q [..., N, K] * scale`` broadcast over 128x128 blocks, in fp32."""
    n, k = q.shape[-2:]
    full = scale.repeat_interleave(FP8_BLOCK, -2)[..., :n, :].repeat_interleave(FP8_BLOCK, -1)[..., :k]
    return q.float() * full


def _write_scale_exponents(param: torch.Tensor, exps: torch.Tensor) -> None:
    """Store power-of-two scales 2^exps into ``param`` as fp32/bf16 values or UE8M0 bytes."""
    import torch

    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if param.dtype == torch.uint8 or (e8m0 is not None and param.dtype == e8m0):
        param.data.view(torch.uint8).copy_((exps + 127).to(torch.uint8))
    elif param.dtype.is_floating_point:
        param.data.copy_(torch.exp2(exps.float()))
    else:
        raise ValueError(f"scale parameter has dtype {param.dtype}; expected fp32/bf16, uint8 or float8_e8m0fnu")


def fp4_expert_codes(shape: Sequence[int], seed: int, name: str,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded MXFP4 experts of logical shape ``[E, N, K]``: packed E2M1 codes ``[E, N, K/2]`` uint8 (low nibble =
    even k; uniform random) and UE8M0 exponents ``[E, N, K/32]`` int32 with 2^e ~ 1 / (RMS(E2M1) * sqrt(K))."""
    import torch

    *lead, k = shape
    gen = _generator(device, seed, name)
    raw = torch.randint(0, 256, (*lead, k // 2), generator=gen, device=device, dtype=torch.uint8)
    return raw, _pow2_exponents((*lead, k // FP4_BLOCK), k, FP4_RMS, gen, device)


def _fill_fp4_experts(weight: torch.Tensor, scale: torch.Tensor, seed: int, name: str) -> None:
    """MXFP4 experts ``weight [E, N, K/2]`` (int8/uint8, two E2M1 codes per byte) with UE8M0 ``scale
    [E, N, K/32]`` from :func:`fp4_expert_codes`."""
    import torch

    k = weight.shape[-1] * 2
    if scale.shape[-1] * FP4_BLOCK != k or tuple(scale.shape[:-1]) != tuple(weight.shape[:-1]):
        raise ValueError(f"{name}: scale shape {tuple(scale.shape)} does not match FP4 weight {tuple(weight.shape)}")
    raw, exps = fp4_expert_codes((*weight.shape[:-1], k), seed, name, weight.device)
    weight.data.view(torch.uint8).copy_(raw)
    _write_scale_exponents(scale, exps)


def _fill_fp8_experts_as_fp4(weight: torch.Tensor, scale: torch.Tensor, seed: int, name: str) -> None:
    """FP8 experts ``weight [E, N, K]`` e4m3 with 128x128 block ``scale [E, N/128, K/128]`` holding exactly the
    MXFP4 experts :func:`_fill_fp4_experts` gives a parameter of the same name: per block the scale is the
    largest of its 2^e and the e4m3 values are E2M1 codes x 2^(e - block max) (exact: 2^e spans 2x per block)."""
    import torch

    e, n, k = weight.shape
    if n % FP8_BLOCK or k % FP8_BLOCK or tuple(scale.shape) != (e, n // FP8_BLOCK, k // FP8_BLOCK):
        raise ValueError(f"{name}: FP8 experts {tuple(weight.shape)} with scale {tuple(scale.shape)}; expected N and "
                         f"K multiples of {FP8_BLOCK} and a scale of shape {(e, n // FP8_BLOCK, k // FP8_BLOCK)}")
    from sglang_sm120.reference.moe_mxfp4 import dequant_mxfp4

    raw, exps = fp4_expert_codes(weight.shape, seed, name, weight.device)
    block = exps.view(e, n // FP8_BLOCK, FP8_BLOCK, k // FP8_BLOCK, FP8_BLOCK // FP4_BLOCK).amax(dim=(2, 4))
    for i in range(e):  # one expert at a time: the whole tensor in fp32 would not fit beside the model
        shift = exps[i] - block[i].repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK // FP4_BLOCK, 1)
        weight.data[i].copy_(dequant_mxfp4(raw[i], torch.exp2(shift.float())).to(weight.dtype))
    _write_scale_exponents(scale, block)


def _fill_float(param: torch.Tensor, seed: int, name: str) -> str:
    """A floating parameter that is not quantized; returns its category."""
    import torch

    gen = _generator(param.device, seed, name)
    leaf = name.rsplit(".", 1)[-1]
    if param.dim() >= 2 and "embed_tokens" in name:
        param.data.copy_(torch.randn(tuple(param.shape), generator=gen, device=param.device, dtype=torch.float32))
        return "embedding"
    if param.dim() >= 2:  # FP8-representable, so a BF16 copy of an FP8 weight (wo_a) matches its FP8 twin
        q, scale = fp8_block_weight(param.shape, seed, name, param.device)
        param.data.copy_(dequant_blocks(q, scale))
        return "bf16 linear"
    noise = torch.randn(tuple(param.shape), generator=gen, device=param.device, dtype=torch.float32)
    if "norm" in name:
        param.data.copy_(1 + 0.1 * noise)
        return "norm"
    if leaf == "attn_sink":
        param.data.copy_(noise)
    elif leaf.endswith("scale"):
        param.data.copy_(1 + 0.1 * noise)
    else:
        param.data.copy_(0.1 * noise)
    return "vector"


def refill_weights(model: torch.nn.Module, seed: int) -> dict[str, int]:
    """Rewrite every parameter of a dummy-loaded DeepSeek-V4 from ``seed`` (see the module docstring).

    Returns the number of tensors per category; a parameter of an unknown integer type is left alone and
    counted as ``left``.
    """
    import torch

    counts: dict[str, int] = {}
    done: set[int] = set()

    def count(kind: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1

    with torch.no_grad():
        for mname, module in model.named_modules():
            params = dict(module.named_parameters(recurse=False))
            for pname, p in params.items():
                if id(p) in done:
                    continue
                done.add(id(p))
                name = f"{mname}.{pname}" if mname else pname
                scale = params.get(f"{pname}_scale_inv")
                if pname == "tid2eid":
                    experts = getattr(module, "num_experts", None)
                    if experts is None:
                        raise ValueError(f"{name}: hash-routing module has no num_experts")
                    gen = _generator(p.device, seed, name)
                    rows = torch.rand(p.shape[0], experts, generator=gen, device=p.device, dtype=torch.float32)
                    p.data.copy_(rows.topk(p.shape[1], dim=1).indices.to(p.dtype))
                    count("tid2eid")
                elif p.dtype in (torch.int8, torch.uint8) and scale is not None:
                    _fill_fp4_experts(p, scale, seed, name)
                    done.add(id(scale))
                    count("fp4 experts")
                elif p.dtype == torch.float8_e4m3fn and scale is not None and p.dim() == 3 and "experts" in mname:
                    _fill_fp8_experts_as_fp4(p, scale, seed, name)
                    done.add(id(scale))
                    count("fp8 experts")
                elif p.dtype == torch.float8_e4m3fn and scale is not None:
                    q, s = fp8_block_weight(p.shape, seed, name, p.device)
                    if tuple(s.shape) != tuple(scale.shape):
                        raise ValueError(f"{name}: scale shape {tuple(scale.shape)}, expected {tuple(s.shape)}")
                    p.data.copy_(q)
                    _write_scale_exponents(scale, torch.log2(s).to(torch.int32))
                    done.add(id(scale))
                    count("fp8 linear")
                elif p.dtype.is_floating_point and p.dtype.itemsize >= 2:
                    count(_fill_float(p, seed, name))
                else:
                    count("left")
    return counts


def _plugin_state() -> dict[str, Any]:
    """What the plugin did in this process (for the parent's sanity check)."""
    from sglang_sm120 import dispatch

    rt = dispatch.runtime()
    if rt is None:
        return {"enabled": False, "emulate": False, "bootstrapped": False, "reason": "not activated", "states": {}}
    states: dict[str, int] = {}
    for st in dispatch.live_status(rt).values():
        states[st.state] = states.get(st.state, 0) + 1
    return {"enabled": rt.enabled, "emulate": bool(rt.resolution and rt.resolution.emulate),
            "bootstrapped": rt.bootstrapped, "reason": rt.reason, "release": rt.release, "states": states}


def install_refill(seed: int, report: str | None = None, module: str = LOADER_MODULE) -> None:
    """Make every dummy-loaded model in this process carry the seeded weights of :func:`refill_weights`.

    SGLang's loader ``module`` (once it executes) gets ``_initialize_model`` wrapped: for ``--load-format
    dummy`` the freshly built model gets the loader's own dummy init, then the refill, *before* the loader's
    ``process_weights_after_loading`` pass (0.5.12 runs that pass before its dummy init, 0.5.16 after); the
    loader's later ``initialize_dummy_weights`` call skips a refilled model. With ``report`` a JSON line per
    model is appended there."""
    from sglang_sm120 import hooks

    def patch(loader: Any) -> None:
        if getattr(loader._initialize_model, "_sm120_refill", False):  # installed already (e.g. a forked TP rank)
            return
        build, dummy_init = loader._initialize_model, loader.initialize_dummy_weights

        def build_then_refill(*args: Any, **kwargs: Any) -> Any:
            model = build(*args, **kwargs)
            load_config = kwargs.get("load_config", args[1] if len(args) > 1 else None)
            if "dummy" not in str(getattr(load_config, "load_format", "")).lower():
                return model
            dummy_init(model)
            t0 = time.monotonic()
            counts = refill_weights(model, seed)
            model._sm120_smoke_refilled = True
            log(f"refilled dummy weights (seed {seed}) in {time.monotonic() - t0:.1f}s: {counts}")
            if report:
                with open(report, "a") as f:
                    f.write(json.dumps({"pid": os.getpid(), "counts": counts, "plugin": _plugin_state()}) + "\n")
            return model

        def dummy_init_unless_refilled(model: Any, *args: Any, **kwargs: Any) -> None:
            if not getattr(model, "_sm120_smoke_refilled", False):
                dummy_init(model, *args, **kwargs)

        build_then_refill._sm120_refill = True  # type: ignore[attr-defined]
        loader._initialize_model = build_then_refill
        loader.initialize_dummy_weights = dummy_init_unless_refilled

    hooks.when_imported(module, patch)


# --------------------------------------------------------------------------------------------------------------
# Paths (one child process each: emulate mode is process-wide)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathConfig:
    """One way of running the model: its environment and whether the plugin must be active."""

    name: str
    env: Mapping[str, str]
    plugin: bool
    note: str
    release_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # release -> env used instead

    def env_for(self, release: str | None) -> Mapping[str, str]:
        """The path's environment on SGLang ``release``."""
        return self.release_env.get(release or "", self.env)


COMMON_ENV = {"SGLANG_JIT_DEEPGEMM_PRECOMPILE": "0", "SGLANG_DSV4_FP4_EXPERTS": "1", "PYTHONUNBUFFERED": "1"}
STRIPPED_ENV = ("DISABLE_MMA_V3", "SGLANG_SM120", "SGLANG_SM120_POISON", "SGLANG_SM120_ASSUME_GPUS",
                "SGLANG_SM120_MOE_ACT", "SGLANG_DSV4_FP4_DEQUANT", SEED_ENV, REPORT_ENV)
NATIVE = PathConfig("native", {"SGLANG_SM120": "off", "SGLANG_DSV4_FP4_DEQUANT": "1"}, False,
                    "SGLang's SM90 path; the MXFP4 experts as FP8 blocks (Triton FP8 MoE)",
                    {"0.5.12": {"SGLANG_SM120": "off", "SGLANG_DSV4_FP4_EXPERTS": "0"}})
EMULATED = PathConfig("emulated", {"SGLANG_SM120": "emulate", "SGLANG_SM120_POISON": "1", "DISABLE_MMA_V3": "1"},
                      True, "plugin path as on SM12x (mma.sync only)")
EMULATED_WGMMA = PathConfig("emulated-wgmma", {"SGLANG_SM120": "emulate", "SGLANG_SM120_POISON": "1"}, True,
                            "plugin path, Triton free to use wgmma on this Hopper GPU")
EMULATED_W4A8 = PathConfig("emulated-w4a8", {**EMULATED.env, "SGLANG_SM120_MOE_ACT": "mxfp8"}, True,
                           "as emulated, with the opt-in W4A8 MoE prefill path (on Hopper Triton decomposes its "
                           "block-scaled MMA: numerics, not SM12x speed)")
PATHS = {p.name: p for p in (NATIVE, EMULATED, EMULATED_WGMMA, EMULATED_W4A8)}


def installed_sglang() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def child_env(path: PathConfig, extra: Mapping[str, str] | None = None, release: str | None = None) -> dict[str, str]:
    """Environment of a child of ``path`` on SGLang ``release`` (default: the installed one)."""
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
    env.update(COMMON_ENV)
    env.update(path.env_for(release or installed_sglang()))
    env.update(extra or {})
    return env


def server_argv(model_dir: str | os.PathLike[str], batch_sizes: Sequence[int], seed: int,
                context_length: int = 4096, tp: int = 1) -> list[str]:
    """SGLang server arguments shared by the in-process children and the HTTP server (``tp`` ranks)."""
    bs = sorted(set(batch_sizes))
    return ["--model-path", str(model_dir), "--load-format", "dummy", "--tp-size", str(tp),
            "--context-length", str(context_length), "--mem-fraction-static", "0.8",
            "--cuda-graph-max-bs", str(bs[-1]), "--cuda-graph-bs", *map(str, bs),
            "--max-running-requests", str(bs[-1]), "--random-seed", str(seed), "--log-level", "warning"]


def result_path(workdir: Path, job: str, path: PathConfig) -> Path:
    return workdir / f"{job}-{path.name}.pt"


def spec_path(workdir: Path, job: str, path: PathConfig) -> Path:
    return workdir / f"{job}-{path.name}.json"


def _child_spec(path: PathConfig, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    return {**spec, "label": path.name, "out": str(result_path(workdir, spec["job"], path)),
            "env": dict(path.env_for(installed_sglang()))}


def saved_result(path: PathConfig, spec: dict[str, Any], workdir: Path) -> dict[str, Any] | None:
    """The result a finished child of ``path`` left in ``workdir`` for exactly this ``spec`` (e.g. from an
    earlier command on the same machine), else None."""
    import torch

    full = _child_spec(path, spec, workdir)
    spec_file = spec_path(workdir, spec["job"], path)
    if not (spec_file.is_file() and Path(full["out"]).is_file()):
        return None
    if json.loads(spec_file.read_text()) != json.loads(json.dumps(full)):
        return None
    log(f"child {path.name}: reusing {full['out']} (same settings)")
    return torch.load(full["out"], weights_only=False)


def run_child(path: PathConfig, spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run one child (``python -m sglang_sm120.smoke --child SPEC``) in ``path``'s environment, streaming its
    output with a ``[name]`` prefix; returns the result dict it saved (``torch.load``)."""
    import torch

    spec = _child_spec(path, spec, workdir)
    spec_file = spec_path(workdir, spec["job"], path)
    spec_file.write_text(json.dumps(spec))
    Path(spec["out"]).unlink(missing_ok=True)
    env = child_env(path)
    log(f"child {path.name}: start ({path.note}; " + " ".join(f"{k}={v}" for k, v in spec["env"].items()) + ")")
    proc = subprocess.Popen([sys.executable, "-m", "sglang_sm120.smoke", "--child", str(spec_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    finished = _stream(proc, path.name, time.monotonic() + timeout)
    if not finished:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and its TP rank processes
        except ProcessLookupError:
            pass
        proc.wait()
        raise RuntimeError(f"child {path.name} did not finish within {timeout:.0f}s")
    if proc.returncode != 0 or not Path(spec["out"]).is_file():
        raise RuntimeError(f"child {path.name} failed (exit {proc.returncode})")
    log(f"child {path.name}: done")
    return torch.load(spec["out"], weights_only=False)


def _stream(proc: subprocess.Popen[str], label: str, deadline: float) -> bool:
    """Print ``proc``'s output as ``  [label] line`` (tqdm's carriage returns split too) until it exits;
    False if the deadline passed first."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            line = lines.get(timeout=min(remaining, 5.0))
        except queue.Empty:
            if proc.poll() is not None:  # exited; a grandchild may hold the pipe open
                break
            continue
        if line is None:
            break
        for part in line.rstrip("\n").split("\r"):
            if part.strip():
                print(f"  [{label}] {part.rstrip()}", flush=True)
    try:
        proc.wait(max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        return False
    return True


# --------------------------------------------------------------------------------------------------------------
# The child: a ModelRunner as sglang.bench_one_batch builds it
# --------------------------------------------------------------------------------------------------------------


def _one_batch_module() -> Any:
    try:
        import sglang.benchmark.one_batch as one_batch  # 0.5.16
    except ImportError:
        import sglang.bench_one_batch as one_batch
    return one_batch


def _server_args(argv: list[str]) -> tuple[Any, Any]:
    """``(ServerArgs, PortArgs)`` from ``argv``, SGLang's global configs initialised as its launchers do.

    Plugins are loaded before ServerArgs are built, as ``launch_server`` and ``Engine`` do: plugin-time hooks on
    server-arg defaults (e.g. the DSV4 MoE runner on SM12x) must see ``__post_init__``. ``bench_one_batch``
    itself only gets plugins at ``ModelRunner.__init__`` (``plugin.load_plugins_first``), after its ServerArgs.
    """
    from sglang.srt.entrypoints.engine import _set_envs_and_config
    from sglang.srt.layers.moe import initialize_moe_config
    from sglang.srt.layers.quantization.fp8_utils import initialize_fp8_gemm_config
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import PortArgs, ServerArgs

    load_plugins()
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    server_args = ServerArgs.from_cli_args(parser.parse_args(argv))
    _set_envs_and_config(server_args)
    port_args = PortArgs.init_new(server_args)
    initialize_moe_config(server_args)
    initialize_fp8_gemm_config(server_args)
    try:
        from sglang.srt.layers.quantization.fp4_utils import initialize_fp4_gemm_config
    except ImportError:
        pass
    else:
        initialize_fp4_gemm_config(server_args)
    log(f"server args: moe_runner_backend={server_args.moe_runner_backend}, "
        f"attention_backend={server_args.attention_backend}, page_size={server_args.page_size}, "
        f"tp_size={server_args.tp_size}")
    return server_args, port_args


def _load_runner(server_args: Any, port_args: Any, rank: int) -> Any:
    """TP rank ``rank``'s ModelRunner (on GPU ``rank``) with memory pool, attention backends and CUDA graphs."""
    wrapped, _tokenizer = _one_batch_module().load_model(server_args, port_args, rank, rank)
    return getattr(wrapped, "torch_runner", wrapped)


def _captured_bs(runner: Any) -> list[int]:
    graph_runner = next(filter(None, (getattr(runner, a, None) for a in (
        "decode_cuda_graph_runner", "cuda_graph_runner", "graph_runner"))), None)  # 0.5.16, ..., 0.5.12
    return sorted(int(b) for b in (getattr(graph_runner, "capture_bs", None) or []))


def _clear(runner: Any) -> None:
    runner.req_to_token_pool.clear()
    runner.token_to_kv_pool_allocator.clear()


def _prefill(runner: Any, prompts: list[list[int]]) -> tuple[torch.Tensor, Any]:
    """One extend batch of ``prompts``: fp32 next-token logits ``[b, V]`` and the ScheduleBatch."""
    one_batch = _one_batch_module()
    reqs = one_batch.prepare_synthetic_inputs_for_latency_test(len(prompts), 0, prompts)
    _ids, logits, batch = one_batch.extend(reqs, runner)
    return logits.float(), batch


def _decode(runner: Any, batch: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """One decode step feeding ``tokens [b]``: fp32 logits ``[b, V]`` and whether the CUDA graph replayed."""
    import torch
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    if "output_ids" in getattr(type(batch), "__dataclass_fields__", {}):  # 0.5.12: prepare_for_decode reads it
        batch.output_ids = tokens.to(torch.int64)
    else:
        batch.input_ids = tokens.to(torch.int64)
    batch.prepare_for_decode()
    if hasattr(batch, "get_model_worker_batch"):  # 0.5.12: the forward batch is built from a ModelWorkerBatch
        fb = ForwardBatch.init_new(batch.get_model_worker_batch(), runner)
    else:
        fb = ForwardBatch.init_new(batch, runner, return_hidden_states_before_norm=False)
    out = runner.forward(fb)
    logits = getattr(out, "logits_output", out).next_token_logits
    return logits.float(), bool(getattr(out, "can_run_graph", False))


def prompt_lens(n: int) -> list[int]:
    """Prompt lengths for the comparison: the longest (2200) exceeds 4 x index_topk, so C4 layers select."""
    base = (2200, 700, 300, 130)
    return [base[i] if i < len(base) else 64 + 37 * i for i in range(n)]


def _prompts(seed: int, lens: Sequence[int]) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(len(SPECIAL_TOKENS), VOCAB_SIZE, n).tolist() for n in lens]


def _compare_job(runner: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """For each batch size b: prefill prompts[:b], then K greedy decode steps (teacher-forced with
    ``spec['force']``'s tokens when given). Logits stay on the CPU in fp32."""
    import torch

    forced = torch.load(spec["force"], weights_only=False)["rounds"] if spec.get("force") else None
    prompts = _prompts(spec["seed"], prompt_lens(max(spec["batch_sizes"])))
    rounds = []
    for i, b in enumerate(spec["batch_sizes"]):
        _clear(runner)
        t0 = time.monotonic()
        logits, batch = _prefill(runner, prompts[:b])
        steps, tokens, graphs = [logits.cpu()], [logits.argmax(-1)], []
        for k in range(spec["decode_steps"]):
            feed = forced[i]["tokens"][k].to(logits.device) if forced else tokens[-1]
            logits, used_graph = _decode(runner, batch, feed)
            steps.append(logits.cpu())
            tokens.append(logits.argmax(-1))
            graphs.append(used_graph)
        torch.cuda.synchronize()
        log(f"bs {b}: prefill {sum(len(p) for p in prompts[:b])} tokens + {spec['decode_steps']} decode steps "
            f"in {time.monotonic() - t0:.2f}s; graph replayed on {sum(graphs)}/{len(graphs)} steps")
        rounds.append({"bs": b, "logits": torch.stack(steps), "tokens": torch.stack(tokens).cpu(),
                       "graph_steps": graphs})
    _clear(runner)
    return {"rounds": rounds, "compare_spec": compare_spec(spec)}


def compare_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """What makes two ``compare`` results comparable: the seed (weights and prompts), batch sizes, decode steps."""
    return {k: spec[k] for k in ("seed", "batch_sizes", "decode_steps")}


def load_native_result(path: str | os.PathLike[str], spec: dict[str, Any], device: str) -> dict[str, Any]:
    """A native ``compare`` result an earlier run saved (``--native-from``, e.g. SGLang 0.5.16's native path for a
    0.5.12 run whose own native path cannot run); ``ValueError`` unless it is a native result of the same seed,
    batch sizes and decode steps made on a GPU named ``device``."""
    import torch

    if not Path(path).is_file():
        raise ValueError(f"--native-from {path}: no such file (an earlier run's <workdir>/compare-native.pt)")
    res = torch.load(path, weights_only=False)
    if not isinstance(res, dict) or "rounds" not in res:
        raise ValueError(f"--native-from {path}: not a saved in-process comparison result")
    if res.get("compare_spec") != compare_spec(spec):
        raise ValueError(f"--native-from {path}: made with {res.get('compare_spec')}, this run needs "
                         f"{compare_spec(spec)} (same --seed, --max-bs and --decode-steps)")
    if res["plugin"]["enabled"]:
        raise ValueError(f"--native-from {path}: the plugin was active in that run, so it is no native result")
    if res.get("device") != device:
        raise ValueError(f"--native-from {path}: made on {res.get('device')}, this GPU is {device}")
    return res


def _bench_job(runner: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Per batch size: one warm-up round, then ``repeats`` rounds of a timed prefill (``input_len`` tokens per
    request) and ``decode_steps`` timed decode steps; medians and minimums in ms (host overhead included, as in
    ``bench_one_batch``)."""
    import statistics

    import torch

    out = {}
    for b in spec["batch_sizes"]:
        prompts = _prompts(spec["seed"] + b, [spec["input_len"]] * b)
        prefill_ms, decode_ms, graphs = [], [], []
        for r in range(spec["repeats"] + 1):
            _clear(runner)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits, batch = _prefill(runner, prompts)
            torch.cuda.synchronize()
            t_prefill = (time.perf_counter() - t0) * 1e3
            tokens = logits.argmax(-1)
            for _ in range(spec["decode_steps"] if r else 2):
                t0 = time.perf_counter()
                logits, used_graph = _decode(runner, batch, tokens)
                torch.cuda.synchronize()
                if r:
                    decode_ms.append((time.perf_counter() - t0) * 1e3)
                    graphs.append(used_graph)
                tokens = logits.argmax(-1)
            if r:
                prefill_ms.append(t_prefill)
        out[b] = {"prefill_ms": statistics.median(prefill_ms), "decode_ms": statistics.median(decode_ms),
                  "prefill_min_ms": min(prefill_ms), "decode_min_ms": min(decode_ms), "graph": all(graphs)}
        log(f"bs {b}: prefill {out[b]['prefill_ms']:.2f} ms, decode step {out[b]['decode_ms']:.3f} ms "
            f"(graph {'yes' if out[b]['graph'] else 'NO'})")
    _clear(runner)
    result: dict[str, Any] = {"bench": out}
    if spec.get("profile_top"):
        result["prefill_profile"] = _profile_prefill(runner, spec)
    return result


def _profile_prefill(runner: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """One more prefill at the largest batch size under ``torch.profiler``: the ``profile_top`` GPU kernels by
    total device time, as ``{"bs", "total_us", "kernels": [(name, calls, us), ...]}``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    b = max(spec["batch_sizes"])
    prompts = _prompts(spec["seed"] + b, [spec["input_len"]] * b)
    _clear(runner)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _prefill(runner, prompts)
        torch.cuda.synchronize()
    _clear(runner)
    rows = [(e.key, e.count, e.self_device_time_total) for e in prof.key_averages()
            if e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r[2])
    return {"bs": b, "total_us": sum(r[2] for r in rows), "kernels": rows[: spec["profile_top"]]}


def child_main(spec_file: str) -> int:
    """Entry of a child process (``--child SPEC``): see :func:`run_child`. With ``--tp-size`` N > 1 in the spec's
    server arguments it runs N rank processes, as ``bench_one_batch`` does; every rank runs the same batches and
    rank 0 saves the result."""
    spec = json.loads(Path(spec_file).read_text())
    install_refill(spec["seed"])
    log(f"{spec['label']}: importing SGLang and building the ModelRunner (graphs for bs {spec['batch_sizes']})")
    server_args, port_args = _server_args(spec["server_args"])
    if server_args.tp_size == 1:
        return _rank_main(spec, server_args, port_args, 0)
    import multiprocessing

    ranks = [multiprocessing.Process(target=_rank_main, args=(spec, server_args, port_args, r))
             for r in range(server_args.tp_size)]
    for proc in ranks:
        proc.start()
    while any(proc.is_alive() for proc in ranks):
        if any(proc.exitcode not in (None, 0) for proc in ranks):  # the others would wait in NCCL forever
            for proc in ranks:
                proc.terminate()
            break
        time.sleep(1)
    for proc in ranks:
        proc.join()
    failed = [r for r, proc in enumerate(ranks) if proc.exitcode != 0]
    if failed:
        log(f"{spec['label']}: TP ranks {failed} failed (exit codes {[ranks[r].exitcode for r in failed]})")
    return 1 if failed else 0


def _rank_main(spec: dict[str, Any], server_args: Any, port_args: Any, rank: int) -> int:
    """One TP rank of a child: build the ModelRunner, run the spec's jobs; rank 0 saves the result."""
    install_refill(spec["seed"])  # a no-op where the parent's hook was inherited (fork), needed under spawn
    import torch

    t0 = time.monotonic()
    runner = _load_runner(server_args, port_args, rank)
    info = {"capture_bs": _captured_bs(runner), "plugin": _plugin_state(),
            "device": torch.cuda.get_device_name(), "sglang": installed_sglang(),
            "torch": torch.__version__, "startup_s": time.monotonic() - t0, "tp": server_args.tp_size}
    log(f"{spec['label']} rank {rank}: ready in {info['startup_s']:.0f}s; captured decode graphs for bs "
        f"{info['capture_bs']}; plugin {info['plugin']}")
    jobs = spec["job"].split("+")  # "compare", "bench" or "compare+bench" (one startup for both)
    result: dict[str, Any] = {}
    with torch.no_grad():
        if "compare" in jobs:
            result.update(_compare_job(runner, spec))
        if "bench" in jobs:
            result.update(_bench_job(runner, {**spec, "batch_sizes": spec.get("bench_batch_sizes",
                                                                               spec["batch_sizes"])}))
    if rank == 0:
        torch.save({**info, **result}, spec["out"])
    return 0


# --------------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """Agreement required between the native and the emulated logits, row by row (one row = one request's
    next-token logits at one step).

    * every row: cosine similarity >= ``min_cosine``;
    * top-1: the emulated argmax equals the native one, or is a near tie in the native logits (within
      ``tie_margin`` x the row's standard deviation of the native top-1; random weights give flat
      distributions where the top two are often that close); at least ``min_top1`` of the rows.
    """

    min_cosine: float = 0.99
    min_top1: float = 0.95
    tie_margin: float = 0.1


@dataclass
class Agreement:
    rows: int
    cos_min: float
    cos_mean: float
    top1_exact: int
    top1_tie_ok: int
    finite: bool
    passed: bool = field(default=False)


def compare_logits(ref: torch.Tensor, test: torch.Tensor, tol: Tolerance = Tolerance()) -> Agreement:
    """Compare ``[rows, V]`` logits (any float dtype); ``passed`` per :class:`Tolerance`."""
    if ref.shape != test.shape or ref.dim() != 2:
        raise ValueError(f"logits must both be [rows, V]; got ref {tuple(ref.shape)} and test {tuple(test.shape)}")
    import torch

    ref, test = ref.float(), test.float()
    finite = bool(torch.isfinite(ref).all() and torch.isfinite(test).all())
    if not finite:
        return Agreement(ref.shape[0], float("nan"), float("nan"), 0, 0, False, False)
    cos = torch.nn.functional.cosine_similarity(ref, test, dim=-1)
    ref_top, test_top = ref.argmax(-1), test.argmax(-1)
    exact = ref_top == test_top
    gap = ref.max(-1).values - ref.gather(-1, test_top[:, None]).squeeze(-1)
    tie_ok = exact | (gap <= tol.tie_margin * ref.std(-1))
    rows = ref.shape[0]
    passed = bool(cos.min() >= tol.min_cosine) and int(tie_ok.sum()) >= math.ceil(tol.min_top1 * rows)
    return Agreement(rows, float(cos.min()), float(cos.mean()), int(exact.sum()), int(tie_ok.sum()), True, passed)


def comparison_table(native: dict[str, Any], emulated: dict[str, Any],
                     tol: Tolerance) -> tuple[list[list[str]], Agreement]:
    """Rows ``bs | phase | rows | cos min | cos mean | top-1 | top-1 (near ties ok)`` per batch size and
    phase, then ``all``; the verdict is the :class:`Agreement` over all rows."""
    import torch

    table = [["bs", "phase", "rows", "cos min", "cos mean", "top-1", "top-1 (near ties ok)"]]
    all_ref, all_test = [], []

    def add(label: str, phase: str, a: Agreement) -> None:
        if not a.finite:
            table.append([label, phase, str(a.rows), "non-finite", "", "", ""])
            return
        table.append([label, phase, str(a.rows), f"{a.cos_min:.5f}", f"{a.cos_mean:.5f}",
                      f"{a.top1_exact}/{a.rows}", f"{a.top1_tie_ok}/{a.rows}"])

    for rn, re in zip(native["rounds"], emulated["rounds"], strict=True):
        for phase, sl in (("prefill", slice(0, 1)), ("decode", slice(1, None))):
            ref, test = rn["logits"][sl].flatten(0, 1), re["logits"][sl].flatten(0, 1)
            if ref.numel():
                add(str(rn["bs"]), phase, compare_logits(ref, test, tol))
                all_ref.append(ref)
                all_test.append(test)
    total = compare_logits(torch.cat(all_ref), torch.cat(all_test), tol)
    add("all", "", total)
    return table, total


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def check_child(name: str, res: dict[str, Any], path: PathConfig, batch_sizes: list[int]) -> list[str]:
    """Problems with one child's run: graphs, plugin state, finiteness."""
    import torch

    problems = []
    if res["capture_bs"] != batch_sizes:
        problems.append(f"{name}: decode graphs captured for bs {res['capture_bs']}, expected {batch_sizes}")
    for rnd in res.get("rounds", []):
        if not all(rnd["graph_steps"]):
            problems.append(f"{name}: bs {rnd['bs']}: decode ran eagerly on some steps (graph not replayed)")
        if not bool(torch.isfinite(rnd["logits"]).all()):
            problems.append(f"{name}: bs {rnd['bs']}: non-finite logits")
    plugin = res["plugin"]
    if path.plugin and not (plugin["enabled"] and plugin["emulate"]):
        problems.append(f"{name}: the plugin is not active in emulate mode ({plugin['reason']}); "
                        "is sglang-sm120 installed with pip (its .pth bootstrap)?")
    if not path.plugin and plugin["enabled"]:
        problems.append(f"{name}: the plugin is active on the native path")
    return problems


def run_inprocess(model_dir: Path, workdir: Path, args: argparse.Namespace) -> bool:
    """Native then emulated child; compare; print the table. True if everything passed."""
    batch_sizes = list(range(1, args.max_bs + 1))
    spec = {"job": "compare", "seed": args.seed, "batch_sizes": batch_sizes, "decode_steps": args.decode_steps,
            "server_args": server_argv(model_dir, batch_sizes, args.seed, tp=args.tp)}
    problems: list[str] = []
    native_file = result_path(workdir, "compare", NATIVE)
    try:
        if args.native_from:
            import torch

            native_file = Path(args.native_from)
            native = load_native_result(native_file, spec, torch.cuda.get_device_name())
            log(f"native: taken from {native_file} (SGLang {native['sglang']}, {native['device']})")
        else:
            native = (args.reuse and saved_result(NATIVE, spec, workdir)) or run_child(NATIVE, spec, workdir,
                                                                                       args.timeout)
    except ValueError as exc:
        log(f"in-process smoke: FAIL: {exc}")
        return False
    except RuntimeError as exc:
        log(f"in-process smoke: FAIL: {exc}; running the emulated path alone (its own greedy tokens) for its checks")
        try:
            alone = run_child(EMULATED, spec, workdir, args.timeout)
        except RuntimeError as exc2:
            log(f"in-process smoke: FAIL: {exc2}")
            return False
        own = check_child(EMULATED.name, alone, EMULATED, batch_sizes)
        log(f"emulated path alone: {'; '.join(own) or 'graphs, plugin state and finite logits OK'}")
        return False
    try:
        forced = {**spec, "force": str(native_file)}
        emulated = run_child(EMULATED, forced, workdir, args.timeout)
    except RuntimeError as exc:
        log(f"in-process smoke: FAIL: {exc}")
        return False
    problems += check_child(NATIVE.name, native, NATIVE, batch_sizes)
    problems += check_child(EMULATED.name, emulated, EMULATED, batch_sizes)
    tol = Tolerance(args.min_cosine, args.min_top1, args.tie_margin)
    table, total = comparison_table(native, emulated, tol)
    print(f"\nemulated plugin path (SGLang {emulated['sglang']}) vs native SM90 path (SGLang {native['sglang']}) "
          f"on {native['device']} (TP {emulated.get('tp', 1)}), same "
          f"seeded weights, emulated decode teacher-forced with the native greedy tokens;\npass: cosine >= "
          f"{tol.min_cosine} on every row and top-1 agreement >= {tol.min_top1:.0%} of rows (a near tie within "
          f"{tol.tie_margin} x std of the native logits counts as agreement)\n", flush=True)
    print(format_table(table) + "\n", flush=True)
    if not total.passed:
        problems.append("logits of the emulated path do not agree with the native path within the tolerance")
    for p in problems:
        log(f"in-process smoke: FAIL: {p}")
    if not problems:
        log(f"in-process smoke: PASS (graphs for bs {batch_sizes} on both paths, {total.rows} rows compared)")
    return not problems


# --------------------------------------------------------------------------------------------------------------
# Server mode
# --------------------------------------------------------------------------------------------------------------

SITECUSTOMIZE = '''"""Written by `sglang-sm120 smoke`: seeded dummy weights in the smoke server's SGLang processes."""
import importlib.machinery
import importlib.util
import os
import sys

from sglang_sm120 import smoke

smoke.install_refill(int(os.environ[smoke.SEED_ENV]), os.environ.get(smoke.REPORT_ENV))
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:  # the sitecustomize this one shadows
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 120) -> tuple[int, Any]:
    """GET (``body`` None) or POST JSON; returns (status, parsed JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def check_completion(status: int, reply: Any, chat: bool) -> str | None:
    """None if an OpenAI-style reply is 200 with non-empty text and finite logprobs, else the problem."""
    if status != 200 or not isinstance(reply, dict):
        return f"HTTP {status}: {str(reply)[:300]}"
    choice = (reply.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
    if not text or not text.strip():
        return f"empty text: {str(reply)[:300]}"
    lp = choice.get("logprobs") or {}
    values = [c.get("logprob") for c in lp.get("content") or []] if chat else lp.get("token_logprobs") or []
    if not values:
        return f"no logprobs in the reply: {str(reply)[:300]}"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return f"non-finite logprobs {values}"
    return None


def _stop_server(proc: subprocess.Popen[bytes], grace: float = 60) -> bool:
    """SIGTERM the launcher and wait; whatever of its process group is left after ``grace`` s is killed.
    True if it went down by itself."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    clean = proc.poll() is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the scheduler/detokenizer children go down after the launcher
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return clean
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return False


def run_server(model_dir: Path, workdir: Path, args: argparse.Namespace) -> bool:
    """``python -m sglang.launch_server`` under ``SGLANG_SM120=emulate``; completions + chat; clean shutdown."""
    site = workdir / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    report = workdir / "server-refill.jsonl"
    report.unlink(missing_ok=True)
    port = _free_port()
    batch_sizes = list(range(1, args.max_bs + 1))
    pythonpath = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = child_env(EMULATED, {SEED_ENV: str(args.seed), REPORT_ENV: str(report), "PYTHONPATH": pythonpath})
    cmd = [sys.executable, "-m", "sglang.launch_server", *server_argv(model_dir, batch_sizes, args.seed, tp=args.tp),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_NAME, "--skip-server-warmup"]
    server_log = workdir / "server.log"
    log(f"server: starting on port {port} (SGLANG_SM120=emulate, log {server_log})")
    with open(server_log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    problems: list[str] = []
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            if proc.poll() is not None:
                problems.append(f"server exited with {proc.returncode} before it was ready")
                break
            if time.monotonic() > deadline:
                problems.append(f"server not ready within {args.timeout:.0f}s")
                break
            try:
                if _http(f"{base}/v1/models", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(2)
        if not problems:
            log("server: ready")
            problems += _server_requests(base)
            problems += _server_report(report, args.tp)
    finally:
        clean = _stop_server(proc)
        log(f"server: shut down {'cleanly' if clean else 'by SIGKILL'}")
    if not clean:
        problems.append("server did not shut down within 60 s of SIGTERM")
    if problems:
        tail = server_log.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(f"  [server.log] {line}" for line in tail), flush=True)
    for p in problems:
        log(f"server smoke: FAIL: {p}")
    if not problems:
        log("server smoke: PASS (/v1/completions and /v1/chat/completions: 200, text, finite logprobs)")
    return not problems


def _server_requests(base: str) -> list[str]:
    problems = []
    common = {"model": SERVED_NAME, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    status, reply = _http(f"{base}/v1/completions", {**common, "prompt": "w11 w12 w13 w14 w15", "logprobs": 1})
    err = check_completion(status, reply, chat=False)
    log(f"server: /v1/completions -> {status}: {err or repr(reply['choices'][0]['text'])}")
    problems += [f"/v1/completions: {err}"] if err else []
    body = {**common, "messages": [{"role": "user", "content": "w21 w22 w23"}], "logprobs": True, "top_logprobs": 1}
    status, reply = _http(f"{base}/v1/chat/completions", body)
    err = check_completion(status, reply, chat=True)
    log(f"server: /v1/chat/completions -> {status}: {err or repr(reply['choices'][0]['message']['content'])}")
    problems += [f"/v1/chat/completions: {err}"] if err else []
    return problems


def _server_report(report: Path, tp: int = 1) -> list[str]:
    """Each of the ``tp`` model processes (one per TP rank) must have refilled the weights with the plugin active
    in emulate mode."""
    if not report.is_file():
        return ["the server's model process did not refill the dummy weights (sitecustomize not run?)"]
    entries = {e["pid"]: e for e in map(json.loads, filter(str.strip, report.read_text().splitlines()))}
    problems = []
    if len(entries) < tp:
        problems.append(f"{len(entries)} model process(es) refilled the weights, expected one per TP rank ({tp})")
    for pid, entry in entries.items():
        plugin = entry["plugin"]
        log(f"server: model process {pid}: plugin {plugin}")
        if not (plugin["enabled"] and plugin["emulate"] and plugin["bootstrapped"]):
            problems.append(f"plugin not active in emulate mode in model process {pid}: {plugin}")
    return problems


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def require_gpu(prog: str, count: int = 1) -> int | None:
    """None if ``count`` CUDA GPUs are visible, else print why and return :data:`NO_GPU_EXIT`."""
    try:
        import torch

        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        found = 0
    if found >= count:
        return None
    what = "no CUDA GPU visible" if not found else f"{found} CUDA GPU(s) visible, --tp {count} needs {count}"
    print(f"{prog}: {what}; this runs SGLang with DeepSeek-V4 on a GPU (any CUDA GPU: the plugin "
          "path runs in SGLANG_SM120=emulate mode)", file=sys.stderr, flush=True)
    return NO_GPU_EXIT


def workdir_for(arg: str | None) -> tuple[Path, bool]:
    """(directory, whether it is a temporary one to delete at the end)."""
    if arg:
        path = Path(arg)
        path.mkdir(parents=True, exist_ok=True)
        return path, False
    return Path(tempfile.mkdtemp(prefix="sglang-sm120-smoke-")), True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sglang-sm120 smoke", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("all", "inprocess", "server"), default="all")
    ap.add_argument("--max-bs", type=int, default=4, help="decode graphs for bs 1..N (default 4)")
    ap.add_argument("--decode-steps", type=int, default=8, help="greedy decode steps compared (default 8)")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (default 4: SWA, C4, C128, C4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks, one GPU each (default 1)")
    ap.add_argument("--timeout", type=float, default=540, help="seconds per child process / server start")
    ap.add_argument("--min-cosine", type=float, default=Tolerance.min_cosine)
    ap.add_argument("--min-top1", type=float, default=Tolerance.min_top1)
    ap.add_argument("--tie-margin", type=float, default=Tolerance.tie_margin)
    ap.add_argument("--workdir", help="keep the model, results and logs here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true",
                    help="in-process: take the native result an earlier run left in --workdir with the same settings")
    ap.add_argument("--native-from", metavar="FILE",
                    help="in-process: compare with this saved native result (compare-native.pt of an earlier run on "
                         "this GPU, e.g. another SGLang release) instead of running the native path")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.max_bs < 1 or args.decode_steps < 1 or args.tp < 1:
        ap.error("--max-bs, --decode-steps and --tp must be >= 1")
    if (rc := require_gpu(ap.prog, args.tp)) is not None:
        return rc
    workdir, temporary = workdir_for(args.workdir)
    try:
        model_dir = write_tiny_model(workdir / "tiny-dsv4", args.layers)
        log(f"tiny DeepSeek-V4 ({args.layers} layers, ratios {tiny_config(args.layers)['compress_ratios']}) "
            f"at {model_dir}")
        results = {}
        if args.mode in ("all", "inprocess"):
            results["in-process"] = run_inprocess(model_dir, workdir, args)
        if args.mode in ("all", "server"):
            results["server"] = run_server(model_dir, workdir, args)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    log("smoke: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
