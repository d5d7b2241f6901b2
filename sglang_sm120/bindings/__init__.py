"""SGLang bindings of our kernels, one module per op family and release (``<op>_v0_5_12.py``).

Bindings are what the manifest's ``impl`` fields point at; they adapt SGLang's
call contract of that release to the kernels in :mod:`sglang_sm120.kernels`.
"""
