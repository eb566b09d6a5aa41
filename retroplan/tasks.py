"""Checks that a task and its grammar keep their contracts (`contracts.py`: `Task`,
`DigraphTask`, `Grammar`), as Gymnasium's `check_env` checks an env.

`check_task(task)` and `check_grammar(grammar, task)` check a module against its Protocol (every
member present, of the right kind, callable with the Protocol's arguments) and exercise it on a
few sampled instances; a broken contract raises `ContractError` with a sentence that names the
module, the member and what is wrong. tests/test_contracts.py runs both over every registered
task; nothing in the pipeline imports this module.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from typing import Any, Protocol

import numpy as np

from . import ENV_ENTRY_POINTS
from .contracts import REQUIRED_SPLITS, Grammar, StateWalk, Task
from .variants import VARIANT


class ContractError(Exception):
    """A module breaks its contract; the message says which module, which member and how."""


_CORRUPTIONS = ("the empty plan", "the plan without its last step", "the plan with its last step twice")


def _fail(message: str) -> typing.NoReturn:
    raise ContractError(message)


def _protocol_members(proto: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data member -> annotation, method -> the Protocol's function) of `proto` and its bases."""
    data = typing.get_type_hints(proto)
    methods: dict[str, Any] = {}
    for klass in reversed(proto.__mro__):
        if klass is Protocol or not getattr(klass, "_is_protocol", False):
            continue
        methods.update({name: fn for name, fn in vars(klass).items()
                        if inspect.isfunction(fn) and not name.startswith("_")})
    return data, methods


def _kind_problem(value, hint) -> str | None:
    """Why `value` is not of the kind the annotation `hint` names (None: it is)."""
    origin = typing.get_origin(hint) or hint
    if origin is type:
        return None if inspect.isclass(value) else f"must be a class, got {type(value).__name__}"
    if origin in (str, bool, int, tuple, dict):
        if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
            return f"must be a {origin.__name__}, got {type(value).__name__} {value!r}"
        args = typing.get_args(hint)
        if origin is tuple and args and not all(isinstance(v, args[0]) for v in value):
            return f"must hold {args[0].__name__}s only, got {value!r}"
        if origin is dict and args and not all(isinstance(k, args[0]) and isinstance(v, args[1])
                                               for k, v in value.items()):
            return f"must map {args[0].__name__} to {args[1].__name__}, got {value!r}"
    return None


def _signature_problem(fn, spec) -> str | None:
    """Why `fn` cannot be called as the Protocol method `spec` is (None: it can): it must take
    every argument the Protocol passes, and need no other."""
    try:
        have = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # a builtin or a Numba dispatcher: nothing to read
    params = list(inspect.signature(spec).parameters.values())[1:]  # without self
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    args = [p.name for p in params if p.kind not in kinds]
    needed = [p.name for p in params if p.kind not in kinds and p.default is inspect.Parameter.empty]
    for names in (args, needed):
        try:
            have.bind(*names)
        except TypeError as exc:
            return f"cannot be called as {spec.__name__}({', '.join(args)}): {exc}"
    return None


def check_members(module, proto: type, what: str) -> None:
    """Every member of `proto` exists in `module` with the right kind; one ContractError naming
    every problem otherwise."""
    data, methods = _protocol_members(proto)
    problems = []
    for name, hint in data.items():
        if not hasattr(module, name):
            problems.append(f"missing {name} ({proto.__name__}.{name})")
        elif (why := _kind_problem(getattr(module, name), hint)) is not None:
            problems.append(f"{name} {why}")
    for name, spec in methods.items():
        if not hasattr(module, name):
            doc = (inspect.getdoc(spec) or "").split("\n")[0]
            problems.append(f"missing {name} ({proto.__name__}.{name}: {doc})")
        elif not callable(getattr(module, name)):
            problems.append(f"{name} must be a function, got {type(getattr(module, name)).__name__}")
        elif (why := _signature_problem(getattr(module, name), spec)) is not None:
            problems.append(f"{name} {why}")
    if problems:
        _fail(f"{what} breaks the {proto.__name__} contract: " + "; ".join(problems) + ".")


