"""Trace variants, vocabularies, the suite on disk and exports.

`GRAMMARS` maps a task name to the module that writes its traces and parses them back.
"""

from __future__ import annotations

from ..envs import get_task
from ..errors import require
from . import countdown, graphs

GRAMMARS = {"pathstar": graphs, "graph": graphs, "countdown": countdown}

# What a model trained on each variant writes at test time (the same for every task). Reports
# print it next to every accuracy: only some variants plan forward when they are evaluated.
WRITES = {
    "optimal": "forward plan",
    "reverse": "backward plan (goal to start)",
    "revfwd": "backward plan, then forward plan",
    "stream": "forward search, then forward plan",
    "backward-stream": "backward search from the goal, then forward plan",
    "revthink": "forward plan (backward objectives only in training)",
    "lookahead": "forward plan (<T> spans in training)",
    "corrupted": "another instance's search, then forward plan",
}
# Variants whose first written decision is the forward choice from the start: for them, and
# only for them, a task's chance level (e.g. 1/degree on path-star) is a meaningful baseline.
FORWARD_FIRST = ("optimal", "stream", "revthink", "lookahead", "corrupted")


def chance_for(task, cfg, variant: str) -> float | None:
    """The task's chance accuracy where it means something for this variant, else None."""
    return task.chance(cfg) if variant in FORWARD_FIRST else None


def get_grammar(task_name: str):
    get_task(task_name)
    return GRAMMARS[task_name]


def check_variant(task_name: str, variant: str) -> None:
    variants = get_grammar(task_name).VARIANTS
    require(variant in variants,
            f"unknown variant {variant!r} for task {task_name}; allowed: {', '.join(variants)}.")
