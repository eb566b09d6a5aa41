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


def _sleeping_piece(seconds, progress):
    time.sleep(seconds)
    return {"slept": seconds}


def test_pool_workers_are_asked_where_they_are_while_unfinished(monkeypatch, capsys):
    """A pool's workers print nothing of their own: every WATCH_SECONDS the runner prints, for
    each unfinished piece, what `watch` says (nothing for a piece it cannot place)."""
    import retroplan.runner as runner

    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.0)
    asked = []

    def watch(name):
        asked.append(name)
        return "step 3 of 9" if name == "a" else None
    pieces = [("a", (1.0,)), ("b", (1.0,))]
    results = runner.run_pieces(_sleeping_piece, pieces, workers=2, watch=watch)
    assert results == {"a": {"slept": 1.0}, "b": {"slept": 1.0}}
    assert {"a", "b"} <= set(asked)
    printed = capsys.readouterr().out
    assert "      a: step 3 of 9\n" in printed and "      b:" not in printed
    # between reports nothing is asked
    asked.clear()
    monkeypatch.setattr(runner, "WATCH_SECONDS", 3600.0)
    runner._Watcher(watch)(["a", "b"])
    assert asked == []


def test_where_a_study_run_is_is_read_from_its_files(tmp_path, monkeypatch):
    import json

    import retroplan.experiment as experiment

    run = tmp_path / "runs" / "n8-optimal-s0"
    run.mkdir(parents=True)
    where = experiment._Whereabouts(tmp_path)
    assert where("n8-optimal-s0") is None  # not started
    (run / "run.json").write_text(json.dumps({"train": {"steps": 8000}}))

    def log_to(last):
        lines = [json.dumps({"step": s, "elapsed_s": 100 + 0.4 * s, "loss": 1.0})
                 for s in range(50, last + 1, 50)]
        (run / "train_log.jsonl").write_text("\n".join(lines) + '\n{"step": 12')  # a line being written
    log_to(1200)
    clock = iter([1000.0, 1600.0, 1660.0])  # ten minutes of wall time between the first two reports
    monkeypatch.setattr(experiment.time, "monotonic", lambda: next(clock))
    # the first report knows only the training clock; the next one the wall time between them
    assert where("n8-optimal-s0") == \
        "step 1,200 of 8,000, 0.40 s a training step (curves aside): ~45 min of training left"
    log_to(2200)
    assert where("n8-optimal-s0") == "step 2,200 of 8,000, 0.60 s a step since the last report: ~58 min left"
    log_to(7950)
    assert where("n8-optimal-s0") == \
        "step 7,950 of 8,000, 0.01 s a step since the last report: under a minute left"
    # left by an earlier invocation and not resumed yet: waiting, not running
    later = experiment._Whereabouts(tmp_path)
    later.since = time.time() + 60
    assert later("n8-optimal-s0") is None
    (run / "final.json").write_text("{}")
    assert where("n8-optimal-s0") == "trained; evaluating"
    assert later("n8-optimal-s0") is None  # trained before this invocation: reused as it was