def _check_settings(cls, what: str):
    """A frozen dataclass of int/float/str/bool fields whose default instance validates and
    survives to_dict; returns that instance."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
        _fail(f"{what} must be a frozen dataclass.")
    for f in dataclasses.fields(cls):
        if type(f.default) not in (int, float, str, bool):
            _fail(f"{what}.{f.name} must default to an int, float, str or bool (the CLI makes a flag of "
                  f"it), got {f.default!r}.")
    value = cls()
    try:
        value.validate()
    except Exception as exc:
        _fail(f"{what}() does not validate its own defaults: {exc}")
    as_dict = value.to_dict()
    if as_dict != dataclasses.asdict(value) or cls(**json.loads(json.dumps(as_dict))) != value:
        _fail(f"{what}.to_dict() must give every field, JSON-able, so that {what}(**d) is the same; "
              f"got {as_dict!r}.")
    return value


def _same_batch(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _rows(batch: dict, rows) -> dict:
    return {k: v[rows] for k, v in batch.items()}


def reference_plans(task, grammar, cfg, seed: int, split: str, indices: np.ndarray, batch: dict,
                    vocab=None) -> list:
    """The reference plan of every instance of `batch`: what the grammar's `optimal` rows answer."""
    vocab = grammar.make_vocab(cfg) if vocab is None else vocab
    ex = grammar.write_examples(task, cfg, grammar.Options(), "optimal", seed, split, indices, batch)
    plans = []
    for r, (start, end, prompt) in enumerate(_row_spans(ex)):
        parsed = _parse(grammar, "optimal", ex["tokens"][start + prompt:end].tolist(), vocab,
                        f"grammar {grammar.__name__}, variant optimal")
        if parsed.error is not None or parsed.plan is None:
            _fail(f"grammar {grammar.__name__}: the optimal row of instance {r} does not parse back: "
                  f"{parsed.error}.")
        plans.append(parsed.plan)
    return plans


def _parse(grammar, variant: str, ids, vocab, what: str):
    """`grammar.parse`, which must never raise."""
    try:
        return grammar.parse(variant, ids, vocab)
    except Exception as exc:
        _fail(f"{what}: parse must never raise; on {len(ids)} tokens it raised {exc!r}.")


def _row_spans(ex: dict) -> list[tuple[int, int, int]]:
    """(start, end, prompt length) of every row of a write_examples result."""
    ends = np.cumsum(ex["lengths"])
    return [(int(e - n), int(e), int(p)) for e, n, p in zip(ends, ex["lengths"], ex["prompt_len"])]


def _descend(walk, what: str) -> int:
    """Moves from the walk's root to its goal, each to a live successor one move nearer: the walk's
    successors, live, distance and is_goal must agree."""
    state, moves, far = walk.root, 0, walk.distance(walk.root)
    while not walk.is_goal(state):
        d = walk.distance(state)
        nearer = [s for s in walk.successors(state) if walk.live(s) and walk.distance(s) == d - 1]
        if not nearer or moves >= far:
            _fail(f"{what}: from state {state!r} (distance {d}, {moves} moves from the root) no live "
                  "successor is one move nearer the goal: Walk.successors, live, distance and is_goal "
                  "disagree.")
        state, moves = nearer[0], moves + 1
    return moves


