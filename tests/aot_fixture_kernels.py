"""Kernels registered only by tests/test_aot.py: one config that fits SM12x, two that cannot."""

import triton
import triton.language as tl

from sglang_sm120.kernels.registry import AotConfig, register_aot


@triton.jit
def _tile_gemm(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               STAGES: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k in tl.range(0, K, BK, num_stages=STAGES):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


register_aot(
    "fixture.tile_gemm",
    _tile_gemm,
    signature={"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "K": "i32"},
    configs=[
        # 64x64 bf16 tiles: fits
        AotConfig({"BM": 64, "BN": 64, "BK": 64, "STAGES": 2}, num_warps=4, num_stages=2),
        # a 512x128 bf16 A tile alone is 128 KB of shared memory: cannot fit 101,376 B
        AotConfig({"BM": 512, "BN": 16, "BK": 128, "STAGES": 1}, num_warps=8, num_stages=1),
        # aligned: 4 pipelined stages of 128x128 bf16 tiles = 128 KB; unaligned: 64 KB but spills
        AotConfig({"BM": 128, "BN": 128, "BK": 128, "STAGES": 4}, num_warps=8, num_stages=4),
    ],
)
