"""Run code in a fresh interpreter against a real, unpacked SGLang release.

CI downloads the 0.5.12, 0.5.16 and 0.5.23 wheels (``--no-deps``) and unpacks each
into ``$SGLANG_SM120_RELEASES_DIR/<version>/`` (the ``sglang/`` package plus its
dist-info, so ``importlib.metadata`` reports the real version).  Each test process
gets that folder on ``PYTHONPATH`` and sees the installed sglang-sm120 package
(its ``.pth`` bootstrap and its entry point) exactly as a user's process would.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RELEASES = ("0.5.12", "0.5.16", "0.5.23")
STUBS = Path(__file__).parent / "stubs"


def release_root(version: str) -> Path:
    base = os.environ.get("SGLANG_SM120_RELEASES_DIR", "")
    root = Path(base) / version if base else None
    if root is None or not (root / "sglang").is_dir():
        msg = f"SGLang {version} sources not found under SGLANG_SM120_RELEASES_DIR={base!r}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must provide them; see .ci/run)")
        pytest.skip(msg)
    return root


def pth_installed() -> bool:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return any((Path(d) / "sglang_sm120.pth").is_file() for d in dirs)


def run_py(code: str, version: str | None, env: dict[str, str] | None = None, timeout: int = 300):
    """Run ``code`` in a new interpreter with the release on PYTHONPATH; return the CompletedProcess."""
    if not pth_installed():
        msg = "sglang-sm120 is not installed with pip (its .pth bootstrap is missing); run `pip install .`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG", "CUDA_VISIBLE"))}
    full_env.pop("TRITON_INTERPRET", None)
    # The checkout first: the installed copy only contributes its .pth line and entry-point metadata,
    # so tests exercise the code being edited without a reinstall (CI installs this same tree).
    paths = [str(Path(__file__).resolve().parent.parent), str(STUBS)]
    if version is not None:
        paths.insert(0, str(release_root(version)))
    full_env["PYTHONPATH"] = os.pathsep.join(paths)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=str(Path(__file__).parent),
    )
