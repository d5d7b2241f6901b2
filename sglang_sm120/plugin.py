"""SGLang plugin entry point (``sglang.srt.plugins``: ``sm120 = sglang_sm120.plugin:register``).

SGLang calls :func:`register` through ``load_plugins()`` in the launcher, every
scheduler/TP worker and the detokenizer; it is idempotent per process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sglang_sm120 import dispatch

logger = logging.getLogger("sglang_sm120")


def register() -> None:
    """Activate (if the ``.pth`` bootstrap has not) and register plugin-time patches."""
    rt = dispatch.activate()
    if not rt.enabled:
        logger.info("sglang-sm120: inactive: %s", rt.reason)
        return
    if not rt.bootstrapped:
        logger.warning(
            "sglang-sm120: the .pth bootstrap did not run in this process, so patches SGLang reads "
            "at import time may be missing; install the package with pip (not only on PYTHONPATH)"
        )
    dispatch.register_plugin_patches(rt)


def load_plugins_first(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Around ``ServerArgs.__post_init__`` and ``ModelRunner.__init__``: SGLang's plugins are loaded first.

    ``bench_one_batch`` and scripts resolve ServerArgs and build a ModelRunner without ever calling
    ``load_plugins()``; SGLang's own guard makes this a no-op where it was called.
    """
    from sglang.srt.plugins import load_plugins

    load_plugins()
    return original(*args, **kwargs)
