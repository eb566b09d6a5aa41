"""Linear probes (`retroplan probe`, retroplan/probe.py): a feature planted in one layer's
activations is found there and nowhere else, shuffled labels give chance, ridge recovers a
planted linear target, the labels are the oracle's, and end to end on a tiny trained path-star
run the command writes one entry per layer with values that fit what the model can know."""

import json

import numpy as np
import pytest
import torch

from retroplan import checkpoint
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.probe import (
    ProbeConfig,
    check_probe_section,
    collect_activations,
    probe_layers,
    probe_run,
    probe_study,
    split_instances,
    target_positions,
)
from retroplan.traces import digraphs
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, train

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}
TINY = dict(preset="tiny", batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5, log_every=5,
            checkpoint_every=30, threads=1)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_classes(n_instances=400, per_instance=1, layers=4, width=16, classes=3, planted_layer=2):
    """Activations of pure noise, except at `planted_layer`, where each position carries 4x a
    unit direction of its class."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, classes, n_instances * per_instance)
    features = rng.normal(size=(layers, labels.size, width)).astype(np.float32)
    directions = rng.normal(size=(classes, width))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features[planted_layer] += 4.0 * directions[labels]
    instances = np.repeat(np.arange(n_instances), per_instance)
    return features, labels, instances


def test_a_planted_feature_is_found_at_its_layer_and_nowhere_else():
    features, labels, instances = planted_classes()
    result = probe_layers(features, labels, instances, regression=False, seed=0)
    assert [e["layer"] for e in result["layers"]] == [0, 1, 2, 3]
    assert result["n_train_instances"] == result["n_heldout_instances"] == 200
    assert result["interval"].startswith("95% Wilson")  # one position per instance
    found = result["layers"][2]
    assert found["value"] > 0.95 and found["ci"][0] > found["baseline"] + 0.4
    for k in (0, 1, 3):  # noise: about chance, the interval well below the planted layer's
        entry = result["layers"][k]
        assert abs(entry["value"] - 1 / 3) < 0.12, entry
        assert entry["ci"][1] < found["ci"][0]
    assert probe_layers(features, labels, instances, regression=False, seed=0) == result


def test_shuffled_labels_give_chance_even_where_the_feature_is():
    features, labels, instances = planted_classes()
    result = probe_layers(features, labels, instances, regression=False, seed=0)
    for entry in result["layers"]:
        low, high = entry["control_ci"]
        assert low <= 1 / 3 <= high, entry
        assert abs(entry["control"] - 1 / 3) < 0.12, entry
    assert result["layers"][2]["value"] - result["layers"][2]["control"] > 0.5  # selectivity
    # another seed splits the instances differently, and still finds the feature
    other = probe_layers(features, labels, instances, regression=False, seed=1)
    assert other["layers"][2]["value"] > 0.95 and other != result


def test_instances_not_positions_are_split():
    _, _, instances = planted_classes(n_instances=50, per_instance=5)
    train_mask = split_instances(instances, seed=3)
    for i in np.unique(instances):
        sides = set(train_mask[instances == i].tolist())
        assert len(sides) == 1  # every position of an instance on one side
    assert np.unique(instances[train_mask]).size == 25


def test_ridge_finds_a_planted_linear_target_with_r2_near_one():
    rng = np.random.default_rng(11)
    n_instances, per_instance, width = 150, 3, 12
    features = rng.normal(size=(3, n_instances * per_instance, width)).astype(np.float32)
    weights = rng.normal(size=width)
    target = features[1].astype(np.float64) @ weights + 5.0 + 0.01 * rng.normal(size=features.shape[1])
    instances = np.repeat(np.arange(n_instances), per_instance)
    result = probe_layers(features, target, instances, regression=True, seed=0)
    assert result["metric"] == "r2" and "bootstrap over held-out instances" in result["interval"]
    planted = result["layers"][1]
    assert planted["value"] > 0.99 and planted["ci"][0] > 0.98
    for k in (0, 2):
        assert result["layers"][k]["value"] < 0.1 and result["layers"][k]["ci"][1] < 0.3
    for entry in result["layers"]:
        assert abs(entry["baseline"]) < 0.05   # the training mean explains nothing
        assert entry["control"] < 0.1          # nor does a probe fitted on shuffled targets


def test_labels_come_from_the_instances(make_suite):
    # optimal path-star: the written plan's nodes are 3, 2, 1, 0 moves from the goal
    suite = open_suite(make_suite("pathstar", "optimal", PATHSTAR))
    split = suite.split("test")
    rows = np.arange(len(split))
    distance = target_positions(suite, split, rows, "distance")
    for r in rows[:10]:
        here = distance.rows == r
        assert distance.labels[here].tolist() == [3.0, 2.0, 1.0, 0.0]
        prompt_len = int(split.prompt_len[r])
        assert distance.tokens[here].tolist() == list(range(prompt_len, prompt_len + 4))
    arm = target_positions(suite, split, rows, "arm")
    # where the first move is predicted: the start node written after `=` (arm-eq: the `=`)
    assert arm.tokens.tolist() == split.prompt_len[rows].tolist()
    assert [int(split.row(r)[t]) - digraphs.NODE0 for r, t in zip(arm.rows, arm.tokens)] == \
        split.instances["start"][split.instance[rows]].tolist()
    assert set(arm.labels.tolist()) == {0, 1}
    arm_eq = target_positions(suite, split, rows, "arm-eq")
    assert arm_eq.tokens.tolist() == (split.prompt_len[rows] - 1).tolist()
    assert arm_eq.labels.tolist() == arm.labels.tolist()
    assert all(int(split.row(r)[t]) == digraphs.EQ for r, t in zip(arm_eq.rows, arm_eq.tokens))
    # a stream: every move's position holds the node it enters; live exactly on the goal's arm
    stream = open_suite(make_suite("pathstar", "stream", {"degree": 3, "path_len": 4, "num_nodes": 20}))
    split = stream.split("test")
    live = target_positions(stream, split, np.arange(len(split)), "live")
    for row, token, label in zip(live.rows, live.tokens, live.labels):
        node = int(split.row(row)[token]) - digraphs.NODE0
        plan = split.instances["plan"][split.instance[row]].tolist()
        assert node >= 0 and label == int(node in plan[1:])
    assert 0 < live.labels.mean() < 1


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained_run(make_suite, tmp_path_factory):
    suite = make_suite("pathstar", "optimal", PATHSTAR)
    run = tmp_path_factory.mktemp("probe") / "run"
    train(suite, run, TrainConfig(steps=60, **TINY), progress=False)
    return run


def test_probe_command_end_to_end(trained_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "probe", trained_run, "--target", "arm")
    assert code == 0, err
    result = json.loads((trained_run / "probe-arm-test" / "probe.json").read_text())
    assert [e["name"] for e in result["layers"]] == ["embedding", "block 1", "block 2"]  # tiny: 2 blocks
    assert result["n_train_instances"] + result["n_heldout_instances"] == 60
    assert result["n_heldout_positions"] == result["n_heldout_instances"]  # one decision per instance
    assert result["chance"] == 0.5 and result["metric"] == "accuracy"
    for entry in result["layers"]:
        assert entry["ci"][0] <= entry["value"] <= entry["ci"][1]
        assert 0 <= entry["control"] <= 1 and 0 <= entry["baseline"] <= 1
    assert out.count("(block ") == 2 and "wrote" in out
    # arm-eq reads one position earlier, `=`: layer 0 there is the embedding of `=` at the same
    # position for every instance, so the probe can only answer the majority class
    code, out, err = run_cli(capsys, "probe", trained_run, "--target", "arm-eq", "--out", tmp_path / "eq")
    assert code == 0, err
    result = json.loads((tmp_path / "eq" / "probe.json").read_text())
    assert result["layers"][0]["value"] == result["layers"][0]["baseline"]

    code, out, err = run_cli(capsys, "probe", trained_run, "--target", "distance", "--out", tmp_path / "d")
    assert code == 0, err
    result = json.loads((tmp_path / "d" / "probe.json").read_text())
    assert result["metric"] == "r2" and result["n_heldout_positions"] == 4 * result["n_heldout_instances"]
    first, last = result["layers"][0]["value"], result["layers"][-1]["value"]
    # a node's embedding says nothing about where it is on the plan; after the blocks the
    # model's own residual stream does (measured: -0.10 at the embedding, 0.58 after block 2)
    assert first < 0.2 and last > 0.3 and last > first + 0.3
    # the same command again: the same file, byte for byte
    before = (tmp_path / "d" / "probe.json").read_bytes()
    probe_run(trained_run, ProbeConfig(target="distance"), out=tmp_path / "d2", progress=False)
    assert (tmp_path / "d2" / "probe.json").read_bytes() == before


def test_activations_are_the_residual_stream_at_the_chosen_positions(trained_run):
    model, run, _ = checkpoint.load_model(trained_run)
    suite = open_suite(checkpoint.run_suite(trained_run, run))
    split = suite.split("test")
    positions = target_positions(suite, split, np.arange(7), "distance")
    features = collect_activations(model, split, positions, suite.vocab.pad_id, batch_size=3,
                                   device=torch.device("cpu"))
    assert features.shape == (3, 28, model.cfg.n_embd)
    with torch.no_grad():
        for k, (row, token) in enumerate(zip(positions.rows, positions.tokens)):
            ids = torch.from_numpy(split.row(row)[None, : token + 1])
            # layer 0: the token's embedding; the last layer, through the final norm and the
            # head, gives the model's own next-token logits there
            assert torch.allclose(torch.from_numpy(features[0, k]), model.tok_emb(ids)[0, -1])
            logits = model.head(model.ln_f(torch.from_numpy(features[-1, k])))
            assert torch.allclose(logits, model(ids)[0, -1], atol=1e-4)


def test_probe_study_reuses_current_probes_and_writes_figure_and_table(trained_run, tmp_path):
    settings = check_probe_section({"targets": ["arm"]}, "pathstar", ["optimal"])
    assert settings == {"targets": ["arm"], "split": "test", "limit": 0, "seed": 0}
    probe_run(trained_run, ProbeConfig(target="arm"), progress=False)
    path = trained_run / "probe-arm-test" / "probe.json"
    stamp = path.stat().st_mtime_ns
    figures, lines = probe_study(settings, {"optimal": {0: trained_run}}, tmp_path, "tiny", progress=False)
    assert path.stat().st_mtime_ns == stamp  # current: reused, not probed again
    assert sorted(p.name for p in figures) == ["probe_arm.png", "probe_arm.svg"]
    assert all(p.stat().st_size > 0 for p in figures)
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith(
        "| variant | seeds | held-out instances | layer 0 (embedding) | layer 1 | layer 2 | baseline")
    assert table[1].startswith("| optimal | 1 | 30 |")
    # another seed is another probe: probed again and written
    settings = dict(settings, seed=1)
    probe_study(settings, {"optimal": {0: trained_run}}, tmp_path, "tiny", progress=False)
    assert json.loads(path.read_text())["seed"] == 1


def test_bad_probe_requests_are_one_sentence(trained_run, capsys):
    for args, message in (
            (("--target", "arms"), "unknown probe target 'arms'; allowed: arm, distance, live, arm-eq."),
            (("--target", "live"), "live needs a stream of the instance's own search (stream, "
                                   "backward-stream), and optimal writes none."),
            (("--target", "arm", "--split", "nope"), "has no split 'nope'; probe one of: test, train, val."),
            (("--target", "arm", "--limit", "-1"), "probe limit must be a non-negative integer, got -1."),
            (("--target", "arm", "--limit", "1"), "a probe needs positions from at least 4 instances")):
        code, _, err = run_cli(capsys, "probe", trained_run, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert err.count("\n") == 1


@pytest.mark.parametrize("section, task, variants, message", [
    ({"target": ["arm"]}, "pathstar", ["optimal"], "unknown probe setting 'target'; allowed: targets, split"),
    ({"targets": "arm"}, "pathstar", ["optimal"], "probe targets must be a non-empty list"),
    ({"targets": ["arm", "arm"]}, "pathstar", ["optimal"], "probe targets must be a non-empty list"),
    ({"targets": ["depth"]}, "graph", ["optimal"], "unknown probe target 'depth'"),
    ({"targets": ["live"]}, "pathstar", ["optimal", "reverse"],
     "probe target live fits no variant of this study: live needs a stream"),
    ({"targets": ["arm"]}, "countdown", ["stream"], "countdown has no arm target (allowed there: live)"),
    ({"split": "val_target"}, "pathstar", ["optimal"], "probe split must be one of train, val, test"),
    ({"limit": "5"}, "pathstar", ["optimal"], "probe limit must be a non-negative integer, got '5'."),
    ({"seed": True}, "pathstar", ["optimal"], "probe seed must be a non-negative integer, got True."),
])
def test_bad_probe_sections_are_refused(section, task, variants, message):
    with pytest.raises(UserError) as caught:
        check_probe_section(section, task, variants)
    assert message in str(caught.value)


def test_probe_section_defaults_and_partial_targets():
    assert check_probe_section({}, "countdown", ["stream"])["targets"] == ["live"]
    # live is probed on the stream variants of a study that has others too
    settings = check_probe_section({"targets": ["live", "arm"], "limit": 50}, "graph", ["optimal", "stream"])
    assert settings == {"targets": ["live", "arm"], "split": "test", "limit": 50, "seed": 0}
