"""The answer of a study: every variant against the forward baseline, paired over
(seed, instance), with a verdict computed from the numbers.

For one condition and one evaluated split, a variant V and the baseline B were trained with
the same seeds on suites whose test instances are the same for each seed (instances depend on
(seed, split, index) only, never on the variant). Each (seed, instance) is a pair: V right or
not, B right or not. Reported per comparison:

- delta: accuracy(V) - accuracy(B) over all pairs, with a 95% paired percentile bootstrap
  interval (instances resampled within each seed, `stats.paired_bootstrap`);
- p: exact McNemar test on the discordant pairs pooled over seeds (`stats.mcnemar`);
- mde: the smallest delta this n could detect (alpha 0.05, power 0.8, paired, at the observed
  rate of discordant pairs; `stats.minimum_detectable_effect`);
- per-seed deltas and their across-seed mean with a 95% t-interval (the training-seed
  spread, which the pooled tests above do not include);
- stream validity: for a variant that writes a stream at test time, the mean over seeds of
  its model's step validity and of its teacher's on the same instances;
- verdict: `stats.verdict` — "helps" / "hurts" only when p < 0.05 and the interval excludes 0,
  else "no detectable difference at this n"; with fewer than 3 training seeds no verdict is
  given ("not judged"), whatever the numbers, and none for a stream model whose streams are
  not mostly valid (validity below 0.9 of its teacher's): its accuracy says nothing about
  streams. Never typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from .stats import mcnemar, mean_ci, minimum_detectable_effect, paired_bootstrap, verdict
from .traces import writes

MIN_SEEDS = 3  # training seeds per cell before a verdict is given (one model is an anecdote)
STREAM_LEARNED = 0.9  # a stream model's validity / its teacher's before its streams are judged


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


def compare(variant_dirs: dict[int, Path], baseline_dirs: dict[int, Path]) -> dict | None:
    """Variant vs baseline over the seeds both have: {seed: eval folder} each."""
    a, b, strata, per_seed = [], [], [], {}
    for seed in sorted(set(variant_dirs) & set(baseline_dirs)):
        v, base = correct_by_index(variant_dirs[seed]), correct_by_index(baseline_dirs[seed])
        common = sorted(set(v) & set(base))
        if not common:
            continue
        a += [int(v[i]) for i in common]
        b += [int(base[i]) for i in common]
        strata += [seed] * len(common)
        per_seed[seed] = sum(v[i] - base[i] for i in common) / len(common)
    if not a:
        return None
    boot = paired_bootstrap(a, b, strata=strata, resamples=10000, seed=0)
    test = mcnemar(a, b, strata=strata)
    n = len(a)
    discordant = (test["b01"] + test["b10"]) / n
    mde = minimum_detectable_effect(n, max(discordant, 1.0 / n))
    seed_mean, seed_lo, seed_hi = mean_ci(list(per_seed.values()))
    validity = stream_validity({k: variant_dirs[k] for k in per_seed})
    if len(per_seed) < MIN_SEEDS:
        judged = (f"not judged: {len(per_seed)} training seed{'s' if len(per_seed) > 1 else ''} "
                  f"(a claim needs >= {MIN_SEEDS})")
    elif validity is not None and validity[0] < STREAM_LEARNED * validity[1]:
        judged = (f"not judged: streams not learned (validity {validity[0]:.2f}, teacher's "
                  f"{validity[1]:.2f}; a claim needs >= {STREAM_LEARNED:g} of it)")
    else:
        judged = verdict(boot["ci"], test["p"])
    return {
        "n": n, "seeds": len(per_seed),
        "accuracy": sum(a) / n, "baseline_accuracy": sum(b) / n,
        "delta": boot["delta"], "ci": list(boot["ci"]), "p": test["p"],
        "b01": test["b01"], "b10": test["b10"], "mde": mde,
        "per_seed_delta": {str(k): v for k, v in per_seed.items()},
        "seed_mean_delta": seed_mean, "seed_ci": [seed_lo, seed_hi],
        "stream_validity": None if validity is None else validity[0],
        "teacher_stream_validity": None if validity is None else validity[1],
        "verdict": judged,
    }


def verdict_table(exp: dict, out: Path, baseline: str) -> list[dict]:
    """One comparison per condition, split and variant other than the baseline."""
    table = []
    for label in exp["_labels"]:
        for split in exp["_splits"]:
            def dirs(variant, label=label, split=split):
                found = {}
                for seed in exp["seeds"]:
                    d = out / "runs" / f"{label}-{variant}-s{seed}" / f"eval-{split}"
                    if (d / "records.jsonl").is_file():
                        found[seed] = d
                return found

            base = dirs(baseline)
            for variant in exp["variants"]:
                if variant == baseline:
                    continue
                result = compare(dirs(variant), base)
                if result is not None:
                    table.append({"condition": label, "split": split, "variant": variant,
                                  "baseline": baseline, **result})
    return table


def verdict_lines(table: list[dict]) -> list[str]:
    """The verdict table of report.md."""
    if not table:
        return []
    lines = ["## Verdicts: each variant against the forward baseline", "",
             "Paired over (seed, test instance): Δ = accuracy(variant) − accuracy(baseline) with a "
             "95% paired bootstrap interval (instances resampled within seeds); p from the exact "
             "McNemar test on the discordant pairs pooled over seeds; MDE = the smallest Δ this n "
             "could detect (α 0.05, power 0.8); the seed column gives the mean of the per-seed Δ "
             "with a 95% t-interval over training seeds. The verdict is computed: \"helps\" / "
             "\"hurts\" only when p < 0.05 and the interval excludes 0, and only with at least 3 "
             "training seeds, and not for a stream model whose streams are not mostly valid "
             "(stream validity below 0.9 of its teacher's). A variant that writes "
             "backwards at test time answers a different question than one that only *trained* "
             "backwards: see \"writes\".", "",
             "| condition | split | variant | writes | baseline | n (seeds) | accuracy | baseline "
             "accuracy | Δ [95% CI] | p | MDE | per-seed Δ: mean [95% CI] | stream validity (teacher) | "
             "verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        seed_cell = (f"{r['seed_mean_delta']:+.3f} [{r['seed_ci'][0]:+.3f}, {r['seed_ci'][1]:+.3f}]"
                     if r["seeds"] > 1 else f"{r['seed_mean_delta']:+.3f} (one seed)")
        lines.append(
            f"| {r['condition']} | {r['split']} | {r['variant']} | {writes(r['variant'])} | "
            f"{r['baseline']} | {r['n']} ({r['seeds']}) | {r['accuracy']:.3f} | "
            f"{r['baseline_accuracy']:.3f} | {r['delta']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | "
            f"{_p(r['p'])} | {r['mde']:.3f} | {seed_cell} | {_validity(r)} | **{r['verdict']}** |")
    return lines + [""]


def _p(p: float) -> str:
    return "< 1e-4" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _validity(r: dict) -> str:
    if r.get("stream_validity") is None:
        return "—"
    return f"{r['stream_validity']:.3f} ({r['teacher_stream_validity']:.3f})"