def check_task(task, grammar=None, *, seed: int = 0, count: int = 4) -> None:
    """Check a task module against `Task` and exercise it on `count` instances of each of train
    and test: sampling is deterministic per (seed, split, index) and does not depend on the batch
    (fingerprints, instance_at and difficulty neither), the reference plan of every instance
    replays as correct and optimal while corrupted plans do not, `Walk` agrees with the plan's
    length both ways, and the env resets. `grammar` (default: the registered one) supplies the
    reference plans (its `optimal` rows). Raises ContractError."""
    check_members(task, Task, f"task module {getattr(task, '__name__', task)}")
    name = task.NAME
    what = f"task {name}"
    if not (task.__doc__ or "").strip():
        _fail(f"{what}: the module needs a docstring (its first line is the `generate {name}` help).")
    if ENV_ENTRY_POINTS.get(task.ENV_ID) != f"{task.__name__}:make_env":
        _fail(f"{what}: retroplan.ENV_ENTRY_POINTS must map ENV_ID {task.ENV_ID!r} to "
              f"'{task.__name__}:make_env', got {ENV_ENTRY_POINTS.get(task.ENV_ID)!r}.")
    missing = [s for s in REQUIRED_SPLITS if s not in task.SPLITS]
    if missing or len(set(task.SPLITS)) != len(task.SPLITS):
        _fail(f"{what}: SPLITS must name {', '.join(REQUIRED_SPLITS)} once each, got {task.SPLITS!r}.")
    if set(task.DEFAULT_SIZES) != set(task.SPLITS) or min(task.DEFAULT_SIZES.values()) < 0:
        _fail(f"{what}: DEFAULT_SIZES must give a size >= 0 for every split of SPLITS, got "
              f"{task.DEFAULT_SIZES!r}.")
    cfg = _check_settings(task.Config, f"{what}: Config")
    if grammar is None:
        from .traces import get_grammar

        grammar = get_grammar(name)
    check_members(task, task_contract(grammar), f"task module {task.__name__} (written by grammar "
                  f"{grammar.__name__})")
    chance = task.chance(cfg)
    if chance is not None and not 0 < chance <= 1:
        _fail(f"{what}: chance(cfg) must be None or in (0, 1], got {chance!r}.")
    lines = task.describe(cfg)
    if not (isinstance(lines, list) and all(isinstance(x, str) for x in lines)):
        _fail(f"{what}: describe(cfg) must return a list of str, got {lines!r}.")
    empty = task.sample_instances(cfg, seed, "train", np.zeros(0, dtype=np.int64))
    if any(v.shape[0] != 0 for v in empty.values()):
        _fail(f"{what}: sample_instances of no indices must return arrays of 0 instances.")
    for split in ("train", "test"):
        _check_sampling(task, cfg, seed, split, count, f"{what} ({split})")
    _check_plans(task, grammar, cfg, seed, "test", count, f"{what} (test)")
    _check_env(task, cfg, seed, what)


def _check_sampling(task, cfg, seed: int, split: str, count: int, what: str) -> None:
    indices = np.arange(count, dtype=np.int64)
    batch = task.sample_instances(cfg, seed, split, indices)
    if not isinstance(batch, dict) or not batch:
        _fail(f"{what}: sample_instances must return a dict of arrays, got {type(batch).__name__}.")
    for key, value in batch.items():
        if not isinstance(value, np.ndarray) or value.shape[:1] != (count,):
            _fail(f"{what}: sample_instances' {key!r} must be an array with a leading axis of {count} "
                  f"instances, got {getattr(value, 'shape', value)!r}.")
    if not _same_batch(batch, task.sample_instances(cfg, seed, split, indices)):
        _fail(f"{what}: sample_instances is not deterministic: the same (seed, split, indices) gave "
              "other instances.")
    if not _same_batch(batch, task.sample_instances(cfg, seed, split, indices,
                                                    np.zeros(count, dtype=np.int64))):
        _fail(f"{what}: sample_instances with salts of 0 must equal sample_instances without salts.")
    if not _same_batch(batch, task.sample_instances(cfg, seed, split, indices, serial=True)):
        _fail(f"{what}: sample_instances(serial=True) (the env's draws) must equal the parallel draws.")
    picked = [count - 1, 1]
    part = task.sample_instances(cfg, seed, split, indices[picked])
    if not _same_batch(part, _rows(batch, picked)):
        _fail(f"{what}: sample_instances depends on the batch: instances {picked} drawn on their own "
              f"differ from the same instances drawn among 0..{count - 1}.")
    _check_instance_readers(task, cfg, split, count, batch, part, picked, what)


