"""Countdown searchers, as batched Numba kernels that write an event tape per instance.

Strategies (Stream of Search, Gandhi et al. 2024), each with the `sum` heuristic (mean
|n - target| over the numbers) or the `mult` heuristic (sum over the numbers of the distance to
the nearest factor >= 2 of the target):

- `dfs-sum`, `dfs-mult`: depth-first; a node's children are sorted by heuristic (stable: ties
  keep the generation order) and children whose heuristic exceeds the target are pruned
  (SoS's threshold). Incomplete because of the pruning, as in SoS.
- `bfs{b}-{sum,mult}`, b = 1..5: SoS's beam search: pop the b best open nodes (a best-first
  queue over everything generated so far, ties first-generated-first), expand each: keep its b
  best children, try them in a seeded random order (SoS shuffles them); a child that is the
  target alone ends the search. Unlike SoS, a popped node whose state (its numbers as a
  multiset, the state the behaviour metrics judge) was already expanded is skipped (SoS
  re-expands identical copies), so a beam search never expands a state twice.
- `mix`: per instance one of the 12 above with SoS's weights (each DFS 0.25, each BFS 0.05),
  drawn from (seed, split, index).
- `dfs-full` (not SoS's): a complete forward DFS, the forward counterpart of `backward`:
  children in the order of the sum heuristic, no heuristic prune, two sound ones: a child
  whose state was entered before is skipped (it was explored to the end), and of a two-number
  node only the result nearest the target is tried (if it misses, every other result misses).
  A back goes to the deepest ancestor with a fresh child. It never expands a state twice and
  solves every solvable instance within its try budget.
- `backward`: DFS from the target: a node is (numbers still unused, subgoal); a move undoes an
  operation whose one operand is an unused input, leaving the other operand as the new
  subgoal. Children are tried by the mean distance of the unused inputs to the subgoal; a
  subgoal larger than anything the unused inputs can make is pruned (sound). It finds the
  solutions that are chains (each step combines the running value with an input); solutions
  like (a+b)*(c-d) are out of its reach.
- `optimal`: the oracle's solution, no search (`envs.countdown.solve`).

`STRATEGY_TABLE` has one row per searcher (name, kind, heuristic, beam, mix weight); a
strategy's code, what the kernels dispatch on, is its row number, and the kernels read the
integer columns derived from the table. Moves are made with `envs.countdown.combine` and undone
with `envs.countdown.undo`.

Event tape (int64, per instance): records of (the first entry is an `events.Event` code)
    START  [START, m, s_1..s_m]                      the search starts at the numbers s
    TRY    [TRY, first, op, second, result, outcome, m, s_1..s_m]
                                                     an operation from the current node giving
                                                     the child s; outcome 0 open, 1 goal, 2 dead
                                                     (a single number that is not the target)
    GO     [GO, m, s_1..s_m]                         move to the generated, not yet expanded
                                                     node s (the earliest generated such node)
    BACK   [BACK, m, s_1..s_m]                       return to the ancestor s (DFS)
Backward states are written as the unused inputs followed by the subgoal (m counts both), and
a backward TRY's (first, op, second, result) is the forward step `first op second = result`
with result the current subgoal. Searches stop after `max_tries` TRY events (no solution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .. import rng
from ..envs import countdown as cd
from ..errors import require
from ..events import Event

OUT_OPEN, OUT_GOAL, OUT_DEAD = 0, 1, 2      # a TRY record's outcome field
HEURISTICS = ("sum", "mult")
HEUR_SUM, HEUR_MULT = 0, 1                  # a heuristic's code: its index in HEURISTICS
SEARCH_KINDS = ("dfs", "bfs", "dfs-full", "backward")
KIND_DFS, KIND_BFS, KIND_DFS_FULL, KIND_BACKWARD = 0, 1, 2, 3   # a kind's code: its index in SEARCH_KINDS
MIX_SLOTS = 20     # `mix` draws one of 20 equal slots; a strategy holds mix_weight * 20 of them


@dataclass(frozen=True)
class Strategy:
    """One searcher. Its code (what the kernels get, and what `run_search` returns per
    instance in `strategy`) is its index in STRATEGY_TABLE."""

    name: str
    kind: str                 # one of SEARCH_KINDS (see the module docstring)
    heuristic: str            # what orders the children, one of HEURISTICS (backward: the mean
                              # distance of the unused inputs to the subgoal)
    beam: int = 0             # bfs: the beam width
    mix_weight: float = 0.0   # SoS's probability of this strategy in `mix` (0: never drawn)


STRATEGY_TABLE = (
    Strategy("dfs-sum", "dfs", "sum", mix_weight=0.25),
    Strategy("dfs-mult", "dfs", "mult", mix_weight=0.25),
    *(Strategy(f"bfs{b}-{h}", "bfs", h, beam=b, mix_weight=0.05) for b in range(1, 6) for h in HEURISTICS),
    Strategy("backward", "backward", "sum"),
    Strategy("dfs-full", "dfs-full", "sum"),
)
MIX = -1                                    # the code of `mix`: each instance draws its strategy
STRATEGY_CODE = {s.name: code for code, s in enumerate(STRATEGY_TABLE)}
STRATEGIES = tuple(s.name for s in STRATEGY_TABLE if s.mix_weight)   # SoS's twelve, codes 0..11
MIX_WEIGHTS = {s.name: s.mix_weight for s in STRATEGY_TABLE if s.mix_weight}
FORWARD = ("mix",) + tuple(s.name for s in STRATEGY_TABLE if s.kind != "backward")  # what `stream` can use
SEARCHERS = FORWARD + ("backward",)

# What the kernels read, per strategy code (derived from the table; Numba freezes them).
_KIND = np.array([SEARCH_KINDS.index(s.kind) for s in STRATEGY_TABLE], dtype=np.int64)
_HEUR = np.array([HEURISTICS.index(s.heuristic) for s in STRATEGY_TABLE], dtype=np.int64)
_BEAM = np.array([s.beam for s in STRATEGY_TABLE], dtype=np.int64)
# `mix`: slot -> strategy code; each strategy holds mix_weight * MIX_SLOTS consecutive slots, in
# table order (slots 0-4 dfs-sum, 5-9 dfs-mult, then one for each bfs{b}-{h})
_MIX_CODES = np.array([code for code, s in enumerate(STRATEGY_TABLE)
                       for _ in range(round(s.mix_weight * MIX_SLOTS))], dtype=np.int64)
assert _MIX_CODES.shape[0] == MIX_SLOTS, "the mix weights must fill the 20 slots"

_SCALE = 60                # lcm(1..6): a mean over 1..6 numbers times 60 is an exact integer
_DIST_CAP = 1 << 50        # distances are capped so sums of six times _SCALE stay in int64
_MAX_KIDS = 4 * cd.MAX_PAIRS


def strategy_code(name: str) -> int:
    """MIX (-1) for `mix`, else the strategy's index in STRATEGY_TABLE."""
    require(name in SEARCHERS, f"unknown countdown searcher {name!r}; allowed: {', '.join(SEARCHERS)}.")
    return MIX if name == "mix" else STRATEGY_CODE[name]


