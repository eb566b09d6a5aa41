"""A first run that says what it is doing: a one-line notice when Numba really compiles
retroplan's kernels (a cold cache; nothing once they are cached), plain progress lines from a
long generation where no bar can draw, `--version` without importing torch or Numba, and a
warning (plus the peak learning rate in the summary) when a run never leaves its warm-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retroplan.cli import main
from retroplan.traces import suite as suite_module
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite
from retroplan.train import TrainConfig, lr_at, peak_lr, train

ROOT = Path(__file__).resolve().parents[1]
NOTICE = "retroplan: compiling Numba kernels (first run only"


def python(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_version_is_instant_without_torch_or_numba(tmp_path):
    done = python("import sys\nfrom retroplan.cli import main\ntry:\n    main(['--version'])\n"
                  "except SystemExit as e:\n"
                  "    print(e.code, 'numba' in sys.modules, 'torch' in sys.modules)", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["retroplan 0.1.0", "0 False False"]


def test_a_cold_cache_says_once_that_it_compiles_and_a_warm_one_says_nothing(tmp_path):
    # rng.key is a small cached kernel: cold it compiles (the notice), warm it loads (no notice)
    code = ("import numpy as np\nfrom retroplan import compile_notice, rng\ncompile_notice.install()\n"
            "compile_notice.install()\n"  # idempotent: still one line
            "print(rng.key(1, 2, 3, 4), rng.key(5, 6, 7, 8))\n"
            "from numba import njit\nnjit(lambda x: x + 1)(1)\n")  # not a retroplan kernel: no line
    cache = tmp_path / "numba-cache"
    cold = python(code, cache)
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.count(NOTICE) == 1
    assert f"cached in {cache} for later runs" in cold.stderr
    warm = python(code, cache)
    assert warm.returncode == 0 and warm.stdout == cold.stdout
    assert NOTICE not in warm.stderr


def test_a_long_generation_prints_plain_progress_where_no_bar_draws(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite_module, "CHUNK", 25)  # chunks do not change the bytes (test_determinism)
    spec = SuiteSpec(task="pathstar", variant="optimal", sizes={"train": 60, "val": 10, "test": 10},
                     config={"degree": 2, "path_len": 3, "num_nodes": 10})
    generate_suite(spec, tmp_path / "suite", progress=True)  # captured output: not a terminal
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("generate ")]
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert len(lines) == 5 and done == sorted(done) and done[-1] == 80  # train in 3 chunks, val, test
    assert all(line.split(": ")[1].split(" instances")[0].endswith("/80") for line in lines)
    assert {line.split("(")[1].split(")")[0] for line in lines} == {"train", "val", "test"}
    assert open_suite(tmp_path / "suite").meta["sizes"] == {"train": 60, "val": 10, "test": 10}


TINY = dict(preset="tiny", batch_size=8, lr=3e-3, min_lr=3e-4, log_every=2, checkpoint_every=100, threads=1)


def test_a_run_that_never_leaves_its_warmup_says_so_and_reports_its_peak_lr(make_suite, tmp_path, capsys):
    suite = make_suite("pathstar", "optimal", {"degree": 2, "path_len": 4, "num_nodes": 20})
    cfg = TrainConfig(steps=4, warmup_steps=10, **TINY)
    summary = train(suite, tmp_path / "short", cfg, progress=False)
    err = capsys.readouterr().err
    assert err.count("retroplan: warning: warmup_steps (10) >= steps (4)") == 1
    assert "the learning rate only rises, to 1.20e-03 of lr 0.003, and the cosine decay never starts" in err
    assert summary["peak_lr"] == pytest.approx(3e-3 * 4 / 10) == lr_at(cfg, 3)
    assert json.loads((tmp_path / "short" / "final.json").read_text())["peak_lr"] == summary["peak_lr"]

    long_enough = TrainConfig(steps=6, warmup_steps=2, **TINY)
    assert train(suite, tmp_path / "long", long_enough, progress=False)["peak_lr"] == 3e-3
    assert "warning" not in capsys.readouterr().err
    assert peak_lr(TrainConfig(steps=5, warmup_steps=0)) == TrainConfig().lr  # no warm-up: lr at once

    assert main(["train", str(suite), "--out", str(tmp_path / "cli"), "--preset", "tiny", "--steps",
                 "3", "--warmup-steps", "3", "--batch-size", "8", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "warmup_steps (3) >= steps (3)" in err and "peak lr 1.00e-03" in out
