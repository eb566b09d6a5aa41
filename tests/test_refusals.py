"""A refused or interrupted command changes nothing (issue 27): every command checks all it
can before it writes anything, so a refusal leaves every file of the folder it would have
written byte-identical (`conftest.folder_bytes` before and after), and a kill leaves the
user's folders where they were.

Every test uses a pathstar suite of 50 training instances and a `tiny` model trained for a
few steps, so each takes seconds.
"""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import folder_bytes

from retroplan import checkpoint, fsutil
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.traces.suite import SuiteSpec, generate_suite
from retroplan.train import TrainConfig, train

PATHSTAR = {"degree": 2, "path_len": 3, "num_nodes": 10}
SIZES = {"train": 50, "val": 8, "test": 8}
TINY = dict(preset="tiny", batch_size=8, checkpoint_every=10, log_every=5, threads=1)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, SIZES), root / "suite", progress=False)
    train(root / "suite", root / "run", TrainConfig(steps=20, **TINY), progress=False)
    return root


@pytest.fixture
def tmp(shared, tmp_path):
    shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
    return tmp_path


def refused(argv, capsys, fragment: str) -> None:
    """`retroplan ARGV` exits with 2 and one line `retroplan: error: ...` naming `fragment`."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retroplan: error: ") and lines[0].endswith("."), err
    assert fragment in err, err


def resume(tmp: Path, steps: int = 25) -> list:
    return ["train", "--out", tmp / "run", "--resume", "--steps", str(steps)]


# ------------------------------------------------------------ 1. a refused resume changes nothing


def truncate_optimizer(run: Path) -> None:
    path = checkpoint.latest_dir(run) / "optimizer.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def log_is_a_folder(run: Path) -> None:
    (run / "train_log.jsonl").unlink()
    (run / "train_log.jsonl").mkdir()


def garbage_param_groups(run: Path) -> None:
    path = checkpoint.latest_dir(run) / "state.json"
    path.write_text(path.read_text().replace('"param_groups": [', '"param_groups": ["garbage", ', 1))


@pytest.mark.parametrize("damage, fragment", [
    (truncate_optimizer, "it is corrupt"),
    (log_is_a_folder, "its train_log.jsonl is not a file"),
    (garbage_param_groups, "its optimizer state does not fit"),
], ids=["truncated-optimizer", "log-is-a-folder", "garbage-param-groups"])
def test_a_refused_resume_changes_nothing(tmp, capsys, damage, fragment):
    # a longer run asked for: before the fix run.json recorded 25 steps and a length change
    # that never happened, and final.json was deleted, although the resume was refused
    damage(tmp / "run")
    before = folder_bytes(tmp / "run")
    assert "final.json" in before
    refused(resume(tmp), capsys, fragment)
    assert folder_bytes(tmp / "run") == before


def test_a_resume_still_records_a_length_change(tmp):
    # the writes moved after the checks: an accepted resume still records and trains on
    assert main([str(a) for a in resume(tmp)]) == 0
    run = checkpoint.read_run(tmp / "run")
    assert run["train"]["steps"] == 25
    assert run["length_changes"] == [{"at_step": 20, "from_steps": 20, "to_steps": 25}]
    assert checkpoint.read_state(checkpoint.latest_dir(tmp / "run"))["step"] == 25


# ------------------------------------------------------------ 2. a resume needs its pointer


def test_a_resume_without_its_checkpoint_pointer_names_the_step_folders_and_refuses(tmp, capsys):
    (tmp / "run" / "checkpoints" / "latest.json").unlink()
    before = folder_bytes(tmp / "run")
    refused(resume(tmp), capsys, "checkpoints/latest.json is missing but it has the step folders "
                                 "step-0000010, step-0000020")
    assert folder_bytes(tmp / "run") == before


class Killed(BaseException):
    """Stands for a SIGKILL at one chosen write."""


def test_a_run_killed_between_its_first_step_folder_and_its_pointer_resumes(tmp, monkeypatch):
    # CI found this window by chance (a kill 0.1-0.6 of a run in): step-0000010 renamed into
    # place, latest.json not yet written, and the resume refused as if the pointer was deleted
    write_json = checkpoint.write_json

    def killed_at_the_first_pointer(path, data):
        if Path(path).name == "latest.json" and data.get("dir") is not None:
            raise Killed
        write_json(path, data)

    monkeypatch.setattr(checkpoint, "write_json", killed_at_the_first_pointer)
    with pytest.raises(Killed):
        train(tmp / "suite", tmp / "cut", TrainConfig(steps=20, **TINY), progress=False)
    monkeypatch.setattr(checkpoint, "write_json", write_json)
    assert (tmp / "cut" / "checkpoints" / "step-0000010" / "state.json").is_file()
    assert checkpoint.latest_dir(tmp / "cut") is None  # the pointer to no folder: step 0
    assert main(["train", "--out", str(tmp / "cut"), "--resume"]) == 0
    assert checkpoint.latest_dir(tmp / "cut").name == "step-0000020"
    assert folder_bytes(checkpoint.latest_dir(tmp / "cut"))["model.safetensors"] == \
        folder_bytes(checkpoint.latest_dir(tmp / "run"))["model.safetensors"]


# ------------------------------------------------------------ 3. eval --out replaces no evaluation


def test_eval_out_never_replaces_another_evaluation(tmp, capsys):
    run = tmp / "run"
    assert main(["eval", str(run)]) == 0  # the standard evaluation, in run/eval-test
    capsys.readouterr()
    before = folder_bytes(run)
    # before the fix this turned the standard evaluation into an n = 3 one
    refused(["eval", run, "--out", run / "eval-test", "--limit", "3"], capsys,
            "already holds other files or another evaluation")
    assert folder_bytes(run) == before
    # a folder of other files is not an evaluation's to take either
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("mine\n")
    refused(["eval", run, "--out", tmp / "notes", "--limit", "3"], capsys, "already holds")
    assert (tmp / "notes" / "todo.txt").read_text() == "mine\n"
    # the same evaluation again may replace itself (a rerun), and a new folder is fine
    assert main(["eval", str(run), "--out", str(run / "eval-test")]) == 0
    assert folder_bytes(run) == before
    assert main(["eval", str(run), "--out", str(tmp / "eval-limit3"), "--limit", "3"]) == 0


def test_eval_out_finishes_what_a_killed_evaluation_left(tmp):
    # records.jsonl without metrics.json: a kill between the two files, not another evaluation
    out = tmp / "killed"
    out.mkdir()
    (out / "records.jsonl").write_text('{"cut": tr')
    assert main(["eval", str(tmp / "run"), "--out", str(out), "--limit", "3"]) == 0
    assert (out / "metrics.json").is_file()


# ------------------------------------------------------------ 4. a killed export keeps the folder

KILLED_EXPORT = """
import os, signal, sys
from retroplan.traces import export
real_write = export.write_text
def write_then_die(path, text):  # the data files are written; the card is not
    real_write(path, text)
    os.kill(os.getpid(), signal.SIGKILL)
