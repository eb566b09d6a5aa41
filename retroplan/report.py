"""The study's report: `results.csv` (one row per run and evaluated split), the figures and
`report.md`, made from the results of every run (`experiment.run_piece`) and the files each run
left in --out. It reads the study (`experiment_file.Experiment`) and never runs anything but
plots and the `show-trace` drawing; verdicts (`study.py`), probes and the RL stage are made by
the study layer and handed in as report sections.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import plots
from .experiment_file import Experiment, run_name
from .fsutil import write_text
from .metrics import flatten_behaviour
from .stats import mean_ci, rate_ci, wilson
from .study import verdict_lines
from .traces import get_grammar, writes
from .version import __version__

METRICS = ("accuracy", "first_step_accuracy", "optimal_rate", "faithful_accuracy",
           "stream_first_step_accuracy", "parse_failures", "tf_token_accuracy", "tf_first_token_accuracy",
           "tf_sequence_accuracy", "mean_generated_tokens", "tf_deciding_token_accuracy")


@dataclass
class Tables:
    """What the report reads of every run's results, gathered in one pass over the runs."""

    rows: list[dict] = field(default_factory=list)        # results.csv: a run on one split each
    difficulty: list[dict] = field(default_factory=list)  # accuracy by difficulty (first split)
    stream_records: dict[str, list[dict]] = field(default_factory=dict)  # stream variant -> records
    # (condition, variant) -> failure kind -> count, on the first split
    failures: dict[tuple[str, str], Counter] = field(default_factory=dict)
    drawn: list[tuple[str, int]] = field(default_factory=list)  # (stream variant, row) to draw


def tabulate(exp: Experiment, out: Path, results: dict[str, dict]) -> Tables:
    """The tables of the study from `results` (run name -> run_piece's result) and each run's
    records of its first evaluated split."""
    tables = Tables()
    for label, variant, seed in exp.runs():
        result = results[run_name(label, variant, seed)]
        config = exp.spec(exp.condition(label), variant, seed).config
        for split in exp.splits:
            metrics = result["metrics"][split]
            tables.rows.append(_row(exp, label, variant, seed, split, config, metrics, result["summary"]))
            if split == exp.splits[0]:  # the difficulty and trajectory figures use the first split
                _first_split(exp, out, tables, label, variant, seed, metrics)
    return tables


def _row(exp: Experiment, label: str, variant: str, seed: int, split: str, config: dict, metrics: dict,
         summary: dict) -> dict:
    """One line of results.csv."""
    # one panel per condition, or per condition and split when several are evaluated
    panel = label if len(exp.splits) == 1 else f"{label} / {split}"
    row = {"condition": label, "split": split, "panel": panel, "variant": variant,
           "seed": seed, "n": metrics["n"]}
    row.update({k: v for k, v in config.items()})
    row.update({m: metrics[m]["value"] if isinstance(metrics.get(m), dict) else metrics.get(m)
                for m in METRICS})
    row["writes"] = writes(variant)
    row["swc"] = metrics.get("swc", {}).get("value")
    row["correct"] = round((metrics["accuracy"]["value"] or 0) * metrics["n"])
    row["chance"] = metrics.get("chance")
    row.update(flatten_behaviour(metrics.get("behaviour")))
    row.update(flatten_behaviour(metrics.get("teacher_behaviour"), "teacher_"))
    row.update({"budget": exp.budget, "examples_seen": summary.get("examples_seen"),
                "forward_examples": summary.get("forward_examples"),
                "supervised_tokens": summary.get("supervised_tokens")})
    row.update({"steps": summary["steps"], "final_loss": summary["final_loss"],
                "train_seconds": summary["train_seconds"], "parameters": summary["parameters"],
                "device": summary["device"]})
    return row


