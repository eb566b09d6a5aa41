"""The data control (issue 20, 2b): `optimal+optimal` is the baseline plus its own rows again
behind `[optimal]` — as many extra rows and tokens as `optimal+reverse` adds, no backward
content — accepted as a study variant under both budgets, and a condition's own train table."""

import copy
import tomllib

import numpy as np

from retroplan.batching import BatchOrder
from retroplan.cli import main
from retroplan.experiment_file import experiment_identity, load_experiment
from retroplan.traces import writes
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, plan_steps, training_rows

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}


def test_the_data_control_adds_as_many_rows_and_tokens_as_reverse_and_no_backward_content(make_suite):
    base = open_suite(make_suite("pathstar", "optimal", PATHSTAR))
    control = open_suite(make_suite("pathstar", "optimal+optimal", PATHSTAR))
    mixture = open_suite(make_suite("pathstar", "optimal+reverse", PATHSTAR))
    assert control.vocab == base.vocab == mixture.vocab   # no new token: [optimal] was there
    train, mix, btrain = control.split("train"), mixture.split("train"), base.split("train")
    n = len(btrain)
    assert len(train) == len(mix) == 2 * n
    assert control.meta["splits"]["train"]["tokens"] == mixture.meta["splits"]["train"]["tokens"]
    assert np.array_equal(train.kind, mix.kind)
    tag = control.vocab["[optimal]"]
    for r in range(n):
        assert train.row(r).tolist() == btrain.row(r).tolist()
        extra = train.row(n + r).tolist()
        assert extra == [extra[0], tag] + btrain.row(r).tolist()[1:]   # the same row, tagged
        assert train.completion(n + r).tolist() == btrain.completion(r).tolist()
    # held-out splits: exactly the baseline's
    for split in ("val", "test"):
        assert np.array_equal(control.split(split).tokens, base.split(split).tokens)
    assert writes("optimal+optimal") == ("forward plan; trained with its own rows again behind "
                                         "[optimal] too (a data control)")


def test_both_budgets_give_the_control_the_steps_they_give_the_mixture(make_suite):
    # forward examples count the rows of kind 0 (the evaluated format): the tagged copies are
    # extra rows like [reverse] rows, so the control trains as long as optimal+reverse
    cfg = TrainConfig(preset="tiny", batch_size=16, threads=1)
    control = make_suite("pathstar", "optimal+optimal", PATHSTAR)
    mixture = make_suite("pathstar", "optimal+reverse", PATHSTAR)
    for what, amount in (("steps", 50), ("forward_examples", 800), ("examples", 800), ("tokens", 4000)):
        assert plan_steps(control, cfg, what, amount) == plan_steps(mixture, cfg, what, amount)
    assert plan_steps(control, cfg, "forward_examples", 800) == 100   # 8 forward rows a batch


def test_the_control_and_a_mixture_of_one_seed_draw_the_same_forward_rows_every_step(make_suite):
    """What judging a mixture against the data control rests on (docs/METRICS.md, "Against the
    data control"): at every step the two draw the same forward rows (kind 0, byte for byte the
    baseline's), so only the other half of each batch differs. The order is the trainer's:
    its rows (`training_rows`) under `BatchOrder` with the row kinds and the run's seed."""
    cfg = TrainConfig(preset="tiny", batch_size=16, threads=1, seed=3)
    orders = []
    for variant in ("optimal+optimal", "optimal+reverse"):
        suite = open_suite(make_suite("pathstar", variant, PATHSTAR))
        split = suite.split("train")
        rows, *_ = training_rows(split, cfg, suite.max_len())
        kind = np.asarray(split.kind)
        orders.append((BatchOrder(split.lengths, rows, cfg.batch_size, cfg.seed, kinds=kind), kind, split))
    (control, kind_c, split_c), (mixture, kind_m, split_m) = orders
    for step in range(3 * control.per_epoch):   # three epochs
        rc, rm = control.batch(step), mixture.batch(step)
        forward_c, forward_m = rc[kind_c[rc] == 0], rm[kind_m[rm] == 0]
        assert len(forward_c) == cfg.batch_size // 2
        assert forward_c.tolist() == forward_m.tolist()
        assert all(split_c.row(r).tolist() == split_m.row(r).tolist() for r in forward_c)
        assert not np.array_equal(rc, forward_c)   # the other half is there, and differs in content
        assert any(split_c.row(r).tolist() != split_m.row(r).tolist() for r in rc[kind_c[rc] == 1])


def test_a_study_takes_the_control_and_a_condition_train_table(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text('''
name = "control"
task = "pathstar"
variants = ["optimal", "optimal+optimal", "optimal+reverse"]
[study]
budget = "forward_examples"
[train]
preset = "tiny"
steps = 20
[train.by_variant."optimal+optimal"]
lr = 2e-3
[[conditions]]
degree = 2
path_len = 4
[[conditions]]
label = "teacherless"
degree = 2
path_len = 4
train = {objective = "teacherless"}
''')
    exp = load_experiment(path)
    # a machine setting in a condition's train table changes no result, as in [train]
    raw = tomllib.loads(path.read_text())
    threads = copy.deepcopy(raw)
    threads["conditions"][1]["train"]["threads"] = 2
    assert experiment_identity(threads) == experiment_identity(raw)
    threads["conditions"][1]["train"]["lr"] = 1e-2
    assert experiment_identity(threads) != experiment_identity(raw)
    threads["conditions"][0]["train"] = {"threads": 2}   # a table of machine settings only
    del threads["conditions"][1]["train"]["lr"]
    assert experiment_identity(threads) == experiment_identity(raw)
    pieces = exp.train
    assert pieces[("degree2-path_len4", "optimal")].objective == "next-token"
    assert pieces[("teacherless", "optimal")].objective == "teacherless"
    assert pieces[("teacherless", "optimal+optimal")].lr == 2e-3     # by_variant, then the condition
    assert pieces[("teacherless", "optimal+optimal")].objective == "teacherless"
    path.write_text(path.read_text().replace('objective = "teacherless"', 'objective = "backwards"'))
    code = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "train objective must be next-token or teacherless, got 'backwards'." in err
    assert "Traceback" not in err


def test_inspect_and_list_show_the_control(make_suite, capsys):
    assert main(["inspect", str(make_suite("pathstar", "optimal+optimal", PATHSTAR))]) == 0
    out = capsys.readouterr().out
    assert "[optimal]: optimal's own rows again behind [optimal] (a data control" in out
    assert main(["list"]) == 0
    assert "a+a is the data control" in capsys.readouterr().out
