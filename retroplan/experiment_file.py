"""An experiment file read and checked whole: the `Experiment` every part of a study reads.

    name = "quick"
    task = "pathstar"
    variants = ["optimal", "reverse"]
    seeds = [0]
    [sizes]      train / val / test instances
    [[conditions]]  task configs (one table each; `label` names it; a `train` table in it:
                 train settings of that condition's runs, over [train] and by_variant)
    [options]    trace-writer options
    [train]      retroplan.train.TrainConfig fields ([train.by_variant.<variant>]: overrides)
    [eval]       retroplan.eval.EvalConfig fields (`splits`: several to evaluate)
    [study]      baseline, budget (what each variant's runs match of the baseline's), margin
    [probe]      linear probes of every run (probe.check_probe_section)
    [rl]         a GRPO stage of every run (rl_study.check_rl_section)

`load_experiment` reads the file one section at a time, each into typed values (TrainConfig,
EvalConfig, ...), and checks everything that can be checked before any work: types, names, the
devices asked for, the trace options, the splits a study needs. `--set KEY=VALUE` overrides are
applied to the parsed file first and are part of its identity; an --out folder keeps them in
overrides.json beside its experiment.toml.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .device import resolve_device
from .envs import get_task, make_config
from .errors import SEED_LIMIT, UserError, require
from .eval import EvalConfig
from .probe import check_probe_section
from .rl_study import RLStage, check_rl_section
from .study import MARGIN
from .traces import check_variant
from .traces.suite import SuiteSpec, shortest_prompt
from .train import MACHINE_SETTINGS, TrainConfig, resolve_precision

_TOP_KEYS = {"name", "description", "task", "variants", "seeds", "sizes", "conditions", "options",
             "train", "eval", "study", "probe", "rl"}
_STUDY_KEYS = {"baseline", "budget", "margin"}
# what a study may hold equal between each variant and its baseline -> the run's counter
BUDGETS = {"steps": "steps", "examples": "examples_seen", "forward_examples": "forward_examples",
           "tokens": "supervised_tokens"}
CONDITION_KEYS = ("label", "train")  # a condition's entries that are not task config
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


@dataclass(frozen=True)
class Condition:
    """One [[conditions]] table."""

    label: str    # names its folders inside --out
    config: dict  # the task config values (every entry but label and train)
    train: dict   # train settings of this condition's runs, over [train] and [train.by_variant]


@dataclass(frozen=True)
class Experiment:
    """A checked experiment file; the unit of work is one run: (condition label, variant, seed)."""

    name: str
    description: str | None
    task: str
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    conditions: tuple[Condition, ...]
    sizes: dict[str, int]                      # instances per split: the task's defaults, then [sizes]
    options: dict                              # [options]: trace-writer options
    baseline: str                              # [study] baseline: every other variant is compared with it
    budget: str                                # [study] budget: a key of BUDGETS
    margin: float                              # [study] margin
    train: dict[tuple[str, str], TrainConfig]  # (label, variant) -> its runs' settings (seed aside)
    eval: EvalConfig                           # [eval], for the first of `splits`
    splits: tuple[str, ...]                    # the splits every run is evaluated on
    probe: dict | None                         # [probe] settings (probe.check_probe_section)
    rl: RLStage | None                         # [rl]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.conditions)

    def condition(self, label: str) -> Condition:
        return self.conditions[self.labels.index(label)]

    def spec(self, condition: Condition, variant: str, seed: int) -> SuiteSpec:
        """The suite of one run."""
        return SuiteSpec(task=self.task, variant=variant, config=dict(condition.config),
                         options=dict(self.options), seed=seed, sizes=dict(self.sizes))

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (label, variant, seed) of the study, the baseline's first in each condition."""
        order = [self.baseline] + [v for v in self.variants if v != self.baseline]
        return [(label, variant, seed) for label in self.labels for variant in order for seed in self.seeds]


def run_name(label: str, variant: str, seed: int) -> str:
    """A run's folder name inside --out/runs (and its suite's inside --out/suites)."""
    return f"{label}-{variant}-s{seed}"


# --------------------------------------------------------------------------- the file and --set


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


# --------------------------------------------------------------------------- the sections


