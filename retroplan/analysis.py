"""Looking at behaviour: one trace drawn as a search tree, and the thought-switch penalty
swept over its (alpha, beta) grid."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import replace
from pathlib import Path

from . import checkpoint, plots
from .errors import UserError, require
from .eval import EvalConfig, evaluate, judge
from .fsutil import path_from, write_text
from .metrics import flatten_behaviour
from .traces.suite import open_suite
from .variants import VARIANT, names


def _records(eval_dir: Path) -> list[dict]:
    path = eval_dir / "records.jsonl"
    require(path.is_file(), f"{eval_dir} has no records.jsonl; run `retroplan eval` first.")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON lines (corrupt).") from None


# `show-trace --pick`: which row is worth drawing, read from an evaluation's records (first sample)
PICKS = {
    "first-failure": ("the first row the model got wrong", lambda r: not r["correct"]),
    "first-backtrack": ("the first row whose model stream backtracks (on a suite: the teacher's)",
                        lambda r: r.get("behaviour", {}).get("backtracks", 0) > 0),
    "first-difference": ("the first row where the model's stream and the teacher's differ in tokens or "
                         "states", lambda r: "behaviour" in r and (
                             r["behaviour"]["tokens"], r["behaviour"]["expanded"])
                         != (r.get("teacher_tokens"), r.get("teacher_expanded"))),
    "most-states": ("the row whose model stream expanded the most states", None),
}


def pick_row(source: str | os.PathLike, pick: str, split: str = "test") -> int:
    """The row of `split` that `pick` names (`PICKS`), from an eval folder or run; on a suite,
    `first-backtrack` reads the teacher's streams."""
    require(pick in PICKS, f"--pick must be one of {', '.join(PICKS)}, got {pick!r}.")
    source = Path(source)
    require(source.exists(), f"{source} does not exist.")
    if (source / "meta.json").exists():
        require(pick == "first-backtrack", f"--pick {pick} needs a model's evaluation (an eval folder or "
                f"a run); {source} is a suite, where only first-backtrack (the teacher's) applies.")
        suite = open_suite(source)
        data = suite.split(split)
        for row in range(len(data)):
            stats = judge(suite, data.instances, int(data.instance[row]), data.completion(row))["behaviour"]
            require(stats is not None, f"variant {suite.variant} writes no search stream.")
            if stats.backtracks > 0:
                return row
        raise UserError(f"no teacher stream of split {split} in {source} backtracks.")
    eval_dir = source if (source / "records.jsonl").exists() else source / f"eval-{split}"
    records = [r for r in _records(eval_dir) if r.get("sample", 0) == 0]
    if pick == "most-states":
        streams = [r for r in records if "behaviour" in r]
        require(bool(streams), f"{eval_dir} holds no model streams.")
        return max(streams, key=lambda r: (r["behaviour"]["expanded"], -r["row"]))["row"]
    match = [r["row"] for r in records if PICKS[pick][1](r)]
    require(bool(match), f"no row of {eval_dir} is {PICKS[pick][0]} (none matches --pick {pick}).")
    return match[0]


def plot_trajectories(sources: list[str | os.PathLike], out: str | os.PathLike,
                      split: str = "test") -> list[Path]:
    """`plots.trajectory_vs_stream` for evaluated stream runs: each source an eval folder or a
    run (its eval-`split`), one panel each, titled by variant and run."""
    panels = {}
    for source in map(Path, sources):
        require(source.exists(), f"{source} does not exist.")
        eval_dir = source if (source / "records.jsonl").exists() else source / f"eval-{split}"
        records = _records(eval_dir)
        require(any("behaviour" in r and r.get("teacher_tokens") is not None for r in records),
                f"{eval_dir} holds no model and teacher streams (a stream variant's evaluation is needed).")
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        run = eval_dir.parent.name if eval_dir.name.startswith("eval") else eval_dir.name
        label = f"{metrics.get('variant', '?')}: {run}"
        if label in panels:
            label = f"{label} ({eval_dir})"
        panels[label] = records
    out = Path(out)
    return plots.trajectory_vs_stream(panels, out.with_suffix("") if out.suffix == ".png" else out)


