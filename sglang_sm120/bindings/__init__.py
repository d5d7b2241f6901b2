"""SGLang bindings of our kernels, keyed by release: ``v0_5_12/<op>.py``, ``v0_5_16/<op>.py``.

Bindings are what the manifest's ``impl`` fields (``patches/<op>.toml``) point at; they adapt
SGLang's call contract of that release to the kernels in :mod:`sglang_sm120.kernels`. Code
shared by both releases of one op lives in ``bindings/<op>.py``.
"""
