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
    [[conditions]]  task configs (one table each; `label` names it; a `train` table in it:
                 train settings of that condition's runs, over [train] and by_variant)
    [options]    trace-writer options
    [train]      retroplan.train.TrainConfig fields
    [eval]       retroplan.eval.EvalConfig fields
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import platform
import re
import shlex
import time
import tomllib
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import checkpoint, plots
from .device import resolve_device
from .envs import get_task, make_config
from .errors import SEED_LIMIT, UserError, require
from .eval import EvalConfig, evaluate, identity, metrics_current
from .fsutil import LOCK_NAME, hold_lock, path_for, sha256_file, write_bytes, write_json, write_text
from .metrics import flatten_behaviour
from .probe import check_probe_section, probe_study
from .rl_study import check_rl_section, rl_study
from .runner import check_runner, run_pieces
from .stats import mean_ci, rate_ci, wilson
from .study import MARGIN, verdict_lines, verdict_table
from .traces import check_variant, get_grammar, writes
from .traces.suite import SuiteSpec, generate_suite, open_suite, shortest_prompt
from .train import MACHINE_SETTINGS, TrainConfig, plan_steps, resolve_precision, train
from .version import __version__

_TOP_KEYS = {"name", "description", "task", "variants", "seeds", "sizes", "conditions", "options",
             "train", "eval", "study", "probe", "rl"}
_STUDY_KEYS = {"baseline", "budget", "margin"}
# what a study may hold equal between each variant and its baseline -> the run's counter
BUDGETS = {"steps": "steps", "examples": "examples_seen", "forward_examples": "forward_examples",
           "tokens": "supervised_tokens"}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
METRICS = ("accuracy", "first_step_accuracy", "optimal_rate", "faithful_accuracy",
           "stream_first_step_accuracy", "parse_failures", "tf_token_accuracy", "tf_first_token_accuracy",
           "tf_sequence_accuracy", "mean_generated_tokens", "tf_deciding_token_accuracy")


def _toml_value(text: str):
    """`--set` values are TOML (3000, 1e-3, [0, 1, 2], "dfs", true); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        require(_PLAIN_NAME.fullmatch(text) is not None,
                f"--set value {text!r} is neither a TOML value nor a plain word; quote strings "
                "(e.g. --set 'study.budget=\"examples\"').")
        return text


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of a parsed experiment file with each `KEY=VALUE` of `overrides` set: KEY is a
    dotted path (`train.steps`, `seeds`, `conditions.0.degree`, `train.by_variant.stream.lr`);
    a missing table is created, a list is indexed by position."""
    exp = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        require(sep == "=" and key.strip() != "",
                f"--set {item!r} must be KEY=VALUE (e.g. train.steps=3000).")
        parts = key.strip().split(".")
        node = exp
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                require(part.isdigit() and int(part) < len(node),
                        f"--set {key}: {where} is not an index of a list of {len(node)}.")
                part = int(part)
            else:
                require(isinstance(node, dict), f"--set {key}: {'.'.join(parts[:i])} is not a table.")
            if last:
                node[part] = _toml_value(text.strip())
            else:
                if isinstance(node, dict) and part not in node:
                    node[part] = {}
                node = node[part]
    return exp


def _parse_experiment(path: Path, text: str | bytes, overrides=()) -> dict:
    try:
        raw = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"experiment file {path} is not valid TOML: {exc}.") from None
    return apply_overrides(raw, overrides)


# The experiments that ship with the package (`retroplan run quick`, `retroplan example quick`):
# the one copy of each file, so an installed retroplan runs its own tour and studies.
SHIPPED_DIR = Path(__file__).parent / "experiments"


def shipped_experiments() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))


