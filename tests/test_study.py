"""The verdict of a study, computed from paired records (retroplan/study.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retroplan.stats import binom_sign_test, paired_t, tost, verdict
from retroplan.study import compare, judge, still_rising, verdict_lines


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
    assert r["seed_p"] == 0.0 and r["seed_sd"] == pytest.approx(0, abs=1e-12)  # every seed +0.4
    # verdicts.json keeps every key the pooled rule wrote (new ones are added)
    assert {"n", "seeds", "accuracy", "baseline_accuracy", "delta", "ci", "p", "b01", "b10", "mde",
            "per_seed_delta", "seed_mean_delta", "seed_ci", "stream_validity", "teacher_stream_validity",
            "verdict"} <= set(r)
    assert r["per_seed_delta"] == {"0": pytest.approx(0.4), "1": pytest.approx(0.4), "2": pytest.approx(0.4)}
    worse = compare(base, var)
    assert worse["verdict"] == "hurts" and worse["delta"] == pytest.approx(-0.4)
    lines = "\n".join(verdict_lines([{"condition": "c", "split": "test", "variant": "v",
                                      "baseline": "optimal", **r}]))
    assert "**helps**" in lines and "+0.400" in lines


def test_identical_models_are_equivalent_and_tiny_differences_inconclusive(tmp_path):
    same = {s: eval_dir(tmp_path, f"a{s}", [True, False] * 10) for s in (0, 1, 2)}
    r = compare(same, {s: eval_dir(tmp_path, f"b{s}", [True, False] * 10) for s in (0, 1, 2)})
    assert r["delta"] == 0 and r["p"] == 1.0 and r["seed_p"] == 1.0 and r["tost_p"] == 0.0
    assert r["verdict"] == "equivalent within ±0.05"
    # one discordant pair in 60 (seed 0: +0.05, the others 0): no difference shown, and the
    # seeds' spread is too wide to show equivalence within 0.05 either
    r = compare({s: eval_dir(tmp_path, f"c{s}", [True] * 11 + [False] * 9) if s == 0 else
                 eval_dir(tmp_path, f"c{s}", [True] * 10 + [False] * 10) for s in (0, 1, 2)},
                {s: eval_dir(tmp_path, f"d{s}", [True] * 10 + [False] * 10) for s in (0, 1, 2)})
    assert (r["b10"], r["b01"], r["p"]) == (1, 0, 1.0)
    assert r["verdict"] == "inconclusive" and r["tost_p"] > 0.05
    # instance MDE, exact: 1 discordant pair; 6 one-sided pairs are the fewest with p < 0.05
    assert r["mde"] == pytest.approx(6 / 60)
    assert r["seed_mde"] == pytest.approx((4.302653 + 1.060660) * r["seed_sd"] / 3 ** 0.5, rel=1e-5)


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


def counts_dir(tmp_path, name, right, n, right_first=True):
    """An eval folder of n instances, `right` of them correct (the first ones, or the last)."""
    return eval_dir(tmp_path, name, [(i < right) if right_first else (i >= n - right) for i in range(n)])


def test_the_lookahead_pattern_is_not_called_hurts(tmp_path):
    # the path-star study: baseline right on 263 / 246 / 265 of 500 per seed, lookahead on
    # 237 / 107 / 37, every lookahead success also a baseline success -> per-seed deltas
    # -0.052, -0.278, -0.456. Pooled over 1,500 pairs McNemar says p < 1e-100 (the old rule's
    # "hurts"); the seeds disagree too much for a claim about retraining: p = 0.154.
    base = {s: counts_dir(tmp_path, f"b{s}", k, 500) for s, k in zip((0, 1, 2), (263, 246, 265))}
    look = {s: counts_dir(tmp_path, f"v{s}", k, 500) for s, k in zip((0, 1, 2), (237, 107, 37))}
    r = compare(look, base)
    assert list(r["per_seed_delta"].values()) == pytest.approx([-0.052, -0.278, -0.456])
    assert (r["b10"], r["b01"]) == (0, 393) and r["p"] < 1e-100 and r["ci"][1] < 0
    assert r["seed_p"] == pytest.approx(0.154, abs=5e-4)
    assert r["verdict"] == "inconclusive"
    # its accuracy interval stays inside [0, 1] (the t-interval is [-0.250, 0.758])
    assert r["accuracy_ci"][0] == 0.0 and r["accuracy_ci"][1] == pytest.approx(0.758, abs=1e-3)
    text = "\n".join(verdict_lines([{"condition": "c", "split": "test", "variant": "lookahead",
                                     "baseline": "optimal", **r}]))
    assert "0.254 [0.000, 0.758]" in text and "**inconclusive**" in text


def test_simulated_null_type_one_error_of_the_verdict_rule():
    """Baseline and variant drawn from one procedure: per seed each model's accuracy is
    0.5 + N(0, 0.05²) (retraining noise), then 500 test instances are right independently.
    20,000 simulated 3-seed studies, vectorised: the seed-level rule says helps/hurts in <= 6%
    of them; the pooled exact McNemar (the old rule, now a secondary column) rejects in > 20%
    (the review measured 42%)."""
    rng = np.random.default_rng(20)
    sims, seeds, n, sigma = 20000, 3, 500, 0.05
    p_var = np.clip(0.5 + sigma * rng.standard_normal((sims, seeds)), 0, 1)
    p_base = np.clip(0.5 + sigma * rng.standard_normal((sims, seeds)), 0, 1)
    # cells per (study, seed): both right, only variant right, only baseline right, both wrong
    cells = np.stack([p_var * p_base, p_var * (1 - p_base), (1 - p_var) * p_base,
                      (1 - p_var) * (1 - p_base)], axis=-1)
    counts = rng.multinomial(n, cells)
    deltas = (counts[..., 1] - counts[..., 2]) / n
    p_diff = paired_t(deltas)["p"]
    p_equiv = tost(deltas, 0.05)["p"]
    words = [verdict(m, pd, pe, 0.05) for m, pd, pe in zip(deltas.mean(axis=1), p_diff, p_equiv)]
    claims = sum(w in ("helps", "hurts") for w in words) / sims
    assert 0.03 <= claims <= 0.06, claims  # a t-test on normal-ish deltas: about 5%
    # the pooled instance test on the first 400 studies
    b10, b01 = counts[:400, :, 1].sum(axis=1), counts[:400, :, 2].sum(axis=1)
    pooled = np.mean([binom_sign_test(int(k), int(k + j)) < 0.05 for k, j in zip(b10, b01)])
    assert pooled > 0.20, pooled


def test_holm_across_the_study_and_withheld_rows_count_in_the_family():
    def row(p, mean=0.1, withheld=None):
        return {"seed_p": p, "tost_p": 0.9, "seed_mean_delta": mean, "margin": 0.05, "withheld": withheld}

    # alone, p = 0.03 helps; two such comparisons in one study: Holm 0.06 each, inconclusive
    assert judge([row(0.03)])[0]["verdict"] == "helps"
    table = judge([row(0.03), row(0.03, mean=-0.2)])
    assert [r["verdict"] for r in table] == ["inconclusive", "inconclusive"]
    assert table[0]["seed_p_holm"] == pytest.approx(0.06) and table[0]["family"] == 2
    # a withheld comparison still counts in m (withholding cannot buy the others power)
    table = judge([row(0.02), row(0.001, withheld="not judged: 2 training seeds (a claim needs >= 3)")])
    assert table[0]["seed_p_holm"] == pytest.approx(0.02) and table[0]["verdict"] == "helps"
    assert table[1]["verdict"].startswith("not judged")
    table = judge([row(0.02), row(0.3, withheld="not converged: ...")])
    assert table[0]["seed_p_holm"] == pytest.approx(0.04)
    # one seed has no p: not in the family
    table = judge([row(0.03), row(float("nan"), withheld="not judged: 1 training seed")])
    assert table[0]["family"] == 1 and table[0]["verdict"] == "helps"


def run_eval_dir(tmp_path, name, correct, curve=None):
    """runs/<name>/eval-test with records, and the run's curve.jsonl (val accuracy per point)."""
    run = tmp_path / name
    run.mkdir()
    if curve is not None:
        run.joinpath("curve.jsonl").write_text("".join(
            json.dumps({"step": 100 * (i + 1), "val_accuracy": a, "val_n": 100}) + "\n"
            for i, a in enumerate(curve)))
    return eval_dir(run, "eval-test", correct)


