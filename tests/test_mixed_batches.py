"""Mixture batches that really mix (issue 20, 2c): every batch of a mixture holds each
component in its share, the order stays a pure function of (seed, step), and the order of a
suite that is not a mixture is exactly what it was before mixing existed."""

import hashlib
import json

import numpy as np
import pytest

from retroplan.batching import BatchOrder, budget_steps, component_counts
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, plan_steps, train

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}


def order_digest(order: BatchOrder, steps: int) -> str:
    return hashlib.sha256(np.concatenate([order.batch(s) for s in range(steps)])
                          .astype("<i8").tobytes()).hexdigest()


def test_an_unmixed_order_is_byte_identical_to_the_order_before_mixing():
    # digests of the first three epochs (and two steps), taken with the code before mixing existed
    lengths = np.random.default_rng(7).integers(20, 60, size=1000)
    pinned = [
        (np.arange(1000), 64, 0, "8cf3fcb3b86a7fae415813df52149b685aaeed273f867914f45223c19741d535"),
        (np.arange(3, 997, 2), 48, 5, "a83043d21301fdf80cb777312b2f95573651e2baa5bb684e5cadba64abf954d8"),
    ]
    for rows, batch_size, seed, digest in pinned:
        plain = BatchOrder(lengths, rows, batch_size, seed)
        assert order_digest(plain, 3 * plain.per_epoch + 2) == digest
        one_kind = BatchOrder(lengths, rows, batch_size, seed, kinds=np.zeros(1000, dtype=np.int8))
        assert order_digest(one_kind, 3 * one_kind.per_epoch + 2) == digest


@pytest.mark.parametrize("sizes,batch_size,expected", [
    ([500, 500], 64, [32, 32]),
    ([400, 200], 64, [43, 21]),
    ([100, 100, 100], 64, [22, 21, 21]),
    ([990, 10], 16, [15, 1]),     # a tiny share still gets one row
])
def test_component_counts_are_the_shares_rounded_by_largest_remainder(sizes, batch_size, expected):
    assert component_counts(sizes, batch_size) == expected
    assert sum(component_counts(sizes, batch_size)) == batch_size


@pytest.mark.parametrize("sizes,batch_size", [([500, 500], 64), ([400, 200], 64), ([300, 250, 120], 50)])
def test_every_mixture_batch_holds_each_component_in_its_share(sizes, batch_size):
    kinds = np.concatenate([np.full(n, k, dtype=np.int8) for k, n in enumerate(sizes)])
    # forward rows one token shorter than the others, as in optimal+reverse: bucketing by
    # length alone would put each kind in batches of its own
    lengths = 27 + kinds.astype(np.int64) + np.random.default_rng(0).integers(0, 3, size=len(kinds))
    rows = np.arange(len(kinds))
    order = BatchOrder(lengths, rows, batch_size, seed=3, kinds=kinds)
    counts = component_counts(sizes, batch_size)
    for epoch in range(3):
        drawn = []
        for j in range(order.per_epoch):
            batch = order.batch(epoch * order.per_epoch + j)
            assert len(batch) == batch_size
            assert np.bincount(kinds[batch], minlength=len(sizes)).tolist() == counts
            drawn.append(batch)
        drawn = np.concatenate(drawn)
        assert len(np.unique(drawn)) == len(drawn)   # no row twice within an epoch
    # a pure function of (seed, step): a fresh order asked in another sequence agrees
    fresh = BatchOrder(lengths, rows, batch_size, seed=3, kinds=kinds)
    for step in (2 * order.per_epoch + 1, 0, order.per_epoch - 1, 5):
        assert np.array_equal(fresh.batch(step), order.batch(step))
    other_seed = BatchOrder(lengths, rows, batch_size, seed=4, kinds=kinds)
    assert not np.array_equal(other_seed.batch(0), order.batch(0))


