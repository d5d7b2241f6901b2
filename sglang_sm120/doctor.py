"""``sglang-sm120 doctor``: what this machine has and what the plugin does here.

Works without a GPU and without SGLang.  With SGLang installed it imports it
(which runs the bootstrap), loads SGLang's plugins and triggers the import-time
patches, then reports each patch as applied, armed or skipped, with the reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import sys
from typing import Any

from sglang_sm120 import dispatch, modes
from sglang_sm120.platform import SM12X_SMEM_PER_BLOCK

PACKAGES = ("sglang", "sglang-kernel", "sgl-kernel", "torch", "triton", "flashinfer-python", "sglang-sm120")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpus() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    rows = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.append(
            {
                "index": i,
                "name": p.name,
                "sm": f"{p.major}.{p.minor}",
                "sm12x": modes.is_sm12x((p.major, p.minor)),
                "sm_count": p.multi_processor_count,
                "smem_per_block_optin": getattr(p, "shared_memory_per_block_optin", None),
                "memory_gib": round(p.total_memory / 2**30, 1),
            }
        )
    return rows


def _exercise_sglang(rt: dispatch.Runtime) -> str | None:
    """Import SGLang's plugin loader and the import-time targets so every patch reports."""
    try:
        from sglang.srt.plugins import load_plugins

        load_plugins()
    except Exception as exc:
        return f"load_plugins failed: {type(exc).__name__}: {exc}"
    for patch in rt.patches():
        if patch.when == "import" and patch.module.startswith("sglang."):
            try:
                importlib.import_module(patch.module)
            except Exception as exc:
                return f"import {patch.module} failed: {type(exc).__name__}: {exc}"
    return None


def collect() -> dict[str, Any]:
    report: dict[str, Any] = {"versions": versions(), "gpus": gpus(), "smem_budget": SM12X_SMEM_PER_BLOCK}
    try:
        res = modes.resolve()
    except modes.ConfigError as exc:
        report["error"] = str(exc)
        return report
    report["mode"] = {"mode": res.mode, "active": res.active, "emulate": res.emulate,
                      "poison": res.poison, "reason": res.reason}
    note = None
    if report["versions"]["sglang"]:
        logging.getLogger("sglang_sm120").setLevel(logging.ERROR)  # the table says it all
        try:
            importlib.import_module("sglang")  # runs the .pth bootstrap if installed
        except Exception as exc:
            note = f"import sglang failed: {type(exc).__name__}: {exc}"
    rt = dispatch.activate()
    if rt.enabled and note is None:
        note = _exercise_sglang(rt)
    status = dispatch.live_status(rt)
    report["plugin"] = {"enabled": rt.enabled, "reason": rt.reason, "release": rt.release,
                        "bootstrapped": rt.bootstrapped, "note": note}
    report["patches"] = [
        {"id": p.id, "family": p.family, "kind": p.kind, "when": p.when, "target": p.target,
         "state": status[p.id].state if p.id in status else "skipped",
         "reason": status[p.id].reason if p.id in status else "not reached", "why": p.why}
        for p in rt.manifest.patches
    ]
    return report


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)


def render(report: dict[str, Any]) -> str:
    lines = ["sglang-sm120 doctor", ""]
    lines.append("versions: " + ", ".join(f"{k} {v or '-'}" for k, v in report["versions"].items()))
    if report["gpus"]:
        rows = [["gpu", "name", "sm", "SMs", "smem/block opt-in", "memory"]]
        for g in report["gpus"]:
            rows.append([str(g["index"]), g["name"], g["sm"] + (" (SM12x)" if g["sm12x"] else ""),
                         str(g["sm_count"]), f"{g['smem_per_block_optin']} B", f"{g['memory_gib']} GiB"])
        lines += ["", _table(rows)]
    else:
        lines.append("gpus: no CUDA GPU visible")
    lines.append(f"SM12x shared-memory budget per block: {report['smem_budget']} B")
    if "error" in report:
        lines += ["", f"error: {report['error']}"]
        return "\n".join(lines)
    m = report["mode"]
    lines.append(f"mode: {m['mode']} (active: {m['active']}, emulate: {m['emulate']}, poison: {m['poison']})"
                 f" — {m['reason']}")
    pl = report["plugin"]
    lines.append(f"plugin: {'enabled' if pl['enabled'] else 'not enabled'} — {pl['reason']}; "
                 f"SGLang release {pl['release'] or '-'}; bootstrap ran: {pl['bootstrapped']}")
    if pl["note"]:
        lines.append(f"note: {pl['note']}")
    rows = [["patch", "family", "kind", "when", "state", "reason"]]
    for p in report["patches"]:
        rows.append([p["id"], p["family"], p["kind"], p["when"], p["state"], p["reason"]])
    lines += ["", _table(rows)]
    taken: dict[str, str] = {}
    for p in report["patches"]:
        if p["kind"] in ("replace", "around", "shim") and p["state"] in ("applied", "registered") and p["why"]:
            taken.setdefault(p["family"], p["why"])
    if taken:
        lines += ["", f"routed to sglang-sm120 on SGLang {pl['release']} (family: why):"]
        lines += [f"  {fam}: {why}" for fam, why in taken.items()]
    counts: dict[str, int] = {}
    for p in report["patches"]:
        counts[p["state"]] = counts.get(p["state"], 0) + 1
    lines.append("")
    lines.append("patches: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="sglang-sm120 doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 2 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