def test_a_learning_curve_still_rising_at_its_end_gets_no_verdict(tmp_path):
    flat = [0.5, 0.52, 0.53]
    base = {s: run_eval_dir(tmp_path, f"b{s}", [False] * 50, flat) for s in (0, 1, 2)}
    rising = {s: run_eval_dir(tmp_path, f"v{s}", [True] * 50, [0.2, 0.25, 0.4]) for s in (0, 1, 2)}
    r = compare(rising, base)
    # pooled over seeds: 0.225 on 600 val rows before, 0.40 on 300 at the end; SE 0.033
    assert (r["curve"], r["baseline_curve"]) == ("rising", "flat")
    assert r["seed_p"] == 0.0 and r["verdict"] == ("not converged: the variant's learning curve is "
                                                   "still rising (0.23 -> 0.40 at its last point)")
    # the baseline still rising blocks the comparison just the same
    late = {s: run_eval_dir(tmp_path, f"c{s}", [False] * 50, [0.3, 0.3, 0.45]) for s in (0, 1, 2)}
    same = {s: run_eval_dir(tmp_path, f"d{s}", [True] * 50, flat) for s in (0, 1, 2)}
    assert compare(same, late)["verdict"].startswith("not converged: the baseline's")
    # flat within noise, or at the ceiling: judged
    assert compare(same, base)["verdict"] == "helps"
    ceiling = {s: run_eval_dir(tmp_path, f"e{s}", [True] * 50, [0.9, 0.95, 1.0]) for s in (0, 1, 2)}
    assert compare(ceiling, base)["verdict"] == "helps"
    # no curve logged: judged, and the table's note says convergence was not checked
    bare = {s: run_eval_dir(tmp_path, f"f{s}", [True] * 50) for s in (0, 1, 2)}
    r = compare(bare, base)
    assert r["curve"] == "none" and r["verdict"] == "helps"
    text = "\n".join(verdict_lines([{"condition": "c", "split": "test", "variant": "v",
                                     "baseline": "optimal", **r}]))
    assert "Convergence not checked for 1 of 1 comparisons" in text and "logged no learning curve" in text


