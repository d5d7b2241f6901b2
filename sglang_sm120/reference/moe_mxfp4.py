"""PyTorch oracles for the MXFP4 routed-experts MoE and hash routing (also the CPU fallback).

Weights as SGLang's ``Mxfp4MarlinMoEMethod.create_weights`` makes them: ``w13 [E, 2I, H/2]`` (rows gate then
up), ``w2 [E, H, I/2]`` int8/uint8, two E2M1 codes per byte (low nibble = even k), one scale per 32 along K
(``[E, 2I, H/32]`` / ``[E, H, I/32]``, fp32 powers of two or UE8M0 bytes).
Per (token t, k) slot with expert e: ``g, u = split(x_t @ W13_e^T)`` in fp32, ``h = silu(min(g, L)) *
clamp(u, -L, L)`` rounded to bf16, ``y = (h @ W2_e^T)`` rounded to bf16; ``out_t = scale * sum_k w_tk * y_tk``
(fp32, then bf16). Slots whose id is outside ``[0, E)`` contribute nothing.
"""

from __future__ import annotations

import torch

from sglang_sm120.reference.fp8_gemm import scale_to_float

_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
_LUT: dict[torch.device, torch.Tensor] = {}


def e2m1_table(device: torch.device | str) -> torch.Tensor:
    """The 16 E2M1 values (fp32) on ``device``, copied there once (call it before any CUDA-graph capture)."""
    device = torch.device(device)
    if device not in _LUT:
        _LUT[device] = _E2M1.to(device)
    return _LUT[device]


def dequant_mxfp4(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """w ``[..., N, K/2]`` int8/uint8, s ``[..., N, K/32]`` fp32 / UE8M0 -> ``[..., N, K]`` fp32."""
    b = w.view(torch.uint8).long()
    codes = torch.stack([b & 0xF, b >> 4], -1).flatten(-2)
    return e2m1_table(w.device)[codes] * scale_to_float(s).repeat_interleave(32, -1)


def quant_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Test helper: w ``[..., N, K]`` float -> (``[..., N, K/2]`` uint8, ``[..., N, K/32]`` UE8M0 uint8), nearest
    E2M1 value after dividing each 32-group by the power of two that maps its amax to <= 6."""
    g = w.float().unflatten(-1, (-1, 32))
    exp = torch.ceil(torch.log2(g.abs().amax(-1).clamp_min(2.0**-100) / 6.0)).clamp(-126, 127)
    x = g / torch.exp2(exp)[..., None]
    lut = e2m1_table(w.device)
    codes = (x[..., None] - lut).abs().argmin(-1).flatten(-2)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return packed, (exp + 127).to(torch.uint8)


def quant_mxfp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8: x ``[..., K]`` float (K a multiple of 32) -> (e4m3 ``[..., K]``, UE8M0 ``[..., K/32]`` uint8).

    Per 32 values: s = the smallest power of two with ``amax <= 448 * 2^(s - 127)``, from amax's bits (exponent
    field E: ``s = E - 8``, plus 1 when its mantissa exceeds 0.75; clamped to 0..254, so an all-zero group gets
    0); values ``x * 2^(127 - s)`` rounded to nearest even e4m3."""
    g = x.float().unflatten(-1, (-1, 32))
    bits = g.abs().amax(-1).view(torch.int32)
    s = (((bits >> 23) & 0xFF) - 8 + ((bits & 0x7FFFFF) > 0x600000).int()).clamp(0, 254)
    q = (g * torch.exp2((127 - s).float())[..., None]).to(torch.float8_e4m3fn).flatten(-2)
    return q, s.to(torch.uint8)


def dequant_mxfp8(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(e4m3 ``[..., K]``, UE8M0 ``[..., K/32]``) -> fp32 ``[..., K]``."""
    return q.float() * scale_to_float(s).repeat_interleave(32, -1)


def _through_mxfp8(x: torch.Tensor) -> torch.Tensor:
    """fp32 values as a W4A8 GEMM sees them: quantised to MXFP8 and back."""
    return dequant_mxfp8(*quant_mxfp8(x))


def fused_moe_mxfp4_ref(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    swiglu_limit: float | None = None,
    routed_scaling_factor: float | None = None,
    act: str = "bf16",
) -> torch.Tensor:
    """Same arguments and result (``[T, H]`` bf16) as ``kernels.moe_mxfp4.fused_moe_mxfp4``. ``act="mxfp8"``
    (W4A8): x and the SwiGLU output (not rounded to bf16) go through :func:`quant_mxfp8` before their GEMM."""
    t, h = hidden_states.shape
    e, inter = w13.shape[0], w13.shape[1] // 2
    limit = float("inf") if swiglu_limit is None else float(swiglu_limit)
    x = hidden_states.float()
    if act == "mxfp8":
        x = _through_mxfp8(x)
    acc = torch.zeros(t, h, dtype=torch.float32, device=x.device)
    ids = topk_ids.long()
    for ex in torch.unique(ids).tolist():
        if not 0 <= ex < e:
            continue
        tok, k = (ids == ex).nonzero(as_tuple=True)
        gu = x[tok] @ dequant_mxfp4(w13[ex], w13_scale[ex]).t()
        g = gu[:, :inter].clamp(max=limit)
        u = gu[:, inter:].clamp(-limit, limit)
        hid = torch.nn.functional.silu(g) * u
        hid = _through_mxfp8(hid) if act == "mxfp8" else hid.bfloat16().float()
        y = (hid @ dequant_mxfp4(w2[ex], w2_scale[ex]).t()).bfloat16().float()
        acc.index_add_(0, tok, y * topk_weights[tok, k].float()[:, None])
    scale = 1.0 if routed_scaling_factor is None else routed_scaling_factor
    return (acc * scale).bfloat16()


def hash_topk_ref(
    router_logits: torch.Tensor,
    input_ids: torch.Tensor,
    tid2eid: torch.Tensor,
    num_fused_shared_experts: int = 0,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang ``HashTopK._forward_torch`` (sqrtsoftplus) -> (weights ``[T, k + s]`` fp32, ids int32)."""
    t, e = router_logits.shape
    ids = tid2eid[input_ids.long()]
    scores = torch.nn.functional.softplus(router_logits.float()).sqrt()
    w = scores.gather(1, ids.long())
    w = w / w.sum(-1, keepdim=True)
    s = num_fused_shared_experts
    shared_ids = torch.arange(e, e + s, dtype=torch.int32, device=ids.device).expand(t, s)
    shared_w = torch.full((t, s), 1.0 / routed_scaling_factor, device=w.device)
    return torch.cat([w, shared_w], 1), torch.cat([ids.int(), shared_ids], 1)
