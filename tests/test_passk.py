"""pass@k (passk.py): the unbiased estimator against its closed form and hand values, the
curve over k = 1..n from an evaluation's records, and the figure that overlays curves."""

import json
from math import comb

import pytest

from retroplan.errors import UserError
from retroplan.passk import pass_at_k, pass_at_k_curve, read_curve
from retroplan.plots import pass_at_k_curves


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)        # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)        # = c/n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)        # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 2, 4) == 1.0                        # n - c < k: every 4 of 5 hold a correct one


def test_pass_at_k_equals_the_binomial_closed_form_everywhere():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1.0 if n - c < k else 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


def test_pass_at_k_is_stable_where_the_binomials_are_huge():
    # C(2000, 1000) overflows a float; the product form needs none of it
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(2000, 1, 1) < pass_at_k(2000, 1, 10) < 1.0


def test_pass_at_k_refuses_impossible_counts():
    for n, c, k in ((4, 5, 1), (4, 1, 0), (4, 1, 5), (3, -1, 1)):
        with pytest.raises(UserError, match="pass@k needs"):
            pass_at_k(n, c, k)


def records(correct_by_row):
    return [{"row": r, "sample": s, "correct": ok}
            for r, oks in correct_by_row.items() for s, ok in enumerate(oks)]


def test_the_curve_averages_instances_for_every_k():
    curve = pass_at_k_curve(records({0: [1, 0, 0, 0], 1: [1, 1, 0, 0], 2: [0, 0, 0, 0]}))
    assert curve["k"] == [1, 2, 3, 4] and curve["n"] == 3 and curve["samples"] == 4
    # row 0: 1/4, 1/2, 3/4, 1; row 1: 1/2, 5/6, 1, 1; row 2: 0
    expected = [(0.25 + 0.5) / 3, (0.5 + 5 / 6) / 3, (0.75 + 1) / 3, 2 / 3]
    assert curve["value"] == pytest.approx(expected)
    assert all(a <= b for a, b in zip(curve["value"], curve["value"][1:]))


def test_read_curve_and_the_figure(tmp_path):
    run = tmp_path / "eval"
    run.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in records({0: [1, 0], 1: [0, 0]}))
    (run / "records.jsonl").write_text(text)
    curve = read_curve(run)
    assert curve["value"] == pytest.approx([0.25, 0.5])
    with pytest.raises(UserError, match="not an evaluation folder"):
        read_curve(tmp_path / "missing")
    written = pass_at_k_curves({"SFT": curve, "SFT + RL": pass_at_k_curve(records({0: [1, 1], 1: [1, 0]}))},
                               tmp_path / "passk")
    assert [p.suffix for p in written] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in written)
