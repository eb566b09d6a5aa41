"""Run a TOML experiment end to end: for every condition x variant x seed, generate the
suite, train, evaluate; then `results.csv`, figures and `report.md`.

This is the study layer. The file is read whole into an `experiment_file.Experiment` (checked
before any work: types of every entry, the devices asked for); the unit of work is one run
(`run_piece`: suite, training, evaluations of one condition x variant x seed), which the
executor (`runner.py`: here, local processes or Ray tasks) runs by name. What runs when is
decided here: under a matched budget the baselines run first, and every other run's steps
follow from its baseline's counters. The report is `report.py`'s.

Re-running the same command skips every finished piece (a suite whose meta.json checks out,
a run with final.json, an evaluation whose recorded identity (suite digest, step, weights,
decoding settings, split, limit, retroplan version) is what it would compute now) and resumes
an interrupted training from its last checkpoint. An --out folder is reused by a file that
differs from its experiment.toml only in settings that change no result
(`experiment_file.NO_RESULT_KEYS`: name, description, devices, threads, compile, eval batch
size), so such a setting can be fixed in place. `--reuse-from OTHER` copies in, before anything
runs, the finished runs of another study folder that this study would train exactly alike (a
forward-examples twin reuses its equal-steps sibling's baselines); the checks above then apply to
the copies as to the study's own runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import checkpoint, report
from .errors import UserError, require
from .eval import evaluate, identity, metrics_current
from .experiment_file import (
    BUDGETS,
    OVERRIDES_FILE,
    SHIPPED_DIR,
    Experiment,
    check_context,
    load_experiment,
    resolve_experiment,
    run_name,
    same_experiment,
    stored_experiment,
    stored_overrides,
)
from .fsutil import (
    LOCK_NAME,
    atomic_dir,
    hold_lock,
    path_for,
    sha256_file,
    write_bytes,
    write_json,
    write_text,
)
from .probe import probe_study
from .rl_study import rl_study
from .runner import check_runner, run_pieces
from .study import verdict_table
from .traces.suite import SuiteSpec, generate_suite, open_suite
from .train import TrainConfig, built_size, changed_train_setting, plan_steps, train

# beside experiment.toml in --out: {metrics.json path inside --out: its sha256} of every
# evaluation the study has used; an evaluation whose file no longer has that digest (edited by
# hand) is evaluated again rather than reused
EVALUATIONS_FILE = "evaluations.json"
TIMING_FILE = "timing.json"  # in --out: the wall time of every `retroplan run` of the study
ADOPTED_FILE = "adopted.json"  # in --out: {run name: the study folder it was copied from} (--reuse-from)


def _json_dict(path: Path) -> dict:
    """The JSON object in `path`; empty when the file is missing, unreadable or not an object."""
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def recorded_evaluations(out: Path) -> dict[str, str]:
    """The study's record of the metrics.json files it used (empty when there is none; a
    corrupt record is ignored: every evaluation is then checked by its identity alone and
    recorded again)."""
    return _json_dict(out / EVALUATIONS_FILE)


# --------------------------------------------------------------------------- one run


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


def _trains_alike(run: dict, tcfg: TrainConfig) -> bool:
    """Whether a finished run's run.json records exactly the training `tcfg` asks for: every
    setting a resume compares (`train.changed_train_setting`), each recorded (no default stands
    in), the built model size, the steps, and no length changed by hand."""
    recorded = run.get("train")
    if not isinstance(recorded, dict) or run.get("length_changes"):
        return False
    wanted = asdict(tcfg)
    size = built_size(tcfg, tcfg.model_config(vocab_size=1, block_size=1))
    return (recorded.keys() >= wanted.keys() - {"preset"} and changed_train_setting(recorded, wanted) is None
            and recorded.get("steps") == tcfg.steps and all(recorded.get(k) == v for k, v in size.items()))


def adopt_runs(exp: Experiment, out: Path, source: Path, progress: bool = True) -> list[str]:
    """Copy into `out` each finished run of the study folder `source` (with its suite and
    evaluations) that this study would make exactly alike: the same suite (checksums and
    settings) and the same training settings. Only runs whose length is known before anything
    runs are candidates: every run under a step budget, the baselines under a matched one. A run
    `out` already has is never replaced. Returns the names copied (also kept in adopted.json);
    each copy is checked again by `run_piece` like any run of the study."""
    adopted = []
    for label, variant, seed in exp.runs():
        if exp.budget != "steps" and variant != exp.baseline:
            continue  # its steps follow from its baseline's counters, known only later
        name = run_name(label, variant, seed)
        suite_from, run_from = source / "suites" / name, source / "runs" / name
        suite_to, run_to = out / "suites" / name, out / "runs" / name
        if suite_to.exists() or run_to.exists() or not (run_from / "final.json").is_file():
            continue
        try:
            same_suite = _suite_ready(suite_from, exp.spec(exp.condition(label), variant, seed))
        except UserError:  # another suite of the same name: not this study's run
            same_suite = False
        if not same_suite:
            continue
        try:
            run = checkpoint.read_run(run_from)
        except UserError:  # its run.json is unreadable: not a run to vouch for
            continue
        tcfg = TrainConfig(**dict(asdict(exp.train[(label, variant)]), seed=seed))
        trained_on_it = run.get("suite_meta_sha256") == sha256_file(suite_from / "meta.json")
        if not (trained_on_it and _trains_alike(run, tcfg)):
            continue
        for origin, target in ((suite_from, suite_to), (run_from, run_to)):
            with atomic_dir(target) as tmp:  # a kill mid-copy leaves no half run behind
                shutil.copytree(origin, tmp, dirs_exist_ok=True)
        adopted.append(name)
        write_json(out / ADOPTED_FILE, {**_adopted(out), name: str(source)})  # at once: a kill keeps it
        if progress:
            print(f"  reused {name} from {source} (same suite and training settings)", flush=True)
    return adopted


def _adopted(out: Path) -> dict[str, str]:
    """adopted.json: the runs copied in by --reuse-from and where from (empty when none)."""
    return _json_dict(out / ADOPTED_FILE)


def _adopted_lines(out: Path) -> list[str]:
    """The report's note of the runs --reuse-from copied in (none when none was)."""
    adopted = _adopted(out)
    if not adopted:
        return []
    by_source: dict[str, list[str]] = {}
    for name, source in adopted.items():
        by_source.setdefault(source, []).append(name)
    return ["## Runs copied from another study", "",
            "Copied in by `--reuse-from` (the same suite and training settings; checked again like "
            "this study's own runs, adopted.json lists them): "
            + "; ".join(f"{', '.join(sorted(names))} from `{source}`" for source, names in by_source.items())
            + ".", ""]