def _check_instance_readers(task, cfg, split: str, count: int, batch: dict, part: dict,
                            picked: list[int], what: str) -> None:
    """fingerprints, instance_at, difficulty, instance_bounds and split_summary of the `count`
    instances `batch` (`part`: those of `picked`, drawn on their own)."""
    fp = task.fingerprints(batch)
    if not (isinstance(fp, np.ndarray) and fp.dtype == np.uint64 and fp.shape == (count,)):
        _fail(f"{what}: fingerprints must return uint64 ({count},), got "
              f"{getattr(fp, 'dtype', type(fp).__name__)} {getattr(fp, 'shape', '')}.")
    if not np.array_equal(task.fingerprints(part), fp[picked]):
        _fail(f"{what}: fingerprints of the same instances differ between batches.")
    for k, i in enumerate(picked):
        inst = task.instance_at(batch, i)
        try:
            json.dumps(inst)
        except TypeError as exc:
            _fail(f"{what}: instance_at must return plain JSON-able values: {exc}.")
        if task.instance_at(part, k) != inst:
            _fail(f"{what}: instance_at of the same instance differs between batches.")
    diff = task.difficulty(cfg, batch)
    if not isinstance(diff, dict) or any(np.shape(v)[:1] != (count,) for v in diff.values()):
        _fail(f"{what}: difficulty must return a dict of arrays of {count} values, got {diff!r}.")
    if not _same_batch(task.difficulty(cfg, part), _rows(diff, picked)):
        _fail(f"{what}: difficulty of the same instances differs between batches.")
    from .envs import out_of_bounds

    problem = out_of_bounds(batch, task.instance_bounds(cfg), split)
    if problem is not None:
        _fail(f"{what}: instance_bounds refuses what sample_instances draws: {problem}.")
    for instances in (batch, _rows(batch, slice(0, 0))):
        line = task.split_summary(cfg, instances)
        if line is not None and not isinstance(line, str):
            _fail(f"{what}: split_summary must return a str or None, got {line!r}.")


def _corruptions(plan: list) -> list[list]:
    return [[], list(plan[:-1]), list(plan) + list(plan[-1:])]


def _check_plans(task, grammar, cfg, seed: int, split: str, count: int, what: str) -> None:
    indices = np.arange(count, dtype=np.int64)
    batch = task.sample_instances(cfg, seed, split, indices)
    plans = reference_plans(task, grammar, cfg, seed, split, indices, batch)
    verdict_keys = {"correct", "reason", "first_step", "optimal", "optimal_moves"}
    for i, plan in enumerate(plans):
        inst = task.instance_at(batch, i)
        ok, reason = task.replay_plan(inst, plan)
        if ok is not True or not isinstance(reason, str):
            _fail(f"{what}: replay_plan rejects the reference plan of instance {i} ({plan!r}): {reason}.")
        verdict = task.assess(cfg, batch, i, plan)
        if not verdict_keys <= set(verdict):
            _fail(f"{what}: assess must return {', '.join(sorted(verdict_keys))}, got {sorted(verdict)}.")
        if not (verdict["correct"] and verdict["optimal"] and verdict["first_step"]):
            _fail(f"{what}: assess must find the reference plan of instance {i} correct, optimal and "
                  f"right at its first step, got {verdict!r}.")
        moves = verdict["optimal_moves"]
        for how, bad in zip(_CORRUPTIONS, _corruptions(plan)):
            ok, reason = task.replay_plan(inst, bad)
            if ok is not False or not (isinstance(reason, str) and reason):
                _fail(f"{what}: replay_plan accepts a corrupted plan ({how} of instance {i}: {bad!r}); "
                      "it must return (False, the reason).")
            wrong = task.assess(cfg, batch, i, bad)
            if wrong["correct"] or wrong["optimal"] or wrong["optimal_moves"] != moves:
                _fail(f"{what}: assess finds a corrupted plan ({how} of instance {i}) correct or "
                      f"changes its optimal_moves: {wrong!r}.")
        for backward in (False, True):
            walk = task.Walk(cfg, batch, i, backward=backward)
            where = f"{what}: Walk(instance {i}, backward={backward})"
            check_members(walk, StateWalk, where)
            if not isinstance(task.state_label(walk.root), str):
                _fail(f"{what}: state_label must return a str.")
            if not walk.live(walk.root):
                if backward:  # a backward search may miss solutions (countdown: chains only)
                    continue
                _fail(f"{where}: the root is not live, though the reference plan reaches the goal.")
            if walk.distance(walk.root) != moves:
                _fail(f"{where}: distance(root) is {walk.distance(walk.root)}, but the reference plan "
                      f"takes {moves} moves (assess's optimal_moves).")
            if _descend(walk, where) != moves:
                _fail(f"{where}: the goal is reached in another number of moves than distance(root).")


def _check_env(task, cfg, seed: int, what: str) -> None:
    env = task.make_env()
    try:
        if not isinstance(env.unwrapped, task.Env):
            _fail(f"{what}: make_env() must build the module's Env, got {type(env.unwrapped).__name__}.")
        if env.unwrapped.max_steps != task.max_episode_steps(cfg):
            _fail(f"{what}: the env's step limit is not max_episode_steps(Config()).")
        _, info = env.reset(seed=seed)
        mask = info.get("action_mask")
        if not (isinstance(mask, np.ndarray) and mask.dtype == bool and mask.any()):
            _fail(f"{what}: reset's info must hold a bool action_mask with a legal move.")
        if not np.array_equal(env.unwrapped.action_masks(), mask):
            _fail(f"{what}: action_masks() must equal info['action_mask'].")
    finally:
        env.close()


