"""What a matched budget needs: the trainer's exact counters (examples, forward examples,
supervised tokens), `budget_steps` / `plan_steps` that predict them, checkpoints kept at
chosen steps (and `eval --step`), learning curves in curve.jsonl, and the precision option."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from retroplan import checkpoint
from retroplan import device as devices
from retroplan.batching import BatchOrder, budget_steps, supervised_tokens_per_row
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, evaluate
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, plan_steps, train

TINY = dict(preset="tiny", batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5, log_every=1,
            checkpoint_every=100, threads=1)
PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and "Traceback" not in message


def log_lines(run, name="train_log.jsonl"):
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def hand_counts(suite_path, cfg: TrainConfig):
    """Per step: (rows, forward rows, supervised tokens) of the batch the trainer draws,
    counted from the suite's rows directly (completion tokens, minus the no-loss tokens)."""
    suite = open_suite(suite_path)
    split = suite.split("train")
    no_loss = set(suite.grammar.no_loss_tokens(suite.vocab))
    order = BatchOrder(split.lengths, np.arange(len(split)), cfg.batch_size, cfg.seed)
    out = []
    for step in range(cfg.steps):
        rows = order.batch(step)
        sup = sum(sum(1 for t in split.completion(int(r)).tolist() if t not in no_loss) for r in rows)
        out.append((len(rows), int((split.kind[rows] == 0).sum()), sup))
    return out


# --------------------------------------------------------------------------- counters


@pytest.mark.parametrize("variant", ["revthink", "lookahead"])
def test_counters_are_the_hand_counted_totals_of_the_batches_drawn(make_suite, tmp_path, variant):
    # revthink: rows of kind 1 and 2 (backward objectives); lookahead: a no-loss token (<T>)
    suite = make_suite("pathstar", variant, PATHSTAR)
    cfg = TrainConfig(steps=12, **TINY)
    summary = train(suite, tmp_path / "run", cfg, progress=False)
    per_step = np.cumsum(hand_counts(suite, cfg), axis=0)
    s = open_suite(suite)
    if variant == "revthink":
        assert 0 < per_step[-1, 1] < per_step[-1, 0]  # backward rows were drawn and not counted
    else:
        assert s.grammar.no_loss_tokens(s.vocab)
    for rec in log_lines(tmp_path / "run"):
        ex, fwd, sup = per_step[rec["step"] - 1]
        assert (rec["examples_seen"], rec["forward_examples"], rec["supervised_tokens"]) == (ex, fwd, sup)
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final == summary
    assert (summary["steps"], summary["examples_seen"], summary["forward_examples"],
            summary["supervised_tokens"]) == (12, *per_step[-1])
    assert summary["tokens"] >= summary["supervised_tokens"]  # positions, padding included
    # the per-row count the planner uses is the same count
    split = s.split("train")
    per_row = supervised_tokens_per_row(split, s.grammar.no_loss_tokens(s.vocab), chunk_tokens=97)
    assert per_row.tolist() == supervised_tokens_per_row(
        split, s.grammar.no_loss_tokens(s.vocab), rows=np.arange(len(split))).tolist()
    order = BatchOrder(split.lengths, np.arange(len(split)), cfg.batch_size, cfg.seed)
    assert sum(int(per_row[order.batch(k)].sum()) for k in range(12)) == summary["supervised_tokens"]
    # plan_steps predicts, for every amount reached at a logged step, exactly that step
    logged = log_lines(tmp_path / "run")
    for what, key in (("tokens", "supervised_tokens"), ("forward_examples", "forward_examples"),
                      ("examples", "examples_seen")):
        for rec in logged:
            before = logged[rec["step"] - 2][key] if rec["step"] > 1 else 0
            if rec[key] > before:  # the step at which this count was first reached
                assert plan_steps(suite, cfg, what, rec[key]) == rec["step"], (what, rec)
                assert plan_steps(suite, cfg, what, before + 1) == rec["step"], (what, rec)


