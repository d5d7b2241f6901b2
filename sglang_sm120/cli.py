"""``sglang-sm120`` command line: ``doctor`` (and ``python -m sglang_sm120 doctor``)."""

from __future__ import annotations

import sys

COMMANDS = {"doctor": "sglang_sm120.doctor"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: sglang-sm120 {" + ",".join(COMMANDS) + "} [options]")
        print("  doctor   GPUs, versions, mode and the state of every patch (--json)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