def task_contract(grammar) -> type:
    """The Protocol the grammar asks of its tasks: the type of its write_examples' `task`
    parameter (Task where it names none)."""
    hint = typing.get_type_hints(grammar.write_examples).get("task", Task)
    return hint if isinstance(hint, type) and Task in hint.__mro__ else Task


def check_grammar(grammar, task, *, seed: int = 0, count: int = 3, options=None) -> None:
    """Check a grammar module against `Grammar` (and `task` against what the grammar asks of its
    tasks) and exercise it on `count` test instances of `task`'s default config: for every variant,
    the rows are well formed and do not depend on the batch, the test rows parse back to the
    instance's reference plan (a stream: to the path it found, which replays, and its teacher
    stream is valid by the task's Walk), an unfinished or random completion is reported, not
    raised, and eval_prefix, StreamTracker, variant_note and searcher_of answer as their
    Protocol says. `options` (a `grammar.Options`; default: its defaults) are the writer's
    settings the rows are written with. Raises ContractError."""
    what = f"grammar {getattr(grammar, '__name__', grammar)}"
    defaults = _check_grammar_members(grammar, task, what)
    options = defaults if options is None else options
    cfg = task.Config()
    vocab = grammar.make_vocab(cfg)
    _check_token_ids(grammar, vocab, what)
    indices = np.arange(count, dtype=np.int64)
    batch = task.sample_instances(cfg, seed, "test", indices)
    plans = reference_plans(task, grammar, cfg, seed, "test", indices, batch, vocab)
    noise = np.random.default_rng(seed)
    for variant in grammar.VARIANTS:
        where = f"{what}, variant {variant}"
        _check_variant_answers(grammar, task, options, variant, seed, batch, vocab, where)
        ex = _check_variant_rows(grammar, task, cfg, options, variant, seed, indices, batch, vocab, where)
        for i, (start, end, prompt) in enumerate(_row_spans(ex)):
            completion = [int(t) for t in ex["tokens"][start + prompt:end]]
            parsed = _check_parses_back(grammar, task, variant, completion, vocab, batch, i, plans[i], where)
            if variant in grammar.STREAM_VARIANTS:
                _check_teacher_stream(grammar, task, cfg, variant, parsed, completion, batch, i, where)
            _check_broken_completions(grammar, variant, completion, vocab, noise, where)
    for variant in [v for v in grammar.VARIANTS if VARIANT[v].lookahead_spans]:
        for mode in ("model-goal", "given-goal"):
            prefix = grammar.eval_prefix(variant, mode, batch, 0, vocab)
            if not (prefix and all(isinstance(t, int) and 0 <= t < len(vocab) for t in prefix)):
                _fail(f"{what}: eval_prefix({variant!r}, {mode!r}) must force token ids, got {prefix!r}.")


def _check_grammar_members(grammar, task, what: str):
    """The grammar's members and variant lists, and the task's members the grammar asks for;
    the default `grammar.Options`."""
    from .traces.common import VARIANTS

    check_members(grammar, Grammar, what)
    contract = task_contract(grammar)
    check_members(task, contract, f"task module {getattr(task, '__name__', task)} (written by {what})")
    unknown = [v for v in grammar.VARIANTS if v not in VARIANTS]
    if unknown or "optimal" not in grammar.VARIANTS:
        _fail(f"{what}: VARIANTS must be among traces.common.VARIANTS and hold optimal, got "
              f"{grammar.VARIANTS!r}.")
    if not set(grammar.STREAM_VARIANTS) <= set(grammar.VARIANTS):
        _fail(f"{what}: STREAM_VARIANTS {grammar.STREAM_VARIANTS!r} must be among VARIANTS.")
    return _check_settings(grammar.Options, f"{what}: Options")


