"""Training and evaluation: the loss falls, runs are reproducible and resumable, and every
reported verdict comes from replaying the parsed plan."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from retroplan import checkpoint
from retroplan.envs import digraph
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, evaluate, judge
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, lr_at, train

TINY = dict(preset="tiny", batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5, log_every=5,
            checkpoint_every=10, threads=1)


def losses(run):
    return [json.loads(l)["loss"] for l in (run / "train_log.jsonl").read_text().splitlines()]


def test_training_lowers_the_completion_loss(make_suite, tmp_path):
    suite = make_suite("pathstar", "reverse", {"degree": 2, "path_len": 4, "num_nodes": 20})
    summary = train(suite, tmp_path / "run", TrainConfig(steps=60, **TINY), progress=False)
    curve = losses(tmp_path / "run")
    assert summary["steps"] == 60 and len(curve) == 12
    assert np.mean(curve[-3:]) < 0.85 * np.mean(curve[:2])
    assert (tmp_path / "run" / "final.json").exists()


def test_same_seed_same_loss_curve_and_weights(make_suite, tmp_path):
    suite = make_suite("graph", "stream", {"num_nodes": 10, "max_distance": 4})
    for name in ("a", "b"):
        train(suite, tmp_path / name, TrainConfig(steps=20, **TINY), progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    wa = load_file(str(checkpoint.latest_dir(tmp_path / "a") / "model.safetensors"))
    wb = load_file(str(checkpoint.latest_dir(tmp_path / "b") / "model.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_weights(make_suite, tmp_path):
    suite = make_suite("pathstar", "stream", {"degree": 3, "path_len": 4, "num_nodes": 20})
    cfg = TrainConfig(steps=30, curve_every=10, curve_examples=16, **TINY)
    whole = train(suite, tmp_path / "whole", cfg, progress=False)
    train(suite, tmp_path / "cut", cfg, progress=False)
    # pretend the second run died right after its step-20 checkpoint
    cut = tmp_path / "cut"
    (cut / "final.json").unlink()
    latest = checkpoint.latest_dir(cut)
    import shutil

    shutil.rmtree(latest)
    (cut / "checkpoints" / "latest.json").write_text(json.dumps({"step": 20, "dir": "step-0000020"}))
    with pytest.raises(UserError, match="--resume"):
        train(suite, cut, cfg, progress=False)
    (cut / "curve.jsonl").write_text((cut / "curve.jsonl").read_text() + '{"step": 30, "val_acc')
    resumed = train(suite, cut, cfg, resume=True, progress=False)
    wa = load_file(str(checkpoint.latest_dir(tmp_path / "whole") / "model.safetensors"))
    wb = load_file(str(checkpoint.latest_dir(cut) / "model.safetensors"))
    assert all(bool((wa[k] == wb[k]).all()) for k in wa)
    assert losses(tmp_path / "whole") == losses(cut)
    # the budget counters carry on: same totals, same log lines (the clock aside), same curve
    counters = ("steps", "examples_seen", "forward_examples", "supervised_tokens", "tokens")
    assert [whole[k] for k in counters] == [resumed[k] for k in counters]
    assert whole["examples_seen"] == 30 * 16 and whole["supervised_tokens"] > 0

    def log(run, name="train_log.jsonl"):
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                for line in (run / name).read_text().splitlines()]

    assert log(tmp_path / "whole") == log(cut)
    assert [c["step"] for c in log(cut, "curve.jsonl")] == [10, 20, 30]
    assert log(tmp_path / "whole", "curve.jsonl") == log(cut, "curve.jsonl")


def test_resume_refuses_a_changed_config(make_suite, tmp_path):
    suite = make_suite("pathstar", "reverse", {"degree": 2, "path_len": 4, "num_nodes": 20})
    train(suite, tmp_path / "run", TrainConfig(steps=10, **TINY), progress=False)
    with pytest.raises(UserError, match="train.lr differs"):
        train(suite, tmp_path / "run", TrainConfig(steps=10, **dict(TINY, lr=1e-2)), resume=True,
              progress=False)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 55) == pytest.approx(5.5e-4)
    assert lr_at(cfg, 100) == pytest.approx(1e-4)


@pytest.mark.parametrize("variant", ["optimal", "reverse", "revfwd", "stream", "backward-stream",
                                     "lookahead", "corrupted", "revthink"])
def test_judge_accepts_the_references_and_rejects_broken_plans(make_suite, variant):
    suite = open_suite(make_suite("graph", variant, {"num_nodes": 12}))
    data = suite.split("test")
    for r in range(len(data)):
        i = int(data.instance[r])
        verdict = judge(suite, data.instances, i, data.completion(r))
        assert verdict["correct"], verdict
        if variant not in ("stream", "backward-stream"):  # DFS plans need not be shortest
            assert verdict["first_step"] and verdict["optimal"], verdict
        inst = suite.task.instance_at(data.instances, i)
        if variant in ("stream", "backward-stream"):
            assert verdict["faithful"]
        # drop the plan's last node: parseable, but it no longer reaches the goal
        ids = list(data.completion(r))
        cut = ids[:-2] + ids[-1:]
        bad = judge(suite, data.instances, i, cut)
        if bad["plan"] is not None:
            assert not bad["correct"]
            assert not digraph.replay_plan(inst, bad["plan"])[0]


def test_eval_reports_counts_records_and_the_clever_hans_measures(make_suite, tmp_path):
    suite = make_suite("pathstar", "optimal", {"degree": 2, "path_len": 4, "num_nodes": 20})
    train(suite, tmp_path / "run", TrainConfig(steps=20, **TINY), progress=False)
    m = evaluate(tmp_path / "run", cfg=EvalConfig(batch_size=16), progress=False)
    assert m["n"] == 60 and m["accuracy"]["n"] == 60 and m["chance"] == 0.5
    for key in ("first_step_accuracy", "tf_token_accuracy", "tf_first_token_accuracy",
                "tf_sequence_accuracy", "parse_failures"):
        assert m[key]["n"] == 60 and 0.0 <= m[key]["value"] <= 1.0
    assert set(m["by_difficulty"]) == {"degree", "path_len"}
    lines = (tmp_path / "run" / "eval-test" / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 60
    suite_obj = open_suite(suite)
    inst = suite_obj.split("test").instances
    for rec in records:  # every verdict agrees with an independent replay of its plan
        i = rec["row"]
        edges = {tuple(e) for e in inst["edges"][i].tolist()}
        plan = rec["plan"]
        ok = (plan is not None and len(plan) > 0 and plan[0] == inst["start"][i]
              and plan[-1] == inst["goal"][i] and all((u, v) in edges for u, v in zip(plan, plan[1:])))
        assert rec["correct"] == ok


def test_eval_refuses_a_suite_with_another_vocabulary(make_suite, tmp_path):
    suite = make_suite("pathstar", "optimal", {"degree": 2, "path_len": 4, "num_nodes": 20})
    other = make_suite("pathstar", "optimal", {"degree": 2, "path_len": 4, "num_nodes": 30})
    train(suite, tmp_path / "run", TrainConfig(steps=5, **TINY), progress=False)
    with pytest.raises(UserError, match="different vocabulary"):
        evaluate(tmp_path / "run", other, progress=False)