def load_experiment(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Parse and check an experiment file whole (with `--set KEY=VALUE` overrides applied); a
    shipped experiment may be named instead (`quick`)."""
    path = resolve_experiment(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise UserError(f"experiment file {path} is not valid TOML: {exc}.") from None
    raw = _parse_experiment(path, text, overrides)
    _check_top(path, raw)
    task = get_task(raw["task"])
    variants = _variants(path, raw)
    seeds = _seeds(path, raw)
    conditions = _conditions(path, raw)
    baseline, budget, margin = _study(path, raw.get("study", {}), variants)
    sizes = raw.get("sizes", {})
    for split in sizes:
        require(split in task.SPLITS, f"{path}: unknown split {split!r} in [sizes]; allowed: "
                f"{', '.join(task.SPLITS)}.")
    train, checked = _train(path, raw.get("train", {}), variants, conditions)
    eval_cfg, splits = _eval(path, raw.get("eval", {}), task)
    require(isinstance(raw.get("probe", {}), dict), f"{path}: probe must be a table ([probe]).")
    exp = Experiment(
        name=raw["name"], description=raw.get("description"), task=raw["task"], variants=variants,
        seeds=seeds, conditions=conditions, sizes={**task.DEFAULT_SIZES, **sizes},
        options=dict(raw.get("options", {})), baseline=baseline, budget=budget, margin=margin,
        train=train, eval=eval_cfg, splits=splits,
        probe=_section(path, check_probe_section, raw["probe"], raw["task"], list(variants))
        if "probe" in raw else None,
        # [rl]: a GRPO stage for every run after it is evaluated (rl_study.py)
        rl=_section(path, check_rl_section, raw["rl"]) if "rl" in raw else None)
    _check_devices(path, checked, eval_cfg)
    _check_work(path, exp, checked)
    return exp


def _check_top(path: Path, raw: dict) -> None:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}.")
    for key in ("name", "task", "variants"):
        require(key in raw, f"{path} needs a {key!r} entry.")
    for key in ("name", "description", "task"):
        require(key not in raw or isinstance(raw[key], str),
                f"{path}: {key} must be a string, got {raw.get(key)!r}.")
    for key in ("sizes", "options", "train", "eval", "study"):
        require(isinstance(raw.get(key, {}), dict), f"{path}: {key} must be a table ([{key}]).")


def _variants(path: Path, raw: dict) -> tuple[str, ...]:
    variants = raw["variants"]
    require(isinstance(variants, list) and variants and all(isinstance(v, str) for v in variants),
            f"{path}: variants must be a non-empty list of names.")
    for v in variants:
        check_variant(raw["task"], v)
    twice = [v for v in variants if variants.count(v) > 1]
    if twice:
        raise UserError(f"{path}: variants name {twice[0]!r} twice; each variant is one condition "
                        "(more runs of it are more seeds).")
    return tuple(variants)


def _seeds(path: Path, raw: dict) -> tuple[int, ...]:
    seeds = raw.get("seeds", [0])
    require(isinstance(seeds, list) and seeds and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEED_LIMIT for s in seeds),
            f"{path}: seeds must be a non-empty list of integers in [0, 2**63).")
    require(len(set(seeds)) == len(seeds), f"{path}: seeds repeat a value.")
    return tuple(seeds)


def _label(values: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(values.items())) or "default"


def _conditions(path: Path, raw: dict) -> tuple[Condition, ...]:
    tables = raw.get("conditions", [{}])
    require(isinstance(tables, list) and tables and all(isinstance(c, dict) for c in tables),
            f"{path}: conditions must be a list of tables ([[conditions]]).")
    conditions = []
    for c in tables:
        values = {k: v for k, v in c.items() if k not in CONDITION_KEYS}
        require(isinstance(c.get("train", {}), dict),
                f"{path}: a condition's train must be a table of train settings, got {c.get('train')!r}.")
        make_config(raw["task"], values)  # validates now, before any work
        label = c.get("label") or _label(values)
        require(isinstance(label, str) and _PLAIN_NAME.fullmatch(label) is not None,
                f"{path}: condition label {label!r} must be a plain name (letters, digits, - _ . =), "
                "because it names folders inside --out.")
        conditions.append(Condition(label=label, config=values, train=dict(c.get("train", {}))))
    labels = [c.label for c in conditions]
    require(len(set(labels)) == len(labels), f"{path}: two conditions have the same label.")
    return tuple(conditions)


def _study(path: Path, study: dict, variants: tuple[str, ...]) -> tuple[str, str, float]:
    """[study]: (baseline, budget, margin)."""
    bad = sorted(set(study) - _STUDY_KEYS)
    require(not bad, f"{path}: unknown study setting {bad[0] if bad else ''!r}; allowed: "
            f"{', '.join(sorted(_STUDY_KEYS))}.")
    for key in ("baseline", "budget"):
        require(isinstance(study.get(key, ""), str),
                f"{path}: study {key} must be a string, got {study.get(key)!r}.")
    baseline = study.get("baseline", "optimal" if "optimal" in variants else variants[0])
    require(baseline in variants, f"{path}: the study baseline {baseline!r} is not one of the "
            f"variants ({', '.join(variants)}).")
    budget = study.get("budget", "steps")
    require(budget in BUDGETS, f"{path}: study budget must be one of {', '.join(BUDGETS)}, got {budget!r}.")
    margin = study.get("margin", MARGIN)
    require(isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0 < margin < 1,
            f"{path}: study margin must be a number between 0 and 1 (an accuracy difference), "
            f"got {margin!r}.")
    return baseline, budget, float(margin)


def _train(path: Path, table: dict, variants: tuple[str, ...], conditions: tuple[Condition, ...]
           ) -> tuple[dict[tuple[str, str], TrainConfig], list[TrainConfig]]:
    """[train], [train.by_variant.<variant>] and each condition's own train table: the settings
    of every (label, variant)'s runs, and every config to check before any work ([train] alone,
    each variant's, each run's)."""
    table = dict(table)
    by_variant = table.pop("by_variant", {})
    require(isinstance(by_variant, dict) and all(isinstance(v, dict) for v in by_variant.values()),
            f"{path}: [train.by_variant.<variant>] must be tables of train settings.")
    for v in by_variant:
        require(v in variants, f"{path}: [train.by_variant.{v}] names no variant of this study "
                f"({', '.join(variants)}).")
    checked = [TrainConfig.from_dict(table)]
    checked += [TrainConfig.from_dict({**table, **by_variant.get(v, {})}) for v in variants]
    # per (condition, variant): [train], then [train.by_variant.<variant>], then the condition's
    # own `train` table (a training-only change as a condition, e.g. objective = "teacherless")
    train = {(c.label, v): TrainConfig.from_dict({**table, **by_variant.get(v, {}), **c.train})
             for c in conditions for v in variants}
    return train, checked + list(train.values())


def _eval(path: Path, table: dict, task) -> tuple[EvalConfig, tuple[str, ...]]:
    """[eval]: the evaluation settings and the splits to evaluate (`splits`, e.g. seen and
    held-out targets; default: its `split`)."""
    ev = dict(table)
    splits = ev.pop("splits", None)
    require(splits is None or "split" not in ev, f"{path}: give [eval] split or splits, not both.")
    bad = sorted(set(ev) - set(EvalConfig.__dataclass_fields__))
    if bad:
        raise UserError(f"{path}: unknown eval setting {bad[0]!r}; allowed: splits, "
                        f"{', '.join(EvalConfig.__dataclass_fields__)}.")
    cfg = EvalConfig(**ev)
    cfg.validate()
    splits = [cfg.split] if splits is None else splits
    require(isinstance(splits, list) and splits and all(isinstance(x, str) for x in splits)
            and len(set(splits)) == len(splits),
            f"{path}: [eval] splits must be a non-empty list of distinct split names.")
    for split in splits:
        require(split in task.SPLITS, f"{path}: unknown eval split {split!r}; "
                f"allowed: {', '.join(task.SPLITS)}.")
    return cfg, tuple(splits)


def _section(path: Path, check, *args):
    """A section's own check (`[probe]`, `[rl]`), its refusal prefixed with the file."""
    try:
        return check(*args)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _check_devices(path: Path, train: list[TrainConfig], eval_cfg: EvalConfig) -> None:
    """The devices asked for must exist here: found now, not after the first suite is generated."""
    try:
        for cfg in train:
            resolve_precision(cfg, resolve_device(cfg.device))
        resolve_device(eval_cfg.device)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _check_work(path: Path, exp: Experiment, train: list[TrainConfig]) -> None:
    """The trace options (SuiteSpec.resolve) and the splits the study needs, before any work."""
    for c in exp.conditions:
        for v in exp.variants:
            exp.spec(c, v, exp.seeds[0]).resolve()
    # a split the study needs must have rows (the sizes are checked integers by now): found
    # now, not after the first run is trained
    for split in exp.splits:
        require(exp.sizes.get(split, 0) > 0, f"{path}: [eval] evaluates split {split}, and "
                f"[sizes] {split} is {exp.sizes.get(split, 0)}; give it at least one instance.")
    for cfg in train:
        for key in ("eval_every", "curve_every"):
            require(not getattr(cfg, key) or exp.sizes.get("val", 0) > 0,
                    f"{path}: train {key} needs rows in a val split, and [sizes] val is "
                    f"{exp.sizes.get('val', 0)}; set {key} to 0 or val to at least 1.")