def _check_token_ids(grammar, vocab, what: str) -> None:
    size = len(vocab)
    if not all(isinstance(t, int) and 0 <= t < size for t in grammar.no_loss_tokens(vocab)):
        _fail(f"{what}: no_loss_tokens must be token ids of the vocabulary.")
    switch = grammar.StreamTracker.switch_tokens
    if not all(isinstance(t, int) and 0 <= t < size for t in switch):
        _fail(f"{what}: StreamTracker.switch_tokens must be token ids of the vocabulary, got {switch!r}.")


def _check_variant_answers(grammar, task, options, variant: str, seed: int, batch: dict, vocab,
                           where: str) -> None:
    """variant_note, searcher_of and eval_prefix (plain mode) of one variant."""
    note = grammar.variant_note(task.NAME, variant)
    if note is not None and not (isinstance(note, str) and note):
        _fail(f"{where}: variant_note must return a sentence or None, got {note!r}.")
    suite = _SuiteStub(variant, options, {"task": task.NAME, "variant": variant, "seed": seed})
    searcher = grammar.searcher_of(suite, "test", 0)
    if searcher is not None and not (isinstance(searcher, str) and searcher):
        _fail(f"{where}: searcher_of must return a name or None, got {searcher!r}.")
    prefix = grammar.eval_prefix(variant, "plain", batch, 0, vocab)
    if list(prefix) != []:
        _fail(f"{where}: eval_prefix in plain mode must force no tokens, got {prefix!r}.")


def _check_variant_rows(grammar, task, cfg, options, variant: str, seed: int, indices: np.ndarray,
                        batch: dict, vocab, where: str) -> dict:
    """One variant's train and test rows well formed, a test split one forward row per
    instance, and a row the same whatever batch it is written in; the test rows."""
    count = len(indices)
    train = grammar.write_examples(task, cfg, options, variant, seed, "train", indices,
                                   task.sample_instances(cfg, seed, "train", indices))
    _check_rows(train, vocab, count, f"{where} (train)")
    if VARIANT[variant].backward_objectives:
        _check_revthink_question_alone(train, f"{where} (train)")
    ex = grammar.write_examples(task, cfg, options, variant, seed, "test", indices, batch)
    _check_rows(ex, vocab, count, f"{where} (test)")
    if not (np.array_equal(ex["instance"], indices) and not ex["kind"].any()):
        _fail(f"{where}: a test split holds one forward row (kind 0) per instance, in order.")
    last = count - 1
    alone = grammar.write_examples(task, cfg, options, variant, seed, "test", indices[last:],
                                   _rows(batch, slice(last, None)))
    start, end, _ = _row_spans(ex)[last]
    if not np.array_equal(alone["tokens"], ex["tokens"][start:end]):
        _fail(f"{where}: the row of instance {last} depends on the batch it is written in.")
    return ex


def _check_parses_back(grammar, task, variant: str, completion: list[int], vocab, batch: dict, i: int,
                       plan, where: str):
    """Instance `i`'s test row parses to its reference `plan` (a stream: to a path that replays,
    the one its stream reached); the parse."""
    from .traces.common import Parsed

    parsed = _parse(grammar, variant, completion, vocab, where)
    if not isinstance(parsed, Parsed) or parsed.error is not None or parsed.plan is None:
        _fail(f"{where}: the row of instance {i} does not parse back: "
              f"{getattr(parsed, 'error', parsed)!r}.")
    if variant not in grammar.STREAM_VARIANTS or VARIANT[variant].foreign_stream:
        if parsed.plan != plan:
            _fail(f"{where}: the row of instance {i} parses to {parsed.plan!r}, not to the "
                  f"instance's reference plan {plan!r}.")
    elif parsed.plan:  # a stream answers with the path it found ([]: its search failed)
        if not task.replay_plan(task.instance_at(batch, i), parsed.plan)[0]:
            _fail(f"{where}: the plan of instance {i}'s stream, {parsed.plan!r}, does not replay.")
        if grammar.stream_plan(parsed) != parsed.plan:
            _fail(f"{where}: the teacher stream of instance {i} is not faithful: stream_plan "
                  f"gives {grammar.stream_plan(parsed)!r}, the plan is {parsed.plan!r}.")
    return parsed


