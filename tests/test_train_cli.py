"""`train --resume` without repeating flags, `--steps N` to extend a run, plain progress lines
where no bar can draw, and optional TensorBoard logging."""

import builtins
import json

import pytest

from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.train import TrainConfig, train

SIZES = {"train": 200, "val": 20, "test": 20}
FLAGS = ["--preset", "tiny", "--n-layer", "1", "--batch-size", "8", "--log-every", "2",
         "--checkpoint-every", "3", "--threads", "1", "--warmup-steps", "2"]


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_resume_reads_the_runs_settings_and_steps_extends_a_finished_run(make_suite, tmp_path, capsys):
    suite = make_suite(sizes=SIZES)
    run = tmp_path / "run"
    assert main(["train", str(suite), "--out", str(run), "--steps", "6", *FLAGS]) == 0
    first = _log(run)
    # no suite and no flags: everything from the run; --steps 10 continues the finished run
    assert main(["train", "--out", str(run), "--resume", "--steps", "10"]) == 0
    assert "10 steps" in capsys.readouterr().out
    described = json.loads((run / "run.json").read_text())
    assert described["train"]["steps"] == 10 and described["model"]["n_layer"] == 1
    assert described["length_changes"] == [{"at_step": 6, "from_steps": 6, "to_steps": 10}]
    log = _log(run)
    assert log[: len(first)] == first and log[-1]["step"] == 10  # the first 6 steps kept as they were
    assert json.loads((run / "final.json").read_text())["steps"] == 10
    # the schedule from step 6 on is a 10-step one: the rate rose again after the old end
    assert log[3]["lr"] > first[-1]["lr"]
    # a finished run resumed as it is does nothing; a run cannot be made shorter than it is
    stamp = (run / "final.json").stat().st_mtime_ns
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert (run / "final.json").stat().st_mtime_ns == stamp
    assert main(["train", "--out", str(run), "--resume", "--steps", "8"]) == 2
    assert "--steps must be at least 10" in capsys.readouterr().err
    # a setting that changes the numbers is still refused
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.5"]) == 2
    assert "train.lr differs" in capsys.readouterr().err


def test_train_without_a_suite_is_one_sentence(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "train needs a suite" in capsys.readouterr().err


def test_without_a_terminal_progress_is_plain_lines(make_suite, tmp_path, capsys):
    cfg = TrainConfig(preset="tiny", n_layer=1, steps=8, batch_size=8, log_every=2, checkpoint_every=8,
                      threads=1, warmup_steps=2)
    train(make_suite(sizes=SIZES), tmp_path / "run", cfg, progress=True)  # pytest's output is no terminal
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train optimal")]
    assert [line.split("step ")[1].split(",")[0] for line in lines] == ["2/8", "4/8", "6/8", "8/8"]
    assert "loss" in lines[0] and "lr" in lines[0]


def test_tensorboard_gets_loss_lr_and_curve_points(make_suite, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(preset="tiny", n_layer=1, steps=6, batch_size=8, log_every=2, checkpoint_every=6,
                      threads=1, warmup_steps=2, tensorboard=True, curve_every=3, curve_examples=10)
    run = tmp_path / "run"
    train(make_suite(sizes=SIZES), run, cfg, progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/val_loss", "curve/val_accuracy"} <= tags
    final = json.loads((run / "final.json").read_text())  # the validation loss of the summary
    val_loss = [(e.step, e.value) for e in events.Scalars("train/val_loss")]
    assert val_loss == [(6, pytest.approx(final["val_loss"]))]
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({r["step"]: r["loss"] for r in _log(run)}, abs=1e-5)


def test_tensorboard_without_the_extra_says_how_to_install_it(make_suite, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = TrainConfig(preset="tiny", n_layer=1, steps=2, batch_size=8, threads=1, tensorboard=True)
    with pytest.raises(UserError, match=r"pip install 'retroplan\[tensorboard\]'"):
        train(make_suite(sizes=SIZES), tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
