"""SM12x budget and the launch guard kernels call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_sm120 import platform


def test_check_smem():
    platform.check_smem("k", platform.SM12X_SMEM_PER_BLOCK)
    with pytest.raises(platform.LaunchConfigError, match="kernel k: needs 101377 B"):
        platform.check_smem("k", platform.SM12X_SMEM_PER_BLOCK + 1)


def test_guard_compiled_under_emulate(monkeypatch):
    monkeypatch.setenv("SGLANG_SM120", "emulate")
    big = SimpleNamespace(hash="h-big", metadata=SimpleNamespace(shared=120_000))
    with pytest.raises(platform.LaunchConfigError, match="needs 120000 B"):
        platform.guard_compiled("attn", big)
    ok = SimpleNamespace(hash="h-ok", metadata=SimpleNamespace(shared=90_000))
    platform.guard_compiled("attn", ok)
    platform.guard_compiled("attn", ok)  # memoised


def test_guard_compiled_off_sm12x(monkeypatch):
    monkeypatch.setenv("SGLANG_SM120", "off")
    big = SimpleNamespace(hash="h-big2", metadata=SimpleNamespace(shared=200_000))
    platform.guard_compiled("attn", big)  # a non-SM12x target may use what it has


def test_num_sms_off_cuda_is_a_small_constant():
    import torch

    assert platform.num_sms(torch.device("cpu")) == 8