def _check_teacher_stream(grammar, task, cfg, variant: str, parsed, completion: list[int], batch: dict,
                          i: int, where: str) -> None:
    """Instance `i`'s teacher stream has events, every step valid by the task's Walk, and
    StreamTracker follows it token by token."""
    from .metrics import analyse_stream

    walk = task.Walk(cfg, batch, i, backward=parsed.backward)
    if not parsed.events:
        _fail(f"{where}: the stream of instance {i} parses to no events.")
    if VARIANT[variant].own_stream:  # corrupted's stream is another instance's
        stats = analyse_stream(parsed.events, parsed.event_ends, walk, finished=True)
        if stats.invalid or stats.invalid_backtracks:
            _fail(f"{where}: the teacher stream of instance {i} has {stats.invalid} invalid "
                  f"moves and {stats.invalid_backtracks} invalid backtracks by the task's Walk.")
    tracker = grammar.StreamTracker(walk)
    for t in completion:
        tracker.feed(t)
        if not isinstance(tracker.should_penalise(2, True), bool):
            _fail(f"{where}: StreamTracker.should_penalise must return a bool.")


def _check_broken_completions(grammar, variant: str, completion: list[int], vocab, noise, where: str) -> None:
    """A completion cut before its <eos> parses to no plan and an error; random tokens (drawn
    from `noise`, ids up to two past the vocabulary) parse without raising."""
    cut = _parse(grammar, variant, completion[:-1], vocab, where)
    if cut.plan is not None or not cut.error:
        _fail(f"{where}: a completion without its <eos> must parse to no plan and an error, got "
              f"{cut!r}.")
    _parse(grammar, variant, noise.integers(0, len(vocab) + 2, size=len(completion)).tolist(), vocab,
           f"{where} (random tokens)")


@dataclasses.dataclass
class _SuiteStub:
    """What `Grammar.searcher_of` may read of a suite."""

    variant: str
    options: Any
    meta: dict


def _check_revthink_question_alone(ex: dict, what: str) -> None:
    """RevThink's objective (b) as the paper trains its student: a [bq] row's prompt is its
    instance's forward prompt (the question alone, no answer) behind one task token, and its
    completion writes what the backward question adds, not a copy of the question."""
    from .traces.common import KIND_BQ, KIND_FWD

    spans = _row_spans(ex)
    forward = {int(ex["instance"][r]): ex["tokens"][a:a + p]
               for r, (a, _, p) in enumerate(spans) if ex["kind"][r] == KIND_FWD}
    for r, (a, end, p) in enumerate(spans):
        if ex["kind"][r] != KIND_BQ:
            continue
        question = forward.get(int(ex["instance"][r]))
        prompt = ex["tokens"][a:a + p]
        if question is None or not (p == len(question) + 1 and prompt[0] == question[0]
                                    and np.array_equal(prompt[2:], question[1:])):
            _fail(f"{what}: the [bq] row {r} must take the question alone (its forward prompt "
                  "behind one task token), as RevThink trains its student.")
        if end - a - p >= len(question):
            _fail(f"{what}: the [bq] row {r}'s completion is as long as its question: the backward "
                  "question must write what it adds, not copy the prompt.")


def _check_rows(ex: dict, vocab, count: int, what: str) -> None:
    keys = {"tokens", "lengths", "prompt_len", "instance", "kind"}
    if not keys <= set(ex):
        _fail(f"{what}: write_examples must return {', '.join(sorted(keys))}, got {sorted(ex)}.")
    rows = ex["lengths"].shape[0]
    if not all(ex[k].shape == (rows,) for k in ("prompt_len", "instance", "kind")) or rows < count:
        _fail(f"{what}: lengths, prompt_len, instance and kind must have one value per row, at least "
              "one row per instance.")
    if int(ex["lengths"].sum()) != ex["tokens"].shape[0]:
        _fail(f"{what}: tokens must be the rows back to back (sum of lengths).")
    if not (ex["tokens"].min() >= 0 and ex["tokens"].max() < len(vocab)):
        _fail(f"{what}: a token lies outside the vocabulary.")
    if not (np.all(ex["prompt_len"] > 0) and np.all(ex["prompt_len"] < ex["lengths"])):
        _fail(f"{what}: every row needs a prompt and a completion (0 < prompt_len < length).")
    if set(np.unique(ex["instance"]).tolist()) != set(range(count)):
        _fail(f"{what}: instance must name every instance of the batch, and only those.")
    for start, end, _ in _row_spans(ex):
        if ex["tokens"][start] != vocab.bos_id or ex["tokens"][end - 1] != vocab.eos_id:
            _fail(f"{what}: every row must begin with <bos> and end with <eos>.")
