"""Counter-based randomness for Numba kernels.

Every random draw is a pure function of (seed, stream, index, salt, counter): instance i of
seed s is the same whatever the batch size, thread count or shard that produces it, and no
global RNG is touched inside a `prange` loop. The mixer is SplitMix64's finaliser.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .errors import require

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Streams keep independent uses of one (seed, index) apart.
STREAM_INSTANCE = 1
STREAM_SEARCH = 2
STREAM_TRACE = 3

# Fixed forever: changing an id (or stream_key) changes every suite ever generated.
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "env": 3, "val_target": 4, "test_target": 5}


def stream_key(purpose: int, split: str) -> int:
    """The random stream of one purpose (STREAM_INSTANCE, STREAM_SEARCH, STREAM_TRACE) in one
    split: the only place a stream number is built."""
    require(split in SPLIT_IDS, f"unknown split {split!r}; allowed: {', '.join(SPLIT_IDS)}.")
    return (purpose << 8) | SPLIT_IDS[split]


@njit(cache=True, inline="always")
def mix64(x):
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def key(seed, stream, index, salt):
    """The starting state of the generator for one (seed, stream, index, salt)."""
    h = mix64(np.uint64(seed) + _GOLDEN)
    h = mix64(h ^ (np.uint64(stream) * _GOLDEN))
    h = mix64(h ^ np.uint64(index))
    return mix64(h ^ (np.uint64(salt) + _M1))


@njit(cache=True, inline="always")
def next_u64(state):
    """Advance `state` (a 1-element uint64 array) and return 64 random bits."""
    state[0] = state[0] + _GOLDEN
    return mix64(state[0])


@njit(cache=True)
def new_state(seed, stream, index, salt):
    state = np.empty(1, dtype=np.uint64)
    state[0] = key(seed, stream, index, salt)
    return state


@njit(cache=True)
def randbelow(state, n):
    """A uniform integer in [0, n) for 1 <= n < 2**32 (bias below n / 2**32)."""
    hi = next_u64(state) >> np.uint64(32)
    return np.int64((hi * np.uint64(n)) >> np.uint64(32))


@njit(cache=True)
def uniform(state):
    """A float in [0, 1) with 53 random bits."""
    return np.float64(next_u64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def shuffle(state, a):
    """Fisher-Yates shuffle of `a` in place."""
    for i in range(a.shape[0] - 1, 0, -1):
        j = randbelow(state, i + 1)
        t = a[i]
        a[i] = a[j]
        a[j] = t


_PY_M64 = (1 << 64) - 1
_PY_GOLDEN, _PY_M1, _PY_M2 = int(_GOLDEN), int(_M1), int(_M2)


def mix64_py(x: int) -> int:
    """`mix64` on Python integers."""
    x &= _PY_M64
    x = ((x ^ (x >> 30)) * _PY_M1) & _PY_M64
    x = ((x ^ (x >> 27)) * _PY_M2) & _PY_M64
    return x ^ (x >> 31)


class SplitMixPy:
    """This module's generator in plain Python: the same bits for the same (seed, stream,
    index, salt). The plain-Python reference implementations (searchers/*_reference.py) draw
    from it, so they can be compared with the kernels byte for byte."""

    def __init__(self, seed: int, stream: int, index: int, salt: int):
        h = mix64_py(seed + _PY_GOLDEN)
        h = mix64_py(h ^ ((stream * _PY_GOLDEN) & _PY_M64))
        h = mix64_py(h ^ (index & _PY_M64))
        self.state = mix64_py(h ^ ((salt + _PY_M1) & _PY_M64))

    def randbelow(self, n: int) -> int:
        self.state = (self.state + _PY_GOLDEN) & _PY_M64
        return ((mix64_py(self.state) >> 32) * n) >> 32

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.randbelow(i + 1)
            items[i], items[j] = items[j], items[i]
