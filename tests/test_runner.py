"""`retroplan run --workers N` and `--backend ray` make the same study as a serial run: the same
results.csv (timings aside), the same evaluation records, the same weights, and a piece killed
half-way is finished by the next run."""

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from retroplan.errors import UserError
from retroplan.experiment import run_experiment

# a matched budget (examples), so the baselines run in a first phase and the other variants'
# steps follow from them; one torch thread per run, so every backend rounds alike
TOML = """
name = "runner"
task = "pathstar"
variants = ["optimal", "reverse", "stream"]
seeds = [0, 1]

[study]
budget = "examples"

[sizes]
train = 200
val = 20
test = 30

[[conditions]]
label = "d2"
degree = 2
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 12
batch_size = 16
checkpoint_every = 6
log_every = 3
threads = 1

[eval]
batch_size = 64
"""

TIMINGS = {"train_seconds"}

# the whole file in the README tour's process: its module study is built once, and its Ray test
# and the tour never start two local Ray clusters side by side (tests/conftest.py)
pytestmark = pytest.mark.xdist_group("ray")


def _rows(out):
    rows = list(csv.DictReader((out / "results.csv").open()))
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _digests(out):
    """Every record and weight file a study wrote, by relative path -> sha256."""
    found = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.name in ("records.jsonl", "model.safetensors") or path.parent.parent.name == "suites":
            found[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = tmp_path_factory.mktemp("serial")
    (root / "exp.toml").write_text(TOML)
    run_experiment(root / "exp.toml", root / "out", progress=False)
    return root / "exp.toml", root / "out"


def test_two_local_workers_write_what_a_serial_run_writes(serial, tmp_path):
    toml, serial_out = serial
    out = tmp_path / "out"
    run_experiment(toml, out, progress=False, workers=2)
    assert _rows(out) == _rows(serial_out)
    digests = _digests(out)
    assert len(digests) >= 6 * 2  # 6 runs, each with its weights and test records
    assert digests == _digests(serial_out)
    # the matched budget held: every variant saw the baseline's examples (its own seed's run)
    rows = _rows(out)
    for seed in ("0", "1"):
        seen = {r["variant"]: int(r["examples_seen"]) for r in rows if r["seed"] == seed}
        assert seen["reverse"] >= seen["optimal"] and seen["stream"] >= seen["optimal"]


def test_runner_settings_are_checked_before_anything_is_written(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text(TOML)
    for kwargs, message in [({"workers": 0}, "positive integer"),
                            ({"backend": "slurm"}, "unknown backend 'slurm'"),
                            ({"address": "auto"}, "--address is for --backend ray"),
                            ({"workers": 2, "backend": "ray"}, "leave --workers out")]:
        with pytest.raises(UserError, match=message):
            run_experiment(toml, tmp_path / "out", progress=False, **kwargs)
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_killed_parallel_run_is_finished_by_the_next_one(serial, tmp_path):
    toml, serial_out = serial
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "retroplan.cli", "run", str(toml), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # wait until some piece has trained, then kill the whole group mid-study
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "runs").glob("*/checkpoints/step-*")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert not (out / "results.csv").exists()
    run_experiment(toml, out, progress=False, workers=2)
    assert _rows(out) == _rows(serial_out)
    assert _digests(out) == _digests(serial_out)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_ray_tasks_write_what_a_serial_run_writes(serial, tmp_path):
    pytest.importorskip("ray")
    toml, serial_out = serial
    out = tmp_path / "out"
    run_experiment(toml, out, progress=False, backend="ray")
    assert _rows(out) == _rows(serial_out)
    assert _digests(out) == _digests(serial_out)


def test_a_pool_worker_whose_piece_is_terminated_ends_instead_of_taking_the_next(monkeypatch):
    """The executor's worker loop catches BaseException: without ending the process, a SIGTERM
    turned into SystemExit left the worker alive to run the rest of a killed study."""
    import retroplan.runner as runner

    def terminated_piece(progress):
        raise SystemExit(143)

    def interrupted_piece(progress):
        raise KeyboardInterrupt

    exits = []

    def fake_exit(code):
        exits.append(code)
        raise RuntimeError("the process would end here")
    monkeypatch.setattr(runner.os, "_exit", fake_exit)
    for piece, code in ((terminated_piece, 143), (interrupted_piece, 130)):
        with pytest.raises(RuntimeError, match="would end here"):
            runner._run_in_pool_worker(piece, "p", (), 0)
        assert exits[-1] == code
    assert runner._run_in_pool_worker(lambda progress: 7, "p", (), 0)[:2] == ("p", 7)
