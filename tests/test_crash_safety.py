"""Crash safety: `generate`, `train`, `eval` and `run` are killed with SIGKILL at seeded
moments (in a subprocess, as a user's Ctrl-\\ or the OOM killer would), then run again. After
every kill nothing visible on disk is corrupt (a file is either absent or whole), and the
final result equals an uninterrupted run's: the same suite bytes, the same weights and
optimizer state, the same loss curve, the same metrics.

Kill moments are drawn from a seeded generator; they are conditions on the work done (bytes
written, log lines, a fraction of the reference run's duration), never asserts on time. The
only thing a kill may leave is a hidden temporary (`.NAME.XXXX.tmp`) that the next run
removes, and a cut last line in `train_log.jsonl`, which a resumed run trims.
"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_files
from safetensors.torch import load_file

from retroplan import checkpoint
from retroplan.cli import main
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, train

CLI = [sys.executable, "-m", "retroplan.cli"]
POLL_S = 0.002
SEED = 20240605


def cli(*args) -> None:
    """`retroplan ARGS` run whole, in this process: only the runs that are killed need their own."""
    assert main([str(a) for a in args]) == 0


def cli_process(*args) -> None:
    proc = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr


def kill_when(args, ready) -> bool:
    """Start `retroplan ARGS` and SIGKILL it as soon as `ready()` holds. True when it was
    killed, False when it finished first."""
    proc = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(POLL_S)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_after(args, seconds: float) -> bool:
    start = time.monotonic()
    return kill_when(args, lambda: time.monotonic() - start >= seconds)


def timed(*args) -> float:
    """Seconds `retroplan ARGS` takes in a process of its own, as the killed runs do (startup included)."""
    start = time.monotonic()
    cli_process(*args)
    return time.monotonic() - start


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith((".tmp", ".part"))


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if is_temporary(p)]


def visible_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_temporary(Path(d))]
        for name in filenames:
            if not is_temporary(Path(name)):
                yield Path(dirpath) / name


def assert_nothing_corrupt(root: Path) -> None:
    """Every visible file is whole: suites pass their checksums, JSON parses, JSONL lines
    parse (the train log may end in one cut line), safetensors load, the checkpoint pointer
    names a complete step folder."""
    for path in visible_files(root):
        if path.name == "meta.json":
            open_suite(path.parent)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            lines = path.read_text().split("\n")
            whole = lines[:-1] if path.name != "train_log.jsonl" else lines[:-2]
            for line in whole:
                json.loads(line)
        elif path.suffix == ".safetensors":
            load_file(str(path))
    for pointer in root.rglob("checkpoints/latest.json"):
        step_dir = checkpoint.latest_dir(pointer.parent.parent)
        if step_dir is None:  # the pointer written before a run's first step folder
            continue
        for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
            assert (step_dir / name).is_file(), step_dir / name


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and bool((ta[key] == tb[key]).all()), key


def log_records(run: Path) -> list[dict]:
    """The train log without its wall-clock field."""
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


UNTIMED = ("train_seconds", "tokens_per_second")


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Same final weights, optimizer moments and RNG state, loss curve and summary."""
    ref_ckpt, res_ckpt = checkpoint.latest_dir(reference), checkpoint.latest_dir(resumed)
    assert ref_ckpt.name == res_ckpt.name
    assert_same_tensors(ref_ckpt / "model.safetensors", res_ckpt / "model.safetensors")
    assert_same_tensors(ref_ckpt / "optimizer.safetensors", res_ckpt / "optimizer.safetensors")
    assert log_records(reference) == log_records(resumed)
    final_ref = json.loads((reference / "final.json").read_text())
    final_res = json.loads((resumed / "final.json").read_text())
    for key in UNTIMED:
        final_ref.pop(key), final_res.pop(key)
    assert final_ref == final_res


# --------------------------------------------------------------------------- generate


def test_generate_killed_anywhere_leaves_no_suite_and_reruns_to_the_same_bytes(tmp_path):
    args = ["generate", "graph", "--variant", "stream", "--num-nodes", 15, "--train", 60000,
            "--val", 500, "--test", 500, "--seed", 3]
    cli(*args, "--out", tmp_path / "reference")
    total = sum(p.stat().st_size for p in (tmp_path / "reference").iterdir())
    out = tmp_path / "out"

    def bytes_written():  # everything in the hidden folder the suite is being built in
        total = 0
        try:
            for folder in tmp_path.glob(".out.*.tmp"):
                for path in folder.iterdir():
                    total += path.stat().st_size
        except FileNotFoundError:  # renamed or replaced while we looked: look again next poll
            return 0
        return total

    rng = random.Random(SEED)
    for fraction in sorted(rng.uniform(0.05, 0.75) for _ in range(3)):
        assert kill_when(args + ["--out", out], lambda f=fraction: bytes_written() >= f * total)
        assert not out.exists()  # a suite appears complete or not at all
        assert_nothing_corrupt(tmp_path)
    cli(*args, "--out", out)
    assert_same_files(tmp_path / "reference", out)
    assert temporaries(tmp_path) == []  # the rerun cleared what the kills left


