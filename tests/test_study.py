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


def with_validity(d, model, teacher):
    d.joinpath("metrics.json").write_text(json.dumps({
        "behaviour": {"trace_validity": {"n": 10, "value": model}},
        "teacher_behaviour": {"trace_validity": {"n": 10, "value": teacher}}}))
    return d


def test_a_stream_model_whose_streams_are_not_mostly_valid_gets_no_verdict(tmp_path):
    # the stream model is right far more often, but writes valid steps only 43% of the time
    # where its teacher writes 100%: its accuracy says nothing about streams
    base = {s: eval_dir(tmp_path, f"b{s}", [False] * 50) for s in (0, 1, 2)}
    invalid = {s: with_validity(eval_dir(tmp_path, f"v{s}", [True] * 50), 0.43, 1.0) for s in (0, 1, 2)}
    r = compare(invalid, base)
    assert r["p"] < 1e-20 and r["stream_validity"] == pytest.approx(0.43)
    assert r["verdict"].startswith("not judged: streams not learned (validity 0.43, teacher's 1.00")
    assert "0.430 (1.000)" in "\n".join(verdict_lines([{"condition": "c", "split": "test",
                                                        "variant": "stream", "baseline": "optimal", **r}]))
    # 0.95 of a teacher's 1.0, or 0.5 of a teacher that is itself at 0.5 (a corrupted stream
    # judged on the instance's own graph), is mostly valid: the verdict comes from the numbers
    valid = {s: with_validity(eval_dir(tmp_path, f"w{s}", [True] * 50), 0.95, 1.0) for s in (0, 1, 2)}
    assert compare(valid, base)["verdict"] == "helps"
    donor = {s: with_validity(eval_dir(tmp_path, f"x{s}", [True] * 50), 0.5, 0.5) for s in (0, 1, 2)}
    assert compare(donor, base)["verdict"] == "helps"
    # a forward writer has no stream: no validity, no gate
    assert compare({s: eval_dir(tmp_path, f"y{s}", [True] * 50) for s in (0, 1, 2)},
                   base)["stream_validity"] is None