def resolve_experiment(path: str | os.PathLike) -> Path:
    """An experiment file: `path` itself when it is a file, else the shipped experiment of that
    name (`quick`), so the same command works from any folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path() and path.stem in shipped_experiments() and path.suffix in ("", ".toml"):
        return SHIPPED_DIR / f"{path.stem}.toml"
    raise UserError(f"experiment file {path} does not exist; give a TOML file or the name of a shipped "
                    f"experiment: {', '.join(shipped_experiments())}.")


def load_experiment(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Parse and check an experiment file whole (with `--set KEY=VALUE` overrides applied); a
    shipped experiment may be named instead (`quick`)."""
    path = resolve_experiment(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise UserError(f"experiment file {path} is not valid TOML: {exc}.") from None
    exp = _parse_experiment(path, text, overrides)
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
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEED_LIMIT for s in seeds),
            f"{path}: seeds must be a non-empty list of integers in [0, 2**63).")
    require(len(set(seeds)) == len(seeds), f"{path}: seeds repeat a value.")
    conditions = exp.setdefault("conditions", [{}])
    require(isinstance(conditions, list) and conditions and all(isinstance(c, dict) for c in conditions),
            f"{path}: conditions must be a list of tables ([[conditions]]).")
    labels = []
    for c in conditions:
        values = {k: v for k, v in c.items() if k not in CONDITION_KEYS}
        require(isinstance(c.get("train", {}), dict),
                f"{path}: a condition's train must be a table of train settings, got {c.get('train')!r}.")
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
    margin = study.get("margin", MARGIN)  # |Δ accuracy| the verdict calls equivalent (TOST)
    require(isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0 < margin < 1,
            f"{path}: study margin must be a number between 0 and 1 (an accuracy difference), "
            f"got {margin!r}.")
    exp["_margin"] = float(margin)
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
    # per (condition, variant): [train], then [train.by_variant.<variant>], then the condition's
    # own `train` table (a training-only change as a condition, e.g. objective = "teacherless")
    exp["_train_by_piece"] = {(label, v): TrainConfig.from_dict(
                                  {**train_table, **by_variant.get(v, {}), **c.get("train", {})})
                              for label, c in zip(labels, conditions) for v in variants}
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
    require(isinstance(exp.get("probe", {}), dict), f"{path}: probe must be a table ([probe]).")
    try:
        exp["_probe"] = (check_probe_section(exp["probe"], exp["task"], variants)
                         if "probe" in exp else None)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    try:  # [rl]: a GRPO stage for every run after it is evaluated (rl_study.py)
        exp["_rl"] = check_rl_section(exp["rl"]) if "rl" in exp else None
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    # the devices asked for must exist here: found now, not after the first suite is generated
    try:
        for cfg in [exp["_train"], *exp["_train_by_piece"].values()]:
            resolve_precision(cfg, resolve_device(cfg.device))
        resolve_device(exp["_eval"].device)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    # the trace options are validated by SuiteSpec.resolve below, before any work
    for c in conditions:
        for v in variants:
            _spec(exp, c, v, seeds[0]).resolve()
    # a split the study needs must have rows (the sizes are checked integers by now): found
    # now, not after the first run is trained
    resolved_sizes = {**task.DEFAULT_SIZES, **sizes}
    for split in splits:
        require(resolved_sizes.get(split, 0) > 0, f"{path}: [eval] evaluates split {split}, and "
                f"[sizes] {split} is {resolved_sizes.get(split, 0)}; give it at least one instance.")
    for cfg in [exp["_train"], *exp["_train_by_variant"].values()]:
        for key in ("eval_every", "curve_every"):
            require(not getattr(cfg, key) or resolved_sizes.get("val", 0) > 0,
                    f"{path}: train {key} needs rows in a val split, and [sizes] val is "
                    f"{resolved_sizes.get('val', 0)}; set {key} to 0 or val to at least 1.")
    return exp


def _check_context(exp: dict, path) -> None:
    """A [train] context (0: the suite's longest row) must exceed the prompts of every
    condition and variant, measured on a few instances written in memory: found before any
    suite is written (later, every row would be dropped, or no prompt could be evaluated)."""
    for v, cfg in exp["_train_by_variant"].items():
        if not cfg.context:
            continue
        for label, c in zip(exp["_labels"], exp["conditions"]):
            shortest = shortest_prompt(_spec(exp, c, v, exp["seeds"][0]))
            require(cfg.context > shortest,
                    f"{path}: train context {cfg.context} is too short for condition {label!r}, "
                    f"variant {v}: its prompts are {shortest} tokens or longer, and the model must read "
                    "a prompt and write after it; raise context, or give 0 (the suite's longest row).")


# settings that decide where and how fast the work runs, never its results beyond rounding (and the report's
# title and text): an experiment file that differs from the one in --out only in these is the
# same experiment, so they can be fixed in place. (train.device / compile / threads are also
# the settings `train --resume` lets differ.) They change no result beyond floating-point
# rounding, but they do change that: another device, compiled kernels or another CPU thread
# count sum in another order, so the weights (and through them a close call) may differ in the
# last bits; a study compared byte for byte keeps them fixed (docs/RELIABILITY.md section 1).
# [probe] only analyses the finished runs; each probe's result records its own settings and is
# redone when they change. [rl] too adds a stage after the finished runs (RUN-rl folders; `rl`
# refuses to continue one with other settings).
NO_RESULT_KEYS = {"": ("name", "description", "probe", "rl"), "train": MACHINE_SETTINGS,
                  "eval": ("device", "batch_size"), "study": ("margin",)}


