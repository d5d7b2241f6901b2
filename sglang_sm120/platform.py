"""SM12x facts and the launch-configuration guard our kernels use.

SM120 (RTX PRO 6000 Blackwell, RTX 5090) and SM121 (DGX Spark GB10) allow at
most 101,376 B of shared memory per block; they have ``mma.sync`` (incl. FP8 and
block-scaled FP4/FP8 on ``sm_120a``), TMA and PDL, but no WGMMA and no tcgen05.
"""

from __future__ import annotations

import os
from typing import Any

from sglang_sm120 import modes

SM12X_SMEM_PER_BLOCK = 101_376
SM12X_TARGETS = {(12, 0): "sm_120a", (12, 1): "sm_121a"}
FORBIDDEN_PTX = ("wgmma", "tcgen05", "setmaxnreg")


class LaunchConfigError(ValueError):
    """A kernel configuration does not fit an SM12x GPU."""


def targets_sm12x() -> bool:
    """True when kernels must fit SM12x: a real SM12x GPU or ``SGLANG_SM120=emulate``."""
    try:
        mode = modes.read_mode(os.environ)
    except modes.ConfigError:
        return False
    if mode == "emulate":
        return True
    import torch

    return torch.cuda.is_available() and modes.is_sm12x(torch.cuda.get_device_capability())


def check_smem(name: str, shared_bytes: int, budget: int = SM12X_SMEM_PER_BLOCK) -> None:
    """Raise LaunchConfigError if ``shared_bytes`` exceeds ``budget``."""
    if shared_bytes > budget:
        raise LaunchConfigError(
            f"kernel {name}: needs {shared_bytes} B of shared memory per block, "
            f"SM12x allows {budget} B; use a smaller tile or fewer stages"
        )


_NUM_SMS: dict[int, int] = {}


def num_sms(device: Any) -> int:
    """Streaming multiprocessors of ``device`` (a ``torch.device``), cached; 8 off CUDA (interpreter)."""
    if device.type != "cuda":
        return 8
    import torch

    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


_checked: set[tuple[str, str]] = set()


def guard_compiled(name: str, compiled: Any) -> None:
    """Check a compiled Triton kernel (what ``kernel[grid](...)`` returns) once.

    On an SM12x GPU the driver would refuse an oversized launch anyway; under
    ``emulate`` on a bigger GPU this is what makes such a config fail loudly.
    Host-only (no sync, no allocation); memoised per compiled binary.
    """
    key = (name, getattr(compiled, "hash", None) or str(id(compiled)))
    if key in _checked:
        return
    if targets_sm12x():
        check_smem(name, int(compiled.metadata.shared))
    _checked.add(key)
