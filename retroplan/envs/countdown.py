"""Countdown, as in Stream of Search (Gandhi et al. 2024): reach the target from n input
numbers with a+b, a*b, larger-smaller and exact division, every input used exactly once.

Instance = the input numbers and a target. The sampler follows the SoS process: the target is
drawn uniformly from the split's targets, then the inputs are drawn uniformly from
[min_input, max_input] and redrawn until an exhaustive search finds a solution (about 13% of
draws are solvable with the defaults). 10% of the target range (a fixed seeded choice, see
`held_out_targets`) never occurs in train/val/test: the `val_target` and `test_target` splits
draw only those targets, as SoS's held-out-target validation set does.

Moves are written as SoS writes them: `a+b` and `a*b` with the operands in list order, `-`
and `/` larger first, and the result goes to the end of the number list. A batch is a dict:

    numbers  (N, n)        int64   the inputs, in prompt order
    target   (N,)          int64
    plan     (N, n-1, 4)   int64   the reference solution: (first, op, second, result) per step,
                                   the first one an exhaustive search finds (SoS's order)
    draws    (N,)          int64   input draws it took to find a solvable one (solvable share)

Every value stays exact: inputs are at most 999 and there are at most 6, so no intermediate
value reaches 1000**6 < 2**63.

The rule of the game is here once: `combine` (apply a move) and `undo` (undo one) for the Numba
kernels, `step_value` and `undo_subgoals` for plain Python (the verifier `replay_plan`, the
metrics' `Walk`). So is RevThink's backward question (`backward_questions`: the target and one
input swap places, and the plan is inverted), a fact about an instance that the trace writer
only spells out.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numba import njit, prange

from .. import rng
from ..errors import UserError, require, require_field_types, require_seed, setting
from . import rl

NAME = "countdown"
ENV_ID = "retroplan/Countdown-v0"
SPLITS = ("train", "val", "test", "val_target", "test_target")
DEFAULT_SIZES = {"train": 1000, "val": 100, "test": 100, "val_target": 100, "test_target": 100}
HELD_OUT_SPLITS = ("val_target", "test_target")

OP_SYMBOLS = "+*-/"   # operation codes 0..3, in the order every search tries them (SoS's order)
ADD, MUL, SUB, DIV = 0, 1, 2, 3
MIN_INPUTS, MAX_INPUTS = 3, 6
MAX_INPUT_VALUE = 999          # keeps every intermediate value below 1000**6 < 2**63
MAX_TARGET_VALUE = 99_999
VALUE_LIMIT = 10**18           # no value of any instance reaches this (see the module docstring)
MAX_DRAWS = 100_000            # input draws per instance before a target counts as unreachable
MAX_PAIRS = MAX_INPUTS * (MAX_INPUTS - 1) // 2
_HELD_OUT_STREAM = 0x7A        # random stream of the held-out target choice (not an instance stream)


@dataclass(frozen=True)
class Config:
    n_inputs: int = setting(4, f"input numbers per instance, {MIN_INPUTS} to {MAX_INPUTS}; each is used "
                               "exactly once")
    min_input: int = setting(1, "smallest input number (at least 1)")
    max_input: int = setting(99, f"largest input number (at most {MAX_INPUT_VALUE})")
    min_target: int = setting(10, "smallest target")
    max_target: int = setting(100, f"largest target (at most {MAX_TARGET_VALUE})")
    operations: str = setting("+-*/", "the operations allowed, a subset of + - * / written together "
                                      "(- is larger minus smaller, / exact division only)")
    held_out_seed: int = setting(0, "which 10% of the targets are held out of train/val/test for the "
                                    "*_target splits (a fixed seeded choice)")

    def validate(self) -> None:
        require_field_types(self, "countdown")
        require(MIN_INPUTS <= self.n_inputs <= MAX_INPUTS,
                f"countdown n_inputs must be between {MIN_INPUTS} and {MAX_INPUTS}, got {self.n_inputs}.")
        require(1 <= self.min_input <= self.max_input <= MAX_INPUT_VALUE,
                f"countdown needs 1 <= min_input <= max_input <= {MAX_INPUT_VALUE}, got min_input="
                f"{self.min_input} and max_input={self.max_input}.")
        require(self.min_target <= self.max_target,
                f"countdown target range is empty: min_target={self.min_target} is above "
                f"max_target={self.max_target}.")
        require(1 <= self.min_target and self.max_target <= MAX_TARGET_VALUE,
                f"countdown targets must lie in 1..{MAX_TARGET_VALUE}, got "
                f"{self.min_target}..{self.max_target}.")
        require(isinstance(self.operations, str) and self.operations
                and all(c in OP_SYMBOLS for c in self.operations),
                f"countdown operations may only contain the characters + - * /, got {self.operations!r}.")
        require(len(set(self.operations)) == len(self.operations),
                f"countdown operations must not repeat an operation, got {self.operations!r}.")
        require_seed(self.held_out_seed, "countdown held_out_seed")

    def to_dict(self) -> dict:
        return asdict(self)


def ops_mask(cfg: Config) -> int:
    """Bit `op` is set when operation code `op` is allowed."""
    return sum(1 << OP_SYMBOLS.index(c) for c in cfg.operations)


def chance(cfg: Config) -> None:
    """No meaningful chance level: a random plan almost never reaches the target."""
    return None


# --------------------------------------------------------------------------- targets and splits


def held_out_targets(cfg: Config) -> np.ndarray:
    """The targets only `val_target` / `test_target` use: floor(10%) of the target range, as in
    SoS, chosen by a shuffle seeded with `held_out_seed` (a function of the config alone)."""
    order = np.arange(cfg.min_target, cfg.max_target + 1, dtype=np.int64)
    rng.shuffle(rng.new_state(np.uint64(cfg.held_out_seed), _HELD_OUT_STREAM, 0, 0), order)
    return np.sort(order[: order.shape[0] // 10])


def split_targets(cfg: Config, split: str) -> np.ndarray:
    """The targets a split draws from (uniformly)."""
    every = np.arange(cfg.min_target, cfg.max_target + 1, dtype=np.int64)
    held = held_out_targets(cfg)
    if split in HELD_OUT_SPLITS:
        return held
    return every[~np.isin(every, held)]


def describe(cfg: Config) -> list[str]:
    """Lines `retroplan inspect` prints about the config: which targets are held out."""
    held = held_out_targets(cfg).tolist()
    return [f"held-out targets (only in {', '.join(HELD_OUT_SPLITS)}): {held}"]


def instance_bounds(cfg: Config) -> dict:
    """Inputs and targets within the config's ranges; a plan step is (first, operation code,
    second, result), its numbers below VALUE_LIMIT; `draws` counts input draws (-1: gave up)."""
    k, big = cfg.n_inputs, VALUE_LIMIT - 1
    return {"numbers": ((k,), cfg.min_input, cfg.max_input), "target": ((), cfg.min_target, cfg.max_target),
            "plan": ((k - 1, 4), (0, 0, 0, 0), (big, len(OP_SYMBOLS) - 1, big, big)),
            "draws": ((), -1, MAX_DRAWS)}


def split_summary(cfg: Config, instances: dict) -> str:
    """One line about a split's instances for `retroplan inspect`."""
    draws = int(instances["draws"].sum())
    n = int(instances["draws"].shape[0])
    if not n:
        return "no instances"
    return (f"solvable share of input draws {n / draws:.4f} ({n} solvable of {draws} draws), "
            f"{np.unique(instances['target']).shape[0]} distinct targets")


