"""Judge a finished study's verdicts again by the seed-level rule (issue 20), from the files a
study folder keeps: verdicts.json (per-seed deltas, pooled counts, stream validity) and
results.csv (per-seed accuracies). Prints the new verdict table (markdown) to stdout.

    python experiments/rejudge.py experiments/results/answer [--margin 0.05]

For a study folder that still has its runs, `retroplan run` on the same file re-renders the
whole report by the current rule instead (it reuses every run and evaluation); this script is
for a committed folder that kept only its tables. verdicts.json holds no learning curves, so
convergence is not checked here (the table's note says so)."""

import argparse
import csv
import json
import sys
from pathlib import Path

from retroplan.study import MARGIN, rejudge, verdict_lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a study folder with verdicts.json and results.csv")
    p.add_argument("--margin", type=float, default=MARGIN, help="TOST equivalence margin (accuracy)")
    args = p.parse_args(argv)
    verdicts, results = args.folder / "verdicts.json", args.folder / "results.csv"
    if not verdicts.is_file():
        print(f"{verdicts} does not exist; give a study folder that holds verdicts.json.", file=sys.stderr)
        return 2
    if not 0 < args.margin < 1:
        print(f"--margin must lie between 0 and 1 (an accuracy difference), got {args.margin}.",
              file=sys.stderr)
        return 2
    accuracy = None
    if results.is_file():
        accuracy = {(r["condition"], r["split"], r["variant"], int(r["seed"])): float(r["accuracy"])
                    for r in csv.DictReader(results.open())}
    table = rejudge(json.loads(verdicts.read_text()), accuracy, args.margin)
    print("\n".join(verdict_lines(table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
