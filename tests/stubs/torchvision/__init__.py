"""Stand-in for torchvision in CPU tests that import real SGLang modules.

SGLang and transformers import torchvision at module level (``torchvision.io.decode_jpeg``, ``transforms``,
``transforms.v2.functional``, ``ops``) for image inputs; there is no CPU wheel of torchvision for torch 2.13
and nothing under test processes images. Every ``torchvision.*`` submodule resolves here to a module whose
attributes are inert placeholders: attribute access chains work (``InterpolationMode.BICUBIC`` in default
arguments), calling one raises.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+sglang-sm120-test-stub"


class _Unavailable:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> _Unavailable:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {self._name} is not available in CPU tests")

    def __repr__(self) -> str:
        return f"<torchvision stand-in {self._name}>"


def _module_getattr(module_name: str):
    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{module_name}.{attr}")

    return __getattr__


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = _module_getattr(spec.name)
        return mod

    def exec_module(self, module):
        return None


__getattr__ = _module_getattr(__name__)
sys.meta_path.append(_StubFinder())
