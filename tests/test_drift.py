"""Drift test: every manifest target exists with its recorded signature in each release it claims.

Parses the real SGLang 0.5.12, 0.5.16 and 0.5.23 sources (unpacked wheels, see sglang_env.py).
"""

from __future__ import annotations

import dataclasses

import pytest
from sglang_env import RELEASES, release_root

from sglang_sm120.drift import SourceTree, check_patch
from sglang_sm120.manifest import load_manifest


@pytest.mark.parametrize("version", RELEASES)
def test_claimed_targets_match_release_source(version):
    tree = SourceTree(release_root(version))
    claimed = [p for p in load_manifest().patches if version in p.releases]
    problems = {p.id: check_patch(tree, p) for p in claimed}
    assert {k: v for k, v in problems.items() if v} == {}
    if version in load_manifest().supported_releases:
        assert claimed, f"no patch claims supported release {version}"


def test_drift_guard_detects_changed_signature_and_missing_target():
    tree = SourceTree(release_root("0.5.16"))
    patch = next(p for p in load_manifest().patches if p.id == "poison-sglang-jit.fp8-blockwise-gemm@0.5.16")
    assert check_patch(tree, patch) is None
    changed = dataclasses.replace(patch, signature="(mat_a, mat_b)")
    assert "signature (mat_a, mat_b, scales_a, scales_b, out_dtype) != recorded" in check_patch(tree, changed)
    gone = dataclasses.replace(patch, target="sglang.jit_kernel.fp8_blockwise_gemm:no_such_fn")
    assert "not found" in check_patch(tree, gone)
    env = next(p for p in load_manifest().patches if p.kind == "env")
    assert "not declared" in check_patch(tree, dataclasses.replace(env, target="SGLANG_NO_SUCH_FLAG"))


def test_0_5_23_report_shows_where_targets_moved():
    """0.5.23 is not bound yet; the drift report must show what changed there (JIT kernels moved)."""
    tree = SourceTree(release_root("0.5.23"))
    report = {p.id: check_patch(tree, p) for p in load_manifest().patches}
    assert report["emulate.get-device-sm"] is None  # probes are unchanged in 0.5.23
    assert "not found" in report["poison-sglang-jit.topk-v2@0.5.16"]
    assert "signature" in report["plugin-loader.model-runner@0.5.16"]


def test_unrecorded_def_signature_is_an_error():
    tree = SourceTree(release_root("0.5.16"))
    patch = next(p for p in load_manifest().patches if p.id == "emulate.get-device-capability")
    assert "record its signature" in check_patch(tree, dataclasses.replace(patch, signature=None))