def _first_split(exp: Experiment, out: Path, tables: Tables, label: str, variant: str, seed: int,
                 metrics: dict) -> None:
    """A run's difficulty points, failures, stream records and drawn row, from its first split."""
    split = exp.splits[0]
    for key, by_value in metrics.get("by_difficulty", {}).items():
        for x, block in by_value.items():
            acc = block["accuracy"]
            correct = round((acc["value"] or 0) * acc["n"])
            tables.difficulty.append({"variant": variant, "key": key, "x": float(x),
                                      "n": acc["n"], "correct": correct})
    run_dir = out / "runs" / run_name(label, variant, seed)
    records = [json.loads(line) for line in
               (run_dir / f"eval-{split}" / "records.jsonl").read_text().splitlines()]
    failed = [r for r in records if not r["correct"] and r.get("sample", 0) == 0]
    tables.failures.setdefault((label, variant), Counter()).update(failure_kind(r["reason"]) for r in failed)
    if "teacher_behaviour" in metrics:
        tables.stream_records.setdefault(variant, []).extend(records)
        if (label, seed) == (exp.labels[0], exp.seeds[0]):
            # drawn: the first instance the model failed (row 0 when it failed none)
            tables.drawn.append((variant, failed[0]["row"] if failed else 0))


def draw_figures(exp: Experiment, out: Path, tables: Tables
                 ) -> tuple[list[Path], list[tuple[str, int, list[Path]]]]:
    """Every figure of the report (PNG and SVG) and the drawn streams (variant, row, paths)."""
    rows = tables.rows
    first = [r for r in rows if r["split"] == exp.splits[0]]
    figures = plots.accuracy_by_variant(rows, out / "accuracy",
                                        title=f"{exp.name}: planning accuracy (what each model "
                                              "writes: see the report's table)")
    figures += plots.accuracy_by_variant(rows, out / "first_step", metric="first_step_accuracy",
                                         title=f"{exp.name}: first move on a shortest path")
    run_names = dict.fromkeys(run_name(r["condition"], r["variant"], r["seed"]) for r in rows)
    curves = {name: _curve(out / "runs" / name) for name in run_names}
    figures += plots.learning_curves(curves, out / "loss")
    accuracy_curves = _accuracy_curves(exp, out)
    if accuracy_curves:
        figures += plots.accuracy_curves(accuracy_curves, out / "accuracy_curves",
                                         title=f"{exp.name}: learning curves")
    figures += plots.clever_hans(first, out / "clever_hans")
    figures += plots.accuracy_vs_difficulty(tables.difficulty, out / "difficulty")
    figures += plots.behaviour_bars(first, out / "behaviour")
    figures += plots.trajectory_vs_stream(tables.stream_records, out / "trajectories")
    traces = _draw_streams(exp, out, tables.drawn)
    figures += [path for _, _, paths in traces for path in paths]
    return figures, traces


def sections(exp: Experiment, out: Path, tables: Tables, traces: list[tuple[str, int, list[Path]]]
             ) -> list[str]:
    """The report's sections on why plans fail and on the drawn streams."""
    return _failure_lines(exp, tables.rows, tables.failures) + _trace_lines(exp, out, traces)


def _wall_time(timing: list[dict], reused: int, runs: int) -> str:
    """The report's wall-time sentence: one invocation's time, or the sum over the study's
    invocations with the last one's apart (a reuse never replaces the time the work took)."""
    last = timing[-1]["seconds"]
    done = (f"{reused} of {runs} runs were already done in part or whole, and were reused"
            if reused else "no run was reused")
    if len(timing) == 1:
        return f"whole run {last:.0f} s" + (f" ({done})." if reused else ".")
    total = sum(t["seconds"] for t in timing)
    return (f"wall time {total:.0f} s over {len(timing)} invocations of `retroplan run` (the last, "
            f"{last:.0f} s: {done}).")


def _accuracy_curves(exp: Experiment, out: Path) -> dict[str, dict[int, list[dict]]]:
    """variant (panel) -> seed -> curve.jsonl points, for the runs that logged a curve."""
    found: dict[str, dict[int, list[dict]]] = {}
    for label in exp.labels:
        for variant in exp.variants:
            for seed in exp.seeds:
                path = out / "runs" / run_name(label, variant, seed) / "curve.jsonl"
                if path.is_file():
                    points = [json.loads(line) for line in path.read_text().splitlines() if line]
                    name = variant if len(exp.labels) == 1 else f"{label} / {variant}"
                    found.setdefault(name, {})[seed] = points
    return found


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    points = []
    log = run_dir / "train_log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            points.append((rec["supervised_tokens"], rec["loss"]))
    return points


