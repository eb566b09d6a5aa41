"""The library version, in a module of its own: every module that records it imports it from here,
below everything else, so the package's `__init__` (the public face, which imports `scoring`
when `retroplan.score` is called) is imported by none of them (docs/ARCHITECTURE.md, "Layers")."""

__version__ = "0.1.0"
