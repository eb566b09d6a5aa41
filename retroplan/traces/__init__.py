"""Trace variants, vocabularies, the suite on disk and exports.

`GRAMMARS` maps a task name to the module that writes its traces and parses them back.
"""

from __future__ import annotations

from ..envs import get_task
from ..errors import require
from . import countdown, graphs

GRAMMARS = {"pathstar": graphs, "graph": graphs, "countdown": countdown}


def get_grammar(task_name: str):
    get_task(task_name)
    return GRAMMARS[task_name]


def check_variant(task_name: str, variant: str) -> None:
    variants = get_grammar(task_name).VARIANTS
    require(variant in variants,
            f"unknown variant {variant!r} for task {task_name}; allowed: {', '.join(variants)}.")