def write_csv(path: Path, rows: list[dict]) -> None:
    """results.csv: every key any row has, in first-seen order; None as an empty cell."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    write_text(path, buf.getvalue())


def _fmt_rate(values: list[float], correct: int, n: int) -> str:
    m, lo, hi = rate_ci(values)
    if m != m:  # nan
        return "n/a"
    if len(values) > 1:
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
    wlo, whi = wilson(correct, n)
    return f"{m:.3f} [{wlo:.3f}, {whi:.3f}]"


FIGURE_CAPTIONS = {
    "accuracy.png": "Planning accuracy by variant (bars: mean over seeds; whiskers: 95% interval, "
                    "across seeds, or with one seed the Wilson interval over its instances; dots: "
                    "seeds). Only some "
                    "variants plan forward at test time: the \"writes\" column of the table says "
                    "which; the chance line applies to those whose first decision is the forward "
                    "choice.",
    "first_step.png": "The plan's first move on a shortest path: does the model choose the right "
                      "branch? (for a model that writes the plan backwards, its forward plan's first "
                      "move is written last).",
    "difficulty.png": "Accuracy against difficulty.",
    "behaviour.png": "Search behaviour of the model's streams next to its teacher's.",
    "trajectories.png": "Tokens written and distinct states expanded per test instance: the model "
                        "(blue circles) vs its teacher (orange squares), filled when that stream's "
                        "plan is right, hollow when not, equal points dodged and jittered; below, the "
                        "per-instance difference model - teacher in states.",
    "loss.png": "Training loss per supervised token against supervised tokens seen, so variants "
                "whose completions differ in length are compared at equal supervision.",
    "accuracy_curves.png": "Verified generation accuracy on a fixed validation subset during "
                           "training, against optimizer steps and against supervised tokens (thick: "
                           "mean over seeds; thin: each seed).",
    "clever_hans.png": "Teacher-forced token, first-token and deciding-token accuracy (the first "
                       "token the prompt does not fix: on a graph's forward plan the first move, "
                       "while the first token copies the start) next to verified generated "
                       "accuracy: a model that is right under teacher forcing but wrong when it "
                       "generates has learned to follow, not to choose (the Clever Hans gap).",
}
BEHAVIOUR_TABLE = (("trace_validity", "validity"), ("wandering", "wandering"),
                   ("unfinished_streams", "unfinished"),
                   ("self_loop_rate", "self-loops"), ("premature_backtracks", "premature BT"),
                   ("failed_with_premature", "failed w/ premature"), ("xi_ut", "ξ_UT"),
                   ("backtracks_per_trace", "BT / trace"),
                   ("written_backtracks_per_trace", "written BT / trace"),
                   ("jumps_per_trace", "jumps / trace"), ("states_expanded", "states expanded"),
                   ("stream_tokens", "tokens"), ("efficiency", "d*/states (solved)"),
                   ("states_teacher_over_model", "teacher states / model"), ("ilr", "ILR"))


def _behaviour_lines(exp: Experiment, rows: list[dict]) -> list[str]:
    """The behaviour table: every stream variant's model and teacher, mean [95% CI] over seeds."""
    def has_streams(r):
        return r.get("trace_validity") is not None or r.get("teacher_trace_validity") is not None

    if not any(has_streams(r) for r in rows):
        return []
    lines = ["## Search behaviour", "",
             "Every step of every stream judged by the task's oracle (definitions: docs/METRICS.md). "
             "Every evaluated instance has a stream record, unfinished or unreadable streams "
             "included (judged as far as they can be read, and failed). The teacher row judges the "
             "suite's own streams for the same test instances. Mean over seeds [95% t-interval when "
             "there are several]; n as in the accuracy table.", "",
             "| condition | variant | who | " + " | ".join(h for _, h in BEHAVIOUR_TABLE) + " |",
             "|---|---|---|" + "---|" * len(BEHAVIOUR_TABLE)]
    panels = list(dict.fromkeys(r["panel"] for r in rows))
    for label in panels:
        for variant in exp.variants:
            rs = [r for r in rows if r["panel"] == label and r["variant"] == variant]
            if not any(has_streams(r) for r in rs):
                continue
            for who, prefix in (("model", ""), ("teacher", "teacher_")):
                cells = []
                for key, _ in BEHAVIOUR_TABLE:
                    m, lo, hi = mean_ci([r.get(prefix + key) for r in rs])  # skips None
                    if m != m:
                        cells.append("")
                    elif len(rs) > 1 and lo != hi:
                        cells.append(f"{m:.3g} [{lo:.3g}, {hi:.3g}]")
                    else:
                        cells.append(f"{m:.3g}")
                lines.append(f"| {label} | {variant} | {who} | " + " | ".join(cells) + " |")
    return lines + [""]


