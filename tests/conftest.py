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


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
