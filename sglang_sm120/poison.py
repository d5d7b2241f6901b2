"""The poison guard: calls into native kernels SM12x lacks raise, naming callee and call site.

On by default under ``SGLANG_SM120=emulate`` (``SGLANG_SM120_POISON=0`` turns it off;
``=1`` turns it on on real SM12x too).  It proves that a run on a non-SM12x GPU took
only code paths an SM12x GPU can take.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from sglang_sm120.hooks import rebind

logger = logging.getLogger("sglang_sm120")
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
# Wrapper layers between the caller and the poisoned function: ours, functools, SGLang's HookRegistry.
_WRAPPER_FILES = ("functools.py", os.path.join("srt", "plugins", "hook_registry.py"))


class SM120PoisonError(RuntimeError):
    """A native kernel without an SM12x build was called on the DeepSeek-V4 path."""


def call_site() -> str:
    """``file:line in function`` of the first frame outside this package."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        path = name if name.startswith("<") else os.path.abspath(name)
        if not path.startswith(_PKG_DIR) and not path.endswith(_WRAPPER_FILES):
            short = path
            marker = f"{os.sep}sglang{os.sep}"
            if marker in path:
                short = "sglang" + os.sep + path.split(marker, 1)[1]
            return f"{short}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "<unknown>"


def raise_poisoned(callee: str, why: str = "") -> None:
    message = f"{callee} called from {call_site()}"
    if why:
        message += f" ({why})"
    message += "; this native kernel has no SM12x path — sglang-sm120 should have replaced this call"
    logger.error("SM120 poison: %s", message)
    raise SM120PoisonError(message)


def poisoned(callee: str, original: Any = None, why: str = "") -> Callable[..., Any]:
    """A function that raises :class:`SM120PoisonError` when called."""

    def poisoned_call(*_args: Any, **_kwargs: Any) -> Any:
        raise_poisoned(callee, why)

    if callable(original):
        functools.update_wrapper(poisoned_call, original)
        poisoned_call.__wrapped__ = original
    poisoned_call.__sglang_sm120_poison__ = callee  # type: ignore[attr-defined]
    return poisoned_call


def poisoned_decorator(callee: str, why: str = "") -> Callable[..., Any]:
    """Stand-in for a kernel decorator such as ``tilelang.jit``.

    Works bare (``@jit``) and with options (``@jit(out_idx=...)``); what it
    decorates imports fine but raises when called (i.e. when compiled or run).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = f"{callee}-kernel {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        return poisoned(name, fn, why)

    def decorator(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]):
            return decorate(args[0])
        return decorate

    decorator.__sglang_sm120_poison__ = callee  # type: ignore[attr-defined]
    return decorator


_NOT_KERNELS = frozenset(sys.stdlib_module_names) | {"builtins", "torch", "numpy", "triton"}


def _public_functions(module: types.ModuleType) -> Iterable[str]:
    """Public functions the library defines: its own Python functions and native (pybind) ones,
    not re-exported helpers such as ``typing.Optional`` or ``functools.partial``."""
    package = module.__name__.split(".")[0]
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, (type, types.ModuleType)) or not callable(value):
            continue
        owner = (getattr(value, "__module__", None) or "").split(".")[0]
        native = isinstance(value, types.BuiltinFunctionType)
        if owner == package or (native and owner not in _NOT_KERNELS):
            yield name


def poison_module(
    module: types.ModuleType,
    names: Iterable[str],
    keep: Iterable[str] = (),
    why: str = "",
    decorators: Iterable[str] = (),
) -> list[str]:
    """Poison ``names`` (``"*"``: every public function) of ``module``; return what was wrapped.

    Names in ``decorators`` are kernel decorators: what they decorate raises when called.
    Stale ``from module import name`` copies already in ``sys.modules`` are rebound too.
    """
    decorators = set(decorators)
    names = list(names)
    if "*" in names:
        names = list(_public_functions(module))
    keep = set(keep)
    wrapped = []
    for name in names:
        if name in keep or not hasattr(module, name):
            continue
        original = getattr(module, name)
        if getattr(original, "__sglang_sm120_poison__", None):
            continue
        callee = f"{module.__name__}.{name}"
        stand_in = poisoned_decorator(callee, why) if name in decorators else poisoned(callee, original, why)
        setattr(module, name, stand_in)
        rebind(original, stand_in, skip=module)
        wrapped.append(name)
    return wrapped
