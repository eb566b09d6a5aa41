"""Judge a finished study's verdicts again by the seed-level rule (issue 20), from the files a
study folder keeps: verdicts.json (per-seed deltas, pooled counts, stream validity) and
results.csv (per-seed accuracies). Prints the new verdict table (markdown) to stdout.

    python experiments/rejudge.py experiments/results/answer [--margin 0.05]

With `--against VARIANT` (the data control, `optimal+optimal`) the study's mixtures are judged
against that variant instead of the study's baseline, from results.csv's per-seed accuracies
(exact: every variant of a seed is evaluated on the same instances), and with `--out FOLDER` the
result is written as a study folder the answer table reads (verdicts.json, report.md, and the
study's experiment.toml, results.csv and overrides.json plus `study.baseline="VARIANT"`):

    python experiments/rejudge.py experiments/results/answer_fwdex --against optimal+optimal \\
        --out experiments/results/answer_fwdex_vs_control

For a study folder that still has its runs, `retroplan run` on the same file re-renders the
whole report by the current rule instead (it reuses every run and evaluation; `--reuse-from`
and `--set 'study.baseline="optimal+optimal"'` for the control); this script is for a committed
folder that kept only its tables. Against the study's baseline, convergence is not checked
(verdicts.json of the old rule holds no curve states: the table's note says so); against a
control, the curve states the study's rows recorded are used."""

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from retroplan.experiment_file import OVERRIDES_FILE, stored_overrides
from retroplan.fsutil import atomic_dir, write_json
from retroplan.study import MARGIN, against, rejudge, verdict_lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a study folder with verdicts.json and results.csv")
    p.add_argument("--margin", type=float, default=MARGIN, help="TOST equivalence margin (accuracy)")
    p.add_argument("--against", metavar="VARIANT",
                   help="judge the study's mixtures against this variant of it (the data control, "
                        "optimal+optimal) instead of its baseline; needs results.csv")
    p.add_argument("--out", type=Path, help="with --against: write the result as a study folder here "
                                            "(must not exist yet)")
    args = p.parse_args(argv)
    verdicts, results = args.folder / "verdicts.json", args.folder / "results.csv"
    if not verdicts.is_file():
        print(f"{verdicts} does not exist; give a study folder that holds verdicts.json.", file=sys.stderr)
        return 2
    if not 0 < args.margin < 1:
        print(f"--margin must lie between 0 and 1 (an accuracy difference), got {args.margin}.",
              file=sys.stderr)
        return 2
    if args.out is not None and args.against is None:
        print("--out writes a study judged against another variant: give --against too.", file=sys.stderr)
        return 2
    old = json.loads(verdicts.read_text())
    accuracy = None
    if results.is_file():
        accuracy = {(r["condition"], r["split"], r["variant"], int(r["seed"])): float(r["accuracy"])
                    for r in csv.DictReader(results.open())}
    if args.against is None:
        print("\n".join(verdict_lines(rejudge(old, accuracy, args.margin))))
        return 0
    variants = sorted({r["variant"] for r in old})
    if accuracy is None or args.against not in variants:
        print(f"--against {args.against!r}: the study must hold it as a judged variant (it has "
              f"{', '.join(variants)}) and keep results.csv.", file=sys.stderr)
        return 2
    table = against(old, args.against, accuracy, args.margin)
    lines = verdict_lines(table)
    if args.out is None:
        print("\n".join(lines))
        return 0
    overrides = [o for o in stored_overrides(args.folder) if not o.startswith("study.baseline=")]
    overrides.append(f'study.baseline="{args.against}"')
    margin = ["--margin", str(args.margin)] if args.margin != MARGIN else []
    command = " ".join(["python experiments/rejudge.py", str(args.folder), "--against", args.against,
                        "--out", str(args.out), *margin])
    report = [f"# {args.out.name}: {args.folder.name} judged against {args.against}", "",
              f"Written by `{command}` from {args.folder}'s verdicts.json and results.csv (its runs "
              "are not kept): the same trained models, no training. The pooled McNemar columns "
              "need per-instance records and are empty; the convergence gate reads the curve "
              "states the study recorded.", ""] + lines
    with atomic_dir(args.out) as tmp:
        for name in ("experiment.toml", "results.csv"):
            shutil.copyfile(args.folder / name, tmp / name)
        write_json(tmp / OVERRIDES_FILE, overrides)
        write_json(tmp / "verdicts.json", table)  # the study's serializer: strict JSON, no NaN
        (tmp / "report.md").write_text("\n".join(report))
    print(f"wrote {args.out} ({len(table)} comparisons against {args.against})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
