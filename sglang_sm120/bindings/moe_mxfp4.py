"""MXFP4 routed experts (DeepSeek-V4) on our Triton kernel: what the 0.5.12 and 0.5.16 bindings share.

SGLang picks ``Mxfp4MarlinMoEMethod`` for FP4 experts with ``--moe-runner-backend marlin``
(``Fp8Config.get_quant_method``); the bindings return a subclass of it instead
(``v0_5_*/moe_mxfp4.py``), so

* ``create_weights`` keeps SGLang's layout, which is the one :func:`fused_moe_mxfp4` reads directly:
  ``w13_weight [E, 2I, H/2]`` int8 (rows gate then up, two E2M1 per byte, low nibble = even k),
  ``w2_weight [E, H, I/2]`` int8, ``w13_weight_scale_inv [E, 2I, H/32]`` / ``w2_weight_scale_inv [E, H, I/32]``
  (fp32 powers of two in 0.5.12, ``float8_e8m0fnu`` in 0.5.16): no repacking at all;
* ``isinstance(quant_method, Mxfp4MarlinMoEMethod)`` holds, so SGLang applies ``routed_scaling_factor``
  itself (``maybe_fuse_routed_scale_and_shared_add``: ``shared.add_(routed, alpha=scale)``, or
  ``routed.mul_(scale)``; ``forward_deepep`` multiplies): the routed output here is left **unscaled**,
  exactly like Marlin's MXFP4 path (``fused_marlin_moe``: ``torch.sum`` without the factor).

Runner selection (DSV4 on SM12x): 0.5.16 defaults to ``flashinfer_mxfp4`` (FlashInfer CUTLASS, poisoned here)
and 0.5.12 stays ``auto`` (Triton ``fused_experts`` rejects packed FP4: "Hidden size mismatch"); the
``moe-mxfp4-runner`` hooks below make that default ``marlin`` instead, so the standard dispatcher (local
expert ids under EP), the standard top-k format and ``Fp8MoEMethod``'s FP4 view all stay SGLang's own.
An explicit user choice is left alone.

CUDA graphs: no host syncs, no lookup tables (E2M1 is decoded with bit arithmetic in the kernel), and
the scratch (:class:`WorkspacePool`) is allocated at load for :data:`RESERVED_TOKENS` tokens; a larger
batch gets its own workspace, kept alive for good when it is allocated during a graph capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from sglang_sm120.kernels.moe_mxfp4 import MoeWorkspace, fused_moe_mxfp4, moe_mxfp4_workspace
from sglang_sm120.reference.moe_mxfp4 import fused_moe_mxfp4_ref

logger = logging.getLogger("sglang_sm120")

RESERVED_TOKENS = 512  # covers SGLang's decode CUDA-graph batch sizes for DSV4 (max_running_requests 256)
BACKEND_TAG = "sglang_sm120"  # ``layer._dsv4_mxfp4_backend`` (diagnostics; Marlin sets "marlin")
_E8M0 = getattr(torch, "float8_e8m0fnu", None)


# ------------------------------------------------------------------ runner defaults (light: no heavy imports) --

def marlin_instead_of_flashinfer(original: Callable[..., dict], view: Any) -> dict:
    """Around 0.5.16 ``arg_groups.overrides._deepseek_v4_sm120_moe`` (DSV4 on SM120, runner ``auto``):
    its ``flashinfer_mxfp4`` choice becomes ``marlin``, whose quant method the bindings replace."""
    declared = original(view)
    if declared.get("moe_runner_backend") == "flashinfer_mxfp4":
        logger.info("sglang-sm120: DeepSeek-V4 MXFP4 experts use the sglang-sm120 Triton MoE (runner 'marlin')")
        return {**declared, "moe_runner_backend": "marlin"}
    return declared


def marlin_instead_of_auto(original: Callable[..., None], server_args: Any, model_arch: str) -> None:
    """Around 0.5.12 ``arg_groups.deepseek_v4_hook.apply_deepseek_v4_defaults``: on SM12x an ``auto`` MoE
    runner becomes ``marlin`` (as upstream 0.5.14 does), whose quant method the bindings replace."""
    original(server_args, model_arch)
    from sglang.srt.utils.common import is_sm120_supported

    if server_args.moe_runner_backend == "auto" and is_sm120_supported():
        logger.info("sglang-sm120: DeepSeek-V4 MXFP4 experts use the sglang-sm120 Triton MoE (runner 'marlin')")
        server_args.moe_runner_backend = "marlin"


# ------------------------------------------------------------------ weights ------------------------------------

class ExpertWeights(NamedTuple):
    """The layer's parameters as :func:`fused_moe_mxfp4` takes them (views, no copies)."""

    w13: torch.Tensor  # [E, 2I, H/2] int8
    w2: torch.Tensor  # [E, H, I/2] int8
    w13_scale: torch.Tensor  # [E, 2I, H/32] fp32 / float8_e8m0fnu
    w2_scale: torch.Tensor  # [E, H, I/32]