export.write_text = write_then_die
export.export_suite(sys.argv[1], sys.argv[2], "jsonl")
"""


def test_a_killed_export_leaves_the_users_empty_folder(tmp):
    out = tmp / "dataset"
    out.mkdir()  # made by the user for the export: before the fix a kill removed it
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(tmp / "suite"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert out.is_dir() and list(out.iterdir()) == []
    # the next export deletes the killed one's temporary and fills the folder
    assert main(["export", str(tmp / "suite"), "--out", str(out)]) == 0
    assert (out / "README.md").is_file()
    assert [p.name for p in tmp.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_export_leaves_the_users_empty_folder(tmp, monkeypatch):
    from retroplan.traces import export

    def fail(path, text):
        raise OSError(28, "No space left on device")

    out = tmp / "dataset"
    out.mkdir()
    monkeypatch.setattr(export, "write_text", fail)
    with pytest.raises(UserError, match="could not write"):
        export.export_suite(tmp / "suite", out, "jsonl")
    assert out.is_dir() and list(out.iterdir()) == []
    assert [p.name for p in tmp.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------ 5. smaller items


def test_a_245_character_name_gets_a_temporary_that_fits(tmp):
    long_name = "d" * 245  # .NAME.XXXXXXXX.tmp would be 259 bytes, over the 255 a name may hold
    assert main(["export", str(tmp / "suite"), "--out", str(tmp / long_name)]) == 0
    assert (tmp / long_name / "README.md").is_file()
    fsutil.write_text(tmp / ("f" * 250), "whole\n")
    assert (tmp / ("f" * 250)).read_text() == "whole\n"
    # a killed writer's temporary of a long name is still found (and removed) by the next one
    stale = tmp / (fsutil.temp_prefix("f" * 250) + "abcdefgh.tmp")
    stale.write_text("cut")
    assert len(stale.name) <= 255
    fsutil.write_text(tmp / ("f" * 250), "again\n")
    assert not stale.exists()
    # ... and only its own: another long name sharing the first 200 characters keeps its own
    assert fsutil.temp_prefix("f" * 250) != fsutil.temp_prefix("f" * 249)


def test_a_vanishing_temperature_is_one_sentence(tmp, capsys):
    # before: "probability tensor contains either inf, nan or element < 0" (logits / 1e-40)
    before = folder_bytes(tmp / "run")
    refused(["eval", tmp / "run", "--temperature", "1e-40", "--limit", "2"], capsys,
            "eval temperature must be 0 (greedy) or at least 1e-06")
    assert folder_bytes(tmp / "run") == before


def test_sweep_tip_refuses_an_infinite_alpha_before_evaluating(tmp, capsys, monkeypatch):
    from retroplan import analysis

    monkeypatch.setattr(analysis, "evaluate", lambda *a, **k: pytest.fail("evaluated before refusing"))
    before = folder_bytes(tmp / "run")
    refused(["sweep-tip", tmp / "run", "--alphas", "inf", "--betas", "1"], capsys,
            "alphas must be finite numbers >= 0, got inf")
    assert folder_bytes(tmp / "run") == before


@pytest.mark.parametrize("shard", [(3, 2), (0, 0), (-1, 2), (0, 1, 2)])
def test_an_impossible_shard_is_refused_before_writing(tmp, shard):
    spec = SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, SIZES)
    with pytest.raises(UserError, match=r"shard must be a pair \(i, N\) of integers with 0 <= i < N"):
        generate_suite(spec, tmp / "piece", shard=shard, progress=False)
    assert not (tmp / "piece").exists()
    assert [p.name for p in tmp.iterdir() if p.name.endswith(".tmp")] == []


def test_numpy_integers_in_a_config_are_the_integers_they_hold(tmp):
    import numpy as np

    spec = SuiteSpec("pathstar", "optimal", {k: np.int64(v) for k, v in PATHSTAR.items()}, {},
                     np.int64(0), {k: np.int64(v) for k, v in SIZES.items()})
    generate_suite(spec, tmp / "suite-np", progress=False)  # before: "degree must be an integer"
    assert folder_bytes(tmp / "suite-np") == folder_bytes(tmp / "suite")
    cfg = TrainConfig(**{**TINY, "steps": np.int64(3), "lr": np.float32(0.5)})
    cfg.validate()
    assert type(cfg.steps) is int and cfg.steps == 3 and type(cfg.lr) is float


STUDY = """
name = "refusals"
task = "pathstar"
variants = ["optimal"]
seeds = [0, 1]

