"""Runs and suites that must not be trusted blindly (issue 10, train side): a resumed run
on another suite, a hand-edited meta.json, suite arrays whose values point outside their
range, a diverging or nonsensical learning-rate schedule, NaN in a JSON file, a symbolic
link that would carry a write outside its run, a resume into a folder that is not a run,
sizes without bound, a kill during `generate`, a sweep that can only fail, a negative
context, a corrupt checkpoint step and a flipped bit in the weights.

Every test uses a pathstar suite of 50 training instances and a `tiny` model trained for a
few steps, so each takes seconds.
"""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retroplan import analysis, checkpoint, fsutil
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.traces import suite as suite_module
from retroplan.traces.suite import SuiteSpec, generate_suite, meta_digest, open_suite
from retroplan.train import TrainConfig, train

PATHSTAR = {"degree": 2, "path_len": 3, "num_nodes": 10}
SIZES = {"train": 50, "val": 8, "test": 8}
TINY = dict(preset="tiny", batch_size=8, checkpoint_every=1, log_every=1, threads=1)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, SIZES), root / "suite", progress=False)
    # the same task config and vocabulary, another seed: only its meta.json's digest tells it apart
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 1, SIZES), root / "suite-seed1",
                   progress=False)
    train(root / "suite", root / "run", TrainConfig(steps=2, **TINY), progress=False)
    return root


@pytest.fixture
def tmp(shared, tmp_path):
    shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
    return tmp_path


def strict_json(text: str):
    """Parse as a strict JSON parser would: NaN and Infinity are not JSON."""
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


RESUME = ["train", "{tmp}/suite", "--out", "{tmp}/run", "--resume", "--preset", "tiny", "--steps", "2",
          "--batch-size", "8", "--checkpoint-every", "1", "--log-every", "1", "--threads", "1"]


def resume(tmp: Path) -> list[str]:
    return [a.format(tmp=tmp) for a in RESUME]


def one_sentence(argv, capsys, fragment: str) -> None:
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


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def latest(run: Path) -> Path:
    return checkpoint.latest_dir(run)


# ------------------------------------------------------------ 3. a run remembers its suite


def test_resuming_on_another_suite_of_the_same_config_is_refused(tmp, capsys):
    before = snapshot(tmp / "run")
    one_sentence(["train", tmp / "suite-seed1", "--out", tmp / "run", "--resume", "--preset", "tiny",
                  "--steps", "2", "--batch-size", "8", "--checkpoint-every", "1", "--log-every", "1",
                  "--threads", "1"], capsys, "resume with the suite it was trained on")
    assert snapshot(tmp / "run") == before


def test_check_suite_accepts_the_training_suite_and_refuses_another(tmp):
    run = checkpoint.read_run(tmp / "run")
    checkpoint.check_suite(tmp / "run", run, open_suite(tmp / "suite"))
    with pytest.raises(UserError, match="use the suite it was trained on"):
        checkpoint.check_suite(tmp / "run", run, open_suite(tmp / "suite-seed1"))


# ------------------------------------------------------------ 4. meta.json and the arrays


def edit_meta(suite: Path, change, reseal: bool) -> None:
    meta = json.loads((suite / "meta.json").read_text())
    change(meta)
    if reseal:  # as one who also recomputes the checksums would
        meta["files"] = {name: fsutil.sha256_file(suite / name) for name in meta["files"]}
        meta["meta_sha256"] = meta_digest(meta)
    (suite / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change", [
    lambda m: m.update(variant="reverse"),
    lambda m: m["config"].update(path_len=4),
    lambda m: m["splits"]["test"].update(instances=7),
    lambda m: m.update(seed=1),
], ids=["variant", "config", "split-count", "seed"])
def test_a_hand_edited_meta_json_is_refused(tmp, change):
    edit_meta(tmp / "suite", change, reseal=False)
    with pytest.raises(UserError, match=r"meta.json does not match its own checksum \(meta_sha256\)"):
        open_suite(tmp / "suite")


def test_a_suite_from_before_the_meta_digest_still_opens(tmp):
    edit_meta(tmp / "suite", lambda m: m.pop("meta_sha256"), reseal=False)
    assert len(open_suite(tmp / "suite").split("train")) == 50


def test_meta_counts_must_match_the_arrays_in_a_suite_without_digest(tmp):
    edit_meta(tmp / "suite", lambda m: (m.pop("meta_sha256"), m["splits"]["val"].update(examples=9)),
              reseal=False)
    with pytest.raises(UserError, match="has 8 examples where meta.json says 9"):
        open_suite(tmp / "suite").split("val")


