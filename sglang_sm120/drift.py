"""Check manifest targets against an SGLang release's source, without importing it.

    python -m sglang_sm120.drift SOURCE_ROOT [--release 0.5.23] [--strict]

SOURCE_ROOT contains the ``sglang/`` package of one release (an unpacked wheel).
Each patch target is found with :mod:`ast`: modules by path, then classes,
functions, methods and module-level assignments, following ``from x import y``
re-exports.  ``--strict`` exits 1 if a patch that claims the release drifted.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from sglang_sm120 import signatures
from sglang_sm120.manifest import Patch, load_manifest


@dataclass(frozen=True)
class Found:
    """What a dotted target is in the source: ``def``, ``class``, ``assign`` or ``module``."""

    kind: str
    signature: str | None = None


class SourceTree:
    """Parsed modules of one release, cached."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._modules: dict[str, ast.Module | None] = {}

    def module_path(self, dotted: str) -> Path | None:
        base = self.root.joinpath(*dotted.split("."))
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file():
                return p
        return None

    def module(self, dotted: str) -> ast.Module | None:
        if dotted not in self._modules:
            path = self.module_path(dotted)
            self._modules[dotted] = ast.parse(path.read_text(), str(path)) if path else None
        return self._modules[dotted]

    def find(self, target: str, _depth: int = 0) -> Found | None:
        """Locate ``target`` (``pkg.mod.attr`` or ``pkg.mod.Class.method``)."""
        parts = target.split(".")
        for cut in range(len(parts), 0, -1):
            mod_name = ".".join(parts[:cut])
            tree = self.module(mod_name)
            if tree is None:
                continue
            rest = parts[cut:]
            if not rest:
                return Found("module")
            return self._find_in(tree, mod_name, rest, _depth)
        return None

    def _find_in(self, tree: ast.Module, mod_name: str, rest: list[str], depth: int) -> Found | None:
        body: list[ast.stmt] = tree.body
        for i, name in enumerate(rest):
            last = i == len(rest) - 1
            node = _lookup(body, name)
            if node is None:
                return None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return Found("def", signatures.of_ast(node.args)) if last else None
            if isinstance(node, ast.ClassDef):
                if last:
                    return Found("class")
                body = node.body
                continue
            if isinstance(node, ast.ImportFrom) and i == 0 and depth < 5:
                source = _absolute(mod_name, node, self.module_path(mod_name))
                alias = next(a for a in node.names if (a.asname or a.name) == name)
                return self.find(".".join([source, alias.name, *rest[1:]]), depth + 1)
            return Found("assign") if last else None
        return None

    def declares_env(self, name: str) -> bool:
        """True if ``sglang/srt/environ.py`` declares the environment variable ``name``."""
        path = self.module_path("sglang.srt.environ")
        return bool(path and re.search(rf"^\s+{re.escape(name)}\s*[:=]", path.read_text(), re.M))


def _lookup(body: list[ast.stmt], name: str) -> ast.stmt | None:
    """Last top-level binding of ``name`` in ``body`` (defs, classes, assignments, imports)."""
    found = None
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            found = node
        elif isinstance(node, ast.Assign) and any(_binds(t, name) for t in node.targets):
            found = node
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and _binds(node.target, name):
            found = node
        elif isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            found = node
    return found


def _binds(target: ast.expr, name: str) -> bool:
    if isinstance(target, ast.Name):
        return target.id == name
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_binds(e, name) for e in target.elts)
    return False


def _absolute(mod_name: str, node: ast.ImportFrom, path: Path | None) -> str:
    if not node.level:
        return node.module or ""
    pkg = mod_name.split(".")
    if path is None or path.name != "__init__.py":
        pkg = pkg[:-1]
    pkg = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(pkg + ([node.module] if node.module else []))


def check_patch(tree: SourceTree, patch: Patch) -> str | None:
    """None if ``patch`` matches this source tree, else what drifted."""
    if patch.kind == "env":
        return None if tree.declares_env(patch.target) else f"env {patch.target} is not declared"
    if not patch.module.startswith("sglang."):
        return None  # third-party module (deep_gemm, tilelang, …): not in SGLang's source
    found = tree.find(patch.dotted)
    if found is None:
        return f"{patch.target} not found"
    if patch.signature is None:
        if found.kind == "def":
            return f"{patch.target} is a def {found.signature}: record its signature in the manifest"
        return None
    if found.signature != patch.signature:
        return f"{patch.target} signature {found.signature} != recorded {patch.signature}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglang_sm120.drift", description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="folder that contains the release's sglang/ package")
    ap.add_argument("--release", help="release to check claims for (default: read from the wheel's dist-info)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a patch claiming the release drifted")
    args = ap.parse_args(argv)
    tree = SourceTree(args.source)
    release = args.release or _release_of(args.source)
    drifted = 0
    for patch in load_manifest().patches:
        problem = check_patch(tree, patch)
        claimed = release in patch.releases
        state = "ok" if problem is None else ("DRIFT" if claimed else "differs")
        drifted += claimed and problem is not None
        print(f"{state:8} {'claimed' if claimed else 'unclaimed':9} {patch.id:40} {problem or ''}")
    print(f"release {release}: {drifted} claimed patches drifted")
    return 1 if (args.strict and drifted) else 0


def _release_of(root: Path) -> str:
    infos = sorted(Path(root).glob("sglang-*.dist-info"))
    if not infos:
        raise SystemExit(f"{root}: no sglang-*.dist-info; pass --release")
    return infos[0].name.split("-")[1].removesuffix(".dist-info")


if __name__ == "__main__":
    sys.exit(main())
