"""torch.compile and batch widths: the trainer compiles a few static widths (padding a batch up
to one changes no loss) or one graph with a dynamic width, never a graph per width; the model
itself does not fix the width when compiled; the ~85M preset has its size."""

import functools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retroplan import train as trainer
from retroplan.batching import IGNORE, BatchOrder, batch_widths, compile_widths, pad_to_bucket
from retroplan.models import GPT, PRESETS, GPTConfig
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite
from retroplan.train import TrainConfig, compiled_graphs, train

# graph streams: about 20 batch widths at batch 8; path-star plans: one
MANY_WIDTHS = ("graph", "stream", {"num_nodes": 12, "out_degree": 2, "min_distance": 2, "max_distance": 5})
ONE_WIDTH = ("pathstar", "optimal", {"degree": 2, "path_len": 4, "num_nodes": 20})
CFG = dict(preset="tiny", steps=12, batch_size=8, log_every=3, checkpoint_every=100, threads=1)


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suites")
    sizes = {"train": 300, "val": 20, "test": 20}
    return {name: generate_suite(SuiteSpec(task, variant, config, {}, 0, sizes), tmp / name, progress=False)
            for name, (task, variant, config) in {"many": MANY_WIDTHS, "one": ONE_WIDTH}.items()}


def eager_compile(monkeypatch):
    """torch.compile with Dynamo's graph capture (graphs and recompiles are counted as with
    inductor) but no code generation, so a CPU test takes seconds, not minutes a graph."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))


def log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_compile_widths_are_the_few_widths_or_none(suites):
    for name, expect_static in (("one", True), ("many", False)):
        split = open_suite(suites[name]).split("train")
        order = BatchOrder(split.lengths, np.arange(len(split)), 8, 0)
        widths = compile_widths(split.lengths, order, 10**6)
        seen = set(batch_widths(split.lengths, order, 0, 10**6).tolist())
        if expect_static:
            assert widths is not None and seen <= set(widths) and widths[-1] == split.lengths.max() - 1
        else:
            assert widths is None and len(seen) > 8


def test_padding_to_a_bucket_keeps_targets_and_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=64, **PRESETS["tiny"]))
    x = torch.randint(1, 30, (4, 20))
    y = torch.randint(1, 30, (4, 20))
    y[:, :5] = IGNORE
    px, py = pad_to_bucket(x, y, [10, 32, 64], pad_id=0)
    assert px.shape == (4, 32) and (px[:, 20:] == 0).all() and (py[:, 20:] == IGNORE).all()
    assert torch.equal(px[:, :20], x) and torch.equal(py[:, :20], y)
    assert pad_to_bucket(x, y, [20, 64], pad_id=0)[0] is x  # already a bucket's width
    loss = F.cross_entropy(model(x).reshape(-1, 30), y.reshape(-1), ignore_index=IGNORE)
    padded = F.cross_entropy(model(px).reshape(-1, 30), py.reshape(-1), ignore_index=IGNORE)
    assert torch.allclose(loss, padded, rtol=1e-5, atol=0)


def test_bucket_padding_changes_no_loss_or_count_in_training(suites, tmp_path, monkeypatch):
    """compile on, but torch.compile a no-op and every batch padded to the widest: the same
    losses (to float rounding) and exactly the same counters as without compile."""
    plain = train(suites["many"], tmp_path / "plain", TrainConfig(**CFG), progress=False)
    monkeypatch.setattr(torch, "compile", lambda net, **kw: net)
    monkeypatch.setattr(trainer, "compile_widths", lambda lengths, order, max_len: [max_len - 1])
    padded = train(suites["many"], tmp_path / "padded", TrainConfig(**CFG, compile=True), progress=False)
    a, b = log(tmp_path / "plain"), log(tmp_path / "padded")
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        for key in trainer.COUNTERS:
            assert ra[key] == rb[key]
    assert padded["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-4)
    assert padded["compile"]["widths"] == [open_suite(suites["many"]).max_len()]  # the context


@pytest.mark.parametrize("name", ["one", "many"])
def test_compiled_training_makes_a_graph_per_bucket_at_most(suites, tmp_path, monkeypatch, name):
    eager_compile(monkeypatch)
    summary = train(suites[name], tmp_path / "run", TrainConfig(**dict(CFG, steps=30), compile=True),
                    progress=False)
    split = open_suite(suites[name]).split("train")
    order = BatchOrder(split.lengths, np.arange(len(split)), 8, 0)
    drawn = {int(split.lengths[order.batch(step)].max()) - 1 for step in range(30)}
    info = summary["compile"]
    if name == "one":
        assert info["widths"] == sorted(drawn) and info["graphs"] == 1
    else:  # ~20 widths drawn, one graph with the width dynamic
        assert len(drawn) > 8 and info["widths"] == "dynamic" and info["graphs"] == 1
    assert [r["compiled_graphs"] for r in log(tmp_path / "run")][-1] == info["graphs"]


def test_compiled_model_does_not_fix_the_width(monkeypatch):
    """Default torch.compile (static first, then dynamic) over many widths: 2 graphs. The model
    once formatted its length into an error message eagerly and passed `is_causal=T > 1`,
    which fixed the width and recompiled (then ran uncompiled) on every new one."""
    eager_compile(monkeypatch)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=128, **PRESETS["tiny"]))
    net = torch.compile(model)
    before = compiled_graphs()
    for width in (16, 32, 48, 100, 7, 64, 127):
        x = torch.randint(0, 30, (2, width))
        F.cross_entropy(net(x).reshape(-1, 30), x.reshape(-1)).backward()
    assert compiled_graphs() - before <= 2


def test_gpt2_small_preset_is_about_85m_parameters():
    for vocab in (40, 1025):
        n = GPT(GPTConfig(vocab_size=vocab, block_size=1024, **PRESETS["gpt2-small"])).num_params()
        assert 84e6 < n < 86.5e6