def strategy_name(code: int) -> str:
    return STRATEGY_TABLE[code].name


def mix_choice(seed: int, split: str, index: int) -> str:
    """The strategy `mix` uses for instance `index` of (seed, split)."""
    state = rng.new_state(np.uint64(seed), _search_stream(split), index, 0)
    return strategy_name(int(_MIX_CODES[rng.randbelow(state, MIX_SLOTS)]))


def _search_stream(split: str) -> int:
    return rng.stream_key(rng.STREAM_SEARCH, split)


# --------------------------------------------------------------------------- tape


@njit(cache=True, inline="always")
def _put(tape, pos, value):
    """Write `value` at `pos` when it fits; always advance (so an overflow still measures)."""
    if pos < tape.shape[0]:
        tape[pos] = value
    return pos + 1


@njit(cache=True, inline="always")
def _put_node(tape, pos, kind, vals, row, m):
    """A START, GO or BACK record: `kind`, m, then the numbers vals[row, :m]."""
    pos = _put(tape, pos, kind)
    pos = _put(tape, pos, m)
    for s in range(m):
        pos = _put(tape, pos, vals[row, s])
    return pos


@njit(cache=True, inline="always")
def _put_try(tape, pos, first, op, second, result, outcome, vals, row, m):
    """A TRY record: the step, its outcome, m, then the child's numbers vals[row, :m]."""
    pos = _put(tape, pos, Event.TRY)
    pos = _put(tape, pos, first)
    pos = _put(tape, pos, op)
    pos = _put(tape, pos, second)
    pos = _put(tape, pos, result)
    pos = _put(tape, pos, outcome)
    pos = _put(tape, pos, m)
    for s in range(m):
        pos = _put(tape, pos, vals[row, s])
    return pos


# --------------------------------------------------------------------------- children

# The children of search nodes, as every search here keeps them: kids[field, row, c] is a field
# of child c of node `row` (the node's depth; the beam search keeps one row), and order[row, :]
# the order to try them in. (2-D and 3-D arrays with row numbers rather than row views: a view
# costs reference counting in these hot loops.)
KID_FIRST, KID_OP, KID_SECOND, KID_RESULT = 0, 1, 2, 3   # the forward step `first op second = result`
KID_I, KID_J = 4, 5              # forward: the list positions of the two operands
KID_PICKED, KID_SUBGOAL = 4, 5   # backward: the position of the unused input undone, the new subgoal
KID_SCORE = 6                    # the scaled heuristic the children are sorted by
KID_FIELDS = 7


@njit(cache=True)
def _kid_arrays(rows, width):
    """Scratch for the children of `rows` search nodes, `width` each: (kids, order).
    Uninitialised: a search writes before it reads."""
    return (np.empty((KID_FIELDS, rows, width), dtype=np.int64),
            np.empty((rows, width), dtype=np.int64))


@njit(cache=True, inline="always")
def _kid_step(kids, row, c):
    """Child c of node `row`: its step (first, op, second, result)."""
    return kids[KID_FIRST, row, c], kids[KID_OP, row, c], kids[KID_SECOND, row, c], kids[KID_RESULT, row, c]


