"""`retroplan.score(task_or_suite, entry, text)`: judge one model answer for one dataset row, as
`retroplan eval` judges it, for code that scores answers one at a time (a reasoning-gym style
`score_answer`, a TRL reward function, a notebook).

    import retroplan
    verdict = retroplan.score("suites/cd-stream", row, text)   # or the export folder, or "countdown"
    verdict["correct"], verdict["reason"], verdict["first_step"], verdict["optimal"]

The judge is eval's own (`eval.judge` through `eval_hf.judge_text`): the text is cut at its
first newline and after its first `<eos>` word, read word by word through the suite's vocabulary,
parsed by the task's grammar (never evaluated as code) and the plan replayed in the task's
environment. So `text` is the completion as the model wrote it, in the suite's words (what
`retroplan inspect` prints after the prompt), `<eos>` included: decode with
`skip_special_tokens=False`; a text without `<eos>` is an unfinished answer, as in eval.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import UserError, require

EXPORT_CARD = "README.md"
VERDICT = ("correct", "reason", "first_step", "optimal", "plan", "parse_error")  # what score returns


class Judge:
    """What `eval.judge` reads from a suite (task, config, grammar, evaluated variant,
    vocabulary), for a source that is not a suite on disk: an export folder or a task name."""

    def __init__(self, task_name: str, config: dict, variant: str):
        from .envs import get_task, make_config
        from .traces import components, get_grammar

        self.task = get_task(task_name)
        self.config = make_config(task_name, config)
        self.grammar = get_grammar(task_name)
        self.name = variant
        self.variant = components(variant)[0]
        require(self.variant in self.grammar.VARIANTS,
                f"unknown {task_name} variant {self.variant!r}; allowed: {', '.join(self.grammar.VARIANTS)}.")
        self.vocab = self.grammar.make_vocab(self.config)
        self.meta = {"task": task_name}


def judge_of(task_or_suite, variant: str | None = None):
    """A suite (or what judges like one) from: a `Suite`; a suite folder (meta.json); an export
    folder (its card's `retroplan:` provenance: task, variant, config); or a task name (its
    default config, `variant` or `optimal`)."""
    from .envs import TASKS
    from .traces.suite import Suite, open_suite

    if isinstance(task_or_suite, Suite | Judge):
        return task_or_suite
    if isinstance(task_or_suite, str) and task_or_suite in TASKS:
        return Judge(task_or_suite, {}, variant or "optimal")
    require(isinstance(task_or_suite, str | os.PathLike),
            f"score needs a task name ({', '.join(sorted(TASKS))}), a suite or an export folder, "
            f"got {type(task_or_suite).__name__}.")
    path = Path(task_or_suite)
    if (path / "meta.json").is_file():
        return open_suite(path)
    require((path / EXPORT_CARD).is_file(),
            f"{str(task_or_suite)!r} is neither a task ({', '.join(sorted(TASKS))}), nor a suite "
            "folder (meta.json), nor an export folder (README.md).")
    from huggingface_hub import DatasetCard

    provenance = DatasetCard.load(path / EXPORT_CARD).data.to_dict().get("retroplan")
    require(isinstance(provenance, dict) and {"task", "variant", "config"} <= set(provenance),
            f"{path / EXPORT_CARD} is not a retroplan export's dataset card (no `retroplan:` section).")
    return Judge(provenance["task"], provenance["config"], variant or provenance["variant"])


def _field(entry: dict, key: str, what: str):
    require(key in entry, f"the entry has no {key!r} field; a {what} row needs "
                          f"{'numbers and target' if what == 'countdown' else 'edges, start and goal'}.")
    return entry[key]


def instances_of(judge, entry: dict) -> dict:
    """The entry's instance as the one-instance batch the task's judge reads."""
    if judge.meta["task"] == "countdown":
        numbers = np.asarray([_field(entry, "numbers", "countdown")], dtype=np.int64)
        target = np.asarray([_field(entry, "target", "countdown")], dtype=np.int64)
        n = judge.config.n_inputs
        require(numbers.shape == (1, n),
                f"the entry has {numbers.shape[-1]} numbers, and this countdown config {n} inputs.")
        # the reference plan is not part of the verdict (the replay needs numbers and target)
        return {"numbers": numbers, "target": target, "plan": np.zeros((1, n - 1, 4), dtype=np.int64)}
    from .envs import digraph

    require(judge.task.assess is digraph.assess,
            f"score knows the countdown and directed-graph tasks, not {judge.meta['task']}.")
    edges = np.asarray([_field(entry, "edges", "graph")], dtype=np.int32)
    require(edges.ndim == 3 and edges.shape[2] == 2, "the entry's edges must be a list of [u, v] pairs.")
    start = int(_field(entry, "start", "graph"))
    goal = int(_field(entry, "goal", "graph"))
    plan = [int(v) for v in entry.get("plan") or [start]]
    nodes = judge.config.num_nodes  # the kernels index by node: an id outside the config is refused
    require(all(0 <= v < nodes for v in [start, goal, *edges.ravel().tolist(), *plan]),
            f"the entry names a node outside 0..{nodes - 1}, the nodes of this {judge.meta['task']} "
            "config; score it with the suite or export folder it came from.")
    return {"edges": edges, "start": np.asarray([start], np.int32), "goal": np.asarray([goal], np.int32),
            "plan": np.asarray([plan], np.int32), "plan_len": np.asarray([len(plan)], np.int32)}


def score(task_or_suite, entry: dict, text: str, variant: str | None = None) -> dict:
    """Judge the model's `text` for the dataset row `entry` exactly as `retroplan eval` does.

    `task_or_suite`: a suite folder or `Suite`, an export folder (`retroplan export`), or a
    task name (`countdown`, `pathstar`, `graph`: its default config, trace variant `variant` or
    `optimal`); it gives the config, the trace variant the text is written in and the vocabulary.
    `entry`: a row as `retroplan export` writes it (or any dict with the task's instance fields:
    countdown `numbers`, `target`; graph tasks `edges`, `start`, `goal`). `text`: the completion
    in the suite's words, `<eos>` included (see the module docstring).

    Returns {"correct", "reason", "first_step", "optimal", "plan", "parse_error"}: `correct` the
    replayed plan reaches the target (goal) by legal moves, every input used once; `reason` why
    or why not, in one phrase; `first_step` the first move is legal and keeps the target
    reachable (Countdown) / lies on a shortest path (graphs); `optimal` a correct plan of the
    fewest moves; `plan` the parsed plan (None when none could be read) and `parse_error` why
    not. docs/METRICS.md defines each as eval counts it.
    """
    from .eval_hf import judge_text

    require(isinstance(entry, dict),
            f"score's entry must be a dict (a dataset row), got {type(entry).__name__}.")
    require(isinstance(text, str), f"score's text must be a string, got {type(text).__name__}.")
    judge = judge_of(task_or_suite, variant)
    try:
        instances = instances_of(judge, entry)
    except (TypeError, ValueError) as exc:
        raise UserError(f"the entry's instance fields cannot be read ({exc}).") from None
    verdict = judge_text(judge, instances, 0, text)
    return {key: verdict[key] for key in VERDICT}
