"""Trace variants, vocabularies, the suite on disk and exports.

`GRAMMARS` maps a task name to the module that writes its traces and parses them back (a
`tasks.Grammar`; `digraphs` serves both directed-graph tasks). What each variant is (writes,
cites, stream or not, ...) is retroplan/variants.py's registry.
"""

from __future__ import annotations

from ..envs import get_task
from ..errors import require
from ..variants import VARIANT
from . import countdown, digraphs

GRAMMARS = {"pathstar": digraphs, "graph": digraphs, "countdown": countdown}

def chance_for(task, cfg, variant: str) -> float | None:
    """The task's chance accuracy where it means something for this variant, else None."""
    return task.chance(cfg) if VARIANT[components(variant)[0]].forward_first else None


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
        require(part in variants and VARIANT[part].mixable,
                f"mixture {variant!r}: {part!r} cannot be mixed; a mixture's components are "
                f"among {', '.join(v for v in variants if VARIANT[v].mixable)}.")
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
    text = VARIANT[parts[0]].writes if parts[0] in VARIANT else parts[0]
    others = [f"its own rows again behind [{p}]" if is_data_control(variant, j) else f"{p} rows"
              for j, p in enumerate(parts) if j > 0]
    control = " (a data control)" if any(is_data_control(variant, j) for j in range(len(parts))) else ""
    return text if len(parts) == 1 else f"{text}; trained with {' and '.join(others)} too{control}"
