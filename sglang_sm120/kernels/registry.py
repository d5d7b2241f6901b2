"""One registry of Triton kernels and the launch configurations they ship with.

A kernel module declares, next to its ``@triton.jit`` function, every
configuration it may launch (the autotune space and the tuned configs)::

    register_aot(
        "sparse_mla.decode",
        _decode_kernel,
        signature={"q_ptr": "*bf16", "kv_ptr": "*u8", "T": "i32", ...},
        configs=[AotConfig({"BLOCK_H": 16, "BLOCK_N": 64}, num_warps=4, num_stages=2)],
    )

``signature`` maps each runtime (non-constexpr) argument to a Triton type string;
each config supplies every ``tl.constexpr`` argument.  The AOT check
(:mod:`sglang_sm120.aot`) compiles every (kernel, config, target) triple.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AotConfig:
    """Constexpr values plus launch options of one configuration."""

    constexprs: Mapping[str, Any]
    num_warps: int = 4
    num_stages: int = 2

    def label(self) -> str:
        body = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        return f"{body},w{self.num_warps},s{self.num_stages}"


@dataclass(frozen=True)
class AotKernel:
    """A Triton JIT function with its runtime signature and configurations."""

    name: str
    fn: Any  # triton.runtime.JITFunction
    signature: Mapping[str, str]
    configs: tuple[AotConfig, ...] = field(default_factory=tuple)

    def full_signature(self, config: AotConfig) -> dict[str, str]:
        """Signature for ``ASTSource``: runtime types plus ``constexpr`` markers."""
        sig: dict[str, str] = {}
        for arg in self.fn.arg_names:
            if arg in config.constexprs:
                sig[arg] = "constexpr"
            elif arg in self.signature:
                sig[arg] = self.signature[arg]
            else:
                raise ValueError(
                    f"kernel {self.name!r}: argument {arg!r} is neither in the signature "
                    f"nor a constexpr of config {config.label()}"
                )
        return sig


_REGISTRY: dict[str, AotKernel] = {}


def register_aot(
    name: str,
    fn: Any,
    *,
    signature: Mapping[str, str],
    configs: Iterable[AotConfig],
) -> None:
    """Register ``fn`` under ``name``; re-registering the same name replaces it."""
    configs = tuple(configs)
    if not configs:
        raise ValueError(f"kernel {name!r}: at least one AotConfig is required")
    kernel = AotKernel(name=name, fn=fn, signature=dict(signature), configs=configs)
    for cfg in configs:
        kernel.full_signature(cfg)  # fail at import time, not in CI
    _REGISTRY[name] = kernel


def import_all_kernel_modules() -> None:
    """Import every module under ``sglang_sm120.kernels`` so they register."""
    import sglang_sm120.kernels as pkg

    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
        importlib.import_module(info.name)


def registered(*, discover: bool = True) -> list[AotKernel]:
    """All registered kernels, sorted by name (after importing kernel modules)."""
    if discover:
        import_all_kernel_modules()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
