"""End-to-end CUDA-graph smoke test (same as ``sglang-sm120 smoke``); see ``sglang_sm120/smoke.py``.

    python scripts/smoke_cuda_graph.py [--mode all|inprocess|server] [--max-bs 4] [--decode-steps 8] [--workdir DIR]

Needs a CUDA GPU, SGLang 0.5.16 and this package installed with pip; exit 0 pass, 1 fail, 2 no GPU.
"""

from __future__ import annotations

import sys

from sglang_sm120.smoke import main

if __name__ == "__main__":
    sys.exit(main())