# ------------------------------------------------------------------------ budget_steps


def hand_split():
    """Eight rows: prompt [1, 2] (3 tokens with <bos>=1), completions of 1-4 tokens; token 9
    carries no loss; rows 2 and 5 are backward rows (kind 1)."""
    completions = [[5, 6], [5, 9, 6], [7], [5, 6, 7, 8], [9, 9, 5], [6], [5, 6, 7], [8, 9]]
    rows = [[1, 3, 4] + c for c in completions]
    lengths = np.array([len(r) for r in rows])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.concatenate([np.array(r) for r in rows])
    split = _Split(tokens=tokens, lengths=lengths, prompt_len=np.full(8, 3),
                   kind=np.array([0, 0, 1, 0, 0, 1, 0, 0], dtype=np.int8), offsets=offsets,
                   row=lambda r: tokens[offsets[r]: offsets[r + 1]])
    supervised = [2, 2, 1, 4, 1, 1, 3, 1]  # by hand: completion tokens that are not 9
    return split, supervised


class _Split(SimpleNamespace):
    def __len__(self):
        return len(self.lengths)


def test_budget_steps_for_each_kind_on_a_hand_built_split():
    split, supervised = hand_split()
    assert supervised_tokens_per_row(split, [9]).tolist() == supervised
    counts = {"examples": np.ones(8, int), "forward_examples": (split.kind == 0).astype(int),
              "tokens": np.array(supervised)}
    for rows in (np.arange(8), np.array([0, 1, 2, 5, 6])):  # every row; a subset (3 forward)
        order = BatchOrder(split.lengths, rows, 2, seed=3)
        for what, weight in counts.items():
            running = np.cumsum([weight[order.batch(k)].sum() for k in range(40)])
            for amount in range(1, int(running[-1]) + 1):
                want = int(np.searchsorted(running, amount)) + 1  # first step reaching it
                got = budget_steps(split, 2, what, amount, seed=3, rows=rows, no_loss=[9])
                assert got == want, (what, amount, rows)
    assert budget_steps(split, 2, "steps", 17) == 17
    assert budget_steps(split, 2, "examples", 5) == 3
    # tokens: an epoch holds every row once, so 15 tokens take exactly one epoch (4 steps)
    assert budget_steps(split, 2, "tokens", 15, seed=3, no_loss=[9]) == 4
    # the expected value: ceil(amount / (2 rows x 15/8 tokens a row))
    assert budget_steps(split, 2, "tokens", 100, no_loss=[9], exact=False) == math.ceil(100 / 3.75)
    # a context cuts rows: max_len 5 keeps 2 completion tokens at most
    assert supervised_tokens_per_row(split, [9], max_len=5).tolist() == [2, 1, 1, 2, 0, 1, 2, 1]


@pytest.mark.parametrize("what, amount, match", [
    ("flops", 10, "budget kind must be one of steps, examples, tokens, forward_examples"),
    ("tokens", 0, "must be a positive integer"),
    ("tokens", 2.5, "must be a positive integer"),
    ("forward_examples", 3, "no training row counts towards a forward_examples budget"),
])
def test_budget_steps_refuses_in_one_sentence(what, amount, match):
    split, _ = hand_split()
    with pytest.raises(UserError, match=match) as exc:
        budget_steps(split, 2, what, amount, rows=np.array([2, 5]) if what == "forward_examples" else None)
    assert one_sentence(str(exc.value))


# ------------------------------------------------------------- kept checkpoints, eval --step


