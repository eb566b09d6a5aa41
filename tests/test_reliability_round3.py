"""Reliability, round three (issue 25): sampled evaluation that does not depend on the batch
size, a run without validation rows, split values range-checked even under recomputed
checksums, absurd values and corrupt bookkeeping as one sentence, reused numbers
cross-checked, `--out` folders that must not be written into, locks, signals.

Every test uses a pathstar suite of a few dozen instances and a `tiny` model trained for a
few steps, so each takes seconds."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retroplan import fsutil
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, evaluate
from retroplan.traces.suite import SuiteSpec, generate_suite, meta_digest, open_suite
from retroplan.train import TrainConfig, train

PATHSTAR = {"degree": 2, "path_len": 3, "num_nodes": 10}
SIZES = {"train": 50, "val": 8, "test": 12}
TINY = dict(preset="tiny", batch_size=8, checkpoint_every=1, log_every=1, threads=1, warmup_steps=0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("round3")
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, SIZES), root / "suite", progress=False)
    train(root / "suite", root / "run", TrainConfig(steps=2, **TINY), progress=False)
    return root


@pytest.fixture
def tmp(shared, tmp_path):
    shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
    return tmp_path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(argv, capsys, fragment: str) -> str:
    """`retroplan ARGV` exits with 2 and prints one line `retroplan: error: ...` naming `fragment`."""
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retroplan: error: ") and lines[0].endswith("."), err
    assert fragment in err, err
    return lines[0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def records(eval_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (eval_dir / "records.jsonl").read_text().splitlines()]


# ------------------------------------------------------------ 1. sampling ignores the batch size


def test_sampled_evaluation_does_not_depend_on_the_batch_size(tmp):
    texts, logprobs = {}, {}
    for batch_size in (1, 7, 256):
        cfg = EvalConfig(temperature=1.0, samples=2, seed=5, batch_size=batch_size, device="cpu")
        evaluate(tmp / "run", cfg=cfg, out=tmp / f"e{batch_size}", progress=False)
        texts[batch_size] = [(r["row"], r["sample"], r["generated"])
                             for r in records(tmp / f"e{batch_size}")]
        logprobs[batch_size] = [r["logprob"] for r in records(tmp / f"e{batch_size}")]
    assert texts[1] == texts[7] == texts[256]
    # CPU matrix kernels round the last bit differently for another batch shape
    assert logprobs[1] == pytest.approx(logprobs[7], rel=1e-5)
    assert logprobs[1] == pytest.approx(logprobs[256], rel=1e-5)
    # the two samples of a row are drawn from different streams, and the seed matters
    assert len({t[2] for t in texts[1]}) > 1
    cfg = EvalConfig(temperature=1.0, samples=2, seed=6, batch_size=7, device="cpu")
    evaluate(tmp / "run", cfg=cfg, out=tmp / "e-seed6", progress=False)
    assert [r["generated"] for r in records(tmp / "e-seed6")] != [t[2] for t in texts[7]]


def test_a_limit_keeps_the_samples_of_the_rows_it_keeps(tmp):
    base = dict(temperature=1.0, samples=2, seed=5, device="cpu")
    evaluate(tmp / "run", cfg=EvalConfig(**base), out=tmp / "all", progress=False)
    evaluate(tmp / "run", cfg=EvalConfig(limit=3, batch_size=2, **base), out=tmp / "three", progress=False)
    rows = {r["row"] for r in records(tmp / "three")}
    kept = [r["generated"] for r in records(tmp / "all") if r["row"] in rows]
    assert [r["generated"] for r in records(tmp / "three")] == kept


# ------------------------------------------------------------ 2. validation without val rows


@pytest.fixture(scope="module")
def no_val_suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("noval") / "suite"
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, {"train": 20, "val": 0, "test": 5}),
                   path, progress=False)
    return path


def test_eval_every_on_a_suite_without_val_rows_is_refused_before_the_run_folder(no_val_suite, tmp_path,
                                                                                   capsys):
    one_sentence(["train", no_val_suite, "--out", tmp_path / "r", "--preset", "tiny", "--batch-size", "4",
                  "--steps", "4", "--eval-every", "2", "--threads", "1"], capsys,
                 "train eval_every needs rows in a val split")
    assert not (tmp_path / "r").exists()
    # without eval_every the same suite trains (its final val loss is null: there is nothing to measure)
    code, _, err = run_cli(["train", no_val_suite, "--out", tmp_path / "r", "--preset", "tiny",
                            "--batch-size", "4", "--steps", "2", "--threads", "1"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "final.json").read_text())["val_loss"] is None


STUDY = """name = "tiny"
task = "pathstar"
variants = ["optimal"]
seeds = [0]

