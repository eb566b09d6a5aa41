"""Countdown generation speed: problems with full `mix` search streams per second per core.

What is timed is one problem end to end: the target drawn, inputs redrawn until an exhaustive
search finds a solution, the `mix` strategy drawn, its search run, and the `stream` row written
as tokens. The Numba kernels (1 thread, then 2) are measured against the plain-Python
implementation of the same algorithm (retroplan/reference/countdown.py), in this
process, on the same seed and instance indices; the two must give the same tokens, byte for
byte, or the benchmark fails. The first-call compile time is measured separately, in fresh
processes with an empty Numba cache and with a warm one.

    .venv/bin/python benchmarks/bench_countdown.py            # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_countdown.py --quick    # smaller counts
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
from timing import rows_per_second  # benchmarks/timing.py (this folder is on sys.path)

from retroplan.envs import countdown as cd
from retroplan.reference import countdown as ref
from retroplan.traces import countdown as grammar
from retroplan.traces.suite import CHUNK

SEED = 2024
FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np
from retroplan.envs import countdown as cd
from retroplan.traces import countdown as g
t1 = time.perf_counter()
cfg = cd.Config()
for variant in g.VARIANTS:
    batch = cd.sample_instances(cfg, 0, "train", np.arange(64))
    g.write_examples(cd, cfg, g.Options(), variant, 0, "train", np.arange(64), batch)
cd.difficulty(cfg, batch)
print(t1 - t0, time.perf_counter() - t1)
"""


def numba_rows(cfg, indices):
    batch = cd.sample_instances(cfg, SEED, "train", indices)
    ex = grammar.write_examples(cd, cfg, grammar.Options(), "stream", SEED, "train", indices, batch)
    return ex


def first_call(cache_dir: str) -> tuple[float, float]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    n_python = 300 if args.quick else 1000
    n_numba = 20_000 if args.quick else 100_000
    cfg = cd.Config()
    cores = os.cpu_count()
    print(f"machine: {platform.machine()}, {cores} CPUs, Python {platform.python_version()}, "
          f"numba {numba.__version__}")
    print(f"task: countdown {cfg.to_dict()}, variant stream (searcher mix), seed {SEED}\n")

    with tempfile.TemporaryDirectory() as empty:
        imp, cold = first_call(empty)
        _, warm = first_call(empty)
    print(f"first call, empty Numba cache (compile every kernel): {cold:.1f} s (+ import {imp:.1f} s)")
    print(f"first call, warm Numba cache (load compiled kernels):  {warm:.1f} s")

    numba_rows(cfg, np.arange(64))  # load the kernels in this process
    indices = np.arange(n_python, dtype=np.int64)
    numba.set_num_threads(1)
    t0 = time.perf_counter()
    ex = numba_rows(cfg, indices)
    small_numba = n_python / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    rows = ref.generate_stream_rows(cfg, SEED, "train", indices)
    python_rate = n_python / (time.perf_counter() - t0)
    offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
    same = all(ex["tokens"][offsets[i]: offsets[i + 1]].tolist() == rows[i] for i in range(n_python))
    if not same:
        raise SystemExit("FAIL: the Numba and plain-Python rows differ")
    tokens = int(ex["lengths"].sum())
    print(f"\nsame {n_python} problems (seed {SEED}, indices 0..{n_python - 1}), identical tokens: {same} "
          f"({tokens} tokens, {tokens / n_python:.0f} per problem)")
    print(f"  plain Python, 1 core:  {python_rate:10.0f} problems/s")
    print(f"  Numba, 1 thread:       {small_numba:10.0f} problems/s   ({small_numba / python_rate:.0f}x)")

    def make_rows(idx):
        return numba_rows(cfg, idx)

    rate1 = rows_per_second(make_rows, n_numba, 1, 3)
    rate2 = rows_per_second(make_rows, n_numba, 2, 3) if cores and cores >= 2 else float("nan")
    print(f"\n{n_numba} problems in chunks of {CHUNK}, as generate_suite makes them (best of 3):")
    print(f"  Numba, 1 thread:       {rate1:10.0f} problems/s   "
          f"({rate1 / python_rate:.0f}x plain Python per core)")
    print(f"  Numba, 2 threads:      {rate2:10.0f} problems/s   ({rate2 / rate1:.2f}x one thread)")


if __name__ == "__main__":
    main()
