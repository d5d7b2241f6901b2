"""The patch manifest: one declarative entry per patch.

``patches/manifest.toml`` holds ``supported_releases`` and the core patches (env defaults,
emulation, plugin loader, poison); each op's kernel bindings live in ``patches/<op>.toml``
(same ``[[patch]]`` format, no ``supported_releases``). All files are read as one manifest.

Fields of a ``[[patch]]`` entry:

``id``         unique name, ``<family>.<what>[@release]``
``family``     op family; a family is applied whole or not at all
``kind``       ``env`` (setdefault an environment variable) · ``replace`` · ``around``
               (wrap: ``impl(original, *args, **kwargs)``) · ``shim`` (a ``sys.modules`` entry)
               · ``poison`` (calls raise :class:`~sglang_sm120.poison.SM120PoisonError`)
``target``     ``module:qualname`` (an attribute), a module name (shim, third-party poison)
               or the variable name (env)
``releases``   SGLang releases the entry was checked against
``when``       ``bootstrap`` (env: before SGLang is imported) · ``import`` (right after the
               target module executes, through the bootstrap's import hook) · ``plugin``
               (through SGLang's ``HookRegistry`` from the ``sglang.srt.plugins`` entry point)
``condition``  ``active`` (plugin active) · ``emulate`` (``SGLANG_SM120=emulate``) ·
               ``poison`` (``SGLANG_SM120_POISON`` on)
``signature``  canonical parameter list of a ``def`` target (:mod:`sglang_sm120.signatures`);
               absent for targets that are assignments (e.g. ``lru_cache(partial(...))``)
``impl``       ``module:attr`` of the replacement / wrapper / shim module
``value``      env value; ``names`` / ``keep`` / ``decorators`` for third-party poison
               (``"*"`` = every public function; a decorator's kernels raise when called);
               ``why`` one line shown by ``doctor``
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

KINDS = ("env", "replace", "around", "shim", "poison")
WHENS = ("bootstrap", "import", "plugin")
CONDITIONS = ("active", "emulate", "poison")


@dataclass(frozen=True)
class Patch:
    id: str
    family: str
    kind: str
    target: str
    releases: tuple[str, ...]
    when: str
    condition: str = "active"
    signature: str | None = None
    impl: str | None = None
    value: str | None = None
    names: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    decorators: tuple[str, ...] = ()
    why: str = ""

    @property
    def module(self) -> str:
        """The module the target lives in (the variable name for env patches)."""
        return self.target.split(":", 1)[0]

    @property
    def qualname(self) -> str | None:
        return self.target.split(":", 1)[1] if ":" in self.target else None

    @property
    def dotted(self) -> str:
        """``module.qualname``, the form SGLang's HookRegistry takes."""
        return self.target.replace(":", ".")


@dataclass(frozen=True)
class Manifest:
    supported_releases: tuple[str, ...]
    patches: tuple[Patch, ...] = field(default_factory=tuple)

    def for_release(self, release: str) -> list[Patch]:
        return [p for p in self.patches if release in p.releases]

    def families(self) -> list[str]:
        return sorted({p.family for p in self.patches})


class ManifestError(ValueError):
    """The manifest file is malformed."""


def manifest_path() -> Path:
    """``patches/manifest.toml``: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "patches" / "manifest.toml", here.parent / "patches" / "manifest.toml"):
        if candidate.is_file():
            return candidate
    raise ManifestError(f"patches/manifest.toml not found next to {here}")


def release_of(version: str) -> str:
    """``0.5.16.post1`` → ``0.5.16``: post releases are checked by the drift guard at run time."""
    m = re.match(r"(\d+\.\d+\.\d+)", version)
    return m.group(1) if m else version


def _validate(data: dict, source: str) -> Manifest:
    supported = tuple(data.get("supported_releases", ()))
    patches = []
    for raw in data.get("patch", []):
        try:
            p = Patch(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()},
            )
        except TypeError as exc:
            raise ManifestError(f"{source}: bad entry {raw.get('id', raw)}: {exc}") from None
        problems = []
        if p.kind not in KINDS:
            problems.append(f"kind {p.kind!r} not in {KINDS}")
        if p.when not in WHENS:
            problems.append(f"when {p.when!r} not in {WHENS}")
        if p.condition not in CONDITIONS:
            problems.append(f"condition {p.condition!r} not in {CONDITIONS}")
        if (p.kind == "env") != (p.when == "bootstrap"):
            problems.append("env patches, and only they, apply at bootstrap")
        if p.kind == "env" and p.value is None:
            problems.append("env patch needs a value")
        if p.kind in ("replace", "around", "shim") and not p.impl:
            problems.append(f"{p.kind} patch needs an impl")
        if p.kind in ("replace", "around") and p.qualname is None:
            problems.append("target must be module:qualname")
        if p.kind == "poison" and p.qualname is None and not p.names:
            problems.append("module poison needs names")
        if not set(p.releases) <= set(supported):
            problems.append(f"releases {p.releases} not all in supported_releases {supported}")
        if problems:
            raise ManifestError(f"{source}: patch {p.id}: " + "; ".join(problems))
        patches.append(p)
    ids = [p.id for p in patches]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ManifestError(f"{source}: duplicate patch ids {sorted(dupes)}")
    # An import-time family is checked when its module has executed: one module per family.
    for fam in {p.family for p in patches if p.when == "import"}:
        for rel in supported:
            mods = {p.module for p in patches if p.family == fam and rel in p.releases}
            if len(mods) > 1:
                raise ManifestError(f"{source}: import-time family {fam} spans modules {sorted(mods)}")
        if any(p.when != "import" for p in patches if p.family == fam):
            raise ManifestError(f"{source}: family {fam} mixes import-time and other patches")
    return Manifest(supported, tuple(patches))


@cache
def load_manifest(path: str | None = None) -> Manifest:
    """``path`` (default :func:`manifest_path`) plus every other ``*.toml`` beside it, sorted by name."""
    p = Path(path) if path else manifest_path()
    with open(p, "rb") as f:
        data = tomllib.load(f)
    data["patch"] = list(data.get("patch", []))
    for extra in sorted(p.parent.glob("*.toml")):
        if extra.resolve() == p.resolve():
            continue
        with open(extra, "rb") as f:
            more = tomllib.load(f)
        if set(more) - {"patch"}:
            raise ManifestError(f"{extra}: only [[patch]] entries belong here, found {sorted(set(more) - {'patch'})}")
        data["patch"].extend(more.get("patch", []))
    return _validate(data, str(p.parent))
