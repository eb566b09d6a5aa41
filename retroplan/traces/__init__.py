"""Trace variants, vocabularies, the suite on disk and exports.

`GRAMMARS` maps a task name to the module that writes its traces and parses them back (a
`tasks.Grammar`; `digraphs` serves both directed-graph tasks).
"""

from __future__ import annotations

from ..envs import get_task
from ..errors import require
from . import countdown, digraphs
from .vocab import MIXABLE

GRAMMARS = {"pathstar": digraphs, "graph": digraphs, "countdown": countdown}

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
# The paper each variant follows (../shared/REFERENCES.md), as `retroplan inspect` prints it.
CITES = {
    "optimal": "optimal-trajectory training (OT), the baseline of Stream of Search (Gandhi et al. "
               "2024) and the forward model of Bachmann & Nagarajan (2024)",
    "reverse": "the reversed target of Bachmann & Nagarajan (2024), 'The pitfalls of next-token "
               "prediction': the path written goal to start",
    "revfwd": "backward then forward reasoning at test time (the backward plan, then the plan)",
    "stream": "Stream of Search (Gandhi et al. 2024): the search with its dead ends and backtracks, "
              "then the plan",
    "backward-stream": "a regression search from the goal (backward search stream), then the plan",
    "revthink": "RevThink (Chen et al. 2024): question -> answer; [bq] question alone -> "
                "backward question (what it adds to the question); [br] backward question -> "
                "backward reasoning; test: forward only",
    "lookahead": "TRELAWNEY (Thankaraj et al. 2025): a future span of the answer copied inside "
                 "<T> ... </T> at a random cut, mixed with plain rows",
    "corrupted": "swapped traces (Stechly et al. 2025, 'Beyond semantics'): another instance's "
                 "search, then this instance's right plan",
}

# Variants whose first written decision is the forward choice from the start: for them, and
# only for them, a task's chance level (e.g. 1/degree on path-star) is a meaningful baseline.
FORWARD_FIRST = ("optimal", "stream", "revthink", "lookahead", "corrupted")


def chance_for(task, cfg, variant: str) -> float | None:
    """The task's chance accuracy where it means something for this variant, else None."""
    return task.chance(cfg) if components(variant)[0] in FORWARD_FIRST else None


def get_grammar(task_name: str):
    get_task(task_name)
    return GRAMMARS[task_name]


def components(variant: str) -> list[str]:
    """A mixture `a+b+...` -> [a, b, ...] (its first component is what it is evaluated on);
    a plain variant -> [variant]."""
    return variant.split("+")


def check_variant(task_name: str, variant: str) -> None:
    variants = get_grammar(task_name).VARIANTS
    parts = components(variant)
    if len(parts) == 1:
        require(variant in variants,
                f"unknown variant {variant!r} for task {task_name}; allowed: {', '.join(variants)} "
                "(or a mixture such as optimal+reverse).")
        return
    for part in parts:
        require(part in variants and part in MIXABLE,
                f"mixture {variant!r}: {part!r} cannot be mixed; a mixture's components are "
                f"among {', '.join(v for v in MIXABLE if v in variants)}.")
    # the first component may come once more: `a+a` is the data control (a's rows again behind
    # `[a]`: as many rows and tokens as `a+b`, none of b's content)
    rest = parts[1:]
    require(len(set(rest)) == len(rest) and parts.count(parts[0]) <= 2,
            f"mixture {variant!r} names a component twice (only the first may come once more, "
            f"as in the data control {parts[0]}+{parts[0]}).")


def is_data_control(variant: str, part_index: int) -> bool:
    """Whether component `part_index` of the mixture `variant` repeats its first component (the
    data control's extra rows: the evaluated format again, behind its tag, no other content)."""
    parts = components(variant)
    return part_index > 0 and parts[part_index] == parts[0]


def writes(variant: str) -> str:
    """What a model trained on `variant` writes at test time (a mixture: its first component)."""
    parts = components(variant)
    text = WRITES.get(parts[0], parts[0])
    others = [f"its own rows again behind [{p}]" if is_data_control(variant, j) else f"{p} rows"
              for j, p in enumerate(parts) if j > 0]
    control = " (a data control)" if any(is_data_control(variant, j) for j in range(len(parts))) else ""
    return text if len(parts) == 1 else f"{text}; trained with {' and '.join(others)} too{control}"
