"""Planning tasks. Each module holds a task's config, Numba sampler, oracle, verifier and
Gymnasium env; `TASKS` maps the task names used everywhere (CLI, TOML, suites) to them."""

from __future__ import annotations

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


# The Gymnasium ids are registered by `import retroplan` (retroplan/__init__.py: ENV_ENTRY_POINTS).
