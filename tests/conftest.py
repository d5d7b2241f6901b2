"""Shared test setup.

* ``@pytest.mark.gpu`` tests run only where CUDA is available (the GPU machine).
* Without a GPU, Triton kernels run under the interpreter (``TRITON_INTERPRET=1``),
  which must be set before any kernel module is imported; remember the interpreter
  computes bf16 ``tl.dot`` wrongly (tooling.md), so interpreter tests feed fp16/fp32.
"""

from __future__ import annotations

import os

import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a test requirement
    HAS_CUDA = False

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter_loop_bounds() -> None:
    """Triton 3.6's interpreter calls ``int()`` on a shape-(1,) array for runtime loop bounds,
    which NumPy >= 2.3 rejects; read the single element instead (no-op if the helper is gone)."""
    import triton.runtime.interpreter as interp

    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_sm120_index_fix", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._sm120_index_fix = True
    interp._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _fix_interpreter_loop_bounds()


def installed_sglang() -> str | None:
    """Version of the pip-installed SGLang, None if there is none."""
    import importlib.metadata

    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_runtest_setup(item):
    for mark in item.iter_markers("installed_sglang"):
        found = installed_sglang()
        if found is None or not found.startswith(mark.args[0]):
            pytest.skip(f"needs SGLang {mark.args[0]} installed (found {found})")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
