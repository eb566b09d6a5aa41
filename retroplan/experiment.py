"""Run a TOML experiment end to end: for every condition x variant x seed, generate the
suite, train, evaluate; then `results.csv`, figures and `report.md`.

Re-running the same command skips every finished piece (a suite whose meta.json checks out,
a run with final.json, an evaluation whose recorded identity (suite digest, step, weights,
decoding settings, split, limit, retroplan version) is what it would compute now) and resumes
an interrupted training from its last checkpoint. The whole file is checked before any work
(types of every entry, the devices asked for); an --out folder is reused by a file that differs
from its experiment.toml only in settings that change no result (`NO_RESULT_KEYS`: name,
description, devices, threads, compile, eval batch size), so such a setting can be fixed in place.

    name = "quick"
    task = "pathstar"
    variants = ["optimal", "reverse"]
    seeds = [0]
    [sizes]      train / val / test instances
    [[conditions]]  task configs (one table each; `label` names it)
    [options]    trace-writer options
    [train]      retroplan.train.TrainConfig fields
    [eval]       retroplan.eval.EvalConfig fields
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import time
import tomllib
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import __version__, plots
from .device import resolve_device
from .envs import get_task, make_config
from .errors import UserError, require
from .eval import EvalConfig, evaluate, identity, metrics_current
from .fsutil import write_bytes, write_json, write_text
from .metrics import flatten_behaviour
from .stats import mean_ci, wilson
from .study import verdict_lines, verdict_table
from .traces import check_variant, get_grammar, writes
from .traces.suite import SuiteSpec, generate_suite, open_suite
from .train import TrainConfig, plan_steps, resolve_precision, train

_TOP_KEYS = {"name", "description", "task", "variants", "seeds", "sizes", "conditions", "options",
             "train", "eval", "study"}
_STUDY_KEYS = {"baseline", "budget"}
# what a study may hold equal between each variant and its baseline -> the run's counter
BUDGETS = {"steps": "steps", "examples": "examples_seen", "forward_examples": "forward_examples",
           "tokens": "supervised_tokens"}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
METRICS = ("accuracy", "first_step_accuracy", "optimal_rate", "faithful_accuracy",
           "stream_first_step_accuracy", "parse_failures", "tf_token_accuracy", "tf_first_token_accuracy",
           "tf_sequence_accuracy", "mean_generated_tokens")


def load_experiment(path: str | os.PathLike) -> dict:
    path = Path(path)
    require(path.is_file(), f"experiment file {path} does not exist.")
    try:
        exp = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"experiment file {path} is not valid TOML: {exc}.") from None
    unknown = sorted(set(exp) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}.")
    for key in ("name", "task", "variants"):
        require(key in exp, f"{path} needs a {key!r} entry.")
    for key in ("name", "description", "task"):
        require(key not in exp or isinstance(exp[key], str),
                f"{path}: {key} must be a string, got {exp.get(key)!r}.")
    for key in ("sizes", "options", "train", "eval", "study"):
        require(isinstance(exp.get(key, {}), dict), f"{path}: {key} must be a table ([{key}]).")
    task = get_task(exp["task"])
    variants = exp["variants"]
    require(isinstance(variants, list) and variants and all(isinstance(v, str) for v in variants),
            f"{path}: variants must be a non-empty list of names.")
    for v in variants:
        check_variant(exp["task"], v)
    twice = [v for v in variants if variants.count(v) > 1]
    if twice:
        raise UserError(f"{path}: variants name {twice[0]!r} twice; each variant is one condition "
                        "(more runs of it are more seeds).")
    seeds = exp.setdefault("seeds", [0])
    require(isinstance(seeds, list) and seeds and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds),
            f"{path}: seeds must be a non-empty list of non-negative integers.")
    require(len(set(seeds)) == len(seeds), f"{path}: seeds repeat a value.")
    conditions = exp.setdefault("conditions", [{}])
    require(isinstance(conditions, list) and conditions and all(isinstance(c, dict) for c in conditions),
            f"{path}: conditions must be a list of tables ([[conditions]]).")
    labels = []
    for c in conditions:
        values = {k: v for k, v in c.items() if k != "label"}
        make_config(exp["task"], values)  # validates now, before any work
        label = c.get("label") or _label(values)
        require(isinstance(label, str) and _PLAIN_NAME.fullmatch(label) is not None,
                f"{path}: condition label {label!r} must be a plain name (letters, digits, - _ . =), "
                "because it names folders inside --out.")
        labels.append(label)
    require(len(set(labels)) == len(labels), f"{path}: two conditions have the same label.")
    exp["_labels"] = labels
    study = exp.get("study", {})
    bad = sorted(set(study) - _STUDY_KEYS)
    require(not bad, f"{path}: unknown study setting {bad[0] if bad else ''!r}; allowed: "
            f"{', '.join(sorted(_STUDY_KEYS))}.")
    for key in ("baseline", "budget"):
        require(isinstance(study.get(key, ""), str),
                f"{path}: study {key} must be a string, got {study.get(key)!r}.")
    baseline = study.get("baseline", "optimal" if "optimal" in variants else variants[0])
    require(baseline in variants, f"{path}: the study baseline {baseline!r} is not one of the "
            f"variants ({', '.join(variants)}).")
    exp["_baseline"] = baseline
    budget = study.get("budget", "steps")
    require(budget in BUDGETS, f"{path}: study budget must be one of {', '.join(BUDGETS)}, got {budget!r}.")
    exp["_budget"] = budget
    sizes = exp.setdefault("sizes", {})
    for split in sizes:
        require(split in task.SPLITS, f"{path}: unknown split {split!r} in [sizes]; allowed: "
                f"{', '.join(task.SPLITS)}.")
    train_table = dict(exp.get("train", {}))
    by_variant = train_table.pop("by_variant", {})  # [train.by_variant.<variant>]: overrides
    require(isinstance(by_variant, dict) and all(isinstance(v, dict) for v in by_variant.values()),
            f"{path}: [train.by_variant.<variant>] must be tables of train settings.")
    for v in by_variant:
        require(v in variants, f"{path}: [train.by_variant.{v}] names no variant of this study "
                f"({', '.join(variants)}).")
    exp["_train"] = TrainConfig.from_dict(train_table)
    exp["_train_by_variant"] = {v: TrainConfig.from_dict({**train_table, **by_variant.get(v, {})})
                                for v in variants}
    ev = dict(exp.get("eval", {}))
    splits = ev.pop("splits", None)  # several splits to evaluate (e.g. seen and held-out targets)
    require(splits is None or "split" not in ev, f"{path}: give [eval] split or splits, not both.")
    bad = sorted(set(ev) - set(EvalConfig.__dataclass_fields__))
    if bad:
        raise UserError(f"{path}: unknown eval setting {bad[0]!r}; allowed: splits, "
                        f"{', '.join(EvalConfig.__dataclass_fields__)}.")
    exp["_eval"] = EvalConfig(**ev)
    exp["_eval"].validate()
    splits = [exp["_eval"].split] if splits is None else splits
    require(isinstance(splits, list) and splits and all(isinstance(x, str) for x in splits)
            and len(set(splits)) == len(splits),
            f"{path}: [eval] splits must be a non-empty list of distinct split names.")
    for split in splits:
        require(split in task.SPLITS, f"{path}: unknown eval split {split!r}; "
                f"allowed: {', '.join(task.SPLITS)}.")
    exp["_splits"] = splits
    # the devices asked for must exist here: found now, not after the first suite is generated
    try:
        for cfg in [exp["_train"], *exp["_train_by_variant"].values()]:
            resolve_precision(cfg, resolve_device(cfg.device))
        resolve_device(exp["_eval"].device)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    # the trace options are validated by SuiteSpec.resolve below, before any work
    for c in conditions:
        for v in variants:
            _spec(exp, c, v, seeds[0]).resolve()
    return exp


# settings that decide where and how fast the work runs, never its results (and the report's
# title and text): an experiment file that differs from the one in --out only in these is the
# same experiment, so they can be fixed in place. (train.device / compile / threads are also
# the settings `train --resume` lets differ.)
NO_RESULT_KEYS = {"": ("name", "description"), "train": ("device", "compile", "threads"),
                  "eval": ("device", "batch_size")}


def experiment_identity(raw: dict) -> dict:
    """A parsed experiment file without its `NO_RESULT_KEYS` (and tables they leave empty)."""
    ident = {k: v for k, v in raw.items() if k not in NO_RESULT_KEYS[""]}
    for table in ("train", "eval"):
        if not isinstance(ident.get(table), dict):
            continue
        t = {k: v for k, v in ident[table].items() if k not in NO_RESULT_KEYS[table]}
        if table == "train" and isinstance(t.get("by_variant"), dict):
            t["by_variant"] = {v: ({k: x for k, x in o.items() if k not in NO_RESULT_KEYS["train"]}
                                   if isinstance(o, dict) else o) for v, o in t["by_variant"].items()}
        ident[table] = t
        if not t:
            del ident[table]
    return ident


def _same_experiment(old: bytes, new: bytes) -> bool:
    if old == new:
        return True
    try:
        return experiment_identity(tomllib.loads(old.decode())) == experiment_identity(
            tomllib.loads(new.decode()))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


def _label(values: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(values.items())) or "default"


def _spec(exp: dict, condition: dict, variant: str, seed: int) -> SuiteSpec:
    config = {k: v for k, v in condition.items() if k != "label"}
    sizes = dict(get_task(exp["task"]).DEFAULT_SIZES)
    sizes.update(exp.get("sizes", {}))
    return SuiteSpec(task=exp["task"], variant=variant, config=config,
                     options=dict(exp.get("options", {})), seed=seed, sizes=sizes)


def _suite_ready(path: Path, spec: SuiteSpec) -> bool:
    """True when `path` holds exactly `spec`'s suite (checksums included)."""
    if not (path / "meta.json").exists():
        return False
    suite = open_suite(path)
    task, cfg, _, options = spec.resolve()
    same = (suite.meta["variant"] == spec.variant and suite.meta["seed"] == spec.seed
            and suite.meta["config"] == cfg.to_dict() and suite.meta["options"] == options.to_dict()
            and suite.meta["sizes"] == {k: v for k, v in spec.sizes.items() if k in task.SPLITS})
    if not same:
        raise UserError(f"{path} holds a different suite than this experiment asks for; "
                        "use another --out.")
    return True