def _variant_notes(exp: Experiment) -> list[str]:
    """What a reader must know about a variant on this task (e.g. no search in it)."""
    grammar = get_grammar(exp.task)
    notes = [grammar.variant_note(exp.task, v) for v in exp.variants]
    return [f"{v}: {n}" for v, n in zip(exp.variants, notes) if n]


def failure_kind(reason: str) -> str:
    """A failed plan's reason with its instance's numbers taken out ("12->3 is not an edge" ->
    "N->N is not an edge"), so failures of one kind count together."""
    return re.sub(r"-?\d+", "N", reason) if reason else "no reason given"


def _failure_lines(exp: Experiment, rows: list[dict], failures: dict[tuple[str, str], Counter]) -> list[str]:
    """Why plans fail: the commonest kinds per condition and variant (first evaluated split, all
    seeds), so a bar below chance explains itself."""
    lines = ["## Why plans fail", "",
             f"Failed plans of the {exp.splits[0]} split, all seeds together, by kind (the "
             "grammar's or the replay's own reason, numbers replaced by N); the three commonest.", "",
             "| condition | variant | failed | commonest kinds |", "|---|---|---|---|"]
    first = [r for r in rows if r["split"] == exp.splits[0]]
    for (label, variant), kinds in failures.items():
        rs = [r for r in first if r["condition"] == label and r["variant"] == variant]
        total = sum(r["n"] for r in rs)
        failed = sum(kinds.values())
        common = "; ".join(f"{n:,} × {kind}" for kind, n in kinds.most_common(3)) or "none"
        lines.append(f"| {label} | {variant} | {failed:,} of {total:,} | {common} |")
    return lines + [""]


def _draw_streams(exp: Experiment, out: Path, drawn: list[tuple[str, int]]
                  ) -> list[tuple[str, int, list[Path]]]:
    """One `show-trace` figure per (stream variant, row) of `drawn` (first condition, first seed,
    first split): (variant, row, its PNG and SVG)."""
    from .analysis import show_trace

    split, label, seed = exp.splits[0], exp.labels[0], exp.seeds[0]
    return [(variant, row, show_trace(out / "runs" / run_name(label, variant, seed) / f"eval-{split}", row,
                                      split, out=out / f"trace-{variant}-row{row}.png"))
            for variant, row in drawn]


def _trace_lines(exp: Experiment, out: Path, traces: list[tuple[str, int, list[Path]]]) -> list[str]:
    if not traces:
        return []
    split, label, seed = exp.splits[0], exp.labels[0], exp.seeds[0]
    lines = ["## A stream, drawn", "",
             f"For each stream variant ({label}, seed {seed}, {split} split): the teacher's search tree "
             "beside the model's on the first instance the model failed (row 0 when it failed none).", ""]
    for variant, row, paths in traces:
        png = next(p for p in paths if p.suffix == ".png")
        run = out / "runs" / run_name(label, variant, seed)
        lines += [f"![{png.stem}]({png.name})", "",
                  f"`retroplan show-trace {run} --index {row} --split {split}`", ""]
    return lines


