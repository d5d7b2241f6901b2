"""Plain-PyTorch oracles for every kernel (also the CPU fallbacks)."""