def run_piece(exp: Experiment, out: Path, label: str, variant: str, seed: int, amount: int | None = None,
              progress: bool = True) -> dict:
    """One run of a study: its suite (generated unless ready), training (resumed or skipped when
    finished) and one evaluation per split (reused when current). `amount` is the baseline's
    counter under a matched budget. Everything it makes lives in its own folders, so pieces may
    run in any order and side by side. Returns {"summary": ..., "metrics": {split: ...}}."""
    name = run_name(label, variant, seed)
    spec = exp.spec(exp.condition(label), variant, seed)
    suite_dir, run_dir = out / "suites" / name, out / "runs" / name
    # what was already done and is reused as it is (the report says whether anything was)
    reused = {"suite": _suite_ready(suite_dir, spec), "train": (run_dir / "final.json").exists(), "evals": 0}
    if not reused["suite"]:
        generate_suite(spec, suite_dir, progress=progress)
    tcfg = TrainConfig(**dict(asdict(exp.train[(label, variant)]), seed=seed))
    if amount is not None:
        # as many steps as it takes to see what the baseline saw (its own seed's run)
        tcfg = replace(tcfg, steps=plan_steps(suite_dir, tcfg, exp.budget, amount))
        tcfg.validate()
    _refuse_hand_resumed(run_dir, tcfg.steps)
    summary = train(suite_dir, run_dir, tcfg, resume=True, progress=progress)
    metrics_by_split = {}
    for split in exp.splits:
        eval_cfg = replace(exp.eval, split=split)
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


