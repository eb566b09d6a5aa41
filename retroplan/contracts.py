"""The contracts between the pipeline and its tasks, as code.

A task is two modules: `envs/<task>.py` (registered in `envs.TASKS`) satisfies `Task`, and the
grammar that writes its traces, `traces/<grammar>.py` (registered in `traces.GRAMMARS`),
satisfies `Grammar`. A grammar may ask more of its tasks than `Task`: the type of its
`write_examples`'s `task` parameter says what (`traces/digraphs.py` takes a `DigraphTask`).
Modules satisfy these Protocols structurally (PEP 544: a module's functions are a protocol's
methods without `self`); nothing inherits from them.

Every member is required: the pipeline reads each one with plain attribute access, never with
`getattr(module, name, default)`. A member with nothing to say for a task still exists and says
so (`describe` -> [], `split_summary` -> None, `variant_note` -> None, `searcher_of` -> None).

This module only states the contracts, and imports nothing of retroplan, so the grammars can name
them; `tasks.py` checks a module against them (tests/test_contracts.py runs it on every task).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

REQUIRED_SPLITS = ("train", "val", "test")  # train trains, val draws the curve, test is eval's default


class Settings(Protocol):
    """A task's `Config` or a grammar's `Options`: a frozen dataclass whose fields default to an
    int, float, str or bool (the CLI makes a flag of each, meta.json stores them)."""

    def validate(self) -> None:
        """Raise `UserError` (one sentence) unless the settings are usable."""

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict; `type(self)(**to_dict())` is the same settings."""


class StateWalk(Protocol):
    """What the behaviour metrics judge a stream with on one instance (`metrics.py`), built as
    `task.Walk(cfg, instances, i, backward=False)`. States are the task's (graph nodes, number
    multisets, ...); a backward walk starts at the goal and moves towards the start."""

    root: Any  # the state a stream starts in

    def go(self, current, payload) -> tuple[Any, str | None]:
        """(the state a move claims to reach, why the move is illegal or None)."""

    def back_target(self, payload) -> Any:
        """The state a `back` / `at` payload names (None: not a state)."""

    def successors(self, state) -> list:
        """The states one legal move reaches from `state`."""

    def live(self, state) -> bool:
        """R(state): the walk's target can still be reached from it."""

    def distance(self, state) -> int:
        """d*(state): moves on a shortest way from it to the target."""

    def is_goal(self, state) -> bool:
        """Whether `state` is the walk's target."""


class Tracker(Protocol):
    """A grammar's `StreamTracker(walk)`: follows a stream token by token while a model writes it,
    for the thought-switch penalty (`decoding.TIPPenalty`)."""

    switch_tokens: tuple  # token ids that begin a thought switch (a class attribute)

    def feed(self, token: int) -> None:
        """Take the next written token."""

    def should_penalise(self, beta: int, oracle: bool) -> bool:
        """TIP's condition at this point of the stream."""