@njit(cache=True, inline="always")
def _sort_kids(kids, order, row, count):
    """order[row, :count] = 0..count-1 sorted by score (stable insertion sort: ties keep the
    generation order)."""
    for c in range(count):
        order[row, c] = c
    for c in range(1, count):
        t = order[row, c]
        h = kids[KID_SCORE, row, t]
        b = c - 1
        while b >= 0 and kids[KID_SCORE, row, order[row, b]] > h:
            order[row, b + 1] = order[row, b]
            b -= 1
        order[row, b + 1] = t


@njit(cache=True, inline="always")
def _deepest_open(next_kid, n_kids, d):
    """The deepest ancestor of depth d that still has a child to try, or -1 (a DFS's back)."""
    a = d - 1
    while a >= 0 and next_kid[a] >= n_kids[a]:
        a -= 1
    return a


# --------------------------------------------------------------------------- heuristics


@njit(cache=True)
def _factor_distances(target):
    """dist[v] for 0 <= v <= target: the distance from v to the nearest factor >= 2 of the
    target (SoS's mult heuristic; {target} when it has none), in two sweeps. Above the target
    the nearest factor is the target itself, so no table is needed there."""
    table = np.empty(target + 1, dtype=np.int64)
    last = -1  # the largest factor <= v so far
    for v in range(target + 1):
        if v >= 2 and target % v == 0:
            last = v
        table[v] = v - last if last >= 0 else _DIST_CAP
    nxt = target  # the smallest factor >= v (the target is always one)
    for v in range(target, -1, -1):
        if v >= 2 and target % v == 0:
            nxt = v
        if nxt - v < table[v]:
            table[v] = nxt - v
    return table


@njit(cache=True, inline="always")
def _dist(v, target, heur, table):
    """One number's share of the heuristic (before the mean, for `sum`), capped."""
    if heur == HEUR_SUM or v >= target:
        d = v - target if v >= target else target - v
    else:
        d = table[v]
    return d if d < _DIST_CAP else _DIST_CAP