# --------------------------------------------------------------------------- kernels


def _pair_tables():
    first = np.zeros((MAX_INPUTS + 1, MAX_PAIRS), dtype=np.int64)
    second = np.zeros((MAX_INPUTS + 1, MAX_PAIRS), dtype=np.int64)
    for m in range(2, MAX_INPUTS + 1):
        p = 0
        for i in range(m):
            for j in range(i + 1, m):
                first[m, p], second[m, p] = i, j
                p += 1
    return first, second


# PAIR_I[m, p], PAIR_J[m, p]: the p-th pair (i < j, lexicographic) of a list of m numbers
PAIR_I, PAIR_J = _pair_tables()


# The Countdown rule lives here, once for Numba and once for plain Python:
#   Numba:        `combine` applies a move (the solver, the sampler, the searchers, RevThink's
#                 inversion), `undo` undoes one (the solver's last-move check `_needed`, the
#                 backward search)
#   plain Python: `step_value` applies a written step, `undo_subgoals` undoes one (the verifier
#                 `apply_step` / `replay_plan` and the metrics' `Walk`; Python integers, so no
#                 value cap)
# retroplan/reference/countdown.py has its own `combine` on purpose: it is the independent
# twin the tests compare the kernels with, so it must not share their code.


@njit(cache=True, inline="always")
def combine(a, b, op):
    """Apply operation `op` to a and b as SoS does. Returns (legal, result, first, second),
    where `first op second = result` is how the move is written: a+b and a*b in the given
    order, a-b and a/b with the larger number first; division only when exact."""
    if op == ADD:
        return True, a + b, a, b
    if op == MUL:
        return True, a * b, a, b
    hi = a if a >= b else b
    lo = b if a >= b else a
    if op == SUB:
        return True, hi - lo, hi, lo
    if lo != 0 and hi % lo == 0:
        return True, hi // lo, hi, lo
    return False, 0, hi, lo


# The six ways to undo a move whose result t and one operand a are known: the unknown operand x
# is either operand of + * - / (as SoS writes - and /, the larger number first). UNDO_OP[form] is
# the form's operation.
(X_PLUS_A, X_TIMES_A, X_MINUS_A, A_MINUS_X, X_OVER_A, A_OVER_X) = range(6)
UNDO_OP = np.array([ADD, MUL, SUB, SUB, DIV, DIV], dtype=np.int64)
UNDO_FORMS = 6


@njit(cache=True, inline="always")
def undo(t, a, form):
    """The operand x for which the move `form` on {x, a} is legal and gives t, or -1 when there
    is none (or x would pass VALUE_LIMIT). With a = 0, `x * 0 = 0` holds for every x, which one
    value cannot say: -1 (callers that need it handle it)."""
    if form == X_PLUS_A:
        return t - a if t >= a else -1
    if form == X_TIMES_A:
        return t // a if a != 0 and t % a == 0 else -1
    if form == X_MINUS_A:
        return t + a
    if form == A_MINUS_X:
        return a - t if a >= t else -1
    if form == X_OVER_A:
        return t * a if a >= 1 and t >= 1 and t <= VALUE_LIMIT // a else -1
    return a // t if t >= 1 and a >= 1 and a % t == 0 else -1


@njit(cache=True, inline="always")
def child_state(vals, row, m, i, j, r, dst, drow):
    """dst[drow, :m-1] = vals[row, :m] without positions i and j, then r (the result goes last,
    as in SoS). Rows of 2-D arrays rather than row views: a view costs reference counting in
    the hot loops of the solver and the searchers."""
    k = 0
    for t in range(m):
        if t != i and t != j:
            dst[drow, k] = vals[row, t]
            k += 1
    dst[drow, k] = r