[sizes]
train = 20
val = {val}
test = {test}

[[conditions]]
label = "d2"
degree = 2
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 2
batch_size = 4
threads = 1
{extra}
"""


@pytest.mark.parametrize("val,test,extra,fragment", [
    (0, 5, "eval_every = 1", "train eval_every needs rows in a val split, and [sizes] val is 0"),
    (0, 5, "curve_every = 1", "train curve_every needs rows in a val split, and [sizes] val is 0"),
    (4, 0, "", "[eval] evaluates split test, and [sizes] test is 0"),
], ids=["eval_every", "curve_every", "test-0"])
def test_an_empty_split_a_study_needs_is_refused_before_any_work(tmp_path, capsys, val, test, extra,
                                                                 fragment):
    (tmp_path / "exp.toml").write_text(STUDY.format(val=val, test=test, extra=extra))
    one_sentence(["run", tmp_path / "exp.toml", "--out", tmp_path / "out"], capsys, fragment)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ 3. instance values under recomputed checksums


def rehash(suite: Path) -> None:
    """Make every checksum in meta.json match the files again, as a careful forger would."""
    meta = json.loads((suite / "meta.json").read_text())
    meta["files"] = {name: fsutil.sha256_file(suite / name) for name in meta["files"]}
    meta["meta_sha256"] = meta_digest(meta)
    (suite / "meta.json").write_text(json.dumps(meta))


def change_array(suite: Path, name: str, change) -> None:
    array = np.load(suite / name)
    array = change(array)
    np.save(suite / name, array)
    rehash(suite)


def setting(index, value):
    def change(a):
        a[index] = value
        return a
    return change


@pytest.mark.parametrize("name,change,message", [
    ("test.inst.goal.npy", setting(0, 10**6),
     "goal 1000000 (instance 0) in test.inst.goal.npy, outside 0..9"),
    ("test.inst.start.npy", setting(1, -5), "start -5 (instance 1) in test.inst.start.npy, outside 0..9"),
    ("test.inst.edges.npy", setting((2, 1, 0), 10**6),
     "edges 1000000 (instance 2) in test.inst.edges.npy, outside 0..9"),
    ("test.inst.plan.npy", setting((0, 1), 10), "plan 10 (instance 0) in test.inst.plan.npy, outside 0..9"),
    ("test.inst.plan_len.npy", setting(0, 99),
     "plan_len 99 (instance 0) in test.inst.plan_len.npy, outside 3..3"),
    ("test.inst.goal.npy", lambda a: np.stack([a, a], axis=1),
     "test.inst.goal.npy of shape (12, 2), where one value per instance is allowed"),
    ("test.inst.edges.npy", lambda a: a[:, :, :1].copy(),
     "test.inst.edges.npy of shape (12, 4, 1), where (instances, 4, 2) is allowed"),
], ids=["goal", "start", "edge", "plan", "plan_len", "goal-2d", "edges-shape"])
def test_rehashed_instance_values_out_of_range_are_refused_before_eval(tmp, capsys, name, change, message):
    change_array(tmp / "suite", name, change)
    with pytest.raises(UserError, match=re.escape(message)):
        open_suite(tmp / "suite").split("test")
    # training reads only the train split, so it still succeeds (the repro) ...
    train(tmp / "suite", tmp / "run2", TrainConfig(steps=1, **TINY), progress=False)
    # ... and eval stops with one sentence instead of a segfault or numbers on impossible instances
    line = one_sentence(["eval", tmp / "run2", "--limit", "5", "--out", tmp / "e"], capsys, message)
    assert "(the suite is corrupt)" in line
    assert not (tmp / "e").exists()


@pytest.mark.parametrize("name,change,message", [
    ("test.inst.numbers.npy", setting((0, 2), 10**6),
     "numbers 1000000 (instance 0) in test.inst.numbers.npy, outside 1..99"),
    ("test.inst.target.npy", setting(1, -3),
     "target -3 (instance 1) in test.inst.target.npy, outside 10..100"),
    ("test.inst.plan.npy", setting((0, 0, 1), 7), "plan 7 (instance 0) in test.inst.plan.npy, outside 0..3"),
], ids=["number", "target", "operation"])
def test_rehashed_countdown_values_out_of_range_are_refused(tmp_path, name, change, message):
    suite = generate_suite(SuiteSpec("countdown", "optimal", {}, {}, 0, {"train": 4, "val": 2, "test": 3}),
                           tmp_path / "cd", progress=False)
    open_suite(suite).split("test")  # as generated: in range
    change_array(suite, name, change)
    with pytest.raises(UserError, match=re.escape(message)):
        open_suite(suite).split("test")


def test_every_generated_instance_is_inside_its_tasks_bounds(tmp_path):
    """The bounds refuse nothing a generator writes (every task, odd configs too)."""
    for task, config in [("pathstar", PATHSTAR), ("graph", {"structure": "balanced", "num_nodes": 30,
                                                             "max_lookahead": 3}),
                         ("graph", {}), ("countdown", {"n_inputs": 3, "operations": "+-"})]:
        path = generate_suite(SuiteSpec(task, "optimal", config, {}, 0, {"train": 20, "val": 5, "test": 5}),
                              tmp_path / f"{task}-{len(config)}", progress=False)
        suite = open_suite(path)
        for split in suite.splits:
            suite.split(split)


# ------------------------------------------------------------ 4. absurd values: one sentence up front

HUGE = "99999999999999999999"  # > 2**64: beyond every generator's seed range


@pytest.mark.parametrize("argv,fragment", [
    (["train", "{tmp}/suite", "--out", "{tmp}/new", "--preset", "tiny", "--steps", "1", "--seed", HUGE],
     f"train seed must be an integer in [0, 2**63), got {HUGE}"),
    (["eval", "{tmp}/run", "--temperature", "1", "--seed", HUGE, "--out", "{tmp}/e"],
     f"eval seed must be an integer in [0, 2**63), got {HUGE}"),
    (["generate", "countdown", "--variant", "optimal", "--held-out-seed", HUGE, "--out", "{tmp}/c"],
     f"countdown held_out_seed must be an integer in [0, 2**63), got {HUGE}"),
    (["probe", "{tmp}/run", "--target", "arm", "--seed", HUGE, "--out", "{tmp}/e"],
     f"probe seed must be an integer in [0, 2**63), got {HUGE}"),
    (["train", "{tmp}/suite", "--out", "{tmp}/new", "--preset", "tiny", "--steps", "1", "--threads",
      "100000"],
     "train threads must be at most this machine's"),
    (["train", "{tmp}/suite", "--out", "{tmp}/new", "--preset", "tiny", "--steps", "1", "--n-embd",
      "1048576"],
     "needs at least"),
    (["train", "{tmp}/suite", "--out", "{tmp}/new", "--preset", "tiny", "--steps", "1", "--context",
      "1000000000"], "needs at least"),
], ids=["train-seed", "eval-seed", "held-out-seed", "probe-seed", "threads", "n_embd", "context"])
def test_absurd_values_are_one_sentence_before_any_work(tmp, capsys, argv, fragment):
    before = snapshot(tmp)
    one_sentence([a.format(tmp=tmp) for a in argv], capsys, fragment)
    assert snapshot(tmp) == before
    assert not any((tmp / name).exists() for name in ("new", "e", "c"))


def test_a_study_seed_beyond_the_generators_range_is_refused(tmp_path, capsys):
    (tmp_path / "exp.toml").write_text(STUDY.format(val=2, test=2, extra="").replace(
        "seeds = [0]", f"seeds = [{2**63}]"))
    one_sentence(["run", tmp_path / "exp.toml", "--out", tmp_path / "out"], capsys,
                 "seeds must be a non-empty list of integers in [0, 2**63)")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ 5-6. a study's bookkeeping, corrupt or edited

STUDY_EXTRA = "checkpoint_every = 1\nlog_every = 1"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "exp.toml").write_text(STUDY.format(val=2, test=4, extra=STUDY_EXTRA))
    assert main(["run", str(root / "exp.toml"), "--out", str(root / "out")]) == 0
    return root


@pytest.fixture
def q(study, tmp_path):
    shutil.copytree(study, tmp_path, dirs_exist_ok=True)
    return tmp_path


RUN_DIR = "out/runs/d2-optimal-s0"


def results_csv(out: Path) -> str:
    """results.csv without its timing column (train_seconds differs run to run)."""
    import csv
    rows = list(csv.DictReader((out / "results.csv").open()))
    return json.dumps([{k: v for k, v in r.items() if k != "train_seconds"} for r in rows])


def rerun(q: Path, capsys) -> tuple[int, str, str]:
    return run_cli(["run", q / "exp.toml", "--out", q / "out"], capsys)


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


@pytest.mark.parametrize("change", [
    lambda m: [],
    lambda m: dict(m, accuracy=0.99),
    lambda m: dict(m, accuracy={"value": 0.99, "n": m["accuracy"]["n"]}),  # same structure
], ids=["list", "bare-float", "edited-value"])
def test_a_corrupt_or_edited_metrics_json_is_evaluated_again(q, capsys, change):
    before = results_csv(q / "out")
    metrics = q / RUN_DIR / "eval-test" / "metrics.json"
    edit_json(metrics, change)
    code, out, err = rerun(q, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "evaluating again" in out
    assert results_csv(q / "out") == before  # the evaluation's own numbers, not the edited one
    assert json.loads(metrics.read_text())["accuracy"]["value"] != 0.99


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "{\"a\": 1}", "\"--set x\""],
                         ids=["not-json", "numbers", "object", "string"])
def test_a_garbage_overrides_json_is_one_sentence(q, capsys, text):
    (q / "out" / "overrides.json").write_text(text)
    one_sentence(["run", q / "exp.toml", "--out", q / "out"], capsys, "overrides.json")


def test_a_two_dimensional_lengths_array_is_one_sentence_in_inspect(tmp, capsys):
    change_array(tmp / "suite", "test.lengths.npy", lambda a: a.reshape(2, -1))
    one_sentence(["inspect", tmp / "suite"], capsys, "test.lengths.npy")


def test_a_checkpoint_folder_copied_from_another_run_is_refused(q, capsys):
    # another run (another seed) of the same shape and the same steps
    run = q / RUN_DIR
    train(q / "out/suites/d2-optimal-s0", q / "other", TrainConfig(
        **dict(TINY, batch_size=4, seed=1, steps=2)), progress=False)
    step = sorted((run / "checkpoints").glob("step-*"))[-1]
    shutil.rmtree(step)
    shutil.copytree(q / "other" / "checkpoints" / step.name, step)
    line = one_sentence(["eval", run, "--out", q / "e"], capsys, "belongs to another run")
    assert str(step) in line
    one_sentence(["train", "--out", run, "--resume", "--steps", "3"], capsys, "belongs to another run")


# ------------------------------------------------------------ 7. --out folders eval and probe refuse


@pytest.mark.parametrize("command", ["eval", "probe"])
@pytest.mark.parametrize("where,fragment", [
    ("suite", "is inside suite"),
    ("suite/sub", "is inside suite"),
    ("run", "is the run folder itself"),
    ("run/checkpoints", "is inside the run's checkpoints"),
    ("run/checkpoints/step-0000002", "is inside the run's checkpoints"),
    ("other", "is inside another run"),
    ("other/eval-test", "is inside another run"),
])
def test_eval_and_probe_refuse_an_out_folder_that_belongs_to_something_else(tmp, capsys, command, where,
                                                                           fragment):
    shutil.copytree(tmp / "run", tmp / "other")
    before = snapshot(tmp)
    extra = ["--target", "arm"] if command == "probe" else []
    one_sentence([command, tmp / "run", *extra, "--out", tmp / where], capsys, fragment)
    assert snapshot(tmp) == before


# ------------------------------------------------------------ 8. a closed pipe is not an error


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    sizes = {"train": 3000, "val": 2, "test": 2}
    suite = generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, sizes), tmp_path / "big",
                           progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "retroplan.cli", "inspect", str(suite), "--rows", "3000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()  # `| head -1`: read a line, then close the pipe
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


# ------------------------------------------------------------ 11. a study run resumed by hand


def test_run_after_a_hand_resume_speaks_in_runs_terms(q, capsys):
    code, _, err = run_cli(["train", "--out", q / RUN_DIR, "--resume", "--steps", "3"], capsys)
    assert code == 0, err
    line = one_sentence(["run", q / "exp.toml", "--out", q / "out"], capsys, "resumed by hand")
    assert "--steps must be" not in line and "train.steps" in line


# ------------------------------------------------------------ 12. one `run` per --out at a time


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(q, capsys):
    from retroplan.fsutil import hold_lock

    with hold_lock(q / "out", "run"):  # as a first `run` still working there holds it
        line = one_sentence(["run", q / "exp.toml", "--out", q / "out"], capsys, f"pid {os.getpid()}")
    assert "another retroplan run" in line
    code, _, err = rerun(q, capsys)  # released: the next one runs
    assert code == 0, err


def test_the_lock_is_one_per_folder_and_released_on_exit(tmp_path):
    from retroplan.fsutil import hold_lock

    with hold_lock(tmp_path / "a", "train"):
        with hold_lock(tmp_path / "b", "train"):  # another folder: its own lock
            pass
        with pytest.raises(UserError, match=r"another retroplan train \(pid \d+\) is working in"):
            with hold_lock(tmp_path / "a", "train"):
                pass
    with hold_lock(tmp_path / "a", "train"):
        pass


# ------------------------------------------------------------ 13. signals


def test_a_terminated_serial_run_leaves_no_temporaries(tmp_path):
    (tmp_path / "exp.toml").write_text(STUDY.format(val=2, test=2, extra="checkpoint_every = 1").replace(
        "steps = 2", "steps = 5000"))
    proc = subprocess.Popen([sys.executable, "-m", "retroplan.cli", "run", str(tmp_path / "exp.toml"),
                             "--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        pattern = "runs/*/checkpoints/.step-*.tmp"
        while not list((tmp_path / "out").glob(pattern)) and time.monotonic() < deadline:
            time.sleep(0.001)  # until it is writing a checkpoint
        assert proc.poll() is None, "the run finished before it could be terminated"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_sigterm_the_moment_a_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, kind):
    """The race the test above can hit under load, made certain: SIGTERM arrives right after
    the temporary's entry is made, before the call that made it has returned."""
    from retroplan.fsutil import atomic_dir, atomic_path, terminate_as_exit

    name = "open" if kind == "file" else "mkdir"
    create = getattr(os, name)

    def create_then_terminated(path, *args, **kwargs):
        made = create(path, *args, **kwargs)
        if str(path).endswith(".tmp"):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises SystemExit soon after
            time.sleep(0.5)  # in a process with other threads the main one may see it a bit later
        return made
    monkeypatch.setattr(os, name, create_then_terminated)
    writer = atomic_path if kind == "file" else atomic_dir
    with pytest.raises(SystemExit) as ended, terminate_as_exit():
        with writer(tmp_path / "target"):
            pass
    monkeypatch.undo()
    assert ended.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_swallowed_by_a_callback_still_stops_the_command():
    from retroplan.fsutil import interrupt_noted

    with pytest.raises(KeyboardInterrupt):
        with interrupt_noted():
            try:  # what a compiled-code callback that catches everything does
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
            except KeyboardInterrupt:
                pass
    with interrupt_noted():  # no interrupt: nothing raised
        pass
