import sys

from sglang_sm120.cli import main

sys.exit(main())
