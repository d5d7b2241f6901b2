"""Plugin modes and GPU detection, without importing torch or initialising CUDA.

``SGLANG_SM120``        ``auto`` (default) | ``off`` | ``emulate``
``SGLANG_SM120_POISON`` ``1``/``0`` (default: on under ``emulate``, off otherwise)
``SGLANG_SM120_ASSUME_GPUS`` comma list of compute capabilities (``12.0,12.0``)
    used instead of probing the GPUs; for tests and for machines without NVML.

GPUs are read through NVML (``libnvidia-ml.so.1``), which needs no CUDA context;
where NVML cannot answer exactly (no NVML, MIG devices, an index list that is
ambiguous between CUDA's and NVML's device order), torch is asked instead.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass

MODE_ENV = "SGLANG_SM120"
POISON_ENV = "SGLANG_SM120_POISON"
ASSUME_GPUS_ENV = "SGLANG_SM120_ASSUME_GPUS"
VALID_MODES = ("auto", "off", "emulate")
_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")

Capability = tuple[int, int]


class ConfigError(ValueError):
    """An sglang-sm120 environment setting has an invalid value."""


def read_mode(environ: Mapping[str, str] = os.environ) -> str:
    raw = environ.get(MODE_ENV, "auto")
    mode = raw.strip().lower() or "auto"
    if mode not in VALID_MODES:
        raise ConfigError(
            f"{MODE_ENV}={raw!r} is not valid; expected one of: {', '.join(VALID_MODES)}"
        )
    return mode


def read_poison(mode: str, environ: Mapping[str, str] = os.environ) -> bool:
    raw = environ.get(POISON_ENV)
    if raw is None or not raw.strip():
        return mode == "emulate"
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{POISON_ENV}={raw!r} is not valid; expected one of: {', '.join(_TRUE + _FALSE)}"
    )


def is_sm12x(cap: Capability) -> bool:
    return cap[0] == 12


def _parse_assumed(raw: str) -> list[Capability]:
    caps = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            major, minor = item.split(".")
            caps.append((int(major), int(minor)))
        except ValueError:
            raise ConfigError(
                f"{ASSUME_GPUS_ENV}={raw!r} is not valid; expected compute capabilities "
                f"such as '12.0,12.1'"
            ) from None
    return caps


class _Nvml:
    """The few NVML calls we need, through ctypes."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        init = getattr(self.lib, "nvmlInit_v2", None) or self.lib.nvmlInit
        if init() != 0:
            raise OSError("nvmlInit failed")

    def devices(self) -> list[tuple[Capability, str]]:
        count = ctypes.c_uint(0)
        if self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            raise OSError("nvmlDeviceGetCount failed")
        out = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            if self.lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                raise OSError("nvmlDeviceGetHandleByIndex failed")
            major, minor = ctypes.c_int(), ctypes.c_int()
            rc = self.lib.nvmlDeviceGetCudaComputeCapability(
                handle, ctypes.byref(major), ctypes.byref(minor)
            )
            if rc != 0:
                raise OSError("nvmlDeviceGetCudaComputeCapability failed")
            buf = ctypes.create_string_buffer(96)
            uuid = ""
            if self.lib.nvmlDeviceGetUUID(handle, buf, 96) == 0:
                uuid = buf.value.decode()
            out.append(((major.value, minor.value), uuid))
        return out

    def close(self) -> None:
        self.lib.nvmlShutdown()


def _nvml_visible(environ: Mapping[str, str]) -> list[Capability] | None:
    """Capabilities of the CUDA-visible GPUs via NVML, or None where unsure."""
    try:
        nvml = _Nvml()
    except (OSError, AttributeError):
        return None
    try:
        devices = nvml.devices()
    except OSError:
        return None
    finally:
        nvml.close()
    return select_visible(devices, environ)


def select_visible(
    devices: list[tuple[Capability, str]], environ: Mapping[str, str]
) -> list[Capability] | None:
    """Apply ``CUDA_VISIBLE_DEVICES`` to NVML's (capability, uuid) list; None if ambiguous."""
    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return [cap for cap, _ in devices]
    picked: list[Capability] = []
    by_index_only = True
    for entry in (e.strip() for e in cvd.split(",")):
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            idx = int(entry)
            if idx < 0 or idx >= len(devices):
                break  # CUDA stops at the first invalid entry
            picked.append(devices[idx][0])
        elif entry.startswith("GPU-"):
            by_index_only = False
            match = [cap for cap, uuid in devices if uuid.startswith(entry)]
            if len(match) != 1:
                break
            picked.append(match[0])
        else:  # MIG-… or anything else: let CUDA itself answer
            return None
    heterogeneous = len({cap for cap, _ in devices}) > 1
    if by_index_only and picked and heterogeneous and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        return None  # CUDA's default order (fastest first) may differ from NVML's
    return picked


def _torch_visible() -> list[Capability]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[Capability]:
    """Compute capabilities of the GPUs this process can see."""
    assumed = environ.get(ASSUME_GPUS_ENV)
    if assumed is not None:
        return _parse_assumed(assumed)
    caps = _nvml_visible(environ)
    return caps if caps is not None else _torch_visible()


@dataclass(frozen=True)
class Resolution:
    """What the plugin does in this process, and why."""

    mode: str
    active: bool
    emulate: bool
    poison: bool
    gpus: tuple[Capability, ...]
    reason: str


def resolve(environ: Mapping[str, str] = os.environ) -> Resolution:
    """Resolve the mode for this process; raises ConfigError on invalid settings."""
    mode = read_mode(environ)
    poison = read_poison(mode, environ)
    if mode == "off":
        return Resolution(mode, False, False, False, (), f"{MODE_ENV}=off")
    gpus = tuple(visible_gpus(environ))
    if not gpus:
        return Resolution(mode, False, False, False, gpus, "no CUDA GPU visible")
    if mode == "emulate":
        return Resolution(mode, True, True, poison, gpus, "emulating SM 12.0 on this GPU")
    if all(is_sm12x(c) for c in gpus):
        return Resolution(mode, True, False, poison, gpus, "every visible GPU is SM 12.x")
    names = ", ".join(f"sm_{a}{b}" for a, b in gpus)
    return Resolution(mode, False, False, False, gpus, f"not every visible GPU is SM 12.x ({names})")