[sizes]
train = 50
val = 8
test = 8

[[conditions]]
label = "d2"
degree = 2
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 2
batch_size = 8
threads = 1
"""


@pytest.mark.parametrize("line, message", [
    ("n_head = 3", "model n_embd (64) must be a multiple of n_head (3)"),
    ("dropout = 1.5", "model dropout must be in [0, 1), got 1.5"),
    ("context = 3", "train context 3 is too short for condition 'd2', variant optimal: its prompts are"),
], ids=["n_head", "dropout", "context"])
def test_a_study_with_an_impossible_model_writes_nothing_and_takes_the_corrected_file(
        tmp, capsys, line, message):
    from retroplan.experiment_file import load_experiment

    study = tmp / "exp.toml"
    study.write_text(STUDY + line + "\n")
    # before the fix: refused in the first piece's training, after its suite was written
    refused(["run", study, "--out", tmp / "st"], capsys, message)
    assert not (tmp / "st").exists()
    study.write_text(STUDY)  # corrected: nothing of the refused one stands in its way
    load_experiment(study)


def test_workers_beyond_the_pieces_start_no_idle_process(monkeypatch, tmp_path):
    from concurrent.futures import Future

    from retroplan import runner

    started = []

    class Pool:  # records the processes asked for; each piece "finished" at once
        def __init__(self, workers, mp_context=None, initializer=None, initargs=()):
            started.append(workers)

        def submit(self, fn, piece, name, args, threads):
            done = Future()
            done.set_result((name, {}, 0.0))
            return done

        def shutdown(self, wait=True, cancel_futures=False):
            pass

    monkeypatch.setattr(runner, "ProcessPoolExecutor", Pool)
    pieces = [("d2-optimal-s0", ()), ("d2-optimal-s1", ())]
    # pieces come back as they finish: in any order (a set of futures), each once
    finished = runner._run_pool(print, pieces, 12, False)
    assert sorted(name for name, _, _ in finished) == sorted(name for name, _ in pieces)
    assert started == [2]  # before the fix: 12


def test_an_unreachable_ray_address_fails_fast_and_writes_nothing(tmp, capsys):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    study = tmp / "exp.toml"
    study.write_text(STUDY)
    t0 = time.monotonic()
    refused(["run", study, "--out", tmp / "st", "--backend", "ray", "--address", f"127.0.0.1:{port}"],
            capsys, f"could not reach the Ray cluster at '127.0.0.1:{port}' within 10 s")
    assert time.monotonic() - t0 < 10
    assert not (tmp / "st").exists()