def test_still_rising_rule():
    pts = lambda accs: [{"val_accuracy": a, "val_n": 100} for a in accs]  # noqa: E731
    assert still_rising([]) == {"state": "none"} and still_rising([[], []]) == {"state": "none"}
    assert still_rising([pts([0.1, 0.2])])["state"] == "short"
    # one seed: 0.30 vs 0.20 on 200 rows: SE = sqrt(.21/100 + .16/200) = 0.054; 0.10 > 1 SE
    assert still_rising([pts([0.1, 0.2, 0.2, 0.3])])["state"] == "rising"
    # 0.25: SE = sqrt(.1875/100 + .16/200) = 0.052 > 0.05
    assert still_rising([pts([0.1, 0.2, 0.2, 0.25])])["state"] == "flat"
    # the rise is measured in SEs: with 3 seeds pooled the same 0.20 -> 0.25 is rising
    assert still_rising([pts([0.1, 0.2, 0.2, 0.25])] * 3)["state"] == "rising"
    # falling is not rising; a seed's point is pooled with the others'
    assert still_rising([pts([0.6, 0.6, 0.5])])["state"] == "flat"
    # 0.20 -> 0.26 alone: SE 0.052, rising; pooled with a flat seed: 0.23 vs 0.20, SE 0.036, flat
    assert still_rising([pts([0.2, 0.2, 0.26])])["state"] == "rising"
    assert still_rising([pts([0.2, 0.2, 0.26]), pts([0.2, 0.2, 0.2])])["state"] == "flat"


ROOT = Path(__file__).resolve().parent.parent