class Task(Protocol):
    """What every task module (`envs/<task>.py`) provides. Its docstring's first line is the
    `retroplan generate <task>` help."""

    NAME: str                       # the task name used everywhere (CLI, TOML, suites)
    ENV_ID: str                     # Gymnasium id, listed in retroplan.ENV_ENTRY_POINTS -> make_env
    SPLITS: tuple[str, ...]         # the splits it supports, train, val and test among them
    DEFAULT_SIZES: dict[str, int]   # instances per split when none are given
    Config: type[Settings]
    Walk: type[StateWalk]
    Env: type                       # a gymnasium.Env passing check_env, with envs/rl.py's RL options

    def sample_instances(self, cfg, seed: int, split: str, indices: np.ndarray,
                         salts: np.ndarray | None = None, serial: bool = False) -> dict[str, np.ndarray]:
        """Instances `indices` of (seed, split) as a dict of arrays with a leading instance axis;
        instance i is a function of (seed, split, index, salt) alone (not of the batch).
        `serial`: the same instances drawn on the calling thread, no parallel kernel (the
        Gymnasium env's path, so a process that used an env can still fork)."""

    def fingerprints(self, batch: dict) -> np.ndarray:
        """uint64 per instance, equal for equal instances (keeps held-out splits out of train)."""

    def instance_at(self, batch: dict, i: int) -> dict:
        """Instance i as plain (JSON-able) Python values: export rows, the verifier."""

    def difficulty(self, cfg, batch: dict) -> dict[str, np.ndarray]:
        """Per-instance difficulty arrays (eval breakdowns, exports)."""

    def replay_plan(self, instance: dict, plan) -> tuple[bool, str]:
        """(ok, reason), in plain Python: the judge of every number reported."""

    def assess(self, cfg, instances: dict, i: int, plan) -> dict:
        """Every verdict eval reports on one plan: correct, reason, first_step, optimal,
        optimal_moves (d*(start), whatever the plan)."""

    def chance(self, cfg) -> float | None:
        """A chance accuracy of a forward-first variant, or None where none means anything."""

    def describe(self, cfg) -> list[str]:
        """Lines `retroplan inspect` prints about the config ([]: nothing to add)."""

    def split_summary(self, cfg, instances: dict) -> str | None:
        """A line `retroplan inspect` prints about a split's instances (None: nothing to add)."""

    def instance_bounds(self, cfg) -> dict[str, tuple[tuple, Any, Any]]:
        """Per instance array of a split: (its shape after the instance axis, None where any
        length is allowed; the lowest and the highest value allowed, one number or one per
        column of the last axis). Opening a split checks every value against them, so a value
        a reader indexes with is in range even when all checksums were recomputed."""

    def state_label(self, state) -> str:
        """How search-tree pictures (`retroplan show-trace`) write a state."""

    def make_env(self, **kwargs) -> Any:
        """The registered Gymnasium entry point: `Env(**kwargs)` in a `TimeLimit`."""

    def max_episode_steps(self, cfg) -> int:
        """The env's default step limit."""


class DigraphTask(Task, Protocol):
    """A directed-graph task (`pathstar`, `graph`): what `traces/digraphs.py`,
    `searchers/digraph_search.py` and `envs/digraph.DigraphEnv` also need."""

    BACKWARD_CHAIN: bool  # every node but one has one predecessor: backward variants need no search

    def num_edges(self, cfg) -> int:
        """Edges per instance (the prompt's and the env observation's shape)."""

    def depth_limit(self, cfg) -> int:
        """How deep the DFS searchers may go: the longest plan the config allows."""


class Grammar(Protocol):
    """What every grammar module (`traces/<grammar>.py`) provides: it writes a task's trace
    variants as token rows and parses a model's tokens back into a plan and search events."""

    VARIANTS: tuple[str, ...]         # the variants it writes (names shared across tasks)
    STREAM_VARIANTS: tuple[str, ...]  # those whose completion is a search stream, then a plan
    Options: type[Settings]           # the writer's knobs
    StreamTracker: type[Tracker]

    def make_vocab(self, cfg) -> Any:
        """The one `Vocab` of this config, for every variant and mixture."""

    def no_loss_tokens(self, vocab) -> list[int]:
        """Target ids that carry no loss."""

    def write_examples(self, task: Task, cfg, options, variant: str, seed: int, split: str,
                       indices: np.ndarray, batch: dict) -> dict[str, np.ndarray]:
        """Rows of the instances `batch` (instances `indices` of `split`): tokens (flat),
        lengths, prompt_len, instance (row -> position in batch), kind."""

    def parse(self, variant: str, ids, vocab) -> Any:
        """A completion (the tokens after the prompt) as `traces.common.Parsed`; never raises."""

    def stream_plan(self, parsed) -> list | None:
        """The plan a parsed stream itself reached, or None (faithfulness)."""

    def deciding_index(self, variant: str, completion, vocab) -> int | None:
        """The completion index of the deciding token (the first one the prompt and the
        grammar do not fix; eval's `tf_deciding_token_accuracy`), or None where there is none."""

    def eval_prefix(self, variant: str, mode: str, instances: dict, i: int, vocab) -> list[int]:
        """The tokens eval forces after instance i's prompt in lookahead `mode` ([] for plain)."""

    def variant_note(self, task_name: str, variant: str) -> str | None:
        """What a report says next to this variant on this task, or None."""

    def searcher_of(self, suite, split: str, index: int) -> str | None:
        """The search behind a row, for exports (None: exports name none). Reads the suite's
        `variant`, `options` and `meta["seed"]`."""
