"""sglang-sm120: DeepSeek-V4 on NVIDIA SM12x GPUs as an SGLang plugin.

Importing this package is cheap on purpose (no torch, no CUDA): the ``.pth``
bootstrap imports ``sglang_sm120._bootstrap`` in every interpreter.
"""

__version__ = "0.1.0"
