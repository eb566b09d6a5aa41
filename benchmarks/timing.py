"""What the generation benchmarks share: the rate at which rows are made in the chunks
`generate_suite` makes them in."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numba
import numpy as np

from retroplan.traces.suite import CHUNK


def rows_per_second(make_rows, n: int, threads: int, repeats: int) -> float:
    """Instances per second of `make_rows(indices)` over indices 0..n-1 in chunks of CHUNK,
    on `threads` Numba threads, best of `repeats`."""
    numba.set_num_threads(threads)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for lo in range(0, n, CHUNK):
            make_rows(np.arange(lo, min(lo + CHUNK, n), dtype=np.int64))
        best = min(best, time.perf_counter() - t0)
    return n / best


def cpu_name() -> str:
    """The CPU's model name, for the machine line of every benchmark."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
