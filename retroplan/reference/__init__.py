"""Plain-Python reference twins of the Numba searchers and writers: slow, obvious, and used
only to cross-check them in tests and benchmarks."""