def report_text(exp: Experiment, command: str, source_text: str, rows: list[dict], figures: list[str],
                timing: list[dict], verdicts: list[dict], sections: list[str], reused: int) -> str:
    """report.md: `command` makes the study again; `source_text` is its experiment file; `figures`
    the PNG names listed under "Figures"; `sections` (failures, drawn streams, probes, RL) come
    after the results."""
    lines = [f"# {exp.name}", ""]
    if exp.description:
        lines += [exp.description.strip(), ""]
    lines += ["Every accuracy below counts plans that were parsed by the task's grammar and replayed "
              "move by move in the task's environment.", "",
              "## Reproduce", "", "```", command, "```", ""]
    lines += verdict_lines(verdicts)
    lines += ["## Results", ""]
    seeds = exp.seeds
    ci_note = ("mean over seeds [95% t-interval, clipped to [0, 1]]" if len(seeds) > 1 else
               "one seed; [95% Wilson interval over the test instances]")
    lines += [f"Accuracy: {ci_note}. n = test instances per seed; every rate in a row is over "
              "those n instances (a completion that cannot be parsed counts as wrong). "
              "\"writes\": what the model writes at test time — only some variants plan forward. "
              "\"stream first step\" (stream variants): the stream's first move lies on a shortest "
              "path; \"faithful\": correct and the plan is the path the stream itself reached. "
              "\"chance\" is shown only for variants whose first decision is the forward choice. "
              "\"teacher-forced deciding\": the first completion token the prompt does not fix "
              "(graphs' forward plans: the first move; docs/METRICS.md), right under teacher forcing.", "",
              "| condition | variant | writes | n | accuracy | first step | stream first step | "
              "faithful | teacher-forced tokens | teacher-forced deciding | teacher-forced sequences | "
              "parse failures | chance |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    panels = list(dict.fromkeys(r["panel"] for r in rows))
    for label in panels:
        for variant in exp.variants:
            rs = [r for r in rows if r["panel"] == label and r["variant"] == variant]
            if not rs:
                continue
            n = rs[0]["n"]

            def mean_of(key, rs=rs):
                vals = [r[key] for r in rs if r.get(key) is not None]
                return f"{sum(vals) / len(vals):.3f}" if vals else "n/a"

            acc = _fmt_rate([r["accuracy"] for r in rs], sum(r["correct"] for r in rs),
                            sum(r["n"] for r in rs))
            chance = rs[0].get("chance")
            lines.append(f"| {label} | {variant} | {writes(variant)} | {n} | {acc} | "
                         f"{mean_of('first_step_accuracy')} | {mean_of('stream_first_step_accuracy')} | "
                         f"{mean_of('faithful_accuracy')} | "
                         f"{mean_of('tf_token_accuracy')} | {mean_of('tf_deciding_token_accuracy')} | "
                         f"{mean_of('tf_sequence_accuracy')} | "
                         f"{mean_of('parse_failures')} | {'' if chance in (None, '') else f'{chance:.3f}'} |")
    notes = _variant_notes(exp)
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    lines += [""] + _behaviour_lines(exp, rows) + sections + ["## Figures", ""]
    for name in figures:
        if name.startswith(("trace-", "probe")):  # drawn in their own sections above
            continue
        lines += [f"![{name[:-4]}]({name})", "", FIGURE_CAPTIONS.get(name, ""), ""]
    lines += ["Teacher-forced accuracy feeds the reference prefix and asks for the next token; a "
              "model that scores high there but low when it generates its own plan has learned "
              "to follow edges once it is on the right arm, but not to choose the arm (the "
              "Clever Hans cheat of Bachmann & Nagarajan, 2024).", "",
              "## Runs", "",
              f"Budget held equal to the baseline's ({exp.baseline}): **{exp.budget}**; every "
              "run's actual counts are below (supervised tokens: completion tokens that carry loss; "
              "forward examples: rows of the evaluated kind).", "",
              "| run | steps | examples | forward examples | supervised tokens | final loss | "
              "train seconds | parameters | device |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["split"] != exp.splits[0]:  # one line per run, not per evaluated split
            continue
        lines.append(f"| {r['condition']}-{r['variant']}-s{r['seed']} | {r['steps']} | "
                     f"{r.get('examples_seen')} | {r.get('forward_examples')} | "
                     f"{r.get('supervised_tokens')} | "
                     f"{r['final_loss']:.4f} | {r['train_seconds']} | {r['parameters']} | {r['device']} |")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines += ["", "## Machine", "",
              f"retroplan {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
              f"{platform.machine()} with {os.cpu_count()} CPUs, GPU: {gpu}; " + _wall_time(
                  timing, reused, len(rows) // len(exp.splits)),
              "",
              "## Experiment file", "", "```toml", source_text.strip(), "```", ""]
    return "\n".join(lines)
