"""Interpreter-start bootstrap, imported by ``sglang_sm120.pth`` in every Python process.

It only puts a one-shot finder on ``sys.meta_path`` (no torch, no CUDA, nothing
else).  The finder fires at the first ``import sglang``/``sglang.*``, removes
itself and activates the plugin *before* any SGLang module executes, so the
values SGLang reads at import time (environment defaults, capability probes
copied into module constants) are already ours.  A process that never imports
SGLang pays for one list insertion.  ``SGLANG_SM120=off`` skips even that.
"""

from __future__ import annotations

import os
import sys


class _FirstSGLangImport:
    """Meta-path finder that never finds anything; it only notices SGLang's first import."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "sglang" or fullname.startswith("sglang."):
            uninstall()
            from sglang_sm120 import dispatch

            dispatch.activate(from_bootstrap=True)
        return None


def install() -> None:
    """Install the one-shot finder (idempotent)."""
    if os.environ.get("SGLANG_SM120", "").strip().lower() == "off":
        return
    if "sglang" in sys.modules:
        return  # too late for import-time patches; the entry point will say so
    if not any(isinstance(f, _FirstSGLangImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _FirstSGLangImport())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _FirstSGLangImport)]


def installed() -> bool:
    return any(isinstance(f, _FirstSGLangImport) for f in sys.meta_path)