def test_keep_steps_keeps_those_checkpoints_and_eval_step_evaluates_them(make_suite, tmp_path, capsys):
    suite = make_suite("pathstar", "optimal", PATHSTAR)
    run = tmp_path / "run"
    cfg = TrainConfig(steps=20, **dict(TINY, log_every=5, checkpoint_every=5), keep_steps=[7, 3])
    train(suite, run, cfg, progress=False)
    # 3 and 7 are written although not multiples of 5, and kept; of the others the two newest
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [
        "step-0000003", "step-0000007", "step-0000015", "step-0000020"]
    assert checkpoint.available_steps(run) == [3, 7, 15, 20]
    assert json.loads((run / "run.json").read_text())["train"]["keep_steps"] == [3, 7]
    model, _, step = checkpoint.load_model(run, step=7)
    assert step == 7
    from safetensors.torch import load_file
    saved = load_file(str(run / "checkpoints" / "step-0000007" / "model.safetensors"))
    assert all(bool((model.state_dict()[k] == v).all()) for k, v in saved.items())
    # the CLI: eval --step 7 --limit 20 writes eval-test-step7-limit20, not the final evaluation
    final = evaluate(run, cfg=EvalConfig(batch_size=32, limit=20), progress=False)
    before = (run / "eval-test" / "metrics.json").read_text()
    assert main(["eval", str(run), "--step", "7", "--batch-size", "32", "--limit", "20"]) == 0
    m = json.loads((run / "eval-test-step7-limit20" / "metrics.json").read_text())
    assert m["step"] == 7 and final["step"] == 20 and m["n"] == 20
    assert (run / "eval-test" / "metrics.json").read_text() == before
    # a step that was not kept: one sentence naming the steps there are
    assert main(["eval", str(run), "--step", "5"]) == 2
    err = capsys.readouterr().err.strip().removeprefix("retroplan: error: ")
    assert err == f"run {run} has no checkpoint at step 5; the steps it kept are: 3, 7, 15, 20."
    # the CLI flag of train
    assert main(["train", str(suite), "--out", str(tmp_path / "cli"), "--preset", "tiny", "--steps", "4",
                 "--batch-size", "8", "--threads", "1", "--checkpoint-every", "10",
                 "--keep-steps", "1,2"]) == 0
    assert checkpoint.available_steps(tmp_path / "cli") == [1, 2, 4]


@pytest.mark.parametrize("setting, match", [
    (dict(keep_steps=[0]), r"train keep_steps must be steps from 1 to steps \(10\), got 0\."),
    (dict(keep_steps=[5, 11]), r"train keep_steps must be steps from 1 to steps \(10\), got 11\."),
    (dict(keep_steps=[2.5]), "train keep_steps must be a list of step numbers"),
    (dict(keep_steps="5"), "train keep_steps must be a list of step numbers"),
    (dict(precision="fp16"), "train precision must be auto, fp32 or bf16, got 'fp16'."),
    (dict(curve_examples=0), "train curve_examples must be a positive integer"),
    (dict(curve_every=-1), "train curve_every must be a non-negative integer"),
])
def test_bad_settings_are_one_sentence(setting, match):
    with pytest.raises(UserError, match=match) as exc:
        TrainConfig.from_dict(dict(steps=10, **setting))
    assert one_sentence(str(exc.value))


def test_cpu_bf16_is_refused_without_native_support_and_used_with_it(make_suite, tmp_path, monkeypatch):
    suite = make_suite("pathstar", "optimal", PATHSTAR)
    cfg = TrainConfig(steps=2, precision="bf16", device="cpu", **TINY)
    monkeypatch.setattr(devices, "cpu_bf16_supported", lambda: False)
    with pytest.raises(UserError, match="precision bf16 needs a CPU with native BF16") as exc:
        train(suite, tmp_path / "no", cfg, progress=False)
    assert one_sentence(str(exc.value)) and not (tmp_path / "no").exists()
    monkeypatch.setattr(devices, "cpu_bf16_supported", lambda: True)
    summary = train(suite, tmp_path / "yes", cfg, progress=False)
    assert summary["precision"] == "bf16" and math.isfinite(summary["final_loss"])
    auto = train(suite, tmp_path / "auto", TrainConfig(steps=2, device="cpu", **TINY), progress=False)
    assert auto["precision"] == "fp32"


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "fma"})
    assert devices.cpu_bf16_supported() is False
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert devices.cpu_bf16_supported() is True
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"amx_bf16"})
    assert devices.cpu_bf16_supported() is True