def expert_weights(layer: torch.nn.Module) -> ExpertWeights:
    """Read and check ``w13_weight``, ``w2_weight`` and their ``*_scale_inv`` on an MXFP4 ``FusedMoE`` layer."""
    w13, w2 = layer.w13_weight.data, layer.w2_weight.data
    s13, s2 = layer.w13_weight_scale_inv.data, layer.w2_weight_scale_inv.data
    if w13.dim() != 3 or w2.dim() != 3 or w13.dtype not in (torch.int8, torch.uint8) or w2.dtype != w13.dtype:
        raise ValueError(f"w13_weight/w2_weight: expected [E, 2I, H/2] and [E, H, I/2] int8, got "
                         f"{list(w13.shape)} {w13.dtype} and {list(w2.shape)} {w2.dtype}")
    e, two_i, half_h = w13.shape
    shapes = {"w2_weight": (w2, (e, 2 * half_h, two_i // 4)), "w13_weight_scale_inv": (s13, (e, two_i, half_h // 16)),
              "w2_weight_scale_inv": (s2, (e, 2 * half_h, two_i // 64))}
    for name, (t, shape) in shapes.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected {list(shape)} for w13_weight {list(w13.shape)}, got {list(t.shape)}")
    for name, s in (("w13_weight_scale_inv", s13), ("w2_weight_scale_inv", s2)):
        if s.dtype not in (torch.float32, torch.uint8, _E8M0):
            raise ValueError(f"{name}: expected float32 powers of two or float8_e8m0fnu, got {s.dtype}")
    return ExpertWeights(w13, w2, s13, s2)


def swiglu_limit(limit: float | None) -> float | None:
    """SGLang's ``swiglu_limit_func`` clamps only for a positive limit."""
    return float(limit) if limit is not None and limit > 0 else None


def check_runner_config(config: Any) -> None:
    """The gated SiLU (optionally clamped) MoE is all the kernel does."""
    alpha = getattr(config, "gemm1_alpha", None)
    if config.activation != "silu" or not config.is_gated or alpha is not None or config.apply_router_weight_on_input:
        raise ValueError(f"moe_runner_config: the sglang-sm120 MXFP4 MoE supports gated SiLU (swiglu_limit "
                         f"clamp) with weights applied to the output only, got activation={config.activation!r} "
                         f"is_gated={config.is_gated} gemm1_alpha={alpha} "
                         f"apply_router_weight_on_input={config.apply_router_weight_on_input}")


# ------------------------------------------------------------------ scratch -------------------------------------

class WorkspacePool:
    """:func:`fused_moe_mxfp4` scratch shared by every MoE layer of one shape on one device.

    The MoE layers of a model run one after another on the forward stream, so one workspace serves them all.
    ``reserve`` (at load) allocates it for ``max_tokens``; ``get`` returns it, or, for a larger batch, a new
    one: transient in eager mode, kept (and used from then on) when allocated during a CUDA-graph capture,
    because the captured graph keeps its addresses.
    """

    def __init__(self) -> None:
        self._current: dict[tuple, MoeWorkspace] = {}
        self._captured: list[MoeWorkspace] = []

    @staticmethod
    def _key(topk: int, w: ExpertWeights, device: torch.device) -> tuple:
        return (device, topk, w.w13.shape[0], w.w2.shape[1], w.w13.shape[1] // 2)

    def reserve(self, max_tokens: int, topk: int, w: ExpertWeights) -> None:
        """Allocate (once per shape and device) a workspace for ``max_tokens`` tokens; no-op on CPU."""
        device = w.w13.device
        key = self._key(topk, w, device)
        if device.type == "cuda" and (key not in self._current or self._current[key].max_tokens < max_tokens):
            self._current[key] = moe_mxfp4_workspace(max_tokens, topk, *key[2:], device)

    def get(self, tokens: int, topk: int, w: ExpertWeights) -> MoeWorkspace:
        key = self._key(topk, w, w.w13.device)
        ws = self._current.get(key)
        if ws is not None and tokens <= ws.max_tokens:
            return ws
        ws = moe_mxfp4_workspace(tokens, topk, *key[2:], w.w13.device)
        if torch.cuda.is_current_stream_capturing():
            self._captured.append(ws)
            self._current[key] = ws
        return ws


WORKSPACES = WorkspacePool()


# ------------------------------------------------------------------ the quant method's body ---------------------



def routed_experts(
    hidden_states: torch.Tensor,
    w: ExpertWeights,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    limit: float | None,
) -> torch.Tensor:
    """``[T, H]`` hidden states (bf16/fp16) -> ``[T, Hw]`` routed-experts output in their dtype, **without**
    ``routed_scaling_factor`` (``Hw = 2 * w13.shape[2]``, SGLang's padded hidden size; zero-padded input).
    ``topk_ids`` ``[T, k]`` int32/int64 (ids outside ``[0, E)``, e.g. other EP ranks' experts, add nothing).
    CUDA tensors run the Triton kernel, CPU tensors the PyTorch reference."""
    t, h = hidden_states.shape
    width = 2 * w.w13.shape[2]
    if h > width:
        raise ValueError(f"hidden_states: hidden size {h} exceeds the experts' {width}")
    x = hidden_states
    if h != width:
        x = torch.nn.functional.pad(x, (0, width - h))
    if x.dtype != torch.bfloat16 or x.stride(1) != 1 or x.stride(0) % 16 or x.data_ptr() % 16:
        x = torch.empty((t, width), dtype=torch.bfloat16, device=x.device).copy_(x)
    tw = topk_weights.to(torch.float32).contiguous()
    ids = topk_ids.contiguous()
    if x.device.type != "cuda":
        out = fused_moe_mxfp4_ref(x, *w, tw, ids, swiglu_limit=limit)
    else:
        ws = WORKSPACES.get(t, ids.shape[1], w)
        out = fused_moe_mxfp4(x, *w, tw, ids, swiglu_limit=limit, workspace=ws)
    return out if hidden_states.dtype == torch.bfloat16 else out.to(hidden_states.dtype)


class Sm120Mxfp4Mixin:
    """Put before ``Mxfp4MarlinMoEMethod`` in a release's subclass (``v0_5_*/moe_mxfp4.py``): replaces its
    weight processing and ``apply``; ``create_weights`` (SGLang's layout) and ``create_moe_runner`` (whose
    config carries top_k / swiglu_limit) stay the release's own."""

    _fp8: Any
    runner: Any

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Marlin's version without the repack: the FP8 base method's FP4 handling (int8 views), the checks
        and the workspace reservation. Runs once, at load."""
        self._fp8.process_weights_after_loading(layer)
        if getattr(layer, "_mega_moe_weights_built", False):
            return
        check_runner_config(self.runner.config)
        w = expert_weights(layer)
        if w.w13.shape[1] // 2 % 128 or w.w13.shape[2] * 2 % 128:
            raise ValueError(f"w13_weight: the sglang-sm120 MXFP4 MoE needs I and H multiples of 128, got "
                             f"{list(w.w13.shape)}")
        WORKSPACES.reserve(RESERVED_TOKENS, self.runner.config.top_k, w)
        layer._dsv4_mxfp4_backend = BACKEND_TAG

    def apply(self, layer: torch.nn.Module, dispatch_output: Any) -> Any:
        """Standard top-k output in, ``StandardCombineInput`` (unscaled routed output) out."""
        from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput
        from sglang.srt.layers.moe.topk import TopKOutputChecker

        topk_output = dispatch_output.topk_output
        if not TopKOutputChecker.format_is_standard(topk_output):
            raise ValueError(f"topk_output: expected the standard format, got {topk_output.format}")
        out = routed_experts(dispatch_output.hidden_states, expert_weights(layer), topk_output.topk_weights,
                             topk_output.topk_ids, swiglu_limit(self.runner.config.swiglu_limit))
        return StandardCombineInput(hidden_states=out)