@njit(cache=True)
def _children(vals, row, m, target, heur, mask, factors, prune, kids, order, k):
    """All children of the node `vals[row, :m]` (pairs i < j, then + * - /) into row k of
    `kids` with their scaled heuristic, and `order[k]`: them sorted by heuristic (stable);
    with `prune`, SoS's DFS prune drops children whose heuristic exceeds the target. Returns
    how many are in `order[k]`."""
    total = 0
    for s in range(m):
        total += _dist(vals[row, s], target, heur, factors)
    # per-node constants: the heuristic scale and SoS's prune threshold for m - 1 numbers
    scale = _SCALE // (m - 1) if heur == HEUR_SUM else _SCALE
    limit = target * (m - 1) if heur == HEUR_SUM else target
    count = 0
    for p in range(m * (m - 1) // 2):
        i, j = cd.PAIR_I[m, p], cd.PAIR_J[m, p]
        a, b = vals[row, i], vals[row, j]
        base = total - _dist(a, target, heur, factors) - _dist(b, target, heur, factors)
        for op in range(4):
            if not (mask >> op) & 1:
                continue
            ok, r, x, y = cd.combine(a, b, op)
            if not ok:
                continue
            child_total = base + _dist(r, target, heur, factors)
            if prune and child_total > limit:  # SoS: heuristic (for sum, the mean) > target
                continue
            kids[KID_FIRST, k, count], kids[KID_OP, k, count] = x, op
            kids[KID_SECOND, k, count], kids[KID_RESULT, k, count] = y, r
            kids[KID_I, k, count], kids[KID_J, k, count] = i, j
            kids[KID_SCORE, k, count] = child_total * scale
            count += 1
    _sort_kids(kids, order, k, count)
    return count


# --------------------------------------------------------------------------- DFS (SoS)


@njit(cache=True, inline="always")
def _take_child(order, next_kid, d):
    """The next child a depth-first search tries at depth d (and counts it as taken)."""
    c = order[d, next_kid[d]]
    next_kid[d] += 1
    return c


@njit(cache=True, inline="always")
def _try_leaf(tape, pos, x, op, y, r, target, vals, d, path, plan_out):
    """A depth-first try whose child (at row d + 1) is a single number: written with `goal` or
    `dead`; on the goal the plan (path rows 0..d) is copied out. Returns (pos, goal)."""
    goal = r == target
    pos = _put_try(tape, pos, x, op, y, r, OUT_GOAL if goal else OUT_DEAD, vals, d + 1, 1)
    if goal:
        for s in range(d + 1):
            for q in range(4):
                plan_out[s, q] = path[s, q]
    return pos, goal


@njit(cache=True, inline="always")
def _enter_child(tape, pos, x, op, y, r, vals, d, m, target, heur, mask, factors, prune, kids, order,
                 n_kids, next_kid):
    """A depth-first move into the open child at row d + 1: its try and its go are written, its
    own children generated (`prune`: SoS's heuristic threshold). Returns pos."""
    pos = _put_try(tape, pos, x, op, y, r, OUT_OPEN, vals, d + 1, m - 1)
    pos = _put_node(tape, pos, Event.GO, vals, d + 1, m - 1)
    n_kids[d + 1] = _children(vals, d + 1, m - 1, target, heur, mask, factors, prune, kids, order, d + 1)
    next_kid[d + 1] = 0
    return pos


@njit(cache=True)
def _dfs(nums, target, heur, mask, max_tries, tape, plan_out):
    """SoS's DFS with its prune. Returns (tape length, found)."""
    n = nums.shape[0]
    factors = _factor_distances(target) if heur == HEUR_MULT else np.zeros(1, dtype=np.int64)
    vals = np.empty((n, n), dtype=np.int64)
    kids, order = _kid_arrays(n, _MAX_KIDS)
    n_kids = np.zeros(n, dtype=np.int64)
    next_kid = np.zeros(n, dtype=np.int64)
    path = np.empty((n, 4), dtype=np.int64)
    for s in range(n):
        vals[0, s] = nums[s]
    pos = _put_node(tape, 0, Event.START, vals, 0, n)
    n_kids[0] = _children(vals, 0, n, target, heur, mask, factors, True, kids, order, 0)
    d = 0
    tries = 0
    while True:
        if next_kid[d] < n_kids[d]:
            c = _take_child(order, next_kid, d)
            tries += 1
            if tries > max_tries:
                return pos, False
            m = n - d
            x, op, y, r = _kid_step(kids, d, c)
            path[d, 0], path[d, 1], path[d, 2], path[d, 3] = x, op, y, r
            cd.child_state(vals, d, m, kids[KID_I, d, c], kids[KID_J, d, c], r, vals, d + 1)
            if m == 2:  # the child is a single number: the target, or a dead end
                pos, goal = _try_leaf(tape, pos, x, op, y, r, target, vals, d, path, plan_out)
                if goal:
                    return pos, True
                continue
            pos = _enter_child(tape, pos, x, op, y, r, vals, d, m, target, heur, mask, factors, True,
                               kids, order, n_kids, next_kid)
            d += 1
        else:
            d = _deepest_open(next_kid, n_kids, d)
            if d < 0:
                return pos, False
            pos = _put_node(tape, pos, Event.BACK, vals, d, n - d)


# --------------------------------------------------------------------------- complete DFS


@njit(cache=True)
def _fresh_kid(vals, d, m, kids, order, n_kids, next_kid, keys, key_m, table, probe):
    """Advance next_kid[d] past the children of node d whose state was seen already; returns
    the next fresh child's index, or -1. keys[probe] is scratch. A single number (m == 2) is
    never skipped: the nearest result is tried even when that number was tried before."""
    if m == 2:
        return order[d, next_kid[d]] if next_kid[d] < n_kids[d] else -1
    while next_kid[d] < n_kids[d]:
        c = order[d, next_kid[d]]
        q = 0
        for t in range(m):
            if t != kids[KID_I, d, c] and t != kids[KID_J, d, c]:
                keys[probe, q] = vals[d, t]
                q += 1
        keys[probe, q] = kids[KID_RESULT, d, c]
        key_m[probe] = m - 1
        _sort_key(keys, probe, m - 1)
        found, _ = _key_slot(table, keys, key_m, probe)
        if not found:
            return c
        next_kid[d] += 1
    return -1


@njit(cache=True)
def _dfs_full(nums, target, mask, max_tries, tape, plan_out):
    """A complete forward DFS: children in the order of the sum heuristic, no heuristic prune,
    only sound ones: a child whose state (number multiset) was entered before is skipped (it
    was explored to the end without reaching the target), and of the last move's results only
    the first, the one nearest the target, is tried (if it is not the target, none is). So no
    state is expanded twice and the search finds a plan for every solvable instance within its
    budget. Returns (tape length, found)."""
    n = nums.shape[0]
    factors = np.zeros(1, dtype=np.int64)
    vals = np.empty((n, n), dtype=np.int64)
    kids, order = _kid_arrays(n, _MAX_KIDS)
    n_kids = np.zeros(n, dtype=np.int64)
    next_kid = np.zeros(n, dtype=np.int64)
    path = np.empty((n, 4), dtype=np.int64)
    # states a search can enter: the full tree of moves, or the try budget (+ the root, + scratch)
    tree = 0
    level = 1
    for m in range(n, 1, -1):
        level *= 2 * m * (m - 1)
        tree += level
        if tree > max_tries:
            break
    cap = min(tree, max_tries) + 2
    size = 1
    while size < 2 * cap:
        size *= 2
    table = np.full(size, -1, dtype=np.int64)
    keys = np.empty((cap, n), dtype=np.int64)
    key_m = np.zeros(cap, dtype=np.int64)
    for s in range(n):
        vals[0, s] = nums[s]
        keys[0, s] = nums[s]
    key_m[0] = n
    _sort_key(keys, 0, n)
    _, slot = _key_slot(table, keys, key_m, 0)
    table[slot] = 0
    seen = 1
    pos = _put_node(tape, 0, Event.START, vals, 0, n)
    n_kids[0] = _children(vals, 0, n, target, HEUR_SUM, mask, factors, False, kids, order, 0)
    d = 0
    tries = 0
    while True:
        m = n - d
        c = _fresh_kid(vals, d, m, kids, order, n_kids, next_kid, keys, key_m, table, seen)
        if c >= 0:
            next_kid[d] += 1
            tries += 1
            if tries > max_tries:
                return pos, False
            if m > 2:
                _, slot = _key_slot(table, keys, key_m, seen)  # the probe holds this child's state
                table[slot] = seen
                seen += 1
            x, op, y, r = _kid_step(kids, d, c)
            path[d, 0], path[d, 1], path[d, 2], path[d, 3] = x, op, y, r
            cd.child_state(vals, d, m, kids[KID_I, d, c], kids[KID_J, d, c], r, vals, d + 1)
            if m == 2:
                pos, goal = _try_leaf(tape, pos, x, op, y, r, target, vals, d, path, plan_out)
                if goal:
                    return pos, True
                # the result nearest the target came first: if it missed, every other one misses
                next_kid[d] = n_kids[d]
                continue
            pos = _enter_child(tape, pos, x, op, y, r, vals, d, m, target, HEUR_SUM, mask, factors, False,
                               kids, order, n_kids, next_kid)
            d += 1
        else:
            # back to the deepest ancestor that still has a fresh child (not `_deepest_open`: a
            # child whose state was entered since its node was left no longer counts)
            a = d - 1
            while a >= 0 and _fresh_kid(vals, a, n - a, kids, order, n_kids, next_kid, keys, key_m,
                                        table, seen) < 0:
                a -= 1
            if a < 0:
                return pos, False
            d = a
            pos = _put_node(tape, pos, Event.BACK, vals, d, n - d)


# --------------------------------------------------------------------------- BFS (SoS beam)


@njit(cache=True, inline="always")
def _before(h, a, b):
    """Queue order: lower heuristic first, then the earlier generated node."""
    return h[a] < h[b] or (h[a] == h[b] and a < b)


@njit(cache=True)
def _heap_push(heap, size, node, h):
    k = size
    heap[k] = node
    while k > 0:
        parent = (k - 1) // 2
        if _before(h, heap[k], heap[parent]):
            heap[k], heap[parent] = heap[parent], heap[k]
            k = parent
        else:
            break
    return size + 1


@njit(cache=True)
def _heap_pop(heap, size, h):
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    k = 0
    while True:
        left, right, best = 2 * k + 1, 2 * k + 2, k
        if left < size and _before(h, heap[left], heap[best]):
            best = left
        if right < size and _before(h, heap[right], heap[best]):
            best = right
        if best == k:
            break
        heap[k], heap[best] = heap[best], heap[k]
        k = best
    return top, size


@njit(cache=True, inline="always")
def _sort_key(keys, row, m):
    """Sort keys[row, :m] in place (insertion sort: m <= 6): a state's multiset key. (Not
    `_sort_kids`: this sorts values, that one sorts indices by a score.)"""
    for c in range(1, m):
        v = keys[row, c]
        b = c - 1
        while b >= 0 and keys[row, b] > v:
            keys[row, b + 1] = keys[row, b]
            b -= 1
        keys[row, b + 1] = v


@njit(cache=True)
def _key_slot(table, keys, key_m, row):
    """Where the multiset keys[row, :key_m[row]] is in the open-addressing set `table` (rows of
    `keys`, -1 empty): (True, slot) when an equal key is there, else (False, the empty slot)."""
    m = key_m[row]
    h = rng.mix64(np.uint64(m) + np.uint64(0x9E3779B97F4A7C15))
    for s in range(m):
        h = rng.mix64(h ^ np.uint64(keys[row, s]))
    mask = table.shape[0] - 1
    k = np.int64(h & np.uint64(mask))
    while table[k] >= 0:
        v = table[k]
        if key_m[v] == m:
            same = True
            for s in range(m):
                if keys[v, s] != keys[row, s]:
                    same = False
                    break
            if same:
                return True, k
        k = (k + 1) & mask
    return False, k


@njit(cache=True)
def _closed_add(table, keys, node_vals, node_m, u):
    """Insert node u's state (its numbers as a multiset) into the closed set `table`. Returns
    False when the same multiset is already there (in another order, too)."""
    m = node_m[u]
    for s in range(m):
        keys[u, s] = node_vals[u, s]
    _sort_key(keys, u, m)
    found, slot = _key_slot(table, keys, node_m, u)
    if found:
        return False
    table[slot] = u
    return True


@njit(cache=True)
def _bfs(nums, target, heur, beam, mask, max_tries, state, tape, plan_out):
    """SoS's beam search (see the module docstring). Returns (tape length, found)."""
    n = nums.shape[0]
    factors = _factor_distances(target) if heur == HEUR_MULT else np.zeros(1, dtype=np.int64)
    # nodes it can generate: its tree of kept children, or the try budget (+ the root)
    tree = 0
    level = 1
    for _ in range(n):
        tree += level
        level *= beam
    cap = min(tree, max_tries) + 1
    node_vals = np.empty((cap, n), dtype=np.int64)
    node_m = np.empty(cap, dtype=np.int64)
    parent = np.empty(cap, dtype=np.int64)
    step = np.empty((cap, 4), dtype=np.int64)
    node_h = np.empty(cap, dtype=np.int64)
    heap = np.empty(cap, dtype=np.int64)
    size_table = 1
    while size_table < 2 * cap:
        size_table *= 2
    closed = np.full(size_table, -1, dtype=np.int64)
    keys = np.empty((cap, n), dtype=np.int64)      # the sorted numbers of every expanded node
    kids, order = _kid_arrays(1, _MAX_KIDS)
    keep_order = np.empty(_MAX_KIDS, dtype=np.int64)
    batch = np.empty(beam, dtype=np.int64)
    node_vals[0, :] = nums
    node_m[0] = n
    parent[0] = -1
    node_h[0] = 0
    nodes = 1
    heap_size = _heap_push(heap, 0, 0, node_h)
    pos = _put_node(tape, 0, Event.START, node_vals, 0, n)
    tries = 0
    while heap_size > 0:
        taken = 0
        while taken < beam and heap_size > 0:
            batch[taken], heap_size = _heap_pop(heap, heap_size, node_h)
            taken += 1
        for b in range(taken):
            u = batch[b]
            if not _closed_add(closed, keys, node_vals, node_m, u):
                continue  # this state (number multiset) was expanded already
            m = node_m[u]
            if u != 0:
                pos = _put_node(tape, pos, Event.GO, node_vals, u, m)
            if m == 1:
                continue
            count = _children(node_vals, u, m, target, heur, mask, factors, False, kids, order, 0)
            keep = min(beam, count)
            for q in range(keep):
                keep_order[q] = order[0, q]
            rng.shuffle(state, keep_order[:keep])  # SoS tries the kept children in a random order
            for q in range(keep):
                c = keep_order[q]
                tries += 1
                if tries > max_tries:
                    return pos, False
                v = nodes
                nodes += 1
                x, op, y, r = _kid_step(kids, 0, c)
                cd.child_state(node_vals, u, m, kids[KID_I, 0, c], kids[KID_J, 0, c], r, node_vals, v)
                node_m[v] = m - 1
                parent[v] = u
                step[v, 0], step[v, 1], step[v, 2], step[v, 3] = x, op, y, r
                node_h[v] = kids[KID_SCORE, 0, c]
                if m == 2 and r == target:
                    pos = _put_try(tape, pos, x, op, y, r, OUT_GOAL, node_vals, v, 1)
                    k = n - 2
                    w = v
                    while w != 0:
                        for t in range(4):
                            plan_out[k, t] = step[w, t]
                        k -= 1
                        w = parent[w]
                    return pos, True
                outcome = OUT_DEAD if m == 2 else OUT_OPEN
                pos = _put_try(tape, pos, x, op, y, r, outcome, node_vals, v, m - 1)
                heap_size = _heap_push(heap, heap_size, v, node_h)
    return pos, False


# --------------------------------------------------------------------------- backward DFS


@njit(cache=True, inline="always")
def _make_bound(unused, k):
    """No expression over k numbers each <= M exceeds (M + 1)**k - 1 (a sound prune)."""
    top = 0
    for s in range(k):
        if unused[s] > top:
            top = unused[s]
    bound = 1
    for _ in range(k):
        bound *= top + 1
    return bound - 1


@njit(cache=True)
def _backward_children(unused, where, d, k, goal, mask, kids, order):
    """Undo moves of the node (unused[d, :k], goal) into row d of `kids`: pick an unused input
    a (skipping a value already picked at an earlier position: same child) and a way to undo
    a move with a as one operand (`cd.undo`); the other operand is the new subgoal. The kid's
    step is the forward step (its result is the goal), KID_PICKED the position of a and
    KID_SUBGOAL the subgoal. Sorted by the mean distance of the remaining inputs to the
    subgoal (stable)."""
    count = 0
    rest = np.empty(max(k - 1, 1), dtype=np.int64)
    for p in range(k):
        a = unused[d, p]
        repeated = False
        for q in range(p):
            if unused[d, q] == a:
                repeated = True
        if repeated:
            continue
        r = 0
        for q in range(k):
            if q != p:
                rest[r] = unused[d, q]
                r += 1
        bound = _make_bound(rest, k - 1)
        last = k - 1 == 1
        for form in range(cd.UNDO_FORMS):  # x+a x*a x-a a-x x/a a/x: x is the subgoal
            op = cd.UNDO_OP[form]
            if not (mask >> op) & 1:
                continue
            if form == cd.A_MINUS_X and goal == 0:
                continue  # the same child as x - a
            if form == cd.X_OVER_A and goal > bound // a:
                continue  # x = goal * a would pass the bound (and may not fit an int64)
            if form == cd.A_OVER_X and goal == 1:
                continue  # the same child as x / a
            x = cd.undo(goal, a, form)
            if x < 0:
                continue
            if x > bound and not last:
                continue  # the remaining inputs cannot make a number this large
            if form == cd.X_MINUS_A or form == cd.X_OVER_A:
                first, second = x, a
            elif form == cd.A_MINUS_X or form == cd.A_OVER_X:
                first, second = a, x
            elif last and where[d, 1 - p] < where[d, p]:  # both operands are inputs: list order
                first, second = x, a
            else:
                first, second = a, x
            kids[KID_FIRST, d, count], kids[KID_OP, d, count] = first, op
            kids[KID_SECOND, d, count], kids[KID_RESULT, d, count] = second, goal
            kids[KID_PICKED, d, count], kids[KID_SUBGOAL, d, count] = p, x
            total = 0
            for q in range(k - 1):
                e = rest[q] - x if rest[q] >= x else x - rest[q]
                total += e if e < _DIST_CAP else _DIST_CAP
            kids[KID_SCORE, d, count] = total * (_SCALE // (k - 1))
            count += 1
    _sort_kids(kids, order, d, count)
    return count


@njit(cache=True, inline="always")
def _show(unused, row, k, goal, shown):
    """A backward node as the tape writes it, into shown[0]: the unused inputs, then the subgoal."""
    for s in range(k):
        shown[0, s] = unused[row, s]
    shown[0, k] = goal
    return shown


@njit(cache=True)
def _backward(nums, target, mask, max_tries, tape, plan_out):
    """DFS from the target over undo moves. Returns (tape length, found); `plan_out` gets the
    forward plan (the path's steps, last undo first)."""
    n = nums.shape[0]
    maxk = 6 * n
    unused = np.empty((n, n), dtype=np.int64)
    where = np.empty((n, n), dtype=np.int64)     # original position of each unused input
    goal = np.empty(n, dtype=np.int64)
    kids, order = _kid_arrays(n, maxk)
    n_kids = np.zeros(n, dtype=np.int64)
    next_kid = np.zeros(n, dtype=np.int64)
    path = np.empty((n, 4), dtype=np.int64)
    shown = np.empty((1, n + 1), dtype=np.int64)
    unused[0, :] = nums
    for s in range(n):
        where[0, s] = s
    goal[0] = target
    pos = _put_node(tape, 0, Event.START, _show(unused, 0, n, goal[0], shown), 0, n + 1)
    n_kids[0] = _backward_children(unused, where, 0, n, goal[0], mask, kids, order)
    d = 0
    tries = 0
    while True:
        k = n - d
        if next_kid[d] < n_kids[d]:
            c = _take_child(order, next_kid, d)
            tries += 1
            if tries > max_tries:
                return pos, False
            p = kids[KID_PICKED, d, c]
            r = 0
            for q in range(k):
                if q != p:
                    unused[d + 1, r] = unused[d, q]
                    where[d + 1, r] = where[d, q]
                    r += 1
            goal[d + 1] = kids[KID_SUBGOAL, d, c]
            x, op, y, result = _kid_step(kids, d, c)
            path[d, 0], path[d, 1], path[d, 2], path[d, 3] = x, op, y, result
            if k == 2:  # one input left: it must be the subgoal
                done = unused[d + 1, 0] == goal[d + 1]
                pos = _put_try(tape, pos, x, op, y, result, OUT_GOAL if done else OUT_DEAD,
                               _show(unused, d + 1, 1, goal[d + 1], shown), 0, 2)
                if done:
                    for s in range(d + 1):  # forward order: the last undo is the first step
                        plan_out[s, :] = path[d - s, :]
                    return pos, True
                continue
            child = _show(unused, d + 1, k - 1, goal[d + 1], shown)
            pos = _put_try(tape, pos, x, op, y, result, OUT_OPEN, child, 0, k)
            pos = _put_node(tape, pos, Event.GO, child, 0, k)
            d += 1
            n_kids[d] = _backward_children(unused, where, d, k - 1, goal[d], mask, kids, order)
            next_kid[d] = 0
        else:
            d = _deepest_open(next_kid, n_kids, d)
            if d < 0:
                return pos, False
            pos = _put_node(tape, pos, Event.BACK, _show(unused, d, n - d, goal[d], shown), 0, n - d + 1)


# --------------------------------------------------------------------------- batch driver


@njit(cache=True)
def _search_one(code, nums, target, mask, seed, stream, index, max_tries, tape, plan_out):
    """Run strategy `code` (MIX: draw one) on one instance; returns (tape length, found, code
    used). The mix draw is made first whatever the strategy, so a BFS shuffles the same way
    whether mix or the user chose it."""
    state = rng.new_state(seed, stream, index, 0)
    draw = rng.randbelow(state, MIX_SLOTS)
    used = _MIX_CODES[draw] if code == MIX else code
    kind = _KIND[used]
    if kind == KIND_BACKWARD:
        length, found = _backward(nums, target, mask, max_tries, tape, plan_out)
    elif kind == KIND_DFS_FULL:
        length, found = _dfs_full(nums, target, mask, max_tries, tape, plan_out)
    elif kind == KIND_DFS:
        length, found = _dfs(nums, target, _HEUR[used], mask, max_tries, tape, plan_out)
    else:
        length, found = _bfs(nums, target, _HEUR[used], _BEAM[used], mask, max_tries, state, tape, plan_out)
    return length, found, used


@njit(cache=True, parallel=True)
def _search_many(code, numbers, target, mask, seed, stream, indices, max_tries, tape, lengths, plan,
                 found, used):
    for k in prange(numbers.shape[0]):
        length, ok, which = _search_one(code, numbers[k], target[k], mask, seed, stream, indices[k],
                                        max_tries, tape[k], plan[k])
        lengths[k] = length
        found[k] = ok
        used[k] = which


@njit(cache=True, parallel=True)
def _gather(tape, local_rows, global_rows, lengths, flat, offsets):
    """Copy tape row local_rows[q] (instance global_rows[q]) into its place in `flat`."""
    for q in prange(local_rows.shape[0]):
        k = global_rows[q]
        flat[offsets[k]: offsets[k] + lengths[k]] = tape[local_rows[q], : lengths[k]]


_FIRST_CAPACITY = 2048        # tape entries per instance on the first pass (most streams fit)
_SCRATCH: list[np.ndarray] = []   # the first pass's buffer, kept: fresh pages cost page faults
_SUB_BATCH = 4096             # instances per kernel call on the first pass
_RETRY_BYTES = 64 << 20       # memory for one group of the exact-size second pass


def _scratch() -> np.ndarray:
    if not _SCRATCH:
        _SCRATCH.append(np.empty((_SUB_BATCH, _FIRST_CAPACITY), dtype=np.int64))
    return _SCRATCH[0]


@njit(cache=True)
def _place(piece, starts, rows, flat, offsets):
    """Copy the q-th tape of `piece` (at starts[q]) to instance rows[q]'s place in `flat`."""
    for q in range(rows.shape[0]):
        k = rows[q]
        flat[offsets[k]: offsets[k + 1]] = piece[starts[q]: starts[q + 1]]


def run_search(cfg: cd.Config, batch: dict, searcher: str, seed: int, split: str, indices: np.ndarray,
               max_tries: int = 10_000) -> dict:
    """Run `searcher` on every instance of `batch` (instances `indices` of `split`).

    Returns `tape` (flat int64), `offsets` (N + 1), `plan` (N, n-1, 4: the forward plan found),
    `found` (N,) and `strategy` (N,: the strategy code each instance used). Instances whose tape
    does not fit the first pass's capacity are searched again with an exact-size buffer (the
    search is a pure function of (seed, split, index), so the result is the same).
    """
    code = strategy_code(searcher)
    numbers, target = batch["numbers"], batch["target"]
    n_inst, n = numbers.shape
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    mask = cd.ops_mask(cfg)
    stream = _search_stream(split)
    seed = np.uint64(seed)
    lengths = np.zeros(n_inst, dtype=np.int64)
    plan = np.zeros((n_inst, n - 1, 4), dtype=np.int64)
    found = np.zeros(n_inst, dtype=np.bool_)
    used = np.zeros(n_inst, dtype=np.int64)
    scratch = _scratch()
    pieces = []
    for lo in range(0, n_inst, _SUB_BATCH):
        hi = min(n_inst, lo + _SUB_BATCH)
        tape = scratch[: hi - lo]
        _search_many(code, numbers[lo:hi], target[lo:hi], mask, seed, stream, indices[lo:hi], max_tries,
                     tape, lengths[lo:hi], plan[lo:hi], found[lo:hi], used[lo:hi])
        rows = np.arange(lo, hi)
        fits = rows[lengths[rows] <= _FIRST_CAPACITY]
        piece = np.empty(int(lengths[fits].sum()), dtype=np.int64)
        starts = np.zeros(fits.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths[fits], out=starts[1:])
        _gather(tape, fits - lo, np.arange(fits.shape[0]), lengths[fits], piece, starts)
        pieces.append((fits, piece, starts))
    offsets = np.zeros(n_inst + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int64)
    for fits, piece, starts in pieces:
        _place(piece, starts, fits, flat, offsets)
    # second pass, exact sizes, for the few instances whose tape did not fit
    long_rows = np.flatnonzero(lengths > _FIRST_CAPACITY)
    long_rows = long_rows[np.argsort(lengths[long_rows], kind="stable")]
    start = 0
    while start < long_rows.shape[0]:
        stop = start + 1
        while (stop < long_rows.shape[0]
               and (stop - start + 1) * int(lengths[long_rows[stop]]) * 8 <= _RETRY_BYTES):
            stop += 1
        group = long_rows[start:stop]
        width = int(lengths[group].max())
        tape = np.empty((group.shape[0], width), dtype=np.int64)
        again = np.zeros(group.shape[0], dtype=np.int64)
        _search_many(code, numbers[group], target[group], mask, seed, stream, indices[group], max_tries,
                     tape, again, np.zeros((group.shape[0], n - 1, 4), dtype=np.int64),
                     np.zeros(group.shape[0], dtype=np.bool_), np.zeros(group.shape[0], dtype=np.int64))
        assert np.array_equal(again, lengths[group]), "a search gave a different tape the second time"
        _gather(tape, np.arange(group.shape[0]), group, lengths, flat, offsets)
        start = stop
    return {"tape": flat, "offsets": offsets, "plan": plan, "found": found, "strategy": used}

