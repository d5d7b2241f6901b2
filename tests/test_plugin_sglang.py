"""The plugin against real SGLang sources (0.5.12, 0.5.16, 0.5.23), each in a fresh interpreter.

These exercise the installed package the way SGLang processes see it: the ``.pth``
bootstrap at the first ``import sglang``, import-time patches on SGLang's own
modules, and the entry point loaded by SGLang's ``load_plugins()`` into its
``HookRegistry``.  GPUs are given through ``SGLANG_SM120_ASSUME_GPUS`` (CPU machine).
"""

from __future__ import annotations

import json

import pytest
from sglang_env import run_py

SUPPORTED = ("0.5.12", "0.5.16")

PROBE = """
import json, os, sys
import sglang.srt.utils as utils
import sglang.srt.utils.common as c
from sglang_sm120 import dispatch
rt = dispatch.runtime()
print(json.dumps({
    "sm120": bool(c.is_sm120_supported()), "sm90": bool(c.is_sm90_supported()),
    "blackwell": bool(c.is_blackwell()), "sm": c.get_device_sm(),
    "cap": list(c.get_device_capability()),
    "utils_sm120_is_common": utils.is_sm120_supported is c.is_sm120_supported,
    "env": {k: os.environ.get(k) for k in ("SGLANG_ENABLE_JIT_DEEPGEMM", "SGLANG_OPT_USE_TOPK_V2",
                                           "SGLANG_OPT_FP8_WO_A_GEMM")},
    "enabled": rt.enabled if rt else None, "bootstrapped": rt.bootstrapped if rt else None,
    "reason": rt.reason if rt else None,
    "status": {k: v.state for k, v in (rt.status.items() if rt else [])},
}))
"""


