"""One canonical text form for a callable's parameter list, from live objects or from source.

The form keeps what a caller depends on and drops what does not matter for a
patch: parameter names, their kinds (``/``, ``*``, ``*args``, ``**kwargs``) and
which ones have defaults (``=...``); annotations and default values are left out.
Example: ``(self, q, k_cache, *, softmax_scale=..., **kwargs)``.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any


def _render(params: list[tuple[str, str, bool]]) -> str:
    """params: (name, kind, has_default) with kind in pos_only/pos/var_pos/kw_only/var_kw."""
    out: list[str] = []
    seen_pos_only = any(kind == "pos_only" for _, kind, _ in params)
    star_done = False
    for i, (name, kind, has_default) in enumerate(params):
        if kind == "var_pos":
            out.append(f"*{name}")
            star_done = True
        elif kind == "var_kw":
            out.append(f"**{name}")
        else:
            if kind == "kw_only" and not star_done:
                out.append("*")
                star_done = True
            out.append(name + ("=..." if has_default else ""))
        if seen_pos_only and kind == "pos_only" and (i + 1 == len(params) or params[i + 1][1] != "pos_only"):
            out.append("/")
    return "(" + ", ".join(out) + ")"


_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "pos_only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "pos",
    inspect.Parameter.VAR_POSITIONAL: "var_pos",
    inspect.Parameter.KEYWORD_ONLY: "kw_only",
    inspect.Parameter.VAR_KEYWORD: "var_kw",
}


def of_object(obj: Any) -> str:
    """Canonical signature of a live callable (follows ``__wrapped__``)."""
    sig = inspect.signature(obj, follow_wrapped=True)
    return _render(
        [(p.name, _KINDS[p.kind], p.default is not inspect.Parameter.empty) for p in sig.parameters.values()]
    )


def of_ast(args: ast.arguments) -> str:
    """Canonical signature of a ``def`` as parsed by :mod:`ast`."""
    positional = [*args.posonlyargs, *args.args]
    n_def = len(args.defaults)
    first_default = len(positional) - n_def
    params: list[tuple[str, str, bool]] = []
    for i, a in enumerate(positional):
        kind = "pos_only" if i < len(args.posonlyargs) else "pos"
        params.append((a.arg, kind, i >= first_default))
    if args.vararg:
        params.append((args.vararg.arg, "var_pos", False))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        params.append((a.arg, "kw_only", d is not None))
    if args.kwarg:
        params.append((args.kwarg.arg, "var_kw", False))
    return _render(params)