def change_array(suite: Path, name: str, change) -> None:
    """Change `name`'s values and make every checksum match again."""
    array = np.load(suite / name)
    change(array)
    np.save(suite / name, array)
    edit_meta(suite, lambda m: None, reseal=True)


def break_lengths(a):  # row 0 gets length -1, row 1 the rest: the sum still fits the tokens
    a[1] += a[0] + 1
    a[0] = -1


@pytest.mark.parametrize("name,change,message", [
    ("test.tokens.npy", lambda a: a.__setitem__(5, 255), "a token id 255, outside the vocabulary"),
    ("test.instance.npy", lambda a: a.__setitem__(3, 8), "a row of instance 8, outside 0..7"),
    ("test.instance.npy", lambda a: a.__setitem__(3, -1), "a row of instance -1, outside 0..7"),
    ("test.lengths.npy", break_lengths, "a negative row length (-1)"),
    ("test.prompt_len.npy", lambda a: a.__setitem__(0, 1000), "a prompt length outside 0..its row's length"),
    ("test.inst.start.npy", lambda a: None, None),  # unchanged values: still opens
], ids=["token", "instance-too-large", "instance-negative", "negative-length", "prompt-too-long",
        "unchanged"])
def test_rehashed_arrays_with_values_out_of_range_are_refused(tmp, capsys, name, change, message):
    change_array(tmp / "suite", name, change)
    if message is None:
        open_suite(tmp / "suite").split("test")
        return
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_suite(tmp / "suite").split("test")
    one_sentence(["inspect", tmp / "suite", "--split", "test"], capsys, "(the suite is corrupt)")


# ------------------------------------------------------------ 6. schedules and divergence


@pytest.mark.parametrize("flags,message", [
    (["--min-lr", "5", "--lr", "0.001"], "train min_lr must be at most lr (0.001), got 5.0"),
    (["--lr", "inf"], "train lr must be a non-negative number, got inf"),
    (["--min-lr", "nan"], "train min_lr must be a non-negative number, got nan"),
])
def test_a_nonsense_schedule_is_refused(tmp, capsys, flags, message):
    one_sentence(["train", tmp / "suite", "--out", tmp / "new-run", "--preset", "tiny", "--steps", "2",
                  *flags], capsys, message)
    assert not (tmp / "new-run").exists()


def test_a_diverging_run_stops_naming_the_step_and_writes_no_nan(tmp, capsys):
    # lr 1e30 (warm-up: 1e28 at the first step): step 1's loss is computed with the initial
    # weights and is finite; its update makes the weights ~1e28, so step 2's logits overflow
    one_sentence(["train", tmp / "suite", "--out", tmp / "new-run", "--preset", "tiny", "--steps", "4",
                  "--batch-size", "8", "--checkpoint-every", "1", "--log-every", "1", "--threads", "1",
                  "--lr", "1e30"], capsys, "the loss was not finite (NaN or infinite) at step 2")
    assert latest(tmp / "new-run").name == "step-0000001"  # nothing saved from step 2 on
    log = (tmp / "new-run" / "train_log.jsonl").read_text().splitlines()
    assert [strict_json(line)["step"] for line in log] == [1]
    assert not (tmp / "new-run" / "final.json").exists()
    for path in (tmp / "new-run").rglob("*.json"):
        strict_json(path.read_text())


def test_a_checkpoint_before_the_first_log_line_holds_no_nan(tmp):
    # step 1 is saved before any step is logged: its loss is undefined, written as null
    train(tmp / "suite", tmp / "new-run", TrainConfig(steps=2, **dict(TINY, log_every=2)), progress=False)
    state = strict_json((tmp / "new-run" / "checkpoints" / "step-0000001" / "state.json").read_text())
    assert state["loss"] is None
    assert isinstance(strict_json((tmp / "new-run" / "final.json").read_text())["final_loss"], float)


def test_the_json_writer_turns_undefined_numbers_into_null(tmp_path):
    value = {"mean": float("nan"), "ci": [float("inf"), -float("inf"), 0.5], "n": 0,
             "nested": {"x": np.float64("nan")}}
    assert fsutil.json_line(value) == ('{"mean": null, "ci": [null, null, 0.5], "n": 0, '
                                       '"nested": {"x": null}}\n')
    fsutil.write_json(tmp_path / "m.json", value)
    assert strict_json((tmp_path / "m.json").read_text())["ci"] == [None, None, 0.5]


# ------------------------------------------------------------ 7. links never carry a write out