def experiment_identity(raw: dict) -> dict:
    """A parsed experiment file without its `NO_RESULT_KEYS` (and tables they leave empty)."""
    ident = {k: v for k, v in raw.items() if k not in NO_RESULT_KEYS[""]}
    for table in ("train", "eval", "study"):
        if not isinstance(ident.get(table), dict):
            continue
        t = {k: v for k, v in ident[table].items() if k not in NO_RESULT_KEYS[table]}
        if table == "train" and isinstance(t.get("by_variant"), dict):
            t["by_variant"] = {v: ({k: x for k, x in o.items() if k not in NO_RESULT_KEYS["train"]}
                                   if isinstance(o, dict) else o) for v, o in t["by_variant"].items()}
        ident[table] = t
        if not t:
            del ident[table]
    if isinstance(ident.get("conditions"), list):  # a condition's own train table, likewise
        ident["conditions"] = [_condition_identity(c) for c in ident["conditions"]]
    return ident


def _condition_identity(condition):
    """A condition without the machine settings of its train table (and the table if it empties)."""
    if not (isinstance(condition, dict) and isinstance(condition.get("train"), dict)):
        return condition
    train = {k: x for k, x in condition["train"].items() if k not in NO_RESULT_KEYS["train"]}
    rest = {k: x for k, x in condition.items() if k != "train"}
    return {**rest, "train": train} if train else rest


def _same_experiment(old: bytes, old_overrides: list[str], new: bytes, new_overrides: list[str]) -> bool:
    if old == new and old_overrides == new_overrides:
        return True
    try:
        return experiment_identity(_parse_experiment(Path(), old, old_overrides)) == experiment_identity(
            _parse_experiment(Path(), new, new_overrides))
    except UserError:
        return False


OVERRIDES_FILE = "overrides.json"  # beside experiment.toml in --out: the run's --set list


def stored_overrides(out: Path) -> list[str]:
    path = out / OVERRIDES_FILE
    if not path.exists():
        return []
    try:
        overrides = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        overrides = None
    require(isinstance(overrides, list) and all(isinstance(o, str) for o in overrides),
            f"{path} is not a list of --set overrides (it is corrupt); restore it, or delete it if "
            f"{out} was run without --set.")
    return overrides


# beside experiment.toml in --out: {metrics.json path inside --out: its sha256} of every
# evaluation the study has used; an evaluation whose file no longer has that digest (edited by
# hand) is evaluated again rather than reused
EVALUATIONS_FILE = "evaluations.json"


