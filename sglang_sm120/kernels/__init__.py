"""Triton kernels (torch + triton only; this layer never imports sglang).

Every kernel module registers its launch configurations with
:mod:`sglang_sm120.kernels.registry` so that ``python -m sglang_sm120.aot``
compiles each of them for sm_120a and sm_121a.
"""
