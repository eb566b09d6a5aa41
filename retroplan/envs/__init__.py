"""Planning tasks. Each module holds a task's config, Numba sampler, oracle, verifier and
Gymnasium env; `TASKS` maps the task names used everywhere (CLI, TOML, suites) to them."""

from __future__ import annotations

import numpy as np

from ..errors import UserError, plain, require
from . import countdown, graph, pathstar

TASKS = {pathstar.NAME: pathstar, graph.NAME: graph, countdown.NAME: countdown}


def get_task(name: str):
    require(name in TASKS, f"unknown task {name!r}; allowed: {', '.join(sorted(TASKS))}.")
    return TASKS[name]


def make_config(task_name: str, values: dict):
    """Build and validate a task config from a dict (TOML table, CLI flags, meta.json)."""
    task = get_task(task_name)
    fields = task.Config.__dataclass_fields__
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown {task_name} setting {unknown[0]!r}; allowed: {', '.join(fields)}.")
    cfg = task.Config(**plain(values))
    cfg.validate()
    return cfg


def out_of_bounds(instances: dict, bounds: dict, split: str) -> str | None:
    """The first value or shape of the instance arrays `instances` (one split's) outside the
    task's `instance_bounds(cfg)`, as words naming the file, the value and what is allowed
    (`goal 1000000 (instance 3) in test.inst.goal.npy, outside 0..9`); None when all fit.
    Vectorised: one pass over each array."""
    for key, (tail, lo, hi) in bounds.items():
        name = f"{split}.inst.{key}.npy"
        if key not in instances:
            return f"no {name}"
        a = instances[key]
        shape_ok = a.ndim == 1 + len(tail) and all(t is None or t == n for t, n in zip(tail, a.shape[1:]))
        if not shape_ok:
            allowed = ("one value per instance" if not tail else
                       f"({', '.join(['instances'] + ['any' if t is None else str(t) for t in tail])})")
            return f"{name} of shape {tuple(a.shape)}, where {allowed} is allowed"
        if a.size == 0:
            continue
        low, high = np.asarray(lo), np.asarray(hi)
        bad = (a < low) | (a > high)
        if bad.any():
            where = tuple(int(x) for x in np.argwhere(bad)[0])
            column = where[-1] if low.ndim or high.ndim else None
            allowed_lo = int(low[column]) if low.ndim else int(low)
            allowed_hi = int(high[column]) if high.ndim else int(high)
            return (f"{key} {int(a[where])} (instance {where[0]}) in {name}, outside "
                    f"{allowed_lo}..{allowed_hi}")
    return None


# The Gymnasium ids are registered by `import retroplan` (retroplan/__init__.py: ENV_ENTRY_POINTS).
