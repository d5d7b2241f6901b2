"""Stand-in for torchvision in CPU tests that import real SGLang modules.

``sglang.srt.utils.common`` imports ``torchvision.io.decode_jpeg`` at module level;
there is no CPU wheel of torchvision for torch 2.13, and nothing under test calls it.
"""
