"""The answer of a study: every variant against the forward baseline, with a verdict computed
from the numbers, whose unit is the training seed.

For one condition and one evaluated split, a variant V and the baseline B were trained with
the same seeds on suites whose test instances are the same for each seed (instances depend on
(seed, split, index) only, never on the variant). Seed s gives one paired delta, Δ_s =
accuracy(V, s) − accuracy(B, s) over the instances both evaluated. Reported per comparison:

- the verdict's numbers, over seeds (docs/METRICS.md, "Verdicts"): the mean of the per-seed
  deltas with its 95% t-interval, the paired t-test's p (`stats.paired_t`), the TOST p for
  equivalence within ±margin (`stats.tost`; `[study] margin`, default 0.05), both
  Holm-adjusted across every comparison of the study (`judge`), and the seed-level MDE
  (`stats.seed_mde`: alpha 0.05, power 0.8, at the observed per-seed SD);
- secondary, over pooled (seed, instance) pairs: Δ with a paired bootstrap interval
  (instances resampled within seeds), the exact McNemar p (`stats.mcnemar`) and the smallest
  Δ that exact test could call significant at this n and discordance (`stats.mcnemar_mde`).
  These hold the trained models fixed, so they leave retraining noise out: under the null
  they reject far more often than 5% once seeds differ (tests/test_study.py);
- accuracies with their 95% interval across seeds, clipped to [0, 1] (`stats.rate_ci`);
- stream validity: for a variant that writes a stream at test time, the mean over seeds of
  its model's step validity and of its teacher's on the same instances;
- convergence: whether the variant's or the baseline's learning curve (curve.jsonl, when
  `curve_every` is set) is still rising at its end (`still_rising`);
- verdict: `stats.verdict` on the Holm-adjusted p-values — "helps" / "hurts" /
  "equivalent within ±margin" / "inconclusive"; none ("not judged") below 3 training seeds,
  none for a stream model whose streams are not mostly valid (validity below 0.9 of its
  teacher's), and none ("not converged") when either learning curve is still rising. Never
  typed by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .stats import holm, mcnemar, mcnemar_mde, paired_bootstrap, paired_t, rate_ci, seed_mde, tost, verdict
from .traces import components, writes

MIN_SEEDS = 3  # training seeds per cell before a verdict is given (one model is an anecdote)
STREAM_LEARNED = 0.9  # a stream model's validity / its teacher's before its streams are judged
ALPHA = 0.05  # every test's level (after Holm)
MARGIN = 0.05  # default [study] margin: |Δ accuracy| below it counts as no difference (TOST)
RISING_BEFORE = 2  # a curve's last point is compared with the mean of this many points before it
RISING_Z = 1.0  # ... and called still rising when it is higher by more than this many SEs


def correct_by_index(eval_dir: Path) -> dict[int, bool]:
    """Instance index -> correct, from an evaluation's records (first sample of each row)."""
    out: dict[int, bool] = {}
    for line in (eval_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("sample", 0) == 0:
            out[int(rec["index"])] = bool(rec["correct"])
    return out


def stream_validity(eval_dirs: dict[int, Path]) -> tuple[float, float] | None:
    """(model, teacher) step validity, each the mean over seeds, of a variant whose model
    writes streams; None when its evaluations judged no stream."""
    model, teacher = [], []
    for d in eval_dirs.values():
        if not (d / "metrics.json").is_file():
            continue
        m = json.loads((d / "metrics.json").read_text())
        mine = (m.get("behaviour") or {}).get("trace_validity") or {}
        theirs = (m.get("teacher_behaviour") or {}).get("trace_validity") or {}
        if mine.get("value") is not None and theirs.get("value") is not None:
            model.append(mine["value"])
            teacher.append(theirs["value"])
    if not model:
        return None
    return sum(model) / len(model), sum(teacher) / len(teacher)


def curve_points(run_dir: Path) -> list[dict]:
    """A run's learning curve (curve.jsonl: verified val accuracy every `curve_every` steps and
    at the end); [] when it logged none."""
    path = run_dir / "curve.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def still_rising(curves: list[list[dict]], before: int = RISING_BEFORE, z: float = RISING_Z) -> dict:
    """Is a variant still learning at the end of training? `curves`: one curve per seed.

    Pooled over seeds, the last point's verified accuracy (correct / n over every seed's last
    point) is compared with the accuracy of the `before` points before it (pooled likewise):
    still rising when last − earlier > z · √(last(1−last)/n_last + earlier(1−earlier)/n_earlier),
    one standard error of the difference (z = 1). A sensitive gate on purpose: a false alarm
    only withholds a verdict, a miss lets a still-learning run make a claim. The points score
    the same val rows each time, so for a model that has stopped changing they barely move and
    this binomial SE (independent samples) overstates their noise. A last point at 1.0
    (every val row solved) cannot rise and is never flagged. Returns {"state": "none" (no seed
    logged a curve) | "short" (some seed has fewer than before + 1 points) | "rising" | "flat",
    "last", "earlier"}."""
    if not curves or not any(curves):
        return {"state": "none"}
    if any(len(c) < before + 1 for c in curves):
        return {"state": "short"}

    def pooled(points):
        n = sum(int(p["val_n"]) for p in points)
        return sum(round(p["val_accuracy"] * p["val_n"]) for p in points) / n, n

    last, n_last = pooled([c[-1] for c in curves])
    earlier, n_earlier = pooled([p for c in curves for p in c[-1 - before:-1]])
    se = math.sqrt(last * (1 - last) / n_last + earlier * (1 - earlier) / n_earlier)
    rising = last < 1.0 and last - earlier > z * se
    return {"state": "rising" if rising else "flat", "last": last, "earlier": earlier}


def compare(variant_dirs: dict[int, Path], baseline_dirs: dict[int, Path],
            margin: float = MARGIN) -> dict | None:
    """Variant vs baseline over the seeds both have: {seed: eval folder} each (the run folder,
    with its curve.jsonl, is the eval folder's parent). Judged as a family of one comparison;
    `judge` re-judges the rows of a study together (Holm)."""
    a, b, strata, per_seed, acc, base_acc = [], [], [], {}, [], []
    for seed in sorted(set(variant_dirs) & set(baseline_dirs)):
        v, base = correct_by_index(variant_dirs[seed]), correct_by_index(baseline_dirs[seed])
        common = sorted(set(v) & set(base))
        if not common:
            continue
        a += [int(v[i]) for i in common]
        b += [int(base[i]) for i in common]
        strata += [seed] * len(common)
        per_seed[seed] = sum(v[i] - base[i] for i in common) / len(common)
        acc.append(sum(v[i] for i in common) / len(common))
        base_acc.append(sum(base[i] for i in common) / len(common))
    if not a:
        return None
    boot = paired_bootstrap(a, b, strata=strata, resamples=10000, seed=0)
    test = mcnemar(a, b, strata=strata)
    n = len(a)
    validity = stream_validity({k: variant_dirs[k] for k in per_seed})
    curve = still_rising([curve_points(variant_dirs[k].parent) for k in per_seed])
    base_curve = still_rising([curve_points(baseline_dirs[k].parent) for k in per_seed])
    row = {
        "n": n, "seeds": len(per_seed),
        # pooled over (seed, instance); the verdict does not use these
        "accuracy": sum(a) / n, "baseline_accuracy": sum(b) / n,
        "delta": boot["delta"], "ci": list(boot["ci"]), "p": test["p"],
        "b01": test["b01"], "b10": test["b10"], "mde": mcnemar_mde(n, test["b01"] + test["b10"], ALPHA),
        "stream_validity": None if validity is None else validity[0],
        "teacher_stream_validity": None if validity is None else validity[1],
        "curve": curve["state"], "baseline_curve": base_curve["state"],
        **seed_level(per_seed, acc, base_acc, margin),
    }
    row["withheld"] = withheld(row, curve, base_curve)
    judge([row])
    return row


def seed_level(per_seed: dict, accuracy: list[float], baseline_accuracy: list[float],
               margin: float = MARGIN) -> dict:
    """The verdict's numbers over training seeds, from the per-seed deltas {seed: Δ_s} and each
    side's per-seed accuracies (p-values not yet Holm-adjusted: `judge` does that)."""
    deltas = list(per_seed.values())
    seeds = len(deltas)
    nan = float("nan")
    if seeds >= 2:
        t = paired_t(deltas, alpha=ALPHA)
        seed_p, seed_ci, sd = t["p"], list(t["ci"]), t["sd"]
        tost_p = tost(deltas, margin, alpha=ALPHA)["p"]
    else:
        seed_p, seed_ci, sd, tost_p = nan, [deltas[0], deltas[0]], nan, nan
    _, acc_lo, acc_hi = rate_ci(accuracy)
    _, base_lo, base_hi = rate_ci(baseline_accuracy)
    return {"per_seed_delta": {str(k): v for k, v in per_seed.items()},
            "seed_mean_delta": sum(deltas) / seeds, "seed_ci": seed_ci, "seed_sd": sd,
            "seed_p": seed_p, "tost_p": tost_p, "margin": margin,
            "seed_mde": seed_mde(sd, seeds, ALPHA) if seeds >= 2 else nan,
            "accuracy_ci": [acc_lo, acc_hi], "baseline_accuracy_ci": [base_lo, base_hi]}


def withheld(row: dict, curve: dict, base_curve: dict) -> str | None:
    """Why a comparison gets no verdict (None: it gets one): too few seeds, streams not learned,
    or a learning curve still rising at its end (variant's or baseline's)."""
    seeds, model, teacher = row["seeds"], row["stream_validity"], row["teacher_stream_validity"]
    if seeds < MIN_SEEDS:
        return f"not judged: {seeds} training seed{'s' if seeds > 1 else ''} (a claim needs >= {MIN_SEEDS})"
    if model is not None and model < STREAM_LEARNED * teacher:
        return (f"not judged: streams not learned (validity {model:.2f}, teacher's {teacher:.2f}; "
                f"a claim needs >= {STREAM_LEARNED:g} of it)")
    if "rising" in (curve["state"], base_curve["state"]):
        who, c = ("variant", curve) if curve["state"] == "rising" else ("baseline", base_curve)
        where = f" ({c['earlier']:.2f} -> {c['last']:.2f} at its last point)" if "last" in c else ""
        return f"not converged: the {who}'s learning curve is still rising{where}"
    return None


def rejudge(old: list[dict], accuracy: dict | None = None, margin: float = MARGIN) -> list[dict]:
    """verdicts.json rows written by an earlier rule (the pooled McNemar), judged again by this
    one from what they kept: per-seed deltas, pooled counts, stream validity. `accuracy`:
    {(condition, split, variant, seed): accuracy} from the study's results.csv, for the
    accuracy intervals. Learning curves are not in verdicts.json: convergence is "none" (not
    checked, said in the table's note)."""
    table = []
    for r in old:
        seeds = [int(s) for s in r["per_seed_delta"]]
        key = (r["condition"], r["split"])

        def accs(variant, key=key, seeds=seeds):
            return [accuracy[(*key, variant, s)] for s in seeds] if accuracy else []

        n, discordant = r["n"], r["b01"] + r["b10"]
        new = {**r, "mde": mcnemar_mde(n, discordant, ALPHA), "curve": "none", "baseline_curve": "none",
               **seed_level({s: r["per_seed_delta"][str(s)] for s in seeds}, accs(r["variant"]),
                            accs(r["baseline"]), margin)}
        new["withheld"] = withheld(new, {"state": "none"}, {"state": "none"})
        table.append(new)
    return judge(table)


def against(table: list[dict], control: str, accuracy: dict, margin: float = MARGIN) -> list[dict]:
    """A finished study's verdicts (verdicts.json rows, the seed-level rule's) judged again with
    one of its variants, the data control `control`, as the baseline, without the runs: the
    mixtures other than the control, each against it. Per seed, Δ_s = accuracy(mixture, s) −
    accuracy(control, s) from results.csv (`accuracy`: {(condition, split, variant, seed):
    accuracy}), exact because every variant of a seed is evaluated on the same test instances;
    the convergence gate reads the curve states the study's rows recorded (the control's from
    its own row; "none", not checked, for rows of the old rule, which kept none). The pooled
    McNemar needs per-instance records, so its columns are left empty.
    Judged as one Holm family, as `retroplan run` with `[study] baseline = control` would."""
    controls = {(r["condition"], r["split"]): r for r in table if r["variant"] == control}
    out = []
    for r in table:
        key = (r["condition"], r["split"])
        if key not in controls or r["variant"] == control or len(components(r["variant"])) == 1:
            continue
        c = controls[key]
        seeds = sorted({int(s) for s in r["per_seed_delta"]} & {int(s) for s in c["per_seed_delta"]})
        acc = [accuracy[(*key, r["variant"], s)] for s in seeds]
        base = [accuracy[(*key, control, s)] for s in seeds]
        new = {**r, "baseline": control, "seeds": len(seeds), "n": r["n"] // r["seeds"] * len(seeds),
               "accuracy": sum(acc) / len(seeds), "baseline_accuracy": sum(base) / len(seeds),
               "delta": None, "ci": None, "p": None, "b01": None, "b10": None, "mde": None,
               "curve": r.get("curve", "none"), "baseline_curve": c.get("curve", "none"),
               **seed_level({s: round(a - b, 12) for s, a, b in zip(seeds, acc, base)}, acc, base, margin)}
        new["withheld"] = withheld(new, {"state": new["curve"]}, {"state": new["baseline_curve"]})
        out.append(new)
    return judge(out)


def judge(table: list[dict]) -> list[dict]:
    """The verdicts of one study, in place: the seed-level p-values of every row that has one
    (>= 2 seeds, judged or withheld, so withholding a verdict never buys the others power) are
    one Holm family, the TOST p-values another; each row's verdict is `stats.verdict` on its
    adjusted p-values at ALPHA, unless the row is withheld."""
    seed_holm = holm([r["seed_p"] for r in table])
    tost_holm = holm([r["tost_p"] for r in table])
    family = sum(1 for r in table if r["seed_p"] == r["seed_p"])
    for r, p_diff, p_equiv in zip(table, seed_holm, tost_holm):
        r["seed_p_holm"], r["tost_p_holm"], r["family"] = p_diff, p_equiv, family
        r["verdict"] = r["withheld"] or verdict(r["seed_mean_delta"], p_diff, p_equiv, r["margin"], ALPHA)
    return table


def verdict_table(evaluations: dict[tuple[str, str], dict[str, dict[int, Path]]], baseline: str,
                  margin: float = MARGIN) -> list[dict]:
    """One comparison per (condition, split) of `evaluations` and variant other than the baseline,
    judged together (one Holm family for the whole study). `evaluations`: (condition, split) ->
    variant -> seed -> evaluation folder, for the evaluations that have records."""
    table = []
    for (label, split), by_variant in evaluations.items():
        base = by_variant.get(baseline, {})
        for variant, dirs in by_variant.items():
            if variant == baseline:
                continue
            result = compare(dirs, base, margin)
            if result is not None:
                table.append({"condition": label, "split": split, "variant": variant,
                              "baseline": baseline, **result})
    return judge(table)


def verdict_lines(table: list[dict]) -> list[str]:
    """The verdict table of report.md."""
    if not table:
        return []
    margin = table[0]["margin"]
    family = table[0].get("family", len(table))
    lines = [f"## Verdicts: each variant against the baseline, {table[0]['baseline']}", "",
             "The unit is the training seed. Per seed, Δ = accuracy(variant) − accuracy(baseline) on "
             "the same test instances; the verdict's numbers are over those per-seed Δ: their mean "
             "with a 95% t-interval, the paired t-test's p, and TOST's p for equivalence within "
             f"±{margin:g}, both Holm-adjusted across the {family} comparisons of this study that "
             "have a p; the seed MDE is the smallest mean Δ a paired t over these seeds detects "
             "(α 0.05, power 0.8, at the observed per-seed SD). The verdict is computed: "
             "\"helps\" / \"hurts\" when the adjusted paired-t p < 0.05, else \"equivalent within "
             f"±{margin:g}\" when the adjusted TOST p < 0.05, else \"inconclusive\"; none with fewer "
             "than 3 training seeds, none for a stream model whose streams are not mostly valid "
             "(stream validity below 0.9 of its teacher's), and none (\"not converged\") when the "
             "variant's or the baseline's learning curve is still rising at its end "
             "(docs/METRICS.md, \"Verdicts\"). Secondary, not used by the verdict: the exact "
             "McNemar p on the (seed, instance) pairs pooled over seeds and the smallest Δ it could "
             "call significant at this n (instance MDE); they hold the trained models fixed and "
             "leave retraining noise out. Accuracies: mean over seeds [95% t-interval, clipped to "
             "[0, 1]]. A variant that writes backwards at test time answers a different question "
             "than one that only *trained* backwards: see \"writes\"."]
    lines += _curve_notes(table)
    lines += ["", "| condition | split | variant | writes | baseline | seeds × n | accuracy | baseline "
              "accuracy | per-seed Δ | Δ: seed mean [95% CI] | p (paired t) | p Holm | TOST p Holm | "
              "seed MDE | pooled McNemar p | instance MDE | stream validity (teacher) | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        per_seed = ", ".join(f"{d:+.3f}" for d in r["per_seed_delta"].values())
        seed_cell = (f"{r['seed_mean_delta']:+.3f} [{r['seed_ci'][0]:+.3f}, {r['seed_ci'][1]:+.3f}]"
                     if r["seeds"] > 1 else f"{r['seed_mean_delta']:+.3f} (one seed)")
        lines.append(
            f"| {r['condition']} | {r['split']} | {r['variant']} | {writes(r['variant'])} | "
            f"{r['baseline']} | {r['seeds']} × {r['n'] // max(1, r['seeds'])} | "
            f"{_rate(r['accuracy'], r.get('accuracy_ci'))} | "
            f"{_rate(r['baseline_accuracy'], r.get('baseline_accuracy_ci'))} | {per_seed} | {seed_cell} | "
            f"{format_p(r['seed_p'])} | {format_p(r['seed_p_holm'])} | {format_p(r['tost_p_holm'])} | "
            f"{_number(r['seed_mde'])} | {format_p(r['p'])} | {_number(r['mde'])} | {_validity(r)} | "
            f"**{r['verdict']}** |")
    return lines + [""]


def _curve_notes(table: list[dict]) -> list[str]:
    """What the convergence gate could not check, said in the table's note rather than blocking."""
    notes = []
    for state, why in (("none", "logged no learning curve (set [train] curve_every)"),
                       ("short", f"logged fewer than {RISING_BEFORE + 1} curve points")):
        rows = [r for r in table if state in (r.get("curve"), r.get("baseline_curve"))]
        if rows:
            notes.append(f"Convergence not checked for {len(rows)} of {len(table)} comparisons: the "
                         f"variant or the baseline {why}.")
    return ["", " ".join(notes)] if notes else []


def _rate(value: float, ci) -> str:
    if not ci or ci[0] is None or ci[0] != ci[0] or ci[0] == ci[1]:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _number(x) -> str:
    return "—" if x is None or x != x else f"{x:.3f}"


def format_p(p: float) -> str:
    if p is None or p != p:
        return "—"
    return "< 1e-4" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _validity(r: dict) -> str:
    if r.get("stream_validity") is None:
        return "—"
    return f"{r['stream_validity']:.3f} ({r['teacher_stream_validity']:.3f})"
