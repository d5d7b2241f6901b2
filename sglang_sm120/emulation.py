"""Replacements for SGLang's capability probes under ``SGLANG_SM120=emulate``.

They make SGLang choose the code path an SM 12.0 GPU takes (e.g. its SM120
server-arg defaults, the Marlin SM90 gate failing) while torch, Triton and the
JIT compilers still see the real GPU and build for it.  The originals are
``lru_cache(partial(...))`` objects called without arguments.
"""

from __future__ import annotations

EMULATED_CAPABILITY = (12, 0)


def is_sm120_supported(*_args: object, **_kwargs: object) -> bool:
    return True


def is_sm100_supported(*_args: object, **_kwargs: object) -> bool:
    return False


def is_sm90_supported(*_args: object, **_kwargs: object) -> bool:
    return False


def is_hopper_with_cuda_12_3(*_args: object, **_kwargs: object) -> bool:
    return False


def is_blackwell_supported(*_args: object, **_kwargs: object) -> bool:
    return True  # SGLang counts majors 10, 11 and 12 as Blackwell


def get_device_sm() -> int:
    return EMULATED_CAPABILITY[0] * 10 + EMULATED_CAPABILITY[1]


def get_device_capability(device_id: int = 0) -> tuple[int, int]:
    return EMULATED_CAPABILITY
