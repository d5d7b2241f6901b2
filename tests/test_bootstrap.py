"""The .pth bootstrap: cheap, torch-free, one-shot, and absent with SGLANG_SM120=off."""

from __future__ import annotations

import json

from sglang_env import pth_installed, run_py

CHECK = """
import json, sys, time
t = time.perf_counter()
import sglang_sm120._bootstrap as b
b.install()
dt = (time.perf_counter() - t) * 1000
print(json.dumps({"installed": b.installed(), "torch": "torch" in sys.modules, "ms": dt,
                  "mods": sorted(m for m in sys.modules if m.startswith("sglang"))}))
"""


def test_bootstrap_is_cheap_and_imports_nothing_heavy():
    proc = run_py(CHECK, None)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["installed"] and not out["torch"]
    assert out["mods"] == ["sglang_sm120", "sglang_sm120._bootstrap"]
    assert out["ms"] < 50, out


def test_bootstrap_off():
    proc = run_py(CHECK, None, {"SGLANG_SM120": "off"})
    assert json.loads(proc.stdout)["installed"] is False


def test_pth_file_is_installed():
    assert pth_installed()


def test_process_that_never_imports_sglang_is_untouched():
    proc = run_py("import sys, json; print(json.dumps(sorted(m for m in sys.modules if 'sm120' in m)))", None,
                  {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"})
    assert json.loads(proc.stdout) == ["sglang_sm120", "sglang_sm120._bootstrap"]
