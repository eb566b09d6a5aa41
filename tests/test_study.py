"""The verdict of a study, computed from paired records (retroplan/study.py)."""

import json

import pytest

from retroplan.study import compare, verdict_lines


def eval_dir(tmp_path, name, correct):
    d = tmp_path / name
    d.mkdir()
    d.joinpath("records.jsonl").write_text(
        "".join(json.dumps({"row": i, "sample": 0, "index": 100 + i, "correct": c}) + "\n"
                for i, c in enumerate(correct)))
    return d


def test_a_variant_that_is_right_where_the_baseline_fails_helps(tmp_path):
    # per seed: 40 instances; the baseline is right on the first 20, the variant on the first 36
    base = {s: eval_dir(tmp_path, f"b{s}", [i < 20 for i in range(40)]) for s in (0, 1, 2)}
    var = {s: eval_dir(tmp_path, f"v{s}", [i < 36 for i in range(40)]) for s in (0, 1, 2)}
    r = compare(var, base)
    assert (r["n"], r["seeds"], r["b10"], r["b01"]) == (120, 3, 48, 0)
    assert r["delta"] == pytest.approx(0.4) and r["accuracy"] == pytest.approx(0.9)
    assert r["p"] == pytest.approx(2 * 0.5 ** 48)      # exact McNemar: all 48 discordant one way
    assert r["ci"][0] > 0 and r["verdict"] == "helps"
    assert r["per_seed_delta"] == {"0": pytest.approx(0.4), "1": pytest.approx(0.4), "2": pytest.approx(0.4)}
    worse = compare(base, var)
    assert worse["verdict"] == "hurts" and worse["delta"] == pytest.approx(-0.4)
    lines = "\n".join(verdict_lines([{"condition": "c", "split": "test", "variant": "v",
                                      "baseline": "optimal", **r}]))
    assert "**helps**" in lines and "+0.400" in lines


def test_identical_models_and_tiny_differences_are_no_detectable_difference(tmp_path):
    same = {s: eval_dir(tmp_path, f"a{s}", [True, False] * 10) for s in (0, 1, 2)}
    r = compare(same, {s: eval_dir(tmp_path, f"b{s}", [True, False] * 10) for s in (0, 1, 2)})
    assert r["delta"] == 0 and r["p"] == 1.0 and r["verdict"] == "no detectable difference at this n"
    # one discordant pair in 20: p = 1, and the MDE says what n would be needed
    r = compare({s: eval_dir(tmp_path, f"c{s}", [True] * 11 + [False] * 9) if s == 0 else
                 eval_dir(tmp_path, f"c{s}", [True] * 10 + [False] * 10) for s in (0, 1, 2)},
                {s: eval_dir(tmp_path, f"d{s}", [True] * 10 + [False] * 10) for s in (0, 1, 2)})
    assert (r["b10"], r["b01"], r["p"]) == (1, 0, 1.0)
    assert r["verdict"] == "no detectable difference at this n"
    # MDE = (z_0.975 + z_0.8) * sqrt(p_discordant / n) with p_discordant = 1/60, n = 60
    assert r["mde"] == pytest.approx((1.959964 + 0.841621) * (1 / 60 / 60) ** 0.5, rel=1e-4)


def test_only_instances_both_evaluated_are_paired(tmp_path):
    r = compare({0: eval_dir(tmp_path, "v", [True] * 5)}, {0: eval_dir(tmp_path, "b", [False] * 8)})
    assert r["n"] == 5 and r["b10"] == 5
    assert compare({1: eval_dir(tmp_path, "x", [True])}, {0: eval_dir(tmp_path, "y", [True])}) is None


def test_fewer_than_three_seeds_get_no_verdict_whatever_the_numbers(tmp_path):
    base = {s: eval_dir(tmp_path, f"b{s}", [False] * 50) for s in (0, 1)}
    var = {s: eval_dir(tmp_path, f"v{s}", [True] * 50) for s in (0, 1)}
    r = compare(var, base)
    assert r["p"] < 1e-20 and r["ci"][0] > 0.9
    assert r["verdict"] == "not judged: 2 training seeds (a claim needs >= 3)"