def show_trace(source: str | os.PathLike, index: int, split: str = "test",
               out: str | os.PathLike | None = None) -> list[Path]:
    """Draw row `index` of `split`: the teacher's stream from a suite, or, given an eval
    folder (or a run with an eval of that split), the teacher's and the model's side by side."""
    source = Path(source)
    require(source.exists(), f"{source} does not exist.")
    model_ids = None
    if (source / "meta.json").exists():
        suite = open_suite(source)
    else:
        eval_dir = source if (source / "records.jsonl").exists() else source / f"eval-{split}"
        records = _records(eval_dir)
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        split = metrics.get("split", split)
        suite = open_suite(path_from(eval_dir, metrics["suite"]))
        match = [r for r in records if r["row"] == index and r.get("sample", 0) == 0]
        require(bool(match), f"row {index} was not evaluated in {eval_dir} (it has rows "
                f"{records[0]['row']}..{records[-1]['row']}).")
        model_ids = suite.vocab.encode(match[0]["generated"])
    data = suite.split(split)
    require(isinstance(index, int) and 0 <= index < len(data),
            f"--index must be between 0 and {len(data) - 1} for split {split}, got {index}.")
    i = int(data.instance[index])
    label = suite.task.state_label
    panels = []
    teacher = judge(suite, data.instances, i, data.completion(index))
    require(teacher["behaviour"] is not None,
            f"variant {suite.variant} writes no search stream, so there is no search tree to draw.")
    panels.append((f"teacher ({suite.variant}): {'solved' if teacher['correct'] else 'unsolved'}, "
                   f"{teacher['behaviour'].expanded} states", teacher["behaviour"]))
    if model_ids is not None:
        model = judge(suite, data.instances, i, model_ids)
        if model["behaviour"] is None:  # show what it wrote instead of a tree
            text = suite.vocab.decode(model_ids)
            text = text if len(text) < 300 else text[:300] + " ..."
            panels.append((f"model: unparseable ({model['parse_error'] or 'no stream'})", text))
        else:
            verdict = "solved" if model["correct"] else f"unsolved: {model['reason']}"
            panels.append((f"model: {verdict}, {model['behaviour'].expanded} states", model["behaviour"]))
    out = Path(out) if out else (source / f"trace-{split}-{index}.png")
    inst = suite.task.instance_at(data.instances, i)
    if "numbers" in inst:
        what = f"inputs {' '.join(map(str, inst['numbers']))}, target {inst['target']}"
    else:
        what = f"start {inst['start']}, goal {inst['goal']}"
    title = f"{suite.meta['task']} {split} row {index}: {what}"
    return plots.show_trace(panels, out.with_suffix(""), suptitle=title, label=label)


def sweep_tip(run_dir: str | os.PathLike, alphas: list[float], betas: list[int], oracle: bool = False,
              base: EvalConfig | None = None, out: str | os.PathLike | None = None,
              progress: bool = True) -> Path:
    """Evaluate a stream-trained run under TIP for every (alpha, beta) (and the oracle-gated
    bound when asked); writes results.csv and table.md into `out` and returns the table."""
    run_dir = Path(run_dir)
    base = base or EvalConfig()
    require(alphas and betas, "give at least one alpha and one beta.")
    require(all(a >= 0 for a in alphas) and all(isinstance(b, int) and b >= 1 for b in betas),
            "alphas must be >= 0 and betas positive integers.")
    bad = [a for a in alphas if not math.isfinite(a)]  # before the greedy evaluation runs
    require(not bad, f"alphas must be finite numbers >= 0, got {bad[0] if bad else None!r}.")
    out = Path(out) if out else run_dir / "tip-sweep"
    grid = [(0.0, 0, False)] + [(float(a), int(b), g) for g in ([False, True] if oracle else [False])
                                for a in alphas if a > 0 for b in betas]
    if len(grid) > 1:  # refuse a run without thoughts before the (long) greedy evaluation
        suite = open_suite(checkpoint.run_suite(run_dir, checkpoint.read_run(run_dir)))
        require(VARIANT[suite.variant].stream,
                f"the thought-switch penalty needs a stream variant ("
                f"{', '.join(names('stream'))}), and run {run_dir} was trained on "
                f"{suite.name}, which has no thoughts to switch.")
    rows = []
    for alpha, beta, gated in grid:
        name = "greedy" if alpha == 0 else f"a{alpha:g}-b{beta}" + ("-oracle" if gated else "")
        cfg = replace(base, tip_alpha=alpha, tip_beta=beta, tip_oracle=gated)
        m = evaluate(run_dir, cfg=cfg, out=out / name, progress=progress)
        row = {"setting": name, "alpha": alpha, "beta": beta, "oracle_gated": gated, "n": m["n"],
               "accuracy": m["accuracy"]["value"], "faithful_accuracy": m["faithful_accuracy"]["value"],
               "parse_failures": m["parse_failures"]["value"]}
        row.update(flatten_behaviour(m.get("behaviour")))
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    write_text(out / "results.csv", buf.getvalue())

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"# Thought-switch penalty sweep: {run_dir}", "",
             f"n = {rows[0]['n']} test instances each; greedy decoding otherwise.", "",
             "| setting | accuracy | trace validity | wandering | premature backtracks | ξ_UT | "
             "backtracks / trace | tokens |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {fmt(r['accuracy'])} | {fmt(r['trace_validity'])} | "
                     f"{fmt(r['wandering'])} | {fmt(r['premature_backtracks'])} | {fmt(r['xi_ut'])} | "
                     f"{fmt(r['backtracks_per_trace'])} | {fmt(r['stream_tokens'])} |")
    table = out / "table.md"
    write_text(table, "\n".join(lines) + "\n")
    return table
