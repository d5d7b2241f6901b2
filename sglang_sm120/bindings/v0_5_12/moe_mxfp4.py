"""SGLang 0.5.12: DeepSeek-V4 MXFP4 routed experts on the sglang-sm120 Triton MoE (``kernels/moe_mxfp4.py``).

``Fp8Config.get_quant_method`` (patched around, plugin time) returns :class:`Sm120Mxfp4MoEMethod` where SGLang
would return ``Mxfp4MarlinMoEMethod``; contract and conventions in :mod:`sglang_sm120.bindings.moe_mxfp4`.
0.5.12 specifics: scales are fp32 powers of two (``*_weight_scale_inv``), no padding of H or I.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sglang.srt.layers.quantization.mxfp4_marlin_moe import Mxfp4MarlinMoEMethod

from sglang_sm120.bindings import moe_mxfp4 as shared


class Sm120Mxfp4MoEMethod(shared.Sm120Mxfp4Mixin, Mxfp4MarlinMoEMethod):
    """``Mxfp4MarlinMoEMethod`` running our kernel (see :class:`~sglang_sm120.bindings.moe_mxfp4.Sm120Mxfp4Mixin`);
    being one, SGLang applies ``routed_scaling_factor`` after it."""


def get_quant_method(original: Callable[..., Any], config: Any, layer: torch.nn.Module, prefix: str) -> Any:
    """Around ``Fp8Config.get_quant_method``: SGLang's Marlin MXFP4 method -> :class:`Sm120Mxfp4MoEMethod`."""
    method = original(config, layer, prefix)
    if type(method) is Mxfp4MarlinMoEMethod:
        return Sm120Mxfp4MoEMethod(method._fp8, prefix=method.prefix)
    return method
