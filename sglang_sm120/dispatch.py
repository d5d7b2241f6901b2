"""Runtime dispatch: resolves the mode, applies the manifest, runs the drift guard, keeps status.

Three appliers share one drift guard and one status table:

* ``bootstrap`` patches (env defaults) at the first ``import sglang`` (``.pth`` hook);
* ``import`` patches the moment their target module has executed (:mod:`sglang_sm120.hooks`);
* ``plugin`` patches through SGLang's ``HookRegistry`` from the entry point (:mod:`.plugin`).

A family whose targets are missing or whose signatures differ from the recorded
ones is left native, with one warning line; an SGLang release the manifest does
not support gets one warning and no patches.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import os
import pkgutil
import sys
import types
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sglang_sm120 import hooks, modes, signatures
from sglang_sm120.manifest import Manifest, Patch, load_manifest, release_of

logger = logging.getLogger("sglang_sm120")
PLUGIN_NAME = "sm120"


@dataclass
class PatchStatus:
    state: str  # applied | armed | registered | skipped
    reason: str = ""


@dataclass
class Runtime:
    resolution: modes.Resolution | None
    sglang_version: str | None
    release: str | None
    manifest: Manifest
    bootstrapped: bool
    enabled: bool  # active, supported release, not excluded by SGLANG_PLUGINS
    reason: str
    status: dict[str, PatchStatus] = field(default_factory=dict)
    plugin_registered: bool = False

    def patches(self) -> list[Patch]:
        return [p for p in self.manifest.patches if self.release in p.releases]


_RUNTIME: Runtime | None = None


def runtime() -> Runtime | None:
    return _RUNTIME


def _sglang_version() -> str | None:
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def _condition_holds(patch: Patch, res: modes.Resolution) -> bool:
    return {"active": True, "emulate": res.emulate, "poison": res.poison}[patch.condition]


def activate(*, from_bootstrap: bool = False, environ: Mapping[str, str] = os.environ) -> Runtime:
    """Decide what this process patches and apply the bootstrap/import-time parts (idempotent).

    Raises :class:`~sglang_sm120.modes.ConfigError` for invalid settings.
    """
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    manifest = load_manifest()
    version = _sglang_version()
    release = release_of(version) if version else None
    res = modes.resolve(environ)
    allowed = environ.get("SGLANG_PLUGINS", "").strip()
    allowed_names = {x.strip() for x in allowed.split(",") if x.strip()}
    if not res.active:
        enabled, reason = False, res.reason
    elif allowed and PLUGIN_NAME not in allowed_names:
        enabled, reason = False, f"SGLANG_PLUGINS={allowed!r} does not include {PLUGIN_NAME!r}"
    elif version is None:
        enabled, reason = False, "SGLang is not installed"
    elif release not in manifest.supported_releases:
        enabled = False
        reason = (
            f"SGLang {version} is not a supported release "
            f"(supported: {', '.join(manifest.supported_releases)}); SGLang runs natively"
        )
        logger.warning("sglang-sm120: %s", reason)
    else:
        enabled, reason = True, res.reason
    rt = Runtime(res, version, release, manifest, from_bootstrap, enabled, reason)
    _RUNTIME = rt
    for patch in manifest.patches:
        if not enabled:
            rt.status[patch.id] = PatchStatus("skipped", reason)
        elif release not in patch.releases:
            rt.status[patch.id] = PatchStatus("skipped", f"not for SGLang {release}")
        elif not _condition_holds(patch, res):
            rt.status[patch.id] = PatchStatus("skipped", f"condition {patch.condition!r} is off")
    if enabled:
        _apply_env(rt)
        _arm_import_families(rt)
        logger.info("sglang-sm120: active (%s, SGLang %s, mode %s)", res.reason, version, res.mode)
    return rt


def _selected(rt: Runtime, when: str) -> dict[str, list[Patch]]:
    families: dict[str, list[Patch]] = defaultdict(list)
    for patch in rt.patches():
        if patch.when == when and patch.id not in rt.status:
            families[patch.family].append(patch)
    return families


def _apply_env(rt: Runtime) -> None:
    for patches in _selected(rt, "bootstrap").values():
        for patch in patches:
            current = os.environ.get(patch.target)
            if current is None:
                os.environ[patch.target] = patch.value or ""
                rt.status[patch.id] = PatchStatus("applied", f"{patch.target}={patch.value}")
            else:
                rt.status[patch.id] = PatchStatus("applied", f"kept the user's {patch.target}={current}")


def resolve_live(patch: Patch, module: types.ModuleType | None = None) -> tuple[Any, Any, str]:
    """(owner, original, attribute name) of an attribute target; imports the module if needed."""
    module = module or importlib.import_module(patch.module)
    *owner_path, attr = (patch.qualname or "").split(".")
    owner: Any = module
    for part in owner_path:
        owner = getattr(owner, part)
    raw = vars(owner).get(attr) if isinstance(owner, type) else None
    original = raw if isinstance(raw, (staticmethod, classmethod)) else getattr(owner, attr)
    return owner, original, attr


def drift_problem(patch: Patch, module: types.ModuleType | None = None) -> str | None:
    """The drift guard for one attribute target: None if it matches the manifest."""
    try:
        _owner, original, _attr = resolve_live(patch, module)
    except Exception as exc:
        return f"{patch.target}: {type(exc).__name__}: {exc}"
    if patch.signature is None:
        return None if callable(original) else f"{patch.target} is not callable"
    try:
        found = signatures.of_object(original)
    except (TypeError, ValueError) as exc:
        return f"{patch.target}: no signature ({exc})"
    if found != patch.signature:
        return f"{patch.target} signature {found} != recorded {patch.signature}"
    return None


def _skip_family(rt: Runtime, family: str, patches: list[Patch], problems: list[str]) -> None:
    logger.warning("sglang-sm120: family %r left native: %s", family, "; ".join(problems))
    for patch in patches:
        rt.status[patch.id] = PatchStatus("skipped", "drift: " + "; ".join(problems))


def _import_attr(spec: str) -> Any:
    return pkgutil.resolve_name(spec)


def _arm_import_families(rt: Runtime) -> None:
    for family, patches in _selected(rt, "import").items():
        module_name = patches[0].module
        if not rt.bootstrapped and module_name in sys.modules and patches[0].kind != "poison":
            _skip_family(rt, family, patches, [
                f"{module_name} was imported before sglang-sm120 could patch it "
                "(the .pth bootstrap did not run: install the package with pip)"
            ])
            continue
        for patch in patches:
            rt.status[patch.id] = PatchStatus("armed", f"applies when {module_name} is imported")
        hooks.when_imported(module_name, functools.partial(_apply_import_family, rt, family, patches))


def _apply_import_family(rt: Runtime, family: str, patches: list[Patch], module: types.ModuleType) -> None:
    if patches[0].kind == "poison":
        from sglang_sm120 import poison

        for patch in patches:
            done = poison.poison_module(module, patch.names, patch.keep, patch.why, patch.decorators)
            rt.status[patch.id] = PatchStatus("applied", f"poisoned {len(done)}: {', '.join(done) or '-'}")
        return
    problems = [p for p in (drift_problem(patch, module) for patch in patches) if p]
    if problems:
        _skip_family(rt, family, patches, problems)
        return
    for patch in patches:
        owner, original, attr = resolve_live(patch, module)
        new = _build(patch, original)
        setattr(owner, attr, new)
        hooks.rebind(original, new, skip=owner)
        rt.status[patch.id] = PatchStatus("applied", f"{patch.kind} at import")


def _build(patch: Patch, original: Any) -> Any:
    """The object to install for a replace/around patch applied by us (not HookRegistry)."""
    impl = _import_attr(patch.impl or "")
    if patch.kind == "replace":
        return impl
    inner = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original

    @functools.wraps(inner)
    def around(*args: Any, **kwargs: Any) -> Any:
        return impl(inner, *args, **kwargs)

    return type(original)(around) if isinstance(original, (staticmethod, classmethod)) else around


def register_plugin_patches(rt: Runtime) -> None:
    """Register the plugin-time families with SGLang's HookRegistry (after the drift guard)."""
    if not rt.enabled or rt.plugin_registered:
        return
    rt.plugin_registered = True
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for family, patches in _selected(rt, "plugin").items():
        # A shim stands in for a third-party module (absent, or not to be used): nothing live to check.
        problems = [p for p in (drift_problem(patch) for patch in patches if patch.kind != "shim") if p]
        if problems:
            _skip_family(rt, family, patches, problems)
            continue
        for patch in patches:
            if patch.kind == "shim":
                sys.modules[patch.target] = _import_attr(patch.impl or "")
                rt.status[patch.id] = PatchStatus("applied", f"sys.modules[{patch.target!r}] = {patch.impl}")
                continue
            if patch.kind == "poison":
                from sglang_sm120 import poison

                _owner, original, _attr = resolve_live(patch)
                hook, hook_type = poison.poisoned(patch.dotted, original, patch.why), HookType.REPLACE
            elif patch.kind == "around":
                hook, hook_type = _import_attr(patch.impl or ""), HookType.AROUND
            else:
                hook, hook_type = _import_attr(patch.impl or ""), HookType.REPLACE
            HookRegistry.register(patch.dotted, hook, hook_type)
            rt.status[patch.id] = PatchStatus("registered", f"HookRegistry {hook_type.name}")


def live_status(rt: Runtime) -> dict[str, PatchStatus]:
    """Status with HookRegistry registrations confirmed (``applied``) once SGLang applied them."""
    out = dict(rt.status)
    try:
        from sglang.srt.plugins.hook_registry import HookRegistry
    except Exception:
        return out
    for patch in rt.patches():
        st = out.get(patch.id)
        if st and st.state == "registered" and patch.dotted in HookRegistry._patched:
            out[patch.id] = PatchStatus("applied", st.reason + " (applied)")
    return out
