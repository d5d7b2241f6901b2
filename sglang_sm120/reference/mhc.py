"""Plain-PyTorch oracle (and CPU fallback) for DeepSeek-V4 mHC (manifold-constrained hyper-connections).

Residual stream ``R [T, hc, H]`` bf16 (``hc = 4``); per sub-layer ``fn [N, hc*H]`` fp32 with
``N = (2 + hc) * hc = 24``, ``hc_base [N]`` fp32, ``hc_scale [3]`` fp32.  Numerics follow
SGLang's TileLang path (0.5.12 ``srt/layers/mhc.py``, 0.5.16 ``kernels/ops/layernorm/mhc.py``):

* pre-norm GEMM ``mix = (R_flat.float() @ fn.T) * rsqrt(sum(R_flat.float()**2) / (hc*H) + rms_eps)``
  (SGLang runs it in TF32; this oracle in fp32),
* ``pre = sigmoid(mix[:hc] * s0 + b[:hc]) + hc_pre_eps``,
  ``post = sigmoid(mix[hc:2hc] * s1 + b[hc:2hc]) * hc_post_mult_value``,
  ``comb = Sinkhorn(mix[2hc:] * s2 + b[2hc:])`` (row softmax, ``+eps``, then column/row normalisations
  with ``eps`` in the denominators),
* ``layer_input = sum_i pre_i * R_i`` in fp32; with a norm weight the RMS is taken over that fp32 sum
  and applied to its bf16 rounding: ``bf16(bf16(o) * rsqrt(mean(o**2) + norm_eps) * w)``,
* ``hc_post: R'[j] = bf16(post_j * x + sum_i comb[i, j] * R_i)`` in fp32.
"""

from __future__ import annotations

import torch


def hc_prenorm_gemm(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a [M, K]`` bf16, ``b [N, K]`` fp32 -> ``(a.float() @ b.T [M, N], sum(a.float()**2, -1) [M])`` fp32."""
    af = a.float()
    return af @ b.float().t(), af.square().sum(-1)


def _split_mix(
    mix: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    hc: int,
    sinkhorn_iters: int,
    pre_eps: float,
    sinkhorn_eps: float,
    post_mult: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mix = mix.float()
    pre = torch.sigmoid(mix[..., :hc] * hc_scale[0] + hc_base[:hc]) + pre_eps
    post = torch.sigmoid(mix[..., hc : 2 * hc] * hc_scale[1] + hc_base[hc : 2 * hc]) * post_mult
    c = (mix[..., 2 * hc :] * hc_scale[2] + hc_base[2 * hc :]).unflatten(-1, (hc, hc))
    c = torch.softmax(c, dim=-1) + sinkhorn_eps
    c = c / (c.sum(-2, keepdim=True) + sinkhorn_eps)
    for _ in range(sinkhorn_iters - 1):
        c = c / (c.sum(-1, keepdim=True) + sinkhorn_eps)
        c = c / (c.sum(-2, keepdim=True) + sinkhorn_eps)
    return pre, post, c


def hc_split_sinkhorn(
    mixes: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    hc_mult: int = 4,
    sinkhorn_iters: int = 20,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SGLang's ``hc_split_sinkhorn``: normalised ``mixes [..., N]`` fp32 -> ``pre [..., hc]``,
    ``post [..., hc]`` (``2 * sigmoid``), ``comb [..., hc, hc]`` fp32."""
    return _split_mix(mixes, hc_scale, hc_base, hc_mult, sinkhorn_iters, eps, eps, 2.0)


def _finalize(
    residual: torch.Tensor,
    mix: torch.Tensor,
    sqrsum: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    norm_weight: torch.Tensor | None,
    norm_eps: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_tokens, hc, hidden = residual.shape
    mix = mix * torch.rsqrt(sqrsum / (hc * hidden) + rms_eps)[:, None]
    pre, post, comb = _split_mix(
        mix, hc_scale, hc_base, hc, sinkhorn_repeat, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value
    )
    out = torch.zeros(num_tokens, hidden, dtype=torch.float32, device=residual.device)
    for i in range(hc):
        out = out + pre[:, i : i + 1] * residual[:, i].float()
    if norm_weight is None:
        y = out.to(torch.bfloat16)
    else:
        if norm_eps is None:
            raise ValueError("norm_eps is required when norm_weight is given")
        rs = torch.rsqrt(out.square().mean(-1, keepdim=True) + norm_eps)
        y = (out.to(torch.bfloat16).float() * rs * norm_weight.to(torch.bfloat16).float()).to(torch.bfloat16)
    return post, comb, y


def mhc_pre(
    residual: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int = 1,
    n_splits_pre: int = 32,
    *,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``residual [..., hc, H]`` bf16 -> ``post [..., hc, 1]`` fp32, ``comb [..., hc, hc]`` fp32,
    ``layer_input [..., H]`` bf16 (RMS-normed with ``norm_weight`` when given).  ``n_splits*`` are
    SGLang tuning knobs, accepted for signature compatibility."""
    outer, hc, hidden = residual.shape[:-2], residual.shape[-2], residual.shape[-1]
    r = residual.reshape(-1, hc, hidden)
    mix, sq = hc_prenorm_gemm(r.reshape(r.shape[0], hc * hidden), fn)
    post, comb, y = _finalize(
        r, mix, sq, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
        hc_post_mult_value, sinkhorn_repeat, norm_weight, norm_eps,
    )  # fmt: skip
    return post.view(*outer, hc, 1), comb.view(*outer, hc, hc), y.view(*outer, hidden)


def mhc_post(
    x: torch.Tensor,
    residual: torch.Tensor,
    post_layer_mix: torch.Tensor,
    comb_res_mix: torch.Tensor,
) -> torch.Tensor:
    """``x [..., H]`` bf16, ``residual [..., hc, H]`` bf16, ``post [..., hc(, 1)]`` fp32,
    ``comb [..., hc, hc]`` fp32 -> new residual ``[..., hc, H]`` bf16."""
    hc, hidden = residual.shape[-2], residual.shape[-1]
    r = residual.reshape(-1, hc, hidden).float()
    post = post_layer_mix.reshape(-1, hc).float()
    comb = comb_res_mix.reshape(-1, hc, hc).float()
    out = post[:, :, None] * x.reshape(-1, 1, hidden).float()
    for i in range(hc):
        out = out + comb[:, i, :, None] * r[:, i : i + 1, :]
    return out.to(torch.bfloat16).view(residual.shape)


def mhc_fused_post_pre(
    x: torch.Tensor,
    residual: torch.Tensor,
    post_layer_mix: torch.Tensor,
    comb_res_mix: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int = 1,
    tile_n: int = 1,
    *,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mhc_post`` of layer i then ``mhc_pre`` of layer i+1 -> ``(residual_cur, post, comb, layer_input)``."""
    residual_cur = mhc_post(x, residual, post_layer_mix, comb_res_mix)
    post, comb, y = mhc_pre(
        residual_cur, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
        hc_post_mult_value, sinkhorn_repeat, norm_weight=norm_weight, norm_eps=norm_eps,
    )  # fmt: skip
    return residual_cur, post, comb, y