def run_experiment(path: str | os.PathLike, out: str | os.PathLike, progress: bool = True) -> Path:
    exp = load_experiment(path)
    out = Path(out)
    source = Path(path).read_bytes()
    if (out / "experiment.toml").exists():
        require(_same_experiment((out / "experiment.toml").read_bytes(), source),
                f"{out} holds results of a different experiment file (only name, description, "
                "train device / compile / threads and eval device / batch_size may change in "
                "place); use another --out.")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {out} exists and is not empty; use another --out.")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "experiment.toml", source)
    t_start = time.perf_counter()
    rows, difficulty_points, stream_records = [], [], {}
    # the baseline first: under a matched budget every other variant's steps follow from it
    order = [exp["_baseline"]] + [v for v in exp["variants"] if v != exp["_baseline"]]
    jobs = [(label, cond, variant, seed) for label, cond in zip(exp["_labels"], exp["conditions"])
            for variant in order for seed in exp["seeds"]]
    baseline_seen: dict[tuple[str, int], dict] = {}
    for n, (label, cond, variant, seed) in enumerate(jobs, 1):
        name = f"{label}-{variant}-s{seed}"
        spec = _spec(exp, cond, variant, seed)
        suite_dir, run_dir = out / "suites" / name, out / "runs" / name
        if progress:
            print(f"[{n}/{len(jobs)}] {name}", flush=True)
        if not _suite_ready(suite_dir, spec):
            generate_suite(spec, suite_dir, progress=progress)
        tcfg = TrainConfig(**dict(asdict(exp["_train_by_variant"][variant]), seed=seed))
        budget = exp["_budget"]
        if budget != "steps" and variant != exp["_baseline"]:
            # as many steps as it takes to see what the baseline saw (its own seed's run)
            amount = baseline_seen[(label, seed)][BUDGETS[budget]]
            tcfg = replace(tcfg, steps=plan_steps(suite_dir, tcfg, budget, amount))
            tcfg.validate()
        summary = train(suite_dir, run_dir, tcfg, resume=True, progress=progress)
        if variant == exp["_baseline"]:
            baseline_seen[(label, seed)] = summary
        for split in exp["_splits"]:
            eval_cfg = replace(exp["_eval"], split=split)
            eval_dir = run_dir / f"eval-{split}"
            # reused only when everything its numbers depend on is what this run would use
            metrics = metrics_current(eval_dir, identity(run_dir, suite_dir, eval_cfg, summary["steps"]))
            if metrics is None:
                if progress and (eval_dir / "metrics.json").exists():
                    print(f"      {eval_dir.name} was made with other settings, or is unfinished: "
                          "evaluating again", flush=True)
                metrics = evaluate(run_dir, suite_dir, eval_cfg, out=eval_dir, progress=progress)
            # one panel per condition, or per condition and split when several are evaluated
            panel = label if len(exp["_splits"]) == 1 else f"{label} / {split}"
            row = {"condition": label, "split": split, "panel": panel, "variant": variant,
                   "seed": seed, "n": metrics["n"]}
            row.update({k: v for k, v in spec.config.items()})
            row.update({m: metrics[m]["value"] if isinstance(metrics.get(m), dict) else metrics.get(m)
                        for m in METRICS})
            row["writes"] = writes(variant)
            row["swc"] = metrics.get("swc", {}).get("value")
            row["correct"] = round((metrics["accuracy"]["value"] or 0) * metrics["n"])
            row["chance"] = metrics.get("chance")
            row.update(flatten_behaviour(metrics.get("behaviour")))
            row.update(flatten_behaviour(metrics.get("teacher_behaviour"), "teacher_"))
            row.update({"budget": exp["_budget"], "examples_seen": summary.get("examples_seen"),
                        "forward_examples": summary.get("forward_examples"),
                        "supervised_tokens": summary.get("supervised_tokens")})
            row.update({"steps": summary["steps"], "final_loss": summary["final_loss"],
                        "train_seconds": summary["train_seconds"], "parameters": summary["parameters"],
                        "device": summary["device"]})
            rows.append(row)
            if split == exp["_splits"][0]:  # the difficulty and trajectory figures use the first split
                for key, by_value in metrics.get("by_difficulty", {}).items():
                    for x, block in by_value.items():
                        acc = block["accuracy"]
                        correct = round((acc["value"] or 0) * acc["n"])
                        difficulty_points.append({"variant": variant, "key": key, "x": float(x),
                                                  "n": acc["n"], "correct": correct})
                if "teacher_behaviour" in metrics:
                    records_path = run_dir / f"eval-{split}" / "records.jsonl"
                    stream_records.setdefault(variant, []).extend(
                        json.loads(line) for line in records_path.read_text().splitlines())
            if progress:
                acc = metrics["accuracy"]["value"]
                print(f"      {split}: accuracy {acc:.3f} (n={metrics['n']}), first step "
                      f"{metrics['first_step_accuracy']['value']:.3f}, teacher-forced tokens "
                      f"{metrics['tf_token_accuracy']['value']:.3f}", flush=True)
    _write_csv(out / "results.csv", rows)
    figures = plots.accuracy_by_variant(rows, out / "accuracy",
                                        title=f"{exp['name']}: planning accuracy (what each model "
                                              "writes: see the report's table)")
    figures += plots.accuracy_by_variant(rows, out / "first_step", metric="first_step_accuracy",
                                         title=f"{exp['name']}: first move on a shortest path")
    run_names = dict.fromkeys(f"{r['condition']}-{r['variant']}-s{r['seed']}" for r in rows)
    curves = {name: _curve(out / "runs" / name) for name in run_names}
    figures += plots.learning_curves(curves, out / "loss")
    accuracy_curves = _accuracy_curves(exp, out)
    if accuracy_curves:
        figures += plots.accuracy_curves(accuracy_curves, out / "accuracy_curves",
                                         title=f"{exp['name']}: learning curves")
    figures += plots.clever_hans([r for r in rows if r["split"] == exp["_splits"][0]], out / "clever_hans")
    figures += plots.accuracy_vs_difficulty(difficulty_points, out / "difficulty")
    figures += plots.behaviour_bars([r for r in rows if r["split"] == exp["_splits"][0]], out / "behaviour")
    figures += plots.trajectory_vs_stream(stream_records, out / "trajectories")
    verdicts = verdict_table(exp, out, exp["_baseline"])
    write_json(out / "verdicts.json", verdicts)
    report = out / "report.md"
    pngs = [f.name for f in figures if f.suffix == ".png"]
    write_text(report, _report(exp, Path(path), out, rows, pngs, time.perf_counter() - t_start,
                               verdicts))
    return report


