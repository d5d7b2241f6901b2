"""doctor on a CPU-only machine (no SGLang needed)."""

from __future__ import annotations

import json

from sglang_sm120 import doctor


def test_doctor_json_without_gpu(capsys, monkeypatch):
    monkeypatch.setenv("SGLANG_SM120_ASSUME_GPUS", "")
    assert doctor.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["smem_budget"] == 101376
    assert report["mode"]["active"] is False
    assert report["patches"] and all(p["state"] == "skipped" for p in report["patches"])


def test_doctor_invalid_mode(capsys, monkeypatch):
    monkeypatch.setenv("SGLANG_SM120", "fast")
    assert doctor.main([]) == 2
    assert "expected one of: auto, off, emulate" in capsys.readouterr().out


def test_cli_dispatch(capsys):
    from sglang_sm120.cli import main

    assert main(["--help"]) == 0
    assert main(["nope"]) == 2
