"""The answer table across tasks: one row per (task, condition, budget, variant) of finished
studies, read from each study folder's verdicts.json and experiment.toml (with the overrides.json
of a study run with `--set`), so the table in experiments/RESULTS.md is computed, not typed. Δ is
the seed-level mean of accuracy(variant) − accuracy(baseline) with its 95% t-interval (the
baseline is the study's `[study] baseline`, named in the "against" column: the forward model
`optimal`, or the data control `optimal+optimal` for a study judged against it), p the
paired t's, Holm-adjusted within its study (the family the study's own report adjusts over). A
split other than `test` (Countdown's held-out targets, `test_target`) is named after the
condition.

    python experiments/answer_table.py experiments/results/answer experiments/results/answer_fwdex
"""

from __future__ import annotations

import csv
import json
import sys
import tomllib
from pathlib import Path

from retroplan.experiment_file import apply_overrides, stored_overrides
from retroplan.study import format_p
from retroplan.traces import writes

HEADER = ("| task | condition | budget | baseline steps | variant | against | writes at test time | seeds | "
          "Δ vs baseline [95% CI] | p Holm (within study) | verdict |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def study_settings(folder: Path) -> dict:
    """The study's experiment.toml with the `--set` overrides it ran under (overrides.json):
    a forward-examples twin run with `--set study.budget=...` is labelled by that budget."""
    return apply_overrides(tomllib.loads((folder / "experiment.toml").read_text()), stored_overrides(folder))


def baseline_steps(folder: Path, baseline: str) -> dict[str, str]:
    """condition -> the optimizer steps of its baseline runs (results.csv; "a-b" when seeds differ)."""
    with open(folder / "results.csv") as fh:
        found: dict[str, set[int]] = {}
        for r in csv.DictReader(fh):
            if r["variant"] == baseline and r["split"] == "test":
                found.setdefault(r["condition"], set()).add(int(r["steps"]))
    return {c: "-".join(str(n) for n in sorted({min(s), max(s)})) for c, s in found.items()}


def rows(folder: Path) -> list[str]:
    exp = study_settings(folder)
    study = exp.get("study", {})
    budget, baseline = study.get("budget", "steps"), study.get("baseline", "optimal")
    steps = baseline_steps(folder, baseline)
    out = []
    for v in json.loads((folder / "verdicts.json").read_text()):
        lo, hi = v["seed_ci"]
        verdict = v["verdict"].split(":")[0]
        split = v.get("split", "test")
        condition = v["condition"] if split == "test" else f"{v['condition']} / {split}"
        out.append(f"| {exp['task']} | {condition} | {budget.replace('_', ' ')} | "
                   f"{steps.get(v['condition'], '?')} | {v['variant']} | {baseline} | "
                   f"{writes(v['variant'])} | {v['seeds']} | "
                   f"{v['seed_mean_delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                   f"{format_p(v['seed_p_holm'])} | {verdict} |")
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    missing = [f for f in argv if not (Path(f) / "verdicts.json").is_file()]
    if missing:
        print(f"no verdicts.json in {', '.join(missing)}: pass finished study folders.", file=sys.stderr)
        return 2
    print(HEADER)
    for folder in argv:
        print("\n".join(rows(Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
