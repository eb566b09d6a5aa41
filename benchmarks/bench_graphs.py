"""Path-star generation speed: instances with their DFS `stream` row per second.

One instance end to end: the graph drawn (labels, arms, shuffled edges, goal arm), the
depth-limited DFS with random child order run, and the `stream` row written as tokens. The
Numba kernels (1 thread, then 2) against the plain-Python re-derivation of the same algorithm
(retroplan/reference/digraph.py), in this process, same seed and indices; the first
1,000 rows must be identical or the benchmark fails. Compile time is the first call's cost in
this process (the Numba cache folder decides whether it compiles or loads).

    .venv/bin/python benchmarks/bench_graphs.py
"""

from __future__ import annotations

import argparse
import platform
import time

import numba
import numpy as np
from timing import rows_per_second  # benchmarks/timing.py (this folder is on sys.path)

from retroplan.envs import pathstar
from retroplan.reference.digraph import stream_row
from retroplan.traces import digraphs

SEED = 2024


def numba_rows(cfg, indices):
    batch = pathstar.sample_instances(cfg, SEED, "train", indices)
    return digraphs.write_examples(pathstar, cfg, digraphs.Options(), "stream", SEED, "train", indices, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degree", type=int, default=5)
    ap.add_argument("--path-len", type=int, default=5)
    ap.add_argument("--num-nodes", type=int, default=50)
    ap.add_argument("--numba-n", type=int, default=200_000)
    ap.add_argument("--python-n", type=int, default=5_000)
    args = ap.parse_args()
    cfg = pathstar.Config(degree=args.degree, path_len=args.path_len, num_nodes=args.num_nodes)

    t0 = time.perf_counter()
    ex = numba_rows(cfg, np.arange(1000))
    compile_s = time.perf_counter() - t0
    offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
    for i in range(1000):
        row, _ = stream_row(cfg.degree, cfg.path_len, cfg.num_nodes, SEED, "train", i)
        assert row == ex["tokens"][offsets[i]: offsets[i + 1]].tolist(), f"row {i} differs"

    t0 = time.perf_counter()
    for i in range(args.python_n):
        stream_row(cfg.degree, cfg.path_len, cfg.num_nodes, SEED, "train", i)
    python_rate = args.python_n / (time.perf_counter() - t0)
    one = rows_per_second(lambda idx: numba_rows(cfg, idx), args.numba_n, 1, 3)
    two = rows_per_second(lambda idx: numba_rows(cfg, idx), args.numba_n, 2, 3)
    print(f"path-star degree {cfg.degree}, path_len {cfg.path_len}, {cfg.num_nodes} labels; "
          f"stream rows; {platform.machine()}, {numba.config.NUMBA_NUM_THREADS} Numba threads available")
    print("first 1,000 rows identical to plain Python: yes")
    print(f"first call (compile or cache load + 1,000 rows): {compile_s:.2f} s")
    print(f"plain Python, 1 core : {python_rate:10,.0f} instances/s  ({args.python_n:,} instances)")
    print(f"Numba, 1 thread      : {one:10,.0f} instances/s  ({args.numba_n:,}, best of 3)  "
          f"= {one / python_rate:.0f}x plain Python")
    print(f"Numba, 2 threads     : {two:10,.0f} instances/s  = {two / one:.2f}x 1 thread")


if __name__ == "__main__":
    main()
