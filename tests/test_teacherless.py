"""The teacherless objective (issue 20, 2a; Bachmann & Nagarajan 2024): the completion's inputs
are a dummy token, the targets unchanged; eval decodes such a model the way it was trained."""

import json

import numpy as np
import pytest
import torch

from retroplan import checkpoint
from retroplan import train as train_module
from retroplan.batching import IGNORE, collate
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, _generate_teacherless, evaluate, identity
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, train

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}
TINY = dict(preset="tiny", batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5, log_every=5,
            checkpoint_every=100, threads=1)


def test_teacherless_batches_hold_the_dummy_on_completion_inputs_and_the_same_targets(make_suite):
    suite = open_suite(make_suite("pathstar", "optimal+reverse", PATHSTAR))
    split = suite.split("train")
    rows = np.array([0, 1, len(split) - 1, len(split) - 2])   # forward rows and [reverse] rows
    no_loss = suite.grammar.no_loss_tokens(suite.vocab)
    x, y = collate(split, rows, suite.vocab.pad_id, no_loss)
    xt, yt = collate(split, rows, suite.vocab.pad_id, no_loss, teacherless=True)
    assert torch.equal(y, yt)                      # targets untouched
    for b, r in enumerate(rows):
        p = int(split.prompt_len[r])
        assert torch.equal(xt[b, :p], x[b, :p])    # the prompt (its last token `=` included) as it was
        assert (xt[b, p:] == suite.vocab.pad_id).all()
        assert (x[b, p: len(split.row(r)) - 1] != suite.vocab.pad_id).all()   # where real tokens were
        assert (yt[b, p - 1: len(split.row(r)) - 1] != IGNORE).all()          # every answer token a target
    completions = np.concatenate([split.completion(r) for r in range(len(split))])
    assert suite.vocab.pad_id not in completions   # the dummy never is an answer token


def test_a_teacherless_run_trains_on_dummy_inputs_and_evaluates_in_parallel(make_suite, tmp_path,
                                                                            monkeypatch):
    path = make_suite("pathstar", "optimal", PATHSTAR)
    seen = []
    real_collate = train_module.collate

    def spy(split, rows, pad_id, no_loss, max_len=None, teacherless=False):
        x, y = real_collate(split, rows, pad_id, no_loss, max_len, teacherless)
        seen.append((split.name, np.asarray(rows), x, teacherless))
        return x, y

    monkeypatch.setattr(train_module, "collate", spy)
    run = tmp_path / "run"
    summary = train(path, run, TrainConfig(steps=30, objective="teacherless", **TINY), progress=False)
    assert summary["steps"] == 30 and np.isfinite(summary["final_loss"])
    trained = [s for s in seen if s[0] == "train"]
    assert len(trained) == 30 and all(t for _, _, _, t in trained)
    split = open_suite(path).split("train")
    name, rows, x, _ = trained[0]
    for b, r in enumerate(rows):
        assert (x[b, int(split.prompt_len[r]):] == open_suite(path).vocab.pad_id).all()
    assert checkpoint.read_run(run)["train"]["objective"] == "teacherless"

    metrics = evaluate(run, cfg=EvalConfig(limit=12), progress=False)
    assert metrics["objective"] == "teacherless"
    assert metrics["generation"] == "parallel from dummy inputs (teacherless)"
    assert metrics["identity"]["objective"] == "teacherless"
    assert 0 <= metrics["accuracy"]["value"] <= 1 and metrics["accuracy"]["n"] == 12
    # the parallel answer is the argmax of one forward pass over the prompt and dummies
    suite = open_suite(path)
    test = suite.split("test")
    model, _, _ = checkpoint.load_model(run, torch.device("cpu"))
    got = _generate_teacherless(model, suite, test, np.array([0]), EvalConfig(), torch.device("cpu"))
    prompt = torch.from_numpy(test.prompt(0))[None]
    plen, context = prompt.shape[1], model.cfg.block_size
    dummies = torch.full((1, context - plen - 1), suite.vocab.pad_id)
    with torch.no_grad():
        expected = model(torch.cat([prompt, dummies], 1))[0, plen - 1:].argmax(-1).tolist()
    eos = suite.vocab.eos_id
    assert got[(0, 0)][0] == (expected[: expected.index(eos) + 1] if eos in expected else expected)
    records = [json.loads(line) for line in (run / "eval-test" / "records.jsonl").read_text().splitlines()]
    assert records[0]["generated"] == suite.vocab.decode(got[(0, 0)][0])

    with pytest.raises(UserError, match="was trained teacherless"):
        evaluate(run, cfg=EvalConfig(limit=4, temperature=1.0, samples=2), progress=False)
    # a next-token run's evaluation identity is what it was before the objective existed
    plain = tmp_path / "plain"
    train(path, plain, TrainConfig(steps=2, **TINY), progress=False)
    assert "objective" not in identity(plain, path, EvalConfig(), 2)


def test_objective_flag_and_bad_value(make_suite, tmp_path, capsys):
    path = make_suite("pathstar", "optimal", PATHSTAR)
    code = main(["train", str(path), "--out", str(tmp_path / "r"), "--preset", "tiny", "--steps", "3",
                 "--batch-size", "8", "--threads", "1", "--objective", "teacherless"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "run.json").read_text())["train"]["objective"] == "teacherless"
    code = main(["train", str(path), "--out", str(tmp_path / "bad"), "--objective", "masked"])
    err = capsys.readouterr().err
    assert code == 2 and "train objective must be next-token or teacherless, got 'masked'." in err
