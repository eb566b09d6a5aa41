"""Generation speed of two checkouts of retroplan, side by side: the same work (graph instances
of each structure, Countdown `stream` and `backward-stream` rows) timed in a fresh process per
tree, alternating trees, best of 3 per figure. Used for a refactor's before/after (issue 12:
`git worktree add /tmp/before 3143010`, then `python benchmarks/bench_trees.py /tmp/before .`).
Each tree gets its own Numba cache (TREE/.numba_bench_cache), warmed before timing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORK = r'''
import json, sys, time
import numpy as np
sys.path.insert(0, ".")
from retroplan.envs import countdown as cd, graph
from retroplan.traces import countdown as grammar

def best(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)

out = {"tree": graph.__file__}
for structure in ("dead-ends", "strongly-connected", "balanced"):
    cfg = graph.Config(structure=structure)
    graph.sample_instances(cfg, 0, "train", np.arange(100))
    out[f"graph {structure}, 50,000 instances"] = best(
        lambda: graph.sample_instances(cfg, 1, "train", np.arange(50_000)))
cfg = cd.Config()
batch = cd.sample_instances(cfg, 0, "train", np.arange(5000))
for variant in ("stream", "backward-stream"):
    opts = grammar.Options()
    grammar.write_examples(cd, cfg, opts, variant, 0, "train", np.arange(50),
                           {k: v[:50] for k, v in batch.items()})
    out[f"countdown {variant}, 5,000 rows"] = best(
        lambda: grammar.write_examples(cd, cfg, opts, variant, 0, "train", np.arange(5000), batch))
print(json.dumps(out))
'''


def run(tree: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tree / ".numba_bench_cache"))
    done = subprocess.run([sys.executable, "-c", WORK], cwd=tree, env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path, help="the checkout to compare against (e.g. before)")
    ap.add_argument("candidate", type=Path, help="the checkout measured (e.g. after)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    args = ap.parse_args()
    trees = [args.baseline.resolve(), args.candidate.resolve()]
    for tree in trees:
        run(tree)  # compile into the tree's cache before anything is timed
    results = {str(t): [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            results[str(tree)].append(run(tree))
    base, cand = (results[str(t)] for t in trees)
    print(f"| work | {trees[0].name} (s, each round) | {trees[1].name} (s, each round) "
          "| speed-up, best vs best |")
    print("|---|---|---|---|")
    for key in base[0]:
        if key == "tree":
            continue
        b = [r[key] for r in base]
        c = [r[key] for r in cand]
        print(f"| {key} | {', '.join(f'{x:.3f}' for x in b)} | {', '.join(f'{x:.3f}' for x in c)} | "
              f"{min(b) / min(c):.2f}x |")


if __name__ == "__main__":
    main()