@pytest.mark.parametrize("name", ["train_log.jsonl", "final.json", "checkpoints/latest.json"])
def test_a_symlink_in_a_run_is_refused_and_nothing_is_written_outside(tmp, capsys, name):
    outside = tmp / "outside.txt"  # dangling: the link points at a file that does not exist yet
    (tmp / "run" / name).unlink(missing_ok=True)
    (tmp / "run" / name).symlink_to(outside)
    one_sentence(resume(tmp), capsys, f"{name} is a symbolic link")
    assert not outside.exists()


def test_appending_never_follows_a_link(tmp_path):
    (tmp_path / "log.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(UserError, match="is a symbolic link"):
        fsutil.open_append(tmp_path / "log.jsonl")
    assert not (tmp_path / "elsewhere.jsonl").exists()


# ------------------------------------------------------------ 8. smaller things


def test_resuming_into_a_folder_that_is_not_a_run_is_refused(tmp, capsys):
    before = snapshot(tmp / "suite")
    one_sentence(["train", tmp / "suite", "--out", tmp / "suite", "--resume", "--preset", "tiny",
                  "--steps", "2"], capsys, "it is not a run (it has no run.json)")
    assert snapshot(tmp / "suite") == before


def test_a_split_size_beyond_the_bound_is_refused(tmp_path, capsys):
    one_sentence(["generate", "pathstar", "--variant", "optimal", "--out", tmp_path / "new",
                  "--train", "99999999999999999999"], capsys,
                 "the train size must be at most 1,000,000,000 instances, got 99,999,999,999,999,999,999")
    assert list(tmp_path.iterdir()) == []


def test_generate_stops_early_when_the_disk_cannot_hold_the_suite(tmp_path, monkeypatch):
    monkeypatch.setattr(suite_module, "CHUNK", 16)  # the check runs after every chunk

    class Usage:
        free = 10_000  # bytes: the first 16 instances fit, 5,000 do not
    monkeypatch.setattr(suite_module.shutil, "disk_usage", lambda path: Usage)
    spec = SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, {"train": 5000, "val": 0, "test": 0})
    with pytest.raises(UserError, match="No space left on device for suite .*: the rest of it needs about"):
        generate_suite(spec, tmp_path / "new", progress=False)
    assert list(tmp_path.iterdir()) == []  # no suite, no temporary


def test_a_terminated_generate_leaves_no_temporaries(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "retroplan.cli", "generate", "pathstar", "--variant",
                             "optimal", "--out", str(tmp_path / "new"), "--train", "5000000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".new.*.tmp/*.part")) and time.monotonic() < deadline:
            time.sleep(0.01)  # until it is writing the suite's files
        assert proc.poll() is None, "generate finished before it could be terminated"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(tmp_path.iterdir()) == []


def test_sweep_tip_on_a_run_without_thoughts_refuses_before_evaluating(tmp, monkeypatch):
    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated before refusing")
    monkeypatch.setattr(analysis, "evaluate", evaluate)
    with pytest.raises(UserError, match="needs a stream variant .* was trained on optimal"):
        analysis.sweep_tip(tmp / "run", [1.0], [2], progress=False)
    assert not (tmp / "run" / "tip-sweep").exists()


def test_inspect_with_a_negative_context_is_refused(tmp, capsys):
    one_sentence(["inspect", tmp / "suite", "--context", "-5"], capsys,
                 "--context must be a non-negative integer (0: the longest row), got -5")


def test_a_checkpoint_step_that_is_not_a_number_is_one_sentence(tmp, capsys):
    path = latest(tmp / "run") / "state.json"
    path.write_text(path.read_text().replace('"step": 2', '"step": "abc"'))
    one_sentence(resume(tmp), capsys, "has no valid step (it says 'abc'); it is corrupt")
    with pytest.raises(UserError, match="has no valid step"):
        checkpoint.load_model(tmp / "run")


def flip_last_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # inside the last tensor's values: the file still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_a_flipped_bit_in_a_checkpoint_is_refused(tmp, capsys, name):
    flip_last_bit(latest(tmp / "run") / name)
    one_sentence(resume(tmp), capsys, f"{name} does not match its checksum in state.json")
    if name == "model.safetensors":
        with pytest.raises(UserError, match="does not match its checksum"):
            checkpoint.load_model(tmp / "run")


def test_a_checkpoint_from_before_the_digests_still_loads(tmp):
    path = latest(tmp / "run") / "state.json"
    state = json.loads(path.read_text())
    del state["files"]
    path.write_text(json.dumps(state))
    model, _, step = checkpoint.load_model(tmp / "run")
    assert step == 2
