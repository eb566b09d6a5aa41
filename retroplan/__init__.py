"""retroplan: measure whether backward, search-stream or goal-revealing training traces
make a small transformer plan better forward, on tasks whose every plan is verified."""

import os as _os

__version__ = "0.1.0"

# Numba caches compiled kernels beside the source; where the install is read-only (a system
# site-packages), cache them in the user's cache folder instead.
if "NUMBA_CACHE_DIR" not in _os.environ and not _os.access(_os.path.dirname(__file__), _os.W_OK):
    _os.environ["NUMBA_CACHE_DIR"] = _os.path.join(
        _os.path.expanduser("~"), ".cache", "retroplan", "numba")
