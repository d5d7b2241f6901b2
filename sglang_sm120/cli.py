"""``sglang-sm120`` command line: ``doctor``, ``smoke`` (also ``python -m sglang_sm120 <command>``)."""

from __future__ import annotations

import sys

COMMANDS = {"doctor": "sglang_sm120.doctor", "smoke": "sglang_sm120.smoke"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: sglang-sm120 {" + ",".join(COMMANDS) + "} [options]")
        print("  doctor   GPUs, versions, mode and the state of every patch (--json)")
        print("  smoke    tiny DeepSeek-V4 through real SGLang with CUDA graphs: plugin path (emulate) vs native,")
        print("           and an HTTP server run; needs a CUDA GPU (exit 2 without one); --help for options")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
