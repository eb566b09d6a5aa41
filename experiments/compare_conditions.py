"""One variant in two conditions of a finished study, with the training seed as the unit: the
per-seed accuracy difference (condition - reference) and the paired t over seeds. For
conditions that differ in training only (e.g. answer_control's len4-teacherless vs len4: the same
graphs, the same seeds, another objective), which the report's verdicts (variants within a
condition) do not compare.

    python experiments/compare_conditions.py experiments/results/answer_control optimal len4-teacherless len4
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from retroplan.stats import paired_t


def per_seed(rows: list[dict], condition: str, variant: str, split: str) -> dict[str, float]:
    return {r["seed"]: float(r["accuracy"]) for r in rows
            if r["condition"] == condition and r["variant"] == variant and r["split"] == split}


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    folder, variant, condition, reference = argv[:4]
    split = argv[4] if len(argv) == 5 else "test"
    rows = list(csv.DictReader(open(Path(folder) / "results.csv")))
    a, b = per_seed(rows, condition, variant, split), per_seed(rows, reference, variant, split)
    seeds = sorted(set(a) & set(b), key=int)
    if len(seeds) < 2:
        print(f"{variant}: fewer than 2 seeds in both {condition!r} and {reference!r} ({split}).",
              file=sys.stderr)
        return 2
    deltas = [a[s] - b[s] for s in seeds]
    t = paired_t(deltas, alpha=0.05)
    print(f"{variant} ({split}): {condition} - {reference} per seed "
          + ", ".join(f"s{s} {d:+.3f}" for s, d in zip(seeds, deltas))
          + f"; mean {t['mean']:+.3f} [95% CI {t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}], "
          + f"paired t p = {t['p']:.2g} ({len(seeds)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