def check_context(path: Path, exp: Experiment) -> None:
    """A [train] context (0: the suite's longest row) must exceed the prompts of every run,
    measured on a few instances written in memory: found before any suite is written (later,
    every row would be dropped, or no prompt could be evaluated). Apart from `load_experiment`
    because it writes examples: `retroplan run` checks it once, not every piece."""
    for (label, v), cfg in exp.train.items():
        if not cfg.context:
            continue
        shortest = shortest_prompt(exp.spec(exp.condition(label), v, exp.seeds[0]))
        require(cfg.context > shortest,
                f"{path}: train context {cfg.context} is too short for condition {label!r}, "
                f"variant {v}: its prompts are {shortest} tokens or longer, and the model must read "
                "a prompt and write after it; raise context, or give 0 (the suite's longest row).")


# --------------------------------------------------------------------------- identity in --out


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


def same_experiment(old: bytes, old_overrides: list[str], new: bytes, new_overrides: list[str]) -> bool:
    """Whether two experiment files (with their --set lists) differ only in `NO_RESULT_KEYS`."""
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


def stored_experiment(out: Path) -> Experiment:
    """The experiment a study folder holds (its experiment.toml with its --set list): what a
    piece run in another process reads, so only names cross the process boundary."""
    return load_experiment(out / "experiment.toml", stored_overrides(out))