def _probe(version: str, **env: str) -> dict:
    proc = run_py(PROBE, version, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", SUPPORTED)
def test_emulate_makes_sglang_probes_report_sm120(version):
    out = _probe(version, SGLANG_SM120="emulate", SGLANG_SM120_ASSUME_GPUS="9.0")
    assert out["enabled"] and out["bootstrapped"]
    assert out["sm120"] and not out["sm90"] and out["blackwell"]
    assert out["sm"] == 120 and out["cap"] == [12, 0]
    assert out["utils_sm120_is_common"], "the star-import copy in sglang.srt.utils must be ours too"
    assert out["env"]["SGLANG_ENABLE_JIT_DEEPGEMM"] == "0"
    assert all(out["status"][k] == "applied" for k in out["status"] if k.startswith("emulate."))


@pytest.mark.parametrize("version", SUPPORTED)
def test_user_env_wins_over_defaults(version):
    out = _probe(version, SGLANG_SM120="emulate", SGLANG_SM120_ASSUME_GPUS="9.0", SGLANG_OPT_USE_TOPK_V2="1")
    assert out["env"]["SGLANG_OPT_USE_TOPK_V2"] == "1"
    assert out["env"]["SGLANG_OPT_FP8_WO_A_GEMM"] == "0"


@pytest.mark.parametrize("version", SUPPORTED)
def test_auto_on_non_sm12x_patches_nothing(version):
    out = _probe(version, SGLANG_SM120_ASSUME_GPUS="9.0")
    assert out["enabled"] is False and "not every visible GPU is SM 12.x" in out["reason"]
    assert out["env"]["SGLANG_ENABLE_JIT_DEEPGEMM"] is None
    assert set(out["status"].values()) == {"skipped"}


@pytest.mark.parametrize("version", SUPPORTED)
def test_auto_on_sm12x_applies_env_but_not_emulation(version):
    out = _probe(version, SGLANG_SM120_ASSUME_GPUS="12.0,12.1")
    assert out["enabled"]
    assert out["env"]["SGLANG_ENABLE_JIT_DEEPGEMM"] == "0"
    assert out["status"]["emulate.is-sm120-supported"] == "skipped"
    assert out["status"]["poison-deep-gemm.all"] == "skipped"  # poison defaults off outside emulate


def test_off_leaves_sglang_untouched():
    proc = run_py(
        "import sys, sglang.srt.utils.common\n"
        "print(any('sglang_sm120' in m for m in sys.modules if m != 'sglang_sm120._bootstrap'"
        " and m != 'sglang_sm120'))",
        "0.5.16",
        {"SGLANG_SM120": "off", "SGLANG_SM120_ASSUME_GPUS": "12.0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_invalid_mode_fails_at_sglang_import_listing_valid_values():
    proc = run_py("import sglang", "0.5.16", {"SGLANG_SM120": "bogus"})
    assert proc.returncode != 0
    assert "SGLANG_SM120='bogus' is not valid; expected one of: auto, off, emulate" in proc.stderr


def test_invalid_poison_value_is_rejected():
    proc = run_py("import sglang", "0.5.16", {"SGLANG_SM120": "emulate", "SGLANG_SM120_POISON": "maybe"})
    assert proc.returncode != 0 and "SGLANG_SM120_POISON='maybe' is not valid" in proc.stderr


def test_unsupported_release_warns_once_and_patches_nothing():
    out = run_py(PROBE, "0.5.23", {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"})
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["enabled"] is False and data["sm90"] is False  # H100-less CPU: real probe says no
    assert data["sm120"] is False and data["env"]["SGLANG_ENABLE_JIT_DEEPGEMM"] is None
    warnings = [line for line in out.stderr.splitlines() if "not a supported release" in line]
    assert len(warnings) == 1, out.stderr


POISON = """
import sys
from sglang.jit_kernel.deepseek_v4 import get_paged_mqa_logits_metadata as early_copy
from sglang.srt.plugins import load_plugins
load_plugins()
import sglang.jit_kernel.deepseek_v4 as jk
from sglang_sm120.poison import SM120PoisonError
for fn in (jk.get_paged_mqa_logits_metadata, early_copy):
    try:
        fn(None, 64, 132)
    except SM120PoisonError as e:
        print("POISON", e)
    else:
        print("NOT POISONED")
"""


def test_poison_via_hookregistry_names_callee_and_call_site():
    proc = run_py(POISON, "0.5.12", {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("POISON", "NOT"))]
    assert len(lines) == 2 and all(x.startswith("POISON") for x in lines), proc.stdout
    assert "sglang.jit_kernel.deepseek_v4.get_paged_mqa_logits_metadata called from <string>:" in lines[0]
    assert "131,076 B smem" in lines[0]


def test_poison_off_leaves_the_kernel_native():
    proc = run_py(POISON, "0.5.12", {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0",
                                     "SGLANG_SM120_POISON": "0"})
    assert "POISON" not in proc.stdout


def test_plugin_family_left_native_when_target_cannot_be_resolved():
    # On a CPU machine 0.5.16's sglang.jit_kernel.dsv4 cannot be imported (it needs GPU-side
    # packages): the drift guard must skip that whole family with one warning, not half-apply it.
    code = """
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang_sm120 import dispatch
rt = dispatch.runtime()
fam = {k: v.state for k, v in rt.status.items() if k.startswith("poison-sglang-jit") and "0.5.16" in k}
print(sorted(set(fam.values())))
"""
    proc = run_py(code, "0.5.16", {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    states = proc.stdout.strip().splitlines()[-1]
    warn = [x for x in proc.stderr.splitlines() if "family 'poison-sglang-jit' left native" in x]
    if states == "['registered']":
        assert not warn  # the machine has the packages: the family applies whole
    else:
        assert states == "['skipped']" and len(warn) == 1, proc.stderr


def test_doctor_lists_patches_under_emulate():
    proc = run_py(
        "import sys; from sglang_sm120.doctor import main; sys.exit(main(['--json']))",
        "0.5.12",
        {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["plugin"]["enabled"] and report["plugin"]["release"] == "0.5.12"
    states = {p["id"]: p["state"] for p in report["patches"]}
    assert states["emulate.get-device-sm"] == "applied"
    assert states["deepgemm-off.enable-jit"] == "applied"
    assert states["poison-sglang-jit.indexer-metadata@0.5.12"] == "applied"
    assert states["poison-sglang-jit.indexer-metadata@0.5.16"] == "skipped"


def test_doctor_says_what_is_routed_to_us_on_0_5_16():
    proc = run_py(
        "import sys; from sglang_sm120.doctor import main; sys.exit(main([]))",
        "0.5.16",
        {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    routed = proc.stdout.split("routed to sglang-sm120 on SGLang 0.5.16 (family: why):")[1].split("\n\n")[0]
    families = {line.split(":")[0].strip() for line in routed.strip().splitlines()}
    # kernel families whose targets import on a CPU machine (tilelang-backed ones apply on the GPU machine)
    assert {"attention", "topk", "fp8-gemm-dense", "mhc"} <= families, routed
    assert all(line.split(":", 1)[1].strip() for line in routed.strip().splitlines())  # each says why


def test_module_poison_wraps_only_the_librarys_own_functions(tmp_path, monkeypatch):
    """``names = ["*"]`` must not take re-exported helpers such as ``typing.Optional`` with it."""
    import sys
    import typing

    from sglang_sm120 import poison

    pkg = tmp_path / "fakekern"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from typing import Optional, Tuple\nimport functools\nfrom math import sqrt\n"
        "from fakekern.ops import gemm\n"
        "def run(x: Optional[int] = None):\n    return x\n"
        "partial = functools.partial\n"
    )
    (pkg / "ops.py").write_text("def gemm(a, b):\n    return a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fakekern

    try:
        wrapped = poison.poison_module(fakekern, ["*"], keep=["run"], why="test")
        assert sorted(wrapped) == ["gemm"]
        assert fakekern.Optional is typing.Optional
        assert fakekern.Tuple is getattr(typing, "Tuple")  # noqa: B009 (ruff would rewrite typing.Tuple)
        assert fakekern.sqrt(4.0) == 2.0 and fakekern.partial is __import__("functools").partial
        assert typing.Optional[int] == typing.Union[int, None]  # noqa: UP007,UP045  typing itself untouched
        with pytest.raises(poison.SM120PoisonError, match=r"fakekern.gemm called from .*test_plugin_sglang.py"):
            fakekern.gemm(1, 2)
        assert fakekern.run(3) == 3
    finally:
        for name in [m for m in sys.modules if m.startswith("fakekern")]:
            del sys.modules[name]


@pytest.mark.parametrize("version", SUPPORTED)
def test_server_args_load_plugins_first(version):
    """bench_one_batch resolves ServerArgs before anything calls load_plugins(): our hooks on SGLang's
    model-specific defaults (e.g. the DSV4 MoE runner) must be registered by then."""
    code = """
import json
import sglang.srt.plugins as plugins
from sglang.srt.server_args import ServerArgs
from sglang_sm120 import dispatch
before = plugins._plugins_loaded
try:
    ServerArgs(model_path="/nonexistent-model")
except Exception:
    pass  # resolving defaults for a missing model fails later on a CPU box; the hook ran first
st = dispatch.runtime().status
print(json.dumps({"before": before, "after": plugins._plugins_loaded,
                  "state": st["plugin-loader-args.server-args@" + VERSION].state}))
""".replace("VERSION", repr(version))
    proc = run_py(code, version, {"SGLANG_SM120": "emulate", "SGLANG_SM120_ASSUME_GPUS": "9.0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"before": False, "after": True, "state": "applied"}
