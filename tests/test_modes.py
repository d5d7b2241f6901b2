"""Mode resolution and GPU visibility (no GPU needed)."""

from __future__ import annotations

import pytest

from sglang_sm120 import modes


def test_defaults_and_valid_values():
    assert modes.read_mode({}) == "auto"
    assert modes.read_mode({"SGLANG_SM120": " Emulate "}) == "emulate"
    assert modes.read_poison("emulate", {}) is True
    assert modes.read_poison("auto", {}) is False
    assert modes.read_poison("auto", {"SGLANG_SM120_POISON": "1"}) is True
    assert modes.read_poison("emulate", {"SGLANG_SM120_POISON": "off"}) is False


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"SGLANG_SM120": "on"}, "expected one of: auto, off, emulate"),
        ({"SGLANG_SM120_POISON": "2"}, "SGLANG_SM120_POISON='2' is not valid"),
        ({"SGLANG_SM120_ASSUME_GPUS": "sm120"}, "SGLANG_SM120_ASSUME_GPUS='sm120' is not valid"),
    ],
)
def test_invalid_settings_name_the_variable(env, needle):
    with pytest.raises(modes.ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        modes.resolve(env)


@pytest.mark.parametrize(
    "env, active, emulate, poison",
    [
        ({"SGLANG_SM120_ASSUME_GPUS": "12.0,12.1"}, True, False, False),
        ({"SGLANG_SM120_ASSUME_GPUS": "12.0,9.0"}, False, False, False),
        ({"SGLANG_SM120_ASSUME_GPUS": "9.0", "SGLANG_SM120": "emulate"}, True, True, True),
        ({"SGLANG_SM120_ASSUME_GPUS": "", "SGLANG_SM120": "emulate"}, False, False, False),
        ({"SGLANG_SM120_ASSUME_GPUS": "12.0", "SGLANG_SM120": "off"}, False, False, False),
    ],
)
def test_resolution(env, active, emulate, poison):
    res = modes.resolve(env)
    assert (res.active, res.emulate, res.poison) == (active, emulate, poison), res.reason


DEVICES = [((12, 0), "GPU-aaaa"), ((9, 0), "GPU-bbbb"), ((12, 0), "GPU-cccc")]


def test_cuda_visible_devices_selection():
    assert modes.select_visible(DEVICES, {}) == [(12, 0), (9, 0), (12, 0)]
    assert modes.select_visible(DEVICES, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert modes.select_visible(DEVICES, {"CUDA_VISIBLE_DEVICES": "GPU-cccc,GPU-a"}) == [(12, 0), (12, 0)]
    # CUDA stops at the first invalid entry
    assert modes.select_visible(DEVICES, {"CUDA_VISIBLE_DEVICES": "GPU-cccc,7,GPU-bbbb"}) == [(12, 0)]
    # indices are NVML order only under PCI_BUS_ID when the GPUs differ; otherwise ask CUDA
    assert modes.select_visible(DEVICES, {"CUDA_VISIBLE_DEVICES": "0,2"}) is None
    pci = {"CUDA_VISIBLE_DEVICES": "0,2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert modes.select_visible(DEVICES, pci) == [(12, 0), (12, 0)]
    same = [((12, 0), "GPU-a"), ((12, 0), "GPU-b")]
    assert modes.select_visible(same, {"CUDA_VISIBLE_DEVICES": "1"}) == [(12, 0)]
    assert modes.select_visible(DEVICES, {"CUDA_VISIBLE_DEVICES": "MIG-1234"}) is None