# --------------------------------------------------------------------------- train

TRAIN_FLAGS = ["--preset", "tiny", "--steps", 160, "--batch-size", 16, "--checkpoint-every", 20,
               "--log-every", 5, "--threads", 1, "--lr", 3e-3, "--warmup-steps", 10]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small suite and an uninterrupted reference run on it (CLI, as the user runs it)."""
    root = tmp_path_factory.mktemp("trained")
    cli("generate", "pathstar", "--variant", "reverse", "--degree", 2, "--path-len", 4,
        "--num-nodes", 20, "--train", 2000, "--val", 50, "--test", 200, "--out", root / "suite")
    cli("train", root / "suite", "--out", root / "reference", *TRAIN_FLAGS)
    return root


def test_train_killed_anywhere_resumes_to_the_uninterrupted_weights(trained, tmp_path):
    run = tmp_path / "run"
    args = ["train", trained / "suite", "--out", run, *TRAIN_FLAGS, "--resume"]
    log = run / "train_log.jsonl"

    def lines_logged():
        return log.read_bytes().count(b"\n") if log.exists() else 0

    rng = random.Random(SEED + 1)
    total_lines = 160 // 5
    for lines in sorted(rng.sample(range(1, total_lines), 4)):
        # a kill lands between any two writes: mid log line, mid checkpoint, before latest.json
        assert kill_when(args, lambda n=lines: lines_logged() >= n)
        assert_nothing_corrupt(tmp_path)
        assert not (run / "final.json").exists()
    cli(*args)
    assert_same_run(trained / "reference", run)
    assert temporaries(tmp_path) == []


def test_train_killed_before_its_summary_resumes_to_the_same_summary(make_suite, tmp_path):
    # The narrowest window: after the last checkpoint, before final.json. The resumed run
    # trains no step, yet must report the uninterrupted run's final loss and token count.
    suite = make_suite("pathstar", "reverse", {"degree": 2, "path_len": 4, "num_nodes": 20})
    cfg = TrainConfig(preset="tiny", steps=20, batch_size=8, checkpoint_every=10, log_every=5,
                      threads=1)
    train(suite, tmp_path / "reference", cfg, progress=False)
    train(suite, tmp_path / "run", cfg, progress=False)
    (tmp_path / "run" / "final.json").unlink()
    train(suite, tmp_path / "run", cfg, resume=True, progress=False)
    assert_same_run(tmp_path / "reference", tmp_path / "run")


# --------------------------------------------------------------------------- eval


@pytest.mark.slow
def test_eval_killed_anywhere_reruns_to_the_same_metrics(trained, tmp_path):
    run = trained / "reference"
    seconds = timed("eval", run, "--out", tmp_path / "reference-eval")
    out = tmp_path / "eval"
    rng = random.Random(SEED + 2)
    for fraction in sorted(rng.uniform(0.2, 1.0) for _ in range(4)):
        kill_after(["eval", run, "--out", out], fraction * seconds)
        assert_nothing_corrupt(tmp_path)
    cli("eval", run, "--out", out)
    reference = tmp_path / "reference-eval"
    assert (out / "records.jsonl").read_bytes() == (reference / "records.jsonl").read_bytes()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads((reference / "metrics.json").read_text())
    assert temporaries(tmp_path) == []


# --------------------------------------------------------------------------- run

EXPERIMENT = """
name = "crash"
task = "pathstar"
variants = ["optimal", "reverse"]
seeds = [0, 1]

[sizes]
train = 1500
val = 20
test = 60

[[conditions]]
label = "small"
degree = 2
path_len = 4
num_nodes = 16

[train]
preset = "tiny"
steps = 60
batch_size = 16
checkpoint_every = 20
log_every = 5
threads = 1

[eval]
batch_size = 64
"""


def read_results(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in UNTIMED} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_run_killed_again_and_again_finishes_with_the_uninterrupted_results(tmp_path):
    toml = tmp_path / "crash.toml"
    toml.write_text(EXPERIMENT)
    seconds = timed("run", toml, "--out", tmp_path / "reference")
    out = tmp_path / "out"
    rng = random.Random(SEED + 3)
    kills = 0
    for _ in range(6):  # each attempt starts over and gets a little further
        kills += kill_after(["run", toml, "--out", out], rng.uniform(0.1, 0.6) * seconds)
        assert_nothing_corrupt(tmp_path)
    assert kills >= 3
    cli("run", toml, "--out", out)
    reference = tmp_path / "reference"
    assert read_results(out / "results.csv") == read_results(reference / "results.csv")
    for name in sorted(p.name for p in (reference / "runs").iterdir()):
        assert_same_files(reference / "suites" / name, out / "suites" / name)
        assert_same_run(reference / "runs" / name, out / "runs" / name)
        for file in ("records.jsonl", "metrics.json"):
            a = (reference / "runs" / name / "eval-test" / file).read_text()
            b = (out / "runs" / name / "eval-test" / file).read_text()
            assert a.replace(str(reference), str(out)) == b, (name, file)
    assert (out / "report.md").read_text().rstrip().endswith("```")
    assert temporaries(tmp_path) == []