def run_stored_piece(out: str, label: str, variant: str, seed: int, amount: int | None,
                     progress: bool = True) -> dict:
    """`run_piece` of the study in the folder `out`, read back from its experiment.toml (the
    file `run` wrote there): the piece function the runner gets, so a worker process or a Ray
    task receives only names."""
    return run_piece(stored_experiment(Path(out)), Path(out), label, variant, seed, amount, progress)


class _Whereabouts:
    """Where the study's runs are, read from the files they write: the runner's periodic line
    for pieces running elsewhere (`watch`). A run's step of its total and the time left at its
    pace: wall time per step since the last report (curves and a busy machine included), or
    at the first report the training clock of its last logged steps (train_log.jsonl, which
    leaves curves out); or that it is evaluating. None for a run that has written nothing since
    this invocation started: waiting, or reused as it was."""

    def __init__(self, out: Path):
        self.out, self.since, self.seen = out, time.time(), {}

    def __call__(self, name: str) -> str | None:
        run_dir = self.out / "runs" / name
        final, log = run_dir / "final.json", run_dir / "train_log.jsonl"
        try:
            if final.exists():
                return "trained; evaluating" if final.stat().st_mtime >= self.since else None
            if not log.exists() or log.stat().st_mtime < self.since:
                return None
            tail = log.read_text().splitlines()[-6:]
        except OSError:
            return None
        steps = _json_dict(run_dir / "run.json").get("train", {}).get("steps")
        logged = []
        for line in tail:
            try:
                record = json.loads(line)
                logged.append((int(record["step"]), float(record["elapsed_s"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line being written
        if not logged or not isinstance(steps, int):
            return None
        (step0, clock0), (step, clock) = logged[0], logged[-1]
        now = time.monotonic()
        where = f"step {step:,} of {steps:,}"
        if name in self.seen and step > self.seen[name][1]:
            pace = (now - self.seen[name][0]) / (step - self.seen[name][1])
            where += f", {pace:.2f} s a step since the last report: {_time_left(steps - step, pace)} left"
        elif step > step0 and clock > clock0:
            pace = (clock - clock0) / (step - step0)
            where += (f", {pace:.2f} s a training step (curves aside): {_time_left(steps - step, pace)} "
                      "of training left")
        self.seen[name] = (now, step)
        return where


def _time_left(steps: int, pace: float) -> str:
    minutes = steps * pace / 60
    return f"~{minutes:.0f} min" if minutes >= 1 else "under a minute"


def _metrics_line(result: dict) -> str:
    """A run's numbers in one progress line."""
    return "; ".join(f"{split}: accuracy {m['accuracy']['value']:.3f} (n={m['n']}), first step "
                     f"{m['first_step_accuracy']['value']:.3f}, teacher-forced tokens "
                     f"{m['tf_token_accuracy']['value']:.3f}" for split, m in result["metrics"].items())


# --------------------------------------------------------------------------- the study


def _phases(exp: Experiment) -> list[list[tuple[str, str, int]]]:
    """The runs in the order they may run: all at once under a step budget; otherwise the
    baselines, then the rest (their steps follow from the baselines' counters)."""
    runs = exp.runs()
    if exp.budget == "steps":
        return [runs]
    return [[r for r in runs if r[1] == exp.baseline], [r for r in runs if r[1] != exp.baseline]]


def _amount(exp: Experiment, results: dict[str, dict], label: str, variant: str, seed: int) -> int | None:
    """What a run must match of its baseline's (same condition and seed) counters, or None."""
    if exp.budget == "steps" or variant == exp.baseline:
        return None
    return results[run_name(label, exp.baseline, seed)]["summary"][BUDGETS[exp.budget]]


def _run_all(exp: Experiment, out: Path, workers: int, backend: str, address: str | None,
             progress: bool) -> dict[str, dict]:
    """Every run of the study, phase by phase; run name -> run_piece's result."""
    results: dict[str, dict] = {}
    total = len(exp.runs())
    whereabouts = _Whereabouts(out)
    for phase in _phases(exp):
        pieces = [(run_name(*r), (str(out.resolve()), *r, _amount(exp, results, *r))) for r in phase]
        results.update(run_pieces(run_stored_piece, pieces, workers=workers, backend=backend,
                                  address=address, progress=progress, describe=_metrics_line,
                                  counted=(len(results), total),
                                  watch=whereabouts))
    return results


def run_experiment(path: str | os.PathLike, out: str | os.PathLike, progress: bool = True,
                   workers: int = 1, backend: str = "local", address: str | None = None,
                   overrides: list[str] | tuple[str, ...] = (),
                   reuse_from: str | os.PathLike | None = None) -> Path:
    """Run (or finish) the experiment in `path` into `out`. `workers` > 1 runs that many pieces
    side by side (local processes, each with a share of the CPU cores or its own GPU);
    `backend="ray"` sends them to a Ray cluster (`address`: None starts a local one). The
    records are the same whatever runs them, given the same torch thread count per run.
    `overrides` (`--set KEY=VALUE`) change the file's settings and are part of its identity.
    `reuse_from`: another study folder whose finished runs this study would make alike are
    copied in first (`adopt_runs`)."""
    check_runner(workers, backend, address)
    require(os.environ.get("WORLD_SIZE", "1") == "1",
            f"retroplan run is one process per study (WORLD_SIZE={os.environ.get('WORLD_SIZE')}: "
            "under torchrun every rank would race on the same suites); run it without torchrun, "
            "with --workers N to run its pieces side by side.")
    overrides = list(overrides)
    path = resolve_experiment(path)
    exp = load_experiment(path, overrides)
    check_context(path, exp)
    out = Path(out)
    source = path.read_bytes()
    if reuse_from is not None:
        reuse_from = Path(reuse_from)
        require((reuse_from / "experiment.toml").is_file(),
                f"--reuse-from {reuse_from} is not a study folder (it has no experiment.toml); give "
                "the --out of an earlier `retroplan run`.")
        require(reuse_from.resolve() != out.resolve(),
                f"--reuse-from {reuse_from} is this study's own --out.")
    if (out / "experiment.toml").exists():
        require(same_experiment((out / "experiment.toml").read_bytes(), stored_overrides(out),
                                source, overrides),
                f"{out} holds results of a different experiment file or other --set overrides (only "
                "name, description, train device / compile / threads and eval device / batch_size "
                "may change in place); use another --out.")
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise UserError(f"output folder {out} exists and is not empty; use another --out.")
    with hold_lock(out, "run"):  # a second `run` on this --out is refused while this one works
        return _run_locked(path, out, exp, source, overrides, workers, backend, address, progress,
                           reuse_from)


def _run_locked(path: Path, out: Path, exp: Experiment, source: bytes, overrides: list[str], workers: int,
                backend: str, address: str | None, progress: bool, reuse_from: Path | None) -> Path:
    """`run_experiment` once the experiment is checked and `out` is locked."""
    write_bytes(out / "experiment.toml", source)
    if overrides:
        write_json(out / OVERRIDES_FILE, overrides)
    elif (out / OVERRIDES_FILE).exists():
        (out / OVERRIDES_FILE).unlink()
    if reuse_from is not None:
        adopt_runs(exp, out, reuse_from, progress)
    t_start = time.perf_counter()
    results = _run_all(exp, out, workers, backend, address, progress)
    tables = report.tabulate(exp, out, results)
    report.write_csv(out / "results.csv", tables.rows)
    # every metrics.json these results come from, by digest: a later run reuses only these files
    metrics_files = [out / "runs" / run_name(*r) / f"eval-{split}" / "metrics.json"
                     for r in exp.runs() for split in exp.splits]
    write_json(out / EVALUATIONS_FILE, {path_for(out, f): sha256_file(f) for f in metrics_files})
    figures, traces = report.draw_figures(exp, out, tables)
    verdicts = verdict_table(_evaluations(exp, out), exp.baseline, exp.margin)
    write_json(out / "verdicts.json", verdicts)
    pngs = [f.name for f in figures if f.suffix == ".png"]
    sections = report.sections(exp, out, tables, traces) + _stages(exp, out, progress) + _adopted_lines(out)
    reused = sum(1 for r in results.values() if r["reused"]["train"] or r["reused"]["suite"]
                 or r["reused"]["evals"])
    # every invocation's wall time, kept: a later one that reuses the runs adds its own
    # seconds rather than replacing the time the study took with the reuse's
    timing = _invocations(out) + [{"seconds": round(time.perf_counter() - t_start, 1), "reused": reused}]
    write_json(out / TIMING_FILE, {"invocations": timing})
    text = report.report_text(exp, _command(path, out, overrides), path.read_text(), tables.rows, pngs,
                              timing, verdicts, sections, reused)
    write_text(out / "report.md", text)
    return out / "report.md"


def _evaluations(exp: Experiment, out: Path) -> dict[tuple[str, str], dict[str, dict[int, Path]]]:
    """(condition, split) -> variant -> seed -> evaluation folder, where it has records."""
    def found(label, variant, split):
        dirs = {seed: out / "runs" / run_name(label, variant, seed) / f"eval-{split}" for seed in exp.seeds}
        return {seed: d for seed, d in dirs.items() if (d / "records.jsonl").is_file()}

    return {(label, split): {v: found(label, v, split) for v in exp.variants}
            for label in exp.labels for split in exp.splits}


def _stages(exp: Experiment, out: Path, progress: bool) -> list[str]:
    """The work after the runs, per condition: linear probes of every run ([probe]) and an RL
    stage of every run ([rl]); their report sections (their figures are written beside)."""
    several = len(exp.labels) > 1

    def runs(label):
        return {v: {seed: out / "runs" / run_name(label, v, seed) for seed in exp.seeds}
                for v in exp.variants}

    def title(label):
        return exp.name + (f" / {label}" if several else "")

    sections = []
    for label in exp.labels if exp.probe else ():  # one figure per condition and target
        sections += probe_study(exp.probe, runs(label), out, title=title(label), progress=progress,
                                name=f"probe-{label}" if several else "probe",
                                heading=f"Probes: {label}" if several else "Probes")[1]
    for label in exp.labels if exp.rl else ():  # before/after table and verdict (rl_study.py)
        sections += rl_study(exp.rl, runs(label), exp.baseline, out, title=title(label), progress=progress,
                             name=f"rl_passk-{label}" if several else "rl_passk")[1]
    return sections


def _command(path: Path, out: Path, overrides: list[str]) -> str:
    """The command that makes the study again (a shipped experiment by its name, not by where
    this install put it)."""
    source = path.stem if path.parent == SHIPPED_DIR else shlex.quote(str(path))
    return "retroplan run " + " ".join([source, "--out", shlex.quote(str(out))]
                                       + [f"--set {shlex.quote(o)}" for o in overrides])


def _invocations(out: Path) -> list[dict]:
    """The earlier invocations' wall times (timing.json; none when absent or unreadable)."""
    try:
        found = json.loads((out / TIMING_FILE).read_text())["invocations"]
        return [{"seconds": float(i["seconds"]), "reused": int(i["reused"])} for i in found]
    except (OSError, ValueError, KeyError, TypeError):
        return []