def _accuracy_curves(exp: dict, out: Path) -> dict[str, dict[int, list[dict]]]:
    """variant (panel) -> seed -> curve.jsonl points, for the runs that logged a curve."""
    found: dict[str, dict[int, list[dict]]] = {}
    for label in exp["_labels"]:
        for variant in exp["variants"]:
            for seed in exp["seeds"]:
                path = out / "runs" / f"{label}-{variant}-s{seed}" / "curve.jsonl"
                if path.is_file():
                    points = [json.loads(line) for line in path.read_text().splitlines() if line]
                    name = variant if len(exp["_labels"]) == 1 else f"{label} / {variant}"
                    found.setdefault(name, {})[seed] = points
    return found


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    points = []
    log = run_dir / "train_log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            points.append((rec["step"], rec["loss"]))
    return points


def _write_csv(path: Path, rows: list[dict]) -> None:
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
    m, lo, hi = mean_ci(values)
    if m != m:  # nan
        return "n/a"
    if len(values) > 1:
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
    wlo, whi = wilson(correct, n)
    return f"{m:.3f} [{wlo:.3f}, {whi:.3f}]"


FIGURE_CAPTIONS = {
    "accuracy.png": "Planning accuracy by variant (bars: mean over seeds; dots: seeds). Only some "
                    "variants plan forward at test time: the \"writes\" column of the table says "
                    "which; the chance line applies to those whose first decision is the forward "
                    "choice.",
    "first_step.png": "The plan's first move on a shortest path: does the model choose the right "
                      "branch? (for a model that writes the plan backwards, its forward plan's first "
                      "move is written last).",
    "difficulty.png": "Accuracy against difficulty.",
    "behaviour.png": "Search behaviour of the model's streams next to its teacher's.",
    "trajectories.png": "States explored and tokens used per test instance, model vs teacher.",
    "loss.png": "Training loss on completion tokens.",
    "accuracy_curves.png": "Verified generation accuracy on a fixed validation subset during "
                           "training, against optimizer steps and against supervised tokens (thick: "
                           "mean over seeds; thin: each seed).",
    "clever_hans.png": "Teacher-forced token and first-token accuracy next to verified generated "
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


def _behaviour_lines(exp: dict, rows: list[dict]) -> list[str]:
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
        for variant in exp["variants"]:
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


def _variant_notes(exp: dict) -> list[str]:
    """What a reader must know about a variant on this task (e.g. no search in it)."""
    grammar = get_grammar(exp["task"])
    note_of = getattr(grammar, "variant_note", None)
    notes = [note_of(exp["task"], v) for v in exp["variants"]] if note_of else []
    return [f"{v}: {n}" for v, n in zip(exp["variants"], notes) if n]


def _report(exp: dict, source: Path, out: Path, rows: list[dict], figures: list[str],
            seconds: float, verdicts: list[dict]) -> str:
    lines = [f"# {exp['name']}", ""]
    if exp.get("description"):
        lines += [exp["description"].strip(), ""]
    lines += ["Every accuracy below counts plans that were parsed by the task's grammar and replayed "
              "move by move in the task's environment.", "",
              "## Reproduce", "", "```", f"retroplan run {source} --out {out}", "```", ""]
    lines += verdict_lines(verdicts)
    lines += ["## Results", ""]
    seeds = exp["seeds"]
    ci_note = ("mean over seeds [95% t-interval]" if len(seeds) > 1 else
               "one seed; [95% Wilson interval over the test instances]")
    lines += [f"Accuracy: {ci_note}. n = test instances per seed; every rate in a row is over "
              "those n instances (a completion that cannot be parsed counts as wrong). "
              "\"writes\": what the model writes at test time — only some variants plan forward. "
              "\"stream first step\" (stream variants): the stream's first move lies on a shortest "
              "path; \"faithful\": correct and the plan is the path the stream itself reached. "
              "\"chance\" is shown only for variants whose first decision is the forward choice.", "",
              "| condition | variant | writes | n | accuracy | first step | stream first step | "
              "faithful | teacher-forced tokens | teacher-forced sequences | parse failures | chance |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    panels = list(dict.fromkeys(r["panel"] for r in rows))
    for label in panels:
        for variant in exp["variants"]:
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
                         f"{mean_of('tf_token_accuracy')} | {mean_of('tf_sequence_accuracy')} | "
                         f"{mean_of('parse_failures')} | {'' if chance in (None, '') else f'{chance:.3f}'} |")
    notes = _variant_notes(exp)
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    lines += [""] + _behaviour_lines(exp, rows) + ["## Figures", ""]
    for name in figures:
        lines += [f"![{name[:-4]}]({name})", "", FIGURE_CAPTIONS.get(name, ""), ""]
    lines += ["Teacher-forced accuracy feeds the reference prefix and asks for the next token; a "
              "model that scores high there but low when it generates its own plan has learned "
              "to follow edges once it is on the right arm, but not to choose the arm (the "
              "Clever Hans cheat of Bachmann & Nagarajan, 2024).", "",
              "## Runs", "",
              f"Budget held equal to the baseline's ({exp['_baseline']}): **{exp['_budget']}**; every "
              "run's actual counts are below (supervised tokens: completion tokens that carry loss; "
              "forward examples: rows of the evaluated kind).", "",
              "| run | steps | examples | forward examples | supervised tokens | final loss | "
              "train seconds | parameters | device |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["split"] != exp["_splits"][0]:  # one line per run, not per evaluated split
            continue
        lines.append(f"| {r['condition']}-{r['variant']}-s{r['seed']} | {r['steps']} | "
                     f"{r.get('examples_seen')} | {r.get('forward_examples')} | "
                     f"{r.get('supervised_tokens')} | "
                     f"{r['final_loss']:.4f} | {r['train_seconds']} | {r['parameters']} | {r['device']} |")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines += ["", "## Machine", "",
              f"retroplan {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
              f"{platform.machine()} with {os.cpu_count()} CPUs, GPU: {gpu}; whole run "
              f"{seconds:.0f} s (pieces already done were skipped).", "",
              "## Experiment file", "", "```toml", source.read_text().strip(), "```", ""]
    return "\n".join(lines)
