"""Determinism: the same suite spec gives the same bytes, run after run, whatever the Numba
thread count, and whether it is generated whole or as `--shard i/N` pieces put together with
`merge-shards`. (Training: tests/test_train_eval.py::test_same_seed_same_loss_curve_and_weights
and the resumed runs of tests/test_crash_safety.py.)"""

import json
import os
import subprocess
import sys

import pytest
from conftest import assert_same_files

from retroplan.cli import main
from retroplan.envs import TASKS
from retroplan.traces import GRAMMARS
from retroplan.traces.suite import SuiteSpec, generate_suite, merge_shards, open_suite

# Small configs for the tasks whose defaults are large; any other task runs with its defaults.
SMALL_CONFIGS = {"pathstar": {"degree": 3, "path_len": 4, "num_nodes": 30},
                 "graph": {"num_nodes": 12, "out_degree": 2, "min_distance": 2, "max_distance": 5}}


def small_sizes(task, train=200, held_out=20) -> dict:
    return {split: (train if split == "train" else held_out) for split in TASKS[task].SPLITS}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_variant_of_every_task_gives_the_same_bytes_twice(task, tmp_path):
    for variant in GRAMMARS[task].VARIANTS:
        spec = SuiteSpec(task, variant, SMALL_CONFIGS.get(task, {}), {}, 3, small_sizes(task))
        first = generate_suite(spec, tmp_path / f"{variant}-1", progress=False)
        second = generate_suite(spec, tmp_path / f"{variant}-2", progress=False)
        assert_same_files(first, second)


GENERATE_SCRIPT = """
import json, sys
import numba
from retroplan.traces.suite import SuiteSpec, generate_suite
jobs = json.loads(sys.argv[1])
for name, (task, variant, config, sizes) in jobs.items():
    generate_suite(SuiteSpec(task, variant, config, {}, 11, sizes), sys.argv[2] + "/" + name,
                   progress=False)
print(numba.get_num_threads())
"""


def test_suites_do_not_depend_on_the_numba_thread_count(tmp_path):
    # Sizes large enough that prange splits every kernel's loop between the threads.
    jobs = {f"{task}-{variant}": (task, variant, SMALL_CONFIGS.get(task, {}),
                                  small_sizes(task, train=1000, held_out=100))
            for task in sorted(TASKS)
            for variant in ("stream", "backward-stream", "lookahead", "corrupted", "revthink")
            if variant in GRAMMARS[task].VARIANTS}
    outs = {}
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, "-c", GENERATE_SCRIPT, json.dumps(jobs), str(out)],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [str(threads)]  # Numba really ran with that many threads
        outs[threads] = out
    for name in jobs:
        assert_same_files(outs[1] / name, outs[2] / name)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_shard_pieces_merged_equal_the_whole_suite(task, tmp_path, capsys):
    # 3 pieces of sizes that 3 does not divide, and a split smaller than the piece count (one
    # piece holds none of it); the stream variant, so search order depends on the instance.
    variant = "stream" if "stream" in GRAMMARS[task].VARIANTS else GRAMMARS[task].VARIANTS[0]
    sizes = {split: n for split, n in zip(TASKS[task].SPLITS, (301, 2, 37, 5, 4))}
    spec = SuiteSpec(task, variant, SMALL_CONFIGS.get(task, {}), {}, 5, sizes)
    whole = generate_suite(spec, tmp_path / "whole", progress=False)
    pieces = [generate_suite(spec, tmp_path / f"piece{i}", shard=(i, 3), progress=False)
              for i in (2, 0, 1)]
    assert [json.loads((p / "meta.json").read_text())["shard"] for p in pieces] == [[2, 3], [0, 3], [1, 3]]
    code = main(["merge-shards", *map(str, pieces), "--out", str(tmp_path / "merged")])
    assert code == 0, capsys.readouterr().err
    assert_same_files(whole, tmp_path / "merged")
    open_suite(tmp_path / "merged")  # and its checksums hold


def test_shards_keep_splits_apart_exactly_like_the_whole_suite(tmp_path):
    # So few distinct path-star graphs that many train instances are redrawn: every piece must
    # redraw the same ones as the whole run does.
    spec = SuiteSpec("pathstar", "optimal", {"degree": 2, "path_len": 2, "num_nodes": 6}, {}, 0,
                     {"train": 150, "val": 5, "test": 5})
    whole = generate_suite(spec, tmp_path / "whole", progress=False)
    assert json.loads((whole / "meta.json").read_text())["splits"]["train"]["redrawn"] > 0
    pieces = [generate_suite(spec, tmp_path / f"piece{i}", shard=(i, 4), progress=False) for i in range(4)]
    assert_same_files(whole, merge_shards(pieces, tmp_path / "merged"))