def _experiments_script(name: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """Run experiments/NAME with ARGS as a reader would, the checkout's retroplan importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *map(str, args)],
                          capture_output=True, text=True, check=check, cwd=ROOT, env=env)


def test_the_committed_path_star_study_rejudged_by_the_seed_level_rule():
    """experiments/results/answer_2026-11-27/ (the study before issue 20) kept verdicts.json
    (per-seed deltas) and results.csv: the review's findings follow from them (lookahead
    p = 0.154; with Holm over the 9 comparisons neither lookahead nor corrupted stays
    significant; the mixtures' seed-level upper bounds are +0.034 and +0.111)."""
    done = _experiments_script("rejudge.py", ROOT / "experiments" / "results" / "answer_2026-11-27")
    rows = {line.split(" | ")[2]: line for line in done.stdout.splitlines() if line.startswith("| degree2")}
    assert len(rows) == 9 and "Holm-adjusted across the 9 comparisons" in done.stdout
    assert rows["lookahead"].endswith("**inconclusive** |") and "| 0.154 | 0.463 |" in rows["lookahead"]
    assert rows["corrupted"].endswith("**inconclusive** |")
    assert rows["revthink"].endswith("**hurts** |") and rows["reverse"].endswith("**helps** |")
    assert "-0.025 [-0.084, +0.034]" in rows["optimal+reverse"]
    assert "-0.009 [-0.130, +0.111]" in rows["optimal+stream"]
    assert "0.254 [0.000, 0.758]" in rows["lookahead"]  # inside [0, 1]
    assert "Convergence not checked for 9 of 9 comparisons" in done.stdout


def test_compare_conditions_reads_the_committed_control_study_by_seed():
    """experiments/compare_conditions.py on the committed answer_control study: the teacherless
    objective against next-token training on the same len4 graphs, per training seed."""
    done = _experiments_script("compare_conditions.py", ROOT / "experiments" / "results" / "answer_control",
                               "optimal", "len4-teacherless", "len4")
    assert "s0 -0.498, s1 -0.478, s2 -0.500; mean -0.492" in done.stdout
    assert "(3 seeds)" in done.stdout


def test_the_answer_table_is_read_from_the_committed_studies():
    """experiments/answer_table.py: a row per variant of each study folder, numbers from its
    verdicts.json, the task and budget from its experiment.toml, a split other than test named
    after its condition; a folder without verdicts is refused in one sentence."""
    done = _experiments_script("answer_table.py", ROOT / "experiments" / "results" / "answer")
    rows = [line for line in done.stdout.splitlines() if line.startswith("| pathstar")]
    assert len(rows) == 9
    assert ("| pathstar | degree2 | steps | 600 | revthink | optimal | forward plan (backward objectives "
            "only in training) | 5 | -0.412 [-0.446, -0.378] | < 1e-4 | hurts |") in rows
    countdown = _experiments_script("answer_table.py", ROOT / "experiments" / "results" / "answer_countdown")
    cells = [line.split(" | ") for line in countdown.stdout.splitlines() if line.startswith("| countdown")]
    conditions = [c[1] for c in cells]
    assert conditions.count("cd3") == 6 and conditions.count("cd3 / test_target") == 6
    assert {c[3] for c in cells} == {"3000"}  # the baseline's steps, from results.csv
    refused = _experiments_script("answer_table.py", ROOT / "experiments", check=False)
    assert refused.returncode == 2 and "no verdicts.json in" in refused.stderr


def test_the_answer_table_names_what_a_study_judged_against():
    """A study re-judged with the data control as its baseline (`--set
    study.baseline="optimal+optimal"`, answer_countdown_6000_vs_control) says so in the
    "against" column, so its Δ is not read as one against the forward model."""
    results = ROOT / "experiments" / "results"
    folder = results / "answer_countdown_6000_vs_control"
    done = _experiments_script("answer_table.py", results / "answer_countdown_6000", folder)
    cells = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| countdown")]
    against = {(c[4], c[5]) for c in cells}
    assert against == {("optimal+optimal", "optimal"), ("optimal+reverse", "optimal"),
                       ("optimal+reverse", "optimal+optimal")}
    report = (folder / "report.md").read_text()
    assert "Verdicts: each variant against the baseline, optimal+optimal" in report


def _study_tables(folder: Path) -> tuple[list[dict], dict]:
    import csv

    accuracy = {(r["condition"], r["split"], r["variant"], int(r["seed"])): float(r["accuracy"])
                for r in csv.DictReader((folder / "results.csv").open())}
    return json.loads((folder / "verdicts.json").read_text()), accuracy


@pytest.mark.parametrize("study", ["answer_countdown_6000", "answer_graph_g11"])
def test_judging_a_study_against_its_control_from_its_tables_equals_judging_its_runs(study):
    """`against` (experiments/rejudge.py --against) judges a committed study's mixtures against
    its data control from verdicts.json and results.csv alone. On the two studies whose runs
    were judged against the control by `retroplan run --set study.baseline=...` (per-instance
    records, curves from curve.jsonl), it gives the same per-seed Δ, p-values and verdicts."""
    from retroplan.study import against

    results = ROOT / "experiments" / "results"
    old, accuracy = _study_tables(results / study)
    mine = against(old, "optimal+optimal", accuracy)
    runs = json.loads((results / f"{study}_vs_control" / "verdicts.json").read_text())
    assert [(r["condition"], r["split"], r["variant"]) for r in mine] == \
        [(r["condition"], r["split"], r["variant"]) for r in runs]
    for a, b in zip(mine, runs):
        assert a["per_seed_delta"] == b["per_seed_delta"] and a["verdict"] == b["verdict"]
        assert a["baseline"] == "optimal+optimal" and a["family"] == b["family"]
        for key in ("seed_mean_delta", "seed_p", "seed_p_holm", "tost_p_holm", "accuracy",
                    "baseline_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-12), key


def test_judging_against_the_control_withholds_while_the_controls_curve_rises():
    """The convergence gate reads the control's own row: a control whose curve the study found
    rising withholds every verdict against it; the mixture's p-values are still reported."""
    from retroplan.study import against

    old, accuracy = _study_tables(ROOT / "experiments" / "results" / "answer_graph_g11")
    for r in old:
        r["curve"] = "rising" if r["variant"] == "optimal+optimal" else r["curve"]
    (row,) = against(old, "optimal+optimal", accuracy)
    assert row["verdict"] == "not converged: the baseline's learning curve is still rising"
    assert row["seed_p_holm"] < 0.05  # it would have been "hurts"
    for r in old:  # rows of the old rule kept no curve states: judged, convergence not checked
        del r["curve"]
    (row,) = against(old, "optimal+optimal", accuracy)
    assert row["verdict"] == "hurts" and row["curve"] == row["baseline_curve"] == "none"
    assert "Convergence not checked for 1 of 1 comparisons" in "\n".join(verdict_lines([row]))


def test_rejudge_writes_a_study_against_the_control_that_the_answer_table_reads(tmp_path):
    """`rejudge.py FOLDER --against optimal+optimal --out NEW` writes a study folder (verdicts,
    report, the study's toml and results, its overrides plus the new baseline) whose rows the
    answer table labels "against optimal+optimal"; a variant the study lacks, or an --out that
    exists, is refused in one sentence and writes nothing."""
    results = ROOT / "experiments" / "results"
    out = tmp_path / "fwdex_vs_control"
    _experiments_script("rejudge.py", results / "answer_fwdex", "--against", "optimal+optimal", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["experiment.toml", "overrides.json", "report.md",
                                                      "results.csv", "verdicts.json"]
    assert json.loads((out / "overrides.json").read_text()) == ['study.baseline="optimal+optimal"']
    done = _experiments_script("answer_table.py", out)
    cells = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| pathstar")]
    mixtures = ("optimal+reverse", "optimal+stream", "optimal+backward-stream")
    assert {(c[4], c[5]) for c in cells} == {(v, "optimal+optimal") for v in mixtures}
    assert {c[2] for c in cells} == {"forward examples"}
    report = (out / "report.md").read_text()
    assert "Verdicts: each variant against the baseline, optimal+optimal" in report
    again = _experiments_script("rejudge.py", results / "answer_fwdex", "--against", "optimal+optimal",
                                "--out", out, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    missing = tmp_path / "none"
    wrong = _experiments_script("rejudge.py", results / "answer_fwdex", "--against", "revthink",
                                "--out", missing, check=False)
    assert wrong.returncode == 2 and "--against 'revthink'" in wrong.stderr and not missing.exists()


def test_the_answer_table_labels_a_study_by_the_budget_it_ran_under(tmp_path):
    """A forward-examples twin run as `--set study.budget="forward_examples"` keeps the shipped
    experiment.toml (budget "steps") and the override in overrides.json: the table applies it."""
    import shutil

    folder = tmp_path / "twin"
    shutil.copytree(ROOT / "experiments" / "results" / "answer_countdown", folder)
    stored = json.loads((folder / "overrides.json").read_text())  # the variants it ran
    (folder / "overrides.json").write_text(json.dumps(stored + ['study.budget="forward_examples"']))
    done = _experiments_script("answer_table.py", folder)
    budgets = {line.split(" | ")[2] for line in done.stdout.splitlines() if line.startswith("| countdown")}
    assert budgets == {"forward examples"}


def test_the_answer_table_in_results_md_is_the_scripts_output():
    """The cross-task table at the top of experiments/RESULTS.md is what answer_table.py prints
    for the folders its command line there names: a number typed or left stale fails."""
    import re

    text = (ROOT / "experiments" / "RESULTS.md").read_text()
    section = text.split("## The answer across tasks", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"python experiments/answer_table\.py ([^\n]+)", section).group(1).split()
    done = _experiments_script("answer_table.py", *command)
    printed = [line for line in done.stdout.splitlines() if line.startswith("|")]
    committed = [line for line in section.splitlines() if line.startswith("|")]
    assert len(printed) > 2 and committed == printed
