"""Kernel bindings for SGLang 0.5.12: one module per op, named as in ``sglang_sm120/kernels/``.

Imported only by the manifest patches (``patches/<op>.toml``) that name them, after SGLang is loaded.
"""