# ------------------------------------------------------------------------------ curves


def test_curve_logs_verified_val_accuracy_at_the_chosen_steps(make_suite, tmp_path):
    suite = make_suite("pathstar", "revthink", PATHSTAR)
    run = tmp_path / "run"
    summary = train(suite, run, TrainConfig(steps=12, curve_every=5, curve_examples=16,
                                            **dict(TINY, log_every=1)), progress=False)
    curve = log_lines(run, "curve.jsonl")
    assert [c["step"] for c in curve] == [5, 10, 12]
    logged = {r["step"]: r for r in log_lines(run)}
    for c in curve:
        assert set(c) == {"step", "examples_seen", "supervised_tokens", "forward_examples",
                          "val_accuracy", "val_n", "tf_token_accuracy"}
        assert c["val_n"] == 16
        assert 0.0 <= c["val_accuracy"] <= 1.0 and 0.0 <= c["tf_token_accuracy"] <= 1.0
        for key in ("examples_seen", "supervised_tokens", "forward_examples"):
            assert c[key] == logged[c["step"]][key]
    assert summary["curve_seconds"] >= 0
    # the last point is eval's verdict on the same rows (the first 16 forward val rows)
    m = evaluate(run, cfg=EvalConfig(split="val", limit=16, batch_size=64), progress=False)
    assert m["accuracy"]["n"] == 16
    assert m["accuracy"]["value"] == pytest.approx(curve[-1]["val_accuracy"])
    assert m["tf_token_accuracy"]["value"] == pytest.approx(curve[-1]["tf_token_accuracy"])


def test_curve_needs_a_val_split(make_suite, tmp_path):
    suite = make_suite("pathstar", "optimal", PATHSTAR, sizes={"train": 100, "test": 10})
    with pytest.raises(UserError, match="curve_every needs forward rows in a val split") as exc:
        train(suite, tmp_path / "run", TrainConfig(steps=2, curve_every=1, **TINY), progress=False)
    assert one_sentence(str(exc.value))


@pytest.mark.slow
def test_two_ddp_ranks_count_the_whole_batch(make_suite, tmp_path):
    """Under torchrun each rank draws half of every batch; the counters are their sums, so
    they equal a one-process run's (and curve.jsonl and kept checkpoints are rank 0's)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    torchrun = str(torchrun) if torchrun.exists() else shutil.which("torchrun")
    suite = make_suite("pathstar", "revthink", PATHSTAR)
    flags = ["--preset", "tiny", "--steps", "6", "--batch-size", "8", "--checkpoint-every", "4",
             "--log-every", "2", "--threads", "1", "--keep-steps", "1", "--curve-every", "3",
             "--curve-examples", "8"]
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "retroplan.cli",
                           "train", str(suite), "--out", str(tmp_path / "ddp"), *flags],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main(["train", str(suite), "--out", str(tmp_path / "one"), *flags]) == 0
    keys = ("step", "examples_seen", "forward_examples", "supervised_tokens")
    for name in ("train_log.jsonl", "curve.jsonl"):
        ddp, one = log_lines(tmp_path / "ddp", name), log_lines(tmp_path / "one", name)
        assert [[r[k] for k in keys] for r in ddp] == [[r[k] for k in keys] for r in one]
    assert [r["step"] for r in log_lines(tmp_path / "ddp", "curve.jsonl")] == [3, 6]
    final = json.loads((tmp_path / "ddp" / "final.json").read_text())
    assert final["examples_seen"] == 48 and 0 < final["forward_examples"] < 48
    assert checkpoint.available_steps(tmp_path / "ddp") == [1, 4, 6]