@njit(cache=True, inline="always")
def _next_move(vals, kid, d, m, mask):
    """The next legal move from depth d of a solver's search, in SoS's order (pairs i < j of the
    current list, then + * - /; `kid[d]` counts the moves tried): writes the child's numbers at
    depth d + 1 and returns (True, first, op, second, result), or (False, 0, 0, 0, 0) when no move
    is left."""
    while kid[d] < 4 * (m * (m - 1) // 2):
        p = kid[d] >> 2
        op = kid[d] & 3
        kid[d] += 1
        if not (mask >> op) & 1:
            continue
        i, j = PAIR_I[m, p], PAIR_J[m, p]
        ok, r, x, y = combine(vals[d, i], vals[d, j], op)
        if ok:
            child_state(vals, d, m, i, j, r, vals, d + 1)
            return True, np.int64(x), np.int64(op), np.int64(y), np.int64(r)
    zero = np.int64(0)
    return False, zero, zero, zero, zero


@njit(cache=True)
def solutions(nums, target, mask, first_only, steps_out, vals, kid, path):
    """Exhaustive search over every move sequence, in SoS's order (pairs i < j of the current
    list, then + * - /). Returns how many sequences end on the target alone; with
    `first_only` it stops at the first and writes its steps (first, op, second, result) into
    `steps_out`. `vals` (n, n), `kid` (n,) and `path` (n, 4) are scratch space."""
    n = nums.shape[0]
    if n == 1:
        return 1 if nums[0] == target else 0
    vals[0, :n] = nums
    kid[0] = 0
    count = 0
    d = 0
    while d >= 0:
        m = n - d
        if m == 2:  # the last move: check the (at most four) results directly
            a, b = vals[d, 0], vals[d, 1]
            for op in range(4):
                if (mask >> op) & 1:
                    ok, r, x, y = combine(a, b, op)
                    if ok and r == target:
                        count += 1
                        if first_only:
                            for s in range(d):
                                steps_out[s, :] = path[s, :]
                            steps_out[d, 0] = x
                            steps_out[d, 1] = op
                            steps_out[d, 2] = y
                            steps_out[d, 3] = r
                            return count
            d -= 1
            continue
        moved, x, op, y, r = _next_move(vals, kid, d, m, mask)
        if moved:
            path[d, 0] = x
            path[d, 1] = op
            path[d, 2] = y
            path[d, 3] = r
            d += 1
            kid[d] = 0
        else:
            d -= 1
    return count


@njit(cache=True, inline="always")
def _needed(z, t, mask, need):
    """The values r for which a legal move on {r, z} gives t; -1 when any r does (0 * r = 0)."""
    if (mask >> MUL) & 1 and z == 0 and t == 0:
        return -1
    k = 0
    for form in range(UNDO_FORMS):
        if (mask >> UNDO_OP[form]) & 1:
            r = undo(t, z, form)
            if r >= 0:
                need[k] = r
                k += 1
    return k


@njit(cache=True, inline="always")
def _pair_then(x, y, z, t, mask, need):
    """Does some legal x op y = r, then a legal move on {r, z}, give t?"""
    k = _needed(z, t, mask, need)
    for op in range(4):
        if (mask >> op) & 1:
            ok, r, _, _ = combine(x, y, op)
            if ok:
                if k < 0:
                    return True
                for q in range(k):
                    if need[q] == r:
                        return True
    return False


@njit(cache=True)
def solvable(nums, target, mask, vals, kid, need):
    """True when some move sequence ends on the target alone: the same answer as
    `solutions(...) > 0`, faster (the last two moves are checked against the few values the
    last number needs, which saves most divisions). Needs len(nums) >= 3."""
    n = nums.shape[0]
    vals[0, :n] = nums
    kid[0] = 0
    d = 0
    while d >= 0:
        m = n - d
        if m == 3:
            a, b, c = vals[d, 0], vals[d, 1], vals[d, 2]
            if (_pair_then(a, b, c, target, mask, need) or _pair_then(a, c, b, target, mask, need)
                    or _pair_then(b, c, a, target, mask, need)):
                return True
            d -= 1
            continue
        if _next_move(vals, kid, d, m, mask)[0]:
            d += 1
            kid[d] = 0
        else:
            d -= 1
    return False


@njit(cache=True, parallel=True)
def _sample(seed, stream, indices, salts, targets, n, lo, hi, mask, max_draws, numbers, target,
            plan, draws, abort):
    for k in prange(indices.shape[0]):
        _sample_at(k, seed, stream, indices, salts, targets, n, lo, hi, mask, max_draws, numbers,
                   target, plan, draws, abort)


# The same draws on the calling thread, for the Gymnasium env (rl.sample_one): no parallel
# kernel, so no OpenMP runtime starts in a process that may fork vector envs later.
@njit(cache=True)
def _sample_serial(seed, stream, indices, salts, targets, n, lo, hi, mask, max_draws, numbers, target,
                   plan, draws, abort):
    for k in range(indices.shape[0]):
        _sample_at(k, seed, stream, indices, salts, targets, n, lo, hi, mask, max_draws, numbers,
                   target, plan, draws, abort)


@njit(cache=True)
def _sample_at(k, seed, stream, indices, salts, targets, n, lo, hi, mask, max_draws, numbers, target,
               plan, draws, abort):
    """Instance k of the batch: inputs redrawn until solvable (draws[k] = -1 when it gave up)."""
    state = rng.new_state(seed, stream, indices[k], salts[k])
    vals = np.empty((n, n), dtype=np.int64)
    kid = np.empty(n, dtype=np.int64)
    path = np.empty((n, 4), dtype=np.int64)
    need = np.empty(8, dtype=np.int64)
    t = targets[rng.randbelow(state, targets.shape[0])]
    target[k] = t
    count = 0
    while True:
        count += 1
        for s in range(n):
            numbers[k, s] = lo + rng.randbelow(state, hi - lo + 1)
        # the fast check rejects most draws; the ordered search then finds SoS's first solution
        if solvable(numbers[k], t, mask, vals, kid, need):
            solutions(numbers[k], t, mask, True, plan[k], vals, kid, path)
            break
        # Give up on an unreachable target; `abort` (set by any instance that gives up)
        # lets the rest of the batch stop early. It never changes a successful result.
        if count >= max_draws or abort[0]:
            abort[0] = 1
            count = -1
            break
    draws[k] = count


@njit(cache=True, parallel=True)
def _count_all(numbers, target, mask, out):
    n = numbers.shape[1]
    for k in prange(numbers.shape[0]):
        vals = np.empty((n, n), dtype=np.int64)
        kid = np.empty(n, dtype=np.int64)
        path = np.empty((n, 4), dtype=np.int64)
        steps = np.empty((n, 4), dtype=np.int64)
        out[k] = solutions(numbers[k], target[k], mask, False, steps, vals, kid, path)


@njit(cache=True)
def _solve_one(nums, target, mask, steps):
    n = nums.shape[0]
    vals = np.empty((max(n, 1), max(n, 1)), dtype=np.int64)
    kid = np.empty(max(n, 1), dtype=np.int64)
    path = np.empty((max(n, 1), 4), dtype=np.int64)
    return solutions(nums, target, mask, True, steps, vals, kid, path)


@njit(cache=True, parallel=True)
def _fingerprints(numbers, target):
    out = np.empty(numbers.shape[0], dtype=np.uint64)
    for k in prange(numbers.shape[0]):
        nums = np.sort(numbers[k])
        h = rng.mix64(np.uint64(target[k]) * np.uint64(0x100000001B3) + np.uint64(nums.shape[0]))
        for s in range(nums.shape[0]):
            h = rng.mix64(h ^ np.uint64(nums[s]))
        out[k] = h
    return out


# --------------------------------------------------------------------------- RevThink's backward question


@njit(cache=True)
def _replay_ok(nums, target, steps, mask):
    """Replay `steps` on the multiset `nums` (each step legal, allowed and written as `combine`
    writes it): a backward question is kept only if its plan replays to its target."""
    pool = nums.copy()
    size = pool.shape[0]
    for s in range(steps.shape[0]):
        x, op, y, r = steps[s, 0], steps[s, 1], steps[s, 2], steps[s, 3]
        if not (mask >> op) & 1:
            return False
        ok, value, first, second = combine(x, y, op)
        if not ok or value != r or first != x or second != y:
            return False
        for operand in (x, y):
            hit = -1
            for t in range(size):
                if pool[t] == operand:
                    hit = t
                    break
            if hit < 0:
                return False
            pool[hit] = pool[size - 1]
            size -= 1
        pool[size] = r
        size += 1
    return size == 1 and pool[0] == target


@njit(cache=True)
def _invert(nums, target, plan, k, mask, q_plan):
    """RevThink's backward problem for input k: inputs with nums[k] replaced by the target,
    target nums[k]. Writes its plan (the forward steps off k's path, then the path's steps
    undone from the top) into q_plan; False when an undo is not a legal move (0 involved).
    Each undo is written as the inverse forward move (u + w = v is undone as v - w = u) and
    checked with `combine`, not computed with `undo`: the plan must replay as legal moves, and
    an undo `undo` allows need not be one (0 * w = 0 undoes to 0, but `0 / w` is no move)."""
    n = nums.shape[0]
    total = 2 * n - 1
    value = np.empty(total, dtype=np.int64)
    left = np.full(total, -1, dtype=np.int64)
    right = np.full(total, -1, dtype=np.int64)
    op_of = np.zeros(total, dtype=np.int64)
    parent = np.full(total, -1, dtype=np.int64)
    avail = np.empty(n, dtype=np.int64)
    for s in range(n):
        value[s] = nums[s]
        avail[s] = s
    size = n
    for s in range(n - 1):  # replay with provenance: which node each operand is
        a = -1
        for t in range(size):
            if value[avail[t]] == plan[s, 0]:
                a = t
                break
        b = -1
        for t in range(size):
            if t != a and value[avail[t]] == plan[s, 2]:
                b = t
                break
        if a < 0 or b < 0:
            return False
        u = n + s
        value[u] = plan[s, 3]
        left[u], right[u], op_of[u] = avail[a], avail[b], plan[s, 1]
        parent[avail[a]] = u
        parent[avail[b]] = u
        kept = 0
        for t in range(size):
            if t != a and t != b:
                avail[kept] = avail[t]
                kept += 1
        avail[kept] = u
        size = kept + 1
    on_path = np.zeros(total, dtype=np.bool_)
    v = k
    while v >= 0:
        on_path[v] = True
        v = parent[v]
    q = 0
    for s in range(n - 1):
        if not on_path[n + s]:
            q_plan[q, :] = plan[s, :]
            q += 1
    cur = target
    v = total - 1
    while v != k:
        u_first = on_path[left[v]]
        u = left[v] if u_first else right[v]
        w = value[right[v]] if u_first else value[left[v]]
        op = op_of[v]
        if op == ADD:      # v = u + w
            a, inv, b = cur, SUB, w
        elif op == MUL:    # v = u * w
            a, inv, b = cur, DIV, w
        elif op == SUB:    # v = u - w, or v = w - u
            a, inv, b = (cur, ADD, w) if u_first else (w, SUB, cur)
        else:              # v = u / w, or v = w / u
            a, inv, b = (cur, MUL, w) if u_first else (w, DIV, cur)
        if not (mask >> inv) & 1:
            return False
        ok, nxt, first, second = combine(a, b, inv)
        if not ok or nxt != value[u]:
            return False
        q_plan[q, 0], q_plan[q, 1], q_plan[q, 2], q_plan[q, 3] = first, inv, second, nxt
        q += 1
        cur = nxt
        v = u
    return True


@njit(cache=True, parallel=True)
def _backward_questions(numbers, target, plan, mask, q_nums, q_target, q_plan, q_ok):
    n = numbers.shape[1]
    for i in prange(numbers.shape[0]):
        q_ok[i] = False
        for k in range(n):  # the first input, in prompt order, unlike the target (else Q' = Q)
            if numbers[i, k] == target[i]:
                continue
            q_nums[i, :] = numbers[i, :]
            q_nums[i, k] = target[i]
            q_target[i] = numbers[i, k]
            if _invert(numbers[i], target[i], plan[i], k, mask, q_plan[i]) and _replay_ok(
                    q_nums[i], q_target[i], q_plan[i], mask):
                q_ok[i] = True
                break
        if not q_ok[i]:  # no input can be asked for (zeros everywhere): no backward question
            q_nums[i, :] = numbers[i, :]
            q_target[i] = target[i]
            q_plan[i, :, :] = plan[i, :, :]


def backward_questions(cfg: Config, batch: dict) -> dict:
    """RevThink's backward question Q' and its plan for every instance: the target becomes an
    input, in the place of the first input (in prompt order) unlike the target whose inversion
    replays, and that input the target. A function of the question alone (the reference plan is
    the oracle's first solution, itself a function of the question), so a student that sees
    only the question can learn to write it. Its plan inverts the forward plan along that
    input's path, and is replayed before it is kept. Returns `numbers`, `target`, `plan` and
    `ok` (False: no input could be asked for; Q' is then the question itself, and the writer
    drops the instance's backward rows)."""
    n_inst, n = batch["numbers"].shape
    out = {"numbers": np.zeros((n_inst, n), dtype=np.int64), "target": np.zeros(n_inst, dtype=np.int64),
           "plan": np.zeros((n_inst, n - 1, 4), dtype=np.int64), "ok": np.zeros(n_inst, dtype=np.bool_)}
    _backward_questions(batch["numbers"], batch["target"], batch["plan"], ops_mask(cfg), out["numbers"],
                        out["target"], out["plan"], out["ok"])
    return out


# --------------------------------------------------------------------------- task interface


def sample_instances(cfg: Config, seed: int, split: str, indices: np.ndarray,
                     salts: np.ndarray | None = None, serial: bool = False) -> dict:
    """Instances `indices` of (`seed`, `split`); `salts` redraws chosen ones (dedup); `serial`
    draws on the calling thread (the same instances; what the Gymnasium env uses)."""
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    n = indices.shape[0]
    salts = np.zeros(n, dtype=np.int64) if salts is None else np.ascontiguousarray(salts, np.int64)
    k = cfg.n_inputs
    batch = {
        "numbers": np.zeros((n, k), dtype=np.int64),
        "target": np.zeros(n, dtype=np.int64),
        "plan": np.zeros((n, k - 1, 4), dtype=np.int64),
        "draws": np.zeros(n, dtype=np.int64),
    }
    if n == 0:
        return batch
    targets = split_targets(cfg, split)
    if targets.shape[0] == 0:
        raise UserError(
            f"the countdown target range {cfg.min_target}..{cfg.max_target} has "
            f"{cfg.max_target - cfg.min_target + 1} targets; holding out 10% leaves none for "
            f"{split}; use at least 10 targets or give {split} size 0.")
    abort = np.zeros(1, dtype=np.int64)
    stream = rng.stream_key(rng.STREAM_INSTANCE, split)
    kernel = _sample_serial if serial else _sample
    kernel(np.uint64(seed), stream, indices, salts, targets, k, cfg.min_input,
            cfg.max_input, ops_mask(cfg), MAX_DRAWS, batch["numbers"], batch["target"],
            batch["plan"], batch["draws"], abort)
    if abort[0]:
        bad = int(batch["target"][np.flatnonzero(batch["draws"] < 0)[0]])
        raise UserError(
            f"no {k} inputs from {cfg.min_input}..{cfg.max_input} reached the countdown target "
            f"{bad} with operations {cfg.operations!r} in {MAX_DRAWS} draws; widen the input range "
            "or narrow the target range.")
    return batch


def fingerprints(batch: dict) -> np.ndarray:
    """Equal for instances with the same target and the same multiset of inputs."""
    return _fingerprints(batch["numbers"], batch["target"])


def format_step(first: int, op: int, second: int, result: int) -> str:
    return f"{first}{OP_SYMBOLS[op]}{second}={result}"


def plan_strings(steps: np.ndarray) -> list[str]:
    return [format_step(int(a), int(op), int(b), int(c)) for a, op, b, c in steps]


def expression(numbers, solution) -> str:
    """The forward plan `solution` (`a op b=c` strings) as one arithmetic expression over the
    inputs, each used once, nested in the order of the steps: inputs 3 5 7 8 and the steps
    `8-7=1`, `3+5=8`, `8*1=8` give `(3 + 5) * (8 - 7)`. It evaluates to the target with the usual
    arithmetic (every `-` and `/` is larger first, every `/` exact), which is how readers of
    expressions such as reasoning-gym's Countdown scorer check an answer."""
    pool = [(int(v), str(int(v))) for v in numbers]  # (value, the expression that makes it)
    for step in solution:
        parsed = parse_step(step)
        require(parsed is not None, f"countdown step {step!r} is not of the form 'a op b=c'.")
        a, sym, b, c = parsed
        operands = []
        for value in (a, b):
            at = next((k for k, (v, _) in enumerate(pool) if v == value), None)
            require(at is not None, f"countdown step {step!r} uses {value}, which is not left over.")
            operands.append(pool.pop(at)[1])
        pool.append((c, f"({operands[0]} {sym} {operands[1]})"))
    require(len(pool) == 1, f"countdown plan {list(solution)!r} leaves {len(pool)} numbers, not one.")
    text = pool[0][1]
    return text[1:-1] if len(solution) else text  # the outermost parentheses dropped


def instance_at(batch: dict, i: int) -> dict:
    """Instance `i` as plain Python values: the inputs, the target and the reference solution
    (the forward plan as `a op b=c` strings)."""
    return {"numbers": batch["numbers"][i].tolist(), "target": int(batch["target"][i]),
            "solution": plan_strings(batch["plan"][i])}


def count_solutions(cfg: Config, batch: dict) -> np.ndarray:
    """The oracle's number of solutions of each instance: move sequences (pairs of list
    positions and an operation per step, as the searches enumerate them) that end on the
    target. Repeated inputs and commuted independent steps count separately."""
    out = np.zeros(batch["target"].shape[0], dtype=np.int64)
    _count_all(batch["numbers"], batch["target"], ops_mask(cfg), out)
    return out


def difficulty(cfg: Config, batch: dict) -> dict[str, np.ndarray]:
    """Per-instance difficulty: the number of inputs, the target, and floor(log2(number of
    solutions))."""
    count = count_solutions(cfg, batch)
    return {"inputs": np.full(count.shape[0], cfg.n_inputs), "target": batch["target"].astype(np.int64),
            "solutions_log2": np.floor(np.log2(np.maximum(count, 1))).astype(np.int64)}


def solve(numbers, target: int, operations: str = "+-*/") -> list[str] | None:
    """The oracle: the first solution an exhaustive search finds (SoS's order), or None. Works on
    any list of numbers, so it also says whether an intermediate state can still reach the
    target."""
    nums = np.asarray(list(numbers), dtype=np.int64)
    if nums.shape[0] == 0:
        return None
    steps = np.zeros((max(nums.shape[0] - 1, 1), 4), dtype=np.int64)
    mask = sum(1 << OP_SYMBOLS.index(c) for c in operations)
    if _solve_one(nums, np.int64(target), mask, steps) == 0:
        return None
    return plan_strings(steps[: nums.shape[0] - 1])


def reachable(numbers, target: int, operations: str = "+-*/") -> bool:
    """R(s): can the numbers still be combined (each used once) into the target?"""
    return solve(numbers, target, operations) is not None


# --------------------------------------------------------------------------- verifier

_STEP = re.compile(r"\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*", re.ASCII)  # ASCII digits only


def parse_step(step) -> tuple[int, str, int, int] | None:
    """(a, op symbol, b, c) of a step written `a op b=c` (spaces allowed), or None."""
    match = _STEP.fullmatch(step) if isinstance(step, str) else None
    if match is None:
        return None
    return int(match[1]), match[2], int(match[3]), int(match[4])


def step_value(a: int, sym: str, b: int) -> tuple[int | None, str]:
    """The plain-Python `combine` for a written step: (the value of `a sym b`, "") when it is a
    legal Countdown move as written (- and / larger first, / exact), else (None, why not)."""
    if sym == "+":
        return a + b, ""
    if sym == "*":
        return a * b, ""
    if a < b:
        return None, ("subtracts the larger number from the smaller" if sym == "-"
                      else "divides the smaller number by the larger")
    if sym == "-":
        return a - b, ""
    if b == 0:
        return None, "divides by zero"
    if a % b:
        return None, "divides inexactly"
    return a // b, ""


def _take(numbers, operands) -> tuple[list, int | None]:
    """(numbers without one copy of each operand, None), or (_, the first operand missing)."""
    pool = list(numbers)
    for operand in operands:
        if operand not in pool:
            return pool, operand
        pool.remove(operand)
    return pool, None


def apply_step(numbers: list[int], step, operations: str = "+-*/") -> tuple[list[int] | None, str]:
    """Apply one step (`"a op b=c"`) to the multiset `numbers`. Returns (numbers after the step,
    "") or (None, why it is illegal). Exact integer arithmetic; plain Python on purpose."""
    parsed = parse_step(step)
    if parsed is None:
        return None, f"{step!r} is not of the form a op b=c"
    a, sym, b, c = parsed
    if sym not in operations:
        return None, f"{step} uses {sym}, which this task does not allow"
    pool, missing = _take(numbers, (a, b))
    if missing is not None:
        return None, f"{step} uses {missing}, which is not available (numbers left: {sorted(numbers)})"
    value, why = step_value(a, sym, b)
    if value is None:
        return None, f"{step} {why}"
    if c != value:
        return None, f"{step} is wrong: {a}{sym}{b} is {value}"
    return pool + [c], ""


def replay_plan(instance: dict, plan, operations: str = "+-*/") -> tuple[bool, str]:
    """Replay `plan` (a list of `"a op b=c"` strings) on the instance's inputs.

    Returns (True, "reaches the target") or (False, the first reason it fails): a step that
    is malformed, uses a number that is not (or no longer) available, is wrong arithmetic,
    divides inexactly or uses a forbidden operation; or numbers left over (every input must be
    used exactly once); or a last number that is not the target.
    """
    if not plan:
        return False, "empty plan"
    left = list(instance["numbers"])
    for k, step in enumerate(plan, 1):
        left, why = apply_step(left, step, operations)
        if left is None:
            return False, f"step {k}: {why}"
    if len(left) != 1:
        return False, f"numbers {sorted(left)} are left over: every input must be used exactly once"
    if left[0] != instance["target"]:
        return False, f"ends at {left[0]}, not at the target {instance['target']}"
    return True, "reaches the target"


def assess(cfg: Config, instances: dict, i: int, plan) -> dict:
    """Every verdict eval reports on one plan: `correct` and `reason` (replay_plan),
    `first_step` (the first step is legal and the target is still reachable after it) and
    `optimal` (every correct Countdown plan has the optimal n-1 steps)."""
    inst = instance_at(instances, i)
    ok, reason = replay_plan(inst, plan, cfg.operations)
    first = False
    if plan:
        after, _ = apply_step(inst["numbers"], plan[0], cfg.operations)
        first = after is not None and reachable(after, inst["target"], cfg.operations)
    return {"correct": ok, "reason": reason, "first_step": bool(first), "optimal": ok,
            "optimal_moves": cfg.n_inputs - 1}


def state_key(numbers, subgoal: int | None = None):
    """A search state as the metrics see it: the multiset of numbers (sorted tuple); a backward
    state is (sorted unused inputs, subgoal)."""
    nums = tuple(sorted(int(v) for v in numbers))
    return nums if subgoal is None else (nums, int(subgoal))


def state_label(state) -> str:
    """How search-tree pictures label a state."""
    if len(state) == 2 and isinstance(state[0], tuple):
        return " ".join(map(str, state[0])) + f" -> {state[1]}"
    return " ".join(map(str, state))


class Walk:
    """What the behaviour metrics need to judge a Countdown stream on one instance.

    Forward states are number multisets (`state_key`); a move applies one step. Backward states
    are (unused inputs, subgoal); a move undoes a step whose result is the subgoal and one of
    whose operands is an unused input, the other operand being the new subgoal. `go` payloads
    are the grammar's `Move(step, state)`, `back` payloads the printed state. `live(s)` is R(s)
    (the numbers can still make the target, or the unused inputs the subgoal) and
    `distance(s)` the steps left, the same for every plan (numbers - 1).
    """

    def __init__(self, cfg: Config, instances: dict, i: int, backward: bool = False):
        inst = instance_at(instances, i)
        self.operations = cfg.operations
        self.target = inst["target"]
        self.backward = backward
        self.root = state_key(inst["numbers"], self.target if backward else None)
        self._live: dict = {}

    def _claimed(self, printed):
        try:
            if self.backward:
                return state_key(printed[0], printed[1])
            return state_key(printed)
        except (TypeError, ValueError, IndexError):
            return None

    def go(self, current, move):
        """(the state the stream claims to reach, why the move is invalid or None)."""
        claimed = self._claimed(move.state)
        if claimed is None:
            return None, "not_a_state"
        parsed = parse_step(move.step)
        if parsed is None:
            return claimed, "not_available"
        a, sym, b, c = parsed
        if self.backward:
            unused, goal = current
            subgoal = claimed[1]
            if c != goal or subgoal not in (a, b):
                return claimed, "not_available"
            pool, missing = _take(unused, (b if subgoal == a else a,))
        else:
            pool, missing = _take(current, (a, b))
        if missing is not None:
            return claimed, "not_available"
        if sym not in self.operations or step_value(a, sym, b)[0] != c:
            return claimed, "wrong_arithmetic"
        true = state_key(pool, subgoal) if self.backward else state_key(pool + [c])
        return claimed, (None if claimed == true else "wrong_state")

    def back_target(self, payload):
        return self._claimed(payload)

    def successors(self, state) -> list:
        out = []
        if self.backward:
            unused, goal = state
            for p, a in enumerate(unused):
                if a in unused[:p] or len(unused) < 2:
                    continue
                rest = unused[:p] + unused[p + 1:]
                for x in undo_subgoals(goal, a, self.operations):
                    out.append(state_key(rest, x))
            return out
        for p in range(len(state)):
            for q in range(p + 1, len(state)):
                rest = state[:p] + state[p + 1:q] + state[q + 1:]
                for op in range(4):
                    if OP_SYMBOLS[op] in self.operations:
                        ok, r, _, _ = combine(np.int64(state[p]), np.int64(state[q]), op)
                        if ok:
                            out.append(state_key(rest + (int(r),)))
        return out

    def live(self, state) -> bool:
        if state is None:
            return False
        if state not in self._live:
            numbers, goal = state if self.backward else (state, self.target)
            self._live[state] = bool(numbers) and reachable(numbers, goal, self.operations)
        return self._live[state]

    def distance(self, state) -> int:
        return len(state[0] if self.backward else state) - 1

    def is_goal(self, state) -> bool:
        if state is None:
            return False
        if self.backward:
            return len(state[0]) == 1 and state[0][0] == state[1]
        return state == (self.target,)


def undo_subgoals(goal: int, a: int, operations: str) -> list[int]:
    """The plain-Python `undo` (for `Walk`, unbounded integers): the subgoals x, sorted, such
    that a legal move on {x, a} gives `goal` (a is an input, so a >= 1)."""
    out = []
    if "+" in operations and goal >= a:
        out.append(goal - a)
    if "*" in operations and a and goal % a == 0:
        out.append(goal // a)
    if "-" in operations:
        out.append(goal + a)
        if a >= goal:
            out.append(a - goal)
    if "/" in operations and goal:
        out.append(goal * a)
        if a % goal == 0:
            out.append(a // goal)
    return sorted(set(out))


# --------------------------------------------------------------------------- Gymnasium


def max_value(cfg: Config) -> int:
    """An upper bound on every number a game of this config can hold: max(max_input, 2) ** n_inputs
    (a + b and a * b of values <= B**i and B**j stay <= B**(i + j) when B >= 2; - and / only
    shrink). At most 999**6 < 2**63."""
    return max(cfg.max_input, 2) ** cfg.n_inputs


def max_episode_steps(cfg: Config) -> int:
    """Moves before a Countdown episode is truncated: 4 (n_inputs - 1), the n_inputs - 1 moves of
    every game plus room for 3 (n_inputs - 1) illegal ones with `illegal="penalty"` (with
    `illegal="end"` a game always ends first)."""
    return 4 * (cfg.n_inputs - 1)


OBSERVATIONS = ("raw", "scaled")  # the env's observation: int64 values, or log-scaled float32


def scale_observation(cfg: Config, values) -> np.ndarray:
    """`observation="scaled"`: each value v >= 0 as log1p(v) / log1p(max_value(cfg)) (float32 in
    [0, 1]); -1 (an empty slot) stays -1."""
    values = np.asarray(values, dtype=np.float64)
    scaled = np.log1p(np.maximum(values, 0.0)) / math.log1p(max_value(cfg))
    return np.where(values < 0, -1.0, scaled).astype(np.float32)


class Env(gym.Env):
    """`retroplan/Countdown-v0`: combine the numbers into the target.

    Observation: `numbers` (n slots; the list after each move, as SoS keeps it: the two used
    numbers removed, the result appended; empty slots are -1; values in 0..`max_value(cfg)`) and
    `target` (in min_target..max_target).

    Action (i, j, op), `MultiDiscrete([n, n, 4])`: combine the numbers in slots i and j with
    operation code op, the codes of `OP_SYMBOLS`:

        0  +   a + b
        1  *   a * b
        2  -   larger - smaller
        3  /   larger / smaller, only when exact

    (i, j) and (j, i) are the same move. With `flat_actions=True` the action is one integer
    (i * n + j) * 4 + op in `Discrete(n * n * 4)` (what MaskablePPO needs: its MultiDiscrete masks
    are per dimension and cannot say which pairs are legal).

    `observation="scaled"` gives the same observation as float32 in a fixed range, for RL
    libraries whose networks expect one (raw numbers reach `max_value(cfg)`, ~10^8 by default):
    each value v >= 0 becomes log1p(v) / log1p(max_value(cfg)) in [0, 1] (monotone; the target
    on the same scale as the numbers, so "equal to the target" stays an equality), an empty slot
    -1. The map is fixed, not a running statistic, so a policy sees the same input for the same
    state in every run; every integer up to 800,000 (every target among them) stays distinct in
    float32, larger neighbours may round together (the first pair does at 810,536 with
    n_inputs=6, max_input=999; tests/test_env_observation.py). `scale_observation(cfg, v)` is
    the map.

    Reward 1 when the last number is the target; the episode ends when one number is left, or,
    with `info["stuck"] = True` and reward 0, when no legal move is left (possible only with
    `operations="/"`). An illegal action (same or empty slot, inexact division or by zero, an
    operation the config leaves out) sets `info["illegal"] = True` and, with `illegal="end"`
    (default), ends the episode with reward 0; with `illegal="penalty"` it gives reward
    `-illegal_penalty` and leaves the numbers as they were. Truncated after `max_steps` moves
    (default `max_episode_steps(cfg)`). `info["reachable"]` is the oracle's R(s) for the numbers
    now (False after an illegal move with `illegal="end"`). `info["action_mask"]` /
    `action_masks()`: bool, shape (n, n, 4) (flat: (n * n * 4,)), True exactly at the legal
    (i, j, op); all False once the episode has ended. See `envs/rl.py`.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, illegal: str = "end",
                 illegal_penalty: float = rl.DEFAULT_ILLEGAL_PENALTY, max_steps: int | None = None,
                 flat_actions: bool = False, observation: str = "raw", **config):
        self.config = Config(**config)
        self.config.validate()
        rl.check_options(illegal, illegal_penalty, max_steps)
        require(isinstance(flat_actions, bool), f"flat_actions must be true or false, got {flat_actions!r}.")
        require(observation in OBSERVATIONS,
                f"observation must be one of {', '.join(OBSERVATIONS)}, got {observation!r}.")
        self.observation = observation
        self.illegal = illegal
        self.illegal_penalty = float(illegal_penalty)
        self.max_steps = max_episode_steps(self.config) if max_steps is None else max_steps
        self.flat_actions = flat_actions
        n = self.config.n_inputs
        if observation == "scaled":
            low_target, high_target = scale_observation(self.config, [self.config.min_target,
                                                                      self.config.max_target])
            self.observation_space = spaces.Dict({
                "numbers": spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32),
                "target": spaces.Box(low_target, high_target, shape=(1,), dtype=np.float32),
            })
        else:
            self.observation_space = spaces.Dict({
                "numbers": spaces.Box(-1, max_value(self.config), shape=(n,), dtype=np.int64),
                "target": spaces.Box(self.config.min_target, self.config.max_target, shape=(1,),
                                     dtype=np.int64),
            })
        self.action_space = (rl.MaskedDiscrete(n * n * 4) if flat_actions
                             else rl.JointMaskedMultiDiscrete([n, n, 4]))
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}.")
        self.render_mode = render_mode
        self._numbers: list[int] = []
        self._target = 0
        self._moves = 0
        self._over = False
        self._reachable = False
        self._allowed = np.array([c in self.config.operations for c in OP_SYMBOLS])

    def _obs(self):
        slots = self._numbers + [-1] * (self.config.n_inputs - len(self._numbers))
        if self.observation == "scaled":
            return {"numbers": scale_observation(self.config, slots),
                    "target": scale_observation(self.config, [self._target])}
        return {"numbers": np.array(slots, dtype=np.int64),
                "target": np.array([self._target], dtype=np.int64)}

    def _joint_mask(self) -> np.ndarray:
        """bool (n, n, 4): [i, j, op] is True when combining slots i and j with op is legal."""
        n = self.config.n_inputs
        mask = np.zeros((n, n, 4), dtype=bool)
        m = len(self._numbers)
        if self._over or m < 2:
            return mask
        values = np.array(self._numbers, dtype=np.int64)
        hi, lo = np.maximum.outer(values, values), np.minimum.outer(values, values)
        pair = ~np.eye(m, dtype=bool)
        exact = (lo != 0) & (hi % np.where(lo == 0, 1, lo) == 0)
        legal = {ADD: pair, MUL: pair, SUB: pair, DIV: pair & exact}
        for op, where in legal.items():
            if self._allowed[op]:
                mask[:m, :m, op] = where
        return mask

    def action_masks(self) -> np.ndarray:
        """bool, True where an action is legal now: shape (n, n, 4), or (n * n * 4,) with flat_actions."""
        mask = self._joint_mask()
        return mask.reshape(-1) if self.flat_actions else mask

    def _info(self, illegal: bool | None = None, stuck: bool = False) -> dict:
        info = {"reachable": self._reachable, "action_mask": self.action_masks()}
        if illegal is not None:
            info["illegal"] = illegal
            info["stuck"] = stuck
        return info

    def _decode(self, action) -> tuple[int, int, int]:
        if self.flat_actions:
            pair, op = divmod(int(action), 4)
            i, j = divmod(pair, self.config.n_inputs)
            return i, j, op
        i, j, op = (int(x) for x in action)
        return i, j, op

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        cfg = self.config
        if options and "instance" in options:
            given = options["instance"]
            numbers = [int(x) for x in given["numbers"]]
            target = int(given["target"])
            require(len(numbers) == cfg.n_inputs,
                    f"the instance has {len(numbers)} numbers; this env takes {cfg.n_inputs}.")
            require(all(cfg.min_input <= x <= cfg.max_input for x in numbers)
                    and cfg.min_target <= target <= cfg.max_target,
                    f"the instance's numbers must lie in {cfg.min_input}..{cfg.max_input} and its target "
                    f"in {cfg.min_target}..{cfg.max_target} (this env's config), got {numbers} and {target}.")
            self._numbers, self._target = numbers, target
        else:
            instance_seed = int(self.np_random.integers(0, 2**62))
            batch = rl.sample_one(sys.modules[__name__], cfg, instance_seed)
            self._numbers, self._target = batch["numbers"][0].tolist(), int(batch["target"][0])
        self._moves = 0
        self._over = False
        self._reachable = reachable(self._numbers, self._target, cfg.operations)
        return self._obs(), self._info()

    def _legal(self, i: int, j: int, op: int) -> tuple[bool, int]:
        m = len(self._numbers)
        if not (0 <= i < m and 0 <= j < m and 0 <= op < 4) or i == j or not self._allowed[op]:
            return False, 0
        ok, result, _, _ = combine(np.int64(self._numbers[i]), np.int64(self._numbers[j]), op)
        return bool(ok), int(result)

    def step(self, action):
        i, j, op = self._decode(action)
        self._moves += 1
        out_of_moves = self._moves >= self.max_steps
        ok, result = self._legal(i, j, op)
        if not ok:
            if self.illegal == "end":
                self._over = True
                self._reachable = False
                return self._obs(), 0.0, True, False, self._info(illegal=True)
            return self._obs(), -self.illegal_penalty, False, out_of_moves, self._info(illegal=True)
        self._numbers = [v for k, v in enumerate(self._numbers) if k not in (i, j)] + [result]
        self._reachable = reachable(self._numbers, self._target, self.config.operations)
        done = len(self._numbers) == 1
        reward = 1.0 if done and self._numbers[0] == self._target else 0.0
        stuck = not done and not self._joint_mask().any()
        self._over = done or stuck
        truncated = not self._over and out_of_moves
        return self._obs(), reward, self._over, truncated, self._info(illegal=False, stuck=stuck)

    def render(self):
        if self.render_mode == "ansi":
            return f"numbers {self._numbers} -> target {self._target}"
        return None


make_env = rl.entry_point(Env)


def max_rating_nodes(n: int) -> int:
    """SoS's `max_rating` (the naive node count of the full tree) for n inputs."""
    return math.prod(k * (k - 1) // 2 * 4 for k in range(2, n + 1))
