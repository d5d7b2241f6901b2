"""Post-import hooks: run a callback the moment a given module has executed.

A meta-path finder wraps the loader of watched modules; its ``exec_module``
runs the real loader, then the callbacks, before anyone else can bind names
from the module.  Used for import-time patches (probes SGLang copies into
module constants) and for poisoning third-party kernel libraries.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import types
from collections import defaultdict
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("sglang_sm120")
Callback = Callable[[types.ModuleType], None]


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, fullname: str, finder: PostImportFinder) -> None:
        self._loader = loader
        self._fullname = fullname
        self._finder = finder

    def create_module(self, spec: Any) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._finder.fire(self._fullname, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loaders other finders return for watched names."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._resolving: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.callbacks or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _HookedLoader(spec.loader, fullname, self)
        return spec

    def fire(self, fullname: str, module: types.ModuleType) -> None:
        for callback in self.callbacks.pop(fullname, []):
            try:
                callback(module)
            except Exception:  # a patch must never break the import it hooks
                logger.exception("sglang-sm120: post-import hook for %s failed", fullname)


_FINDER = PostImportFinder()


def when_imported(module_name: str, callback: Callback) -> None:
    """Run ``callback(module)`` once ``module_name`` has executed (now, if it already has)."""
    module = sys.modules.get(module_name)
    if module is not None:
        try:
            callback(module)
        except Exception:
            logger.exception("sglang-sm120: post-import hook for %s failed", module_name)
        return
    _FINDER.callbacks[module_name].append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def pending() -> dict[str, int]:
    """Module names still awaited, with their callback counts (for doctor and tests)."""
    return {name: len(cbs) for name, cbs in _FINDER.callbacks.items() if cbs}


def rebind(original: Any, new: Any, skip: Any = None) -> int:
    """Replace module-level references to ``original`` with ``new`` across ``sys.modules``."""
    count = 0
    for mod in list(sys.modules.values()):
        if mod is skip or not isinstance(mod, types.ModuleType):
            continue
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for attr, value in items:
            if value is original:
                try:
                    setattr(mod, attr, new)
                    count += 1
                except (AttributeError, TypeError):
                    pass
    return count