def recorded_evaluations(out: Path) -> dict[str, str]:
    """The study's record of the metrics.json files it used (empty when there is none; a
    corrupt record is ignored: every evaluation is then checked by its identity alone and
    recorded again)."""
    try:
        recorded = json.loads((out / EVALUATIONS_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _label(values: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(values.items())) or "default"


CONDITION_KEYS = ("label", "train")  # a condition's entries that are not task config


def _spec(exp: dict, condition: dict, variant: str, seed: int) -> SuiteSpec:
    config = {k: v for k, v in condition.items() if k not in CONDITION_KEYS}
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


def _refuse_hand_resumed(run_dir: Path, steps: int) -> None:
    """A study run whose length was changed by hand (`train --resume --steps N`) is not the run
    this experiment trains: one sentence in `run`'s terms, before `train` would speak in its own."""
    if not (run_dir / "run.json").is_file():
        return
    run = checkpoint.read_run(run_dir)
    changes = run.get("length_changes")
    if changes:
        to = changes[-1].get("to_steps") if isinstance(changes[-1], dict) else None
        raise UserError(f"{run_dir} was resumed by hand to {to} steps (train --resume --steps), and "
                        f"this experiment trains it for {steps} (train.steps, or its matched budget); "
                        f"delete {run_dir} to have run train it again as the experiment says, or use "
                        "another --out.")


def run_piece(exp: dict, out: Path, label: str, variant: str, seed: int, amount: int | None = None,
              progress: bool = True) -> dict:
    """One run of a study: its suite (generated unless ready), training (resumed or skipped when
    finished) and one evaluation per split (reused when current). `amount` is the baseline's
    counter under a matched budget. Everything it makes lives in its own folders, so pieces may
    run in any order and side by side. Returns {"summary": ..., "metrics": {split: ...}}."""
    cond = exp["conditions"][exp["_labels"].index(label)]
    name = f"{label}-{variant}-s{seed}"
    spec = _spec(exp, cond, variant, seed)
    suite_dir, run_dir = out / "suites" / name, out / "runs" / name
    # what was already done and is reused as it is (the report says whether anything was)
    reused = {"suite": _suite_ready(suite_dir, spec), "train": (run_dir / "final.json").exists(), "evals": 0}
    if not reused["suite"]:
        generate_suite(spec, suite_dir, progress=progress)
    tcfg = TrainConfig(**dict(asdict(exp["_train_by_piece"][(label, variant)]), seed=seed))
    if amount is not None:
        # as many steps as it takes to see what the baseline saw (its own seed's run)
        tcfg = replace(tcfg, steps=plan_steps(suite_dir, tcfg, exp["_budget"], amount))
        tcfg.validate()
    _refuse_hand_resumed(run_dir, tcfg.steps)
    summary = train(suite_dir, run_dir, tcfg, resume=True, progress=progress)
    metrics_by_split = {}
    for split in exp["_splits"]:
        eval_cfg = replace(exp["_eval"], split=split)
        eval_dir = run_dir / f"eval-{split}"
        # reused only when everything its numbers depend on is what this run would use
        recorded = recorded_evaluations(out).get(path_for(out, eval_dir / "metrics.json"))
        metrics = metrics_current(eval_dir, identity(run_dir, suite_dir, eval_cfg, summary["steps"]),
                                  recorded if isinstance(recorded, str) else None)
        if metrics is None:
            if progress and (eval_dir / "metrics.json").exists():
                print(f"      {name}/{eval_dir.name} was made with other settings, is unfinished, "
                      "or is not the file this study recorded: evaluating again", flush=True)
            metrics = evaluate(run_dir, suite_dir, eval_cfg, out=eval_dir, progress=progress)
        else:
            reused["evals"] += 1
        metrics_by_split[split] = metrics
    return {"summary": summary, "metrics": metrics_by_split, "reused": reused}


def run_experiment(path: str | os.PathLike, out: str | os.PathLike, progress: bool = True,
                   workers: int = 1, backend: str = "local", address: str | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Run (or finish) the experiment in `path` into `out`. `workers` > 1 runs that many pieces
    side by side (local processes, each with a share of the CPU cores or its own GPU);
    `backend="ray"` sends them to a Ray cluster (`address`: None starts a local one). The
    records are the same whatever runs them, given the same torch thread count per run.
    `overrides` (`--set KEY=VALUE`) change the file's settings and are part of its identity."""
    check_runner(workers, backend, address)
    require(os.environ.get("WORLD_SIZE", "1") == "1",
            f"retroplan run is one process per study (WORLD_SIZE={os.environ.get('WORLD_SIZE')}: "
            "under torchrun every rank would race on the same suites); run it without torchrun, "
            "with --workers N to run its pieces side by side.")
    overrides = list(overrides)
    path = resolve_experiment(path)
    exp = load_experiment(path, overrides)
    _check_context(exp, path)
    out = Path(out)
    source = path.read_bytes()
    if (out / "experiment.toml").exists():
        require(_same_experiment((out / "experiment.toml").read_bytes(), stored_overrides(out),
                                 source, overrides),
                f"{out} holds results of a different experiment file or other --set overrides (only "
                "name, description, train device / compile / threads and eval device / batch_size "
                "may change in place); use another --out.")
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise UserError(f"output folder {out} exists and is not empty; use another --out.")
    with hold_lock(out, "run"):  # a second `run` on this --out is refused while this one works
        return _run_locked(path, out, exp, source, overrides, workers, backend, address, progress)


def _run_locked(path, out: Path, exp: dict, source: bytes, overrides: list[str], workers: int,
                backend: str, address: str | None, progress: bool) -> Path:
    """`run_experiment` once the experiment is checked and `out` is locked."""
    write_bytes(out / "experiment.toml", source)
    if overrides:
        write_json(out / OVERRIDES_FILE, overrides)
    elif (out / OVERRIDES_FILE).exists():
        (out / OVERRIDES_FILE).unlink()
    t_start = time.perf_counter()
    # the baseline first: under a matched budget every other variant's steps follow from it
    order = [exp["_baseline"]] + [v for v in exp["variants"] if v != exp["_baseline"]]
    jobs = [(label, variant, seed) for label in exp["_labels"] for variant in order
            for seed in exp["seeds"]]
    results = run_pieces(exp, out, jobs, workers=workers, backend=backend, address=address,
                         progress=progress)
    rows, difficulty_points, stream_records = [], [], {}
    failures: dict[tuple[str, str], Counter] = {}  # (condition, variant) -> failure kind -> count
    drawn: list[tuple[str, int]] = []  # (stream variant, row) of the streams the report draws
    for label, variant, seed in jobs:
        cond = exp["conditions"][exp["_labels"].index(label)]
        spec = _spec(exp, cond, variant, seed)
        run_dir = out / "runs" / f"{label}-{variant}-s{seed}"
        summary = results[(label, variant, seed)]["summary"]
        for split in exp["_splits"]:
            metrics = results[(label, variant, seed)]["metrics"][split]
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
                records = [json.loads(line) for line in
                           (run_dir / f"eval-{split}" / "records.jsonl").read_text().splitlines()]
                failed = [r for r in records if not r["correct"] and r.get("sample", 0) == 0]
                failures.setdefault((label, variant), Counter()).update(
                    failure_kind(r["reason"]) for r in failed)
                if "teacher_behaviour" in metrics:
                    stream_records.setdefault(variant, []).extend(records)
                    if (label, seed) == (exp["_labels"][0], exp["seeds"][0]):
                        # drawn: the first instance the model failed (row 0 when it failed none)
                        drawn.append((variant, failed[0]["row"] if failed else 0))
    _write_csv(out / "results.csv", rows)
    # every metrics.json these results come from, by digest: a later run reuses only these files
    write_json(out / EVALUATIONS_FILE, {
        path_for(out, out / "runs" / f"{label}-{variant}-s{seed}" / f"eval-{split}" / "metrics.json"):
            sha256_file(out / "runs" / f"{label}-{variant}-s{seed}" / f"eval-{split}" / "metrics.json")
        for label, variant, seed in jobs for split in exp["_splits"]})
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
    traces = _draw_streams(exp, out, drawn)
    figures += [path for _, _, paths in traces for path in paths]
    verdicts = verdict_table(exp, out, exp["_baseline"])
    write_json(out / "verdicts.json", verdicts)
    report = out / "report.md"
    pngs = [f.name for f in figures if f.suffix == ".png"]
    sections = _failure_lines(exp, rows, failures) + _trace_lines(exp, out, traces)
    if exp["_probe"]:  # linear probes of every run, one figure per condition and target
        for label in exp["_labels"]:
            run_dirs = {v: {seed: out / "runs" / f"{label}-{v}-s{seed}" for seed in exp["seeds"]}
                        for v in exp["variants"]}
            several = len(exp["_labels"]) > 1
            probe_figures, probe_lines = probe_study(
                exp["_probe"], run_dirs, out, title=f"{exp['name']}" + (f" / {label}" if several else ""),
                progress=progress, name=f"probe-{label}" if several else "probe",
                heading=f"Probes: {label}" if several else "Probes")
            figures += probe_figures
            sections += probe_lines
    if exp["_rl"]:  # an RL stage of every run, before/after table and verdict (rl_study.py)
        for label in exp["_labels"]:
            run_dirs = {v: {seed: out / "runs" / f"{label}-{v}-s{seed}" for seed in exp["seeds"]}
                        for v in exp["variants"]}
            several = len(exp["_labels"]) > 1
            rl_figures, rl_lines = rl_study(exp["_rl"], run_dirs, exp["_baseline"], out,
                                            title=f"{exp['name']}" + (f" / {label}" if several else ""),
                                            progress=progress,
                                            name=f"rl_passk-{label}" if several else "rl_passk")
            figures += rl_figures
            sections += rl_lines
    reused = sum(1 for r in results.values() if r["reused"]["train"] or r["reused"]["suite"]
                 or r["reused"]["evals"])
    # every invocation's wall time, kept: a later one that reuses the runs adds its own
    # seconds rather than replacing the time the study took with the reuse's
    timing = _invocations(out) + [{"seconds": round(time.perf_counter() - t_start, 1), "reused": reused}]
    write_json(out / TIMING_FILE, {"invocations": timing})
    write_text(report, _report(exp, Path(path), out, overrides, rows, pngs, timing,
                               verdicts, sections, reused))
    return report


TIMING_FILE = "timing.json"  # in --out: the wall time of every `retroplan run` of the study


def _invocations(out: Path) -> list[dict]:
    """The earlier invocations' wall times (timing.json; none when absent or unreadable)."""
    try:
        found = json.loads((out / TIMING_FILE).read_text())["invocations"]
        return [{"seconds": float(i["seconds"]), "reused": int(i["reused"])} for i in found]
    except (OSError, ValueError, KeyError, TypeError):
        return []


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
            points.append((rec["supervised_tokens"], rec["loss"]))
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
    notes = [grammar.variant_note(exp["task"], v) for v in exp["variants"]]
    return [f"{v}: {n}" for v, n in zip(exp["variants"], notes) if n]


def failure_kind(reason: str) -> str:
    """A failed plan's reason with its instance's numbers taken out ("12->3 is not an edge" ->
    "N->N is not an edge"), so failures of one kind count together."""
    return re.sub(r"-?\d+", "N", reason) if reason else "no reason given"


def _failure_lines(exp: dict, rows: list[dict], failures: dict[tuple[str, str], Counter]) -> list[str]:
    """Why plans fail: the commonest kinds per condition and variant (first evaluated split, all
    seeds), so a bar below chance explains itself."""
    lines = ["## Why plans fail", "",
             f"Failed plans of the {exp['_splits'][0]} split, all seeds together, by kind (the "
             "grammar's or the replay's own reason, numbers replaced by N); the three commonest.", "",
             "| condition | variant | failed | commonest kinds |", "|---|---|---|---|"]
    first = [r for r in rows if r["split"] == exp["_splits"][0]]
    for (label, variant), kinds in failures.items():
        rs = [r for r in first if r["condition"] == label and r["variant"] == variant]
        total = sum(r["n"] for r in rs)
        failed = sum(kinds.values())
        common = "; ".join(f"{n:,} × {kind}" for kind, n in kinds.most_common(3)) or "none"
        lines.append(f"| {label} | {variant} | {failed:,} of {total:,} | {common} |")
    return lines + [""]


def _draw_streams(exp: dict, out: Path, drawn: list[tuple[str, int]]) -> list[tuple[str, int, list[Path]]]:
    """One `show-trace` figure per (stream variant, row) of `drawn` (first condition, first seed,
    first split): (variant, row, its PNG and SVG)."""
    from .analysis import show_trace

    split, label, seed = exp["_splits"][0], exp["_labels"][0], exp["seeds"][0]
    return [(variant, row, show_trace(out / "runs" / f"{label}-{variant}-s{seed}" / f"eval-{split}", row,
                                      split, out=out / f"trace-{variant}-row{row}.png"))
            for variant, row in drawn]


def _trace_lines(exp: dict, out: Path, traces: list[tuple[str, int, list[Path]]]) -> list[str]:
    if not traces:
        return []
    split, label, seed = exp["_splits"][0], exp["_labels"][0], exp["seeds"][0]
    lines = ["## A stream, drawn", "",
             f"For each stream variant ({label}, seed {seed}, {split} split): the teacher's search tree "
             "beside the model's on the first instance the model failed (row 0 when it failed none).", ""]
    for variant, row, paths in traces:
        png = next(p for p in paths if p.suffix == ".png")
        run = out / "runs" / f"{label}-{variant}-s{seed}"
        lines += [f"![{png.stem}]({png.name})", "",
                  f"`retroplan show-trace {run} --index {row} --split {split}`", ""]
    return lines


def _report(exp: dict, source: Path, out: Path, overrides: list[str], rows: list[dict], figures: list[str],
            timing: list[dict], verdicts: list[dict], sections: list[str], reused: int) -> str:
    lines = [f"# {exp['name']}", ""]
    if exp.get("description"):
        lines += [exp["description"].strip(), ""]
    lines += ["Every accuracy below counts plans that were parsed by the task's grammar and replayed "
              "move by move in the task's environment.", "",
              "## Reproduce", "", "```", "retroplan run " + " ".join(
                  # a shipped experiment by its name, not by where this install put it
                  [source.stem if source.parent == SHIPPED_DIR else shlex.quote(str(source)),
                   "--out", shlex.quote(str(out))]
                  + [f"--set {shlex.quote(o)}" for o in overrides]), "```", ""]
    lines += verdict_lines(verdicts)
    lines += ["## Results", ""]
    seeds = exp["seeds"]
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
              f"{platform.machine()} with {os.cpu_count()} CPUs, GPU: {gpu}; " + _wall_time(
                  timing, reused, len(rows) // len(exp["_splits"])),
              "",
              "## Experiment file", "", "```toml", source.read_text().strip(), "```", ""]
    return "\n".join(lines)