def test_within_a_component_rows_are_still_length_bucketed():
    # one component of widely spread lengths: within a window of `bucket` batches its part of
    # every batch is a run of the sorted lengths, so a batch's spread is far below the window's
    n = 4096
    kinds = np.repeat(np.array([0, 1], dtype=np.int8), n // 2)
    lengths = np.random.default_rng(1).integers(10, 200, size=n)
    order = BatchOrder(lengths, np.arange(n), 64, seed=0, kinds=kinds)
    spreads = []
    for step in range(order.per_epoch):
        batch = order.batch(step)
        for k in (0, 1):
            part = lengths[batch[kinds[batch] == k]]
            spreads.append(int(part.max() - part.min()))
    assert np.median(spreads) < 20   # unbucketed, 32 draws from 10..199 span about 170


def test_a_mixture_run_mixes_its_batches_and_logs_the_loss_of_each_component(make_suite, tmp_path):
    path = make_suite("pathstar", "optimal+reverse", PATHSTAR)
    split = open_suite(path).split("train")
    cfg = TrainConfig(preset="tiny", steps=6, batch_size=16, log_every=2, checkpoint_every=100,
                      warmup_steps=2, threads=1)
    order = BatchOrder(split.lengths, np.arange(len(split)), 16, cfg.seed, kinds=split.kind)
    for step in range(6):
        assert np.bincount(split.kind[order.batch(step)]).tolist() == [8, 8]
    summary = train(path, tmp_path / "run", cfg, progress=False)
    assert summary["forward_examples"] == 6 * 8
    assert set(summary["final_loss_by_component"]) == {"optimal", "[reverse]"}
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(set(rec["loss_by_component"]) == {"optimal", "[reverse]"} for rec in log)
    # half of every batch is forward: a forward-examples budget takes twice its batches
    assert plan_steps(path, cfg, "forward_examples", 80) == 10
    assert budget_steps(split, 16, "forward_examples", 80, mixed=True) == 10


def test_a_mixture_batch_runs_in_parts_of_one_kind_whose_gradient_is_the_padded_batch_s(make_suite):
    # optimal+stream: plans of ~6 tokens beside streams several times longer, the case where
    # padding the plans to the streams' width cost as much as the streams themselves
    import torch

    from retroplan.batching import IGNORE, collate
    from retroplan.models import GPT, GPTConfig
    from retroplan.train import masked_loss

    path = make_suite("pathstar", "optimal+stream", PATHSTAR)
    suite = open_suite(path)
    split = suite.split("train")
    order = BatchOrder(split.lengths, np.arange(len(split)), 16, 0, kinds=split.kind)
    batch = order.batch(0)
    parts = order.parts(batch)
    assert [np.unique(split.kind[p]).tolist() for p in parts] == [[0], [1]]
    assert sorted(np.concatenate(parts).tolist()) == sorted(batch.tolist())
    pad, no_loss = suite.vocab.pad_id, suite.grammar.no_loss_tokens(suite.vocab)
    widths = [collate(split, p, pad, no_loss)[0].shape[1] for p in parts]
    assert widths[0] < widths[1]   # the plans' part is not padded to the streams' width

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(suite.vocab), block_size=int(split.lengths.max()),
                          n_layer=2, n_head=2, n_embd=32))

    def gradient(pieces):
        model.zero_grad()
        total = sum(int((collate(split, p, pad, no_loss)[1] != IGNORE).sum()) for p in pieces)
        for p in pieces:
            x, y = collate(split, p, pad, no_loss)
            (masked_loss(model, x, y, reduction="sum") / total).backward()
        return torch.cat([q.grad.flatten() for q in model.parameters()])

    padded, in_parts = gradient([batch]), gradient(parts)
    assert torch.allclose(padded, in_parts, rtol=1e-4, atol=1e-6)
    assert padded.abs().max() > 0


def test_the_trainer_runs_a_mixture_batch_in_parts_and_an_unmixed_one_whole(make_suite, tmp_path,
                                                                            monkeypatch):
    import retroplan.train as training

    calls = []
    real = training.masked_loss

    def recording(model, x, y, reduction="mean"):
        calls.append(tuple(x.shape))
        return real(model, x, y, reduction)

    monkeypatch.setattr(training, "masked_loss", recording)
    cfg = TrainConfig(preset="tiny", steps=3, batch_size=16, log_every=1, checkpoint_every=100,
                      warmup_steps=1, threads=1)
    train(make_suite("pathstar", "optimal+stream", PATHSTAR), tmp_path / "mixed", cfg, progress=False)
    assert len(calls) == 3 * 2 and all(rows == 8 for rows, _ in calls)
    assert all(calls[i][1] < calls[i + 1][1] for i in range(0, 6, 2))  # plans narrower than streams
    calls.clear()
    train(make_suite("pathstar", "stream", PATHSTAR), tmp_path / "plain", cfg, progress=False)
    assert len(calls) == 3 and all(rows == 16 for rows, _ in calls)
