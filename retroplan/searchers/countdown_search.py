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

Event tape (int64, per instance): records of (the first entry is an `events.Event` code)
    START  [START, m, s_1..s_m]                      the search starts at the numbers s
    TRY    [TRY, first, op, second, result, outcome, m, s_1..s_m]
                                                     an operation from the current node giving
                                                     the child s; outcome 0 open, 1 goal, 2 dead
                                                     (a single number that is not the target)
    GO     [GO, m, s_1..s_m]                            move to the generated, not yet expanded
                                                     node s (the earliest generated such node)
    BACK   [BACK, m, s_1..s_m]                          return to the ancestor s (DFS)
Backward states are written as the unused inputs followed by the subgoal (m counts both), and
a backward TRY's (first, op, second, result) is the forward step `first op second = result`
with result the current subgoal. Searches stop after `max_tries` TRY events (no solution).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import rng
from ..envs import countdown as cd
from ..errors import require
from ..events import Event

OUT_OPEN, OUT_GOAL, OUT_DEAD = 0, 1, 2
HEUR_SUM, HEUR_MULT = 0, 1
HEURISTICS = ("sum", "mult")

STRATEGIES = ("dfs-sum", "dfs-mult") + tuple(f"bfs{b}-{h}" for b in range(1, 6) for h in HEURISTICS)
BACKWARD = len(STRATEGIES)          # strategy code of the backward search
DFS_FULL = BACKWARD + 1             # strategy code of the complete forward DFS
FORWARD = ("mix",) + STRATEGIES + ("dfs-full",)   # the searchers `stream` can use
SEARCHERS = FORWARD + ("backward",)
MIX_WEIGHTS = {s: (0.25 if s.startswith("dfs") else 0.05) for s in STRATEGIES}

_SCALE = 60                # lcm(1..6): a mean over 1..6 numbers times 60 is an exact integer
_DIST_CAP = 1 << 50        # distances are capped so sums of six times _SCALE stay in int64
_MAX_KIDS = 4 * cd.MAX_PAIRS


def strategy_code(name: str) -> int:
    """-1 for `mix`, else the index in STRATEGIES (BACKWARD, DFS_FULL for the other two)."""
    require(name in SEARCHERS, f"unknown countdown searcher {name!r}; allowed: {', '.join(SEARCHERS)}.")
    if name == "mix":
        return -1
    if name == "backward":
        return BACKWARD
    return DFS_FULL if name == "dfs-full" else STRATEGIES.index(name)


def strategy_name(code: int) -> str:
    return {BACKWARD: "backward", DFS_FULL: "dfs-full"}.get(code) or STRATEGIES[code]


@njit(cache=True, inline="always")
def mix_code(draw):
    """SoS's weights from a uniform draw in [0, 20): 0-4 dfs-sum, 5-9 dfs-mult, then one
    slot for each bfs{b}-{h} in STRATEGIES order."""
    if draw < 5:
        return 0
    if draw < 10:
        return 1
    return 2 + (draw - 10)


def mix_choice(seed: int, split: str, index: int) -> str:
    """The strategy `mix` uses for instance `index` of (seed, split)."""
    state = rng.new_state(np.uint64(seed), _search_stream(split), index, 0)
    return strategy_name(mix_code(rng.randbelow(state, 20)))


def _search_stream(split: str) -> int:
    return rng.stream_key(rng.STREAM_SEARCH, split)


# --------------------------------------------------------------------------- tape


@njit(cache=True, inline="always")
def _put(tape, pos, value):
    """Write `value` at `pos` when it fits; always advance (so an overflow still measures)."""
    if pos < tape.shape[0]:
        tape[pos] = value
    return pos + 1


@njit(cache=True)
def _put_state(tape, pos, kind, vals, m):
    pos = _put(tape, pos, kind)
    pos = _put(tape, pos, m)
    for s in range(m):
        pos = _put(tape, pos, vals[s])
    return pos


@njit(cache=True)
def _put_try(tape, pos, first, op, second, result, outcome, vals, m):
    pos = _put(tape, pos, Event.TRY)
    pos = _put(tape, pos, first)
    pos = _put(tape, pos, op)
    pos = _put(tape, pos, second)
    pos = _put(tape, pos, result)
    pos = _put(tape, pos, outcome)
    pos = _put(tape, pos, m)
    for s in range(m):
        pos = _put(tape, pos, vals[s])
    return pos


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
def _children(vals, row, m, target, heur, mask, factors, prune, kx, kop, ky, kr, ki, kj, kh, order, k):
    """All children of the node `vals[row, :m]` (pairs i < j, then + * - /) into row k of the
    kid arrays, their scaled heuristic, and `order[k]`: the indices sorted by heuristic (stable);
    with `prune`, SoS's DFS prune drops children whose heuristic exceeds the target. Returns how
    many are in `order[k]`. (2-D arrays and row numbers rather than row views: a view costs
    reference counting in this hot loop.)"""
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
            kx[k, count], kop[k, count], ky[k, count], kr[k, count] = x, op, y, r
            ki[k, count], kj[k, count] = i, j
            kh[k, count] = child_total * scale
            count += 1
    for c in range(count):  # stable insertion sort by heuristic
        order[k, c] = c
    for c in range(1, count):
        t = order[k, c]
        h = kh[k, t]
        b = c - 1
        while b >= 0 and kh[k, order[k, b]] > h:
            order[k, b + 1] = order[k, b]
            b -= 1
        order[k, b + 1] = t
    return count


@njit(cache=True, inline="always")
def _child_row(vals, row, m, i, j, r, dst, drow):
    """dst[drow, :m-1] = vals[row, :m] without positions i and j, then r."""
    q = 0
    for t in range(m):
        if t != i and t != j:
            dst[drow, q] = vals[row, t]
            q += 1
    dst[drow, q] = r


@njit(cache=True, inline="always")
def _put_row(tape, pos, kind, vals, row, m):
    pos = _put(tape, pos, kind)
    pos = _put(tape, pos, m)
    for s in range(m):
        pos = _put(tape, pos, vals[row, s])
    return pos


@njit(cache=True, inline="always")
def _put_try_row(tape, pos, first, op, second, result, outcome, vals, row, m):
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


# --------------------------------------------------------------------------- DFS (SoS)


@njit(cache=True)
def _kid_arrays(rows, width):
    """Scratch for the children of `rows` search nodes, `width` each, as every search here
    keeps them: eight (rows, width) int64 arrays (operands, operation, result, two index
    columns, heuristic, try order). Uninitialised: a search writes before it reads."""
    k = np.empty((8, rows, width), dtype=np.int64)
    return k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]


@njit(cache=True)
def _dfs(nums, target, heur, mask, max_tries, tape, plan_out):
    """SoS's DFS with its prune. Returns (tape length, found)."""
    n = nums.shape[0]
    factors = _factor_distances(target) if heur == HEUR_MULT else np.zeros(1, dtype=np.int64)
    vals = np.empty((n, n), dtype=np.int64)
    kx, kop, ky, kr, ki, kj, kh, order = _kid_arrays(n, _MAX_KIDS)
    n_kids = np.zeros(n, dtype=np.int64)
    next_kid = np.zeros(n, dtype=np.int64)
    path = np.empty((n, 4), dtype=np.int64)
    for s in range(n):
        vals[0, s] = nums[s]
    pos = _put_row(tape, 0, Event.START, vals, 0, n)
    n_kids[0] = _children(vals, 0, n, target, heur, mask, factors, True, kx, kop, ky, kr, ki, kj, kh, order,
                          0)
    d = 0
    tries = 0
    while True:
        if next_kid[d] < n_kids[d]:
            c = order[d, next_kid[d]]
            next_kid[d] += 1
            tries += 1
            if tries > max_tries:
                return pos, False
            m = n - d
            x, op, y, r = kx[d, c], kop[d, c], ky[d, c], kr[d, c]
            path[d, 0], path[d, 1], path[d, 2], path[d, 3] = x, op, y, r
            _child_row(vals, d, m, ki[d, c], kj[d, c], r, vals, d + 1)
            if m == 2:  # the child is a single number: the target, or a dead end
                goal = r == target
                pos = _put_try_row(tape, pos, x, op, y, r, OUT_GOAL if goal else OUT_DEAD, vals, d + 1, 1)
                if goal:
                    for s in range(d + 1):
                        for q in range(4):
                            plan_out[s, q] = path[s, q]
                    return pos, True
                continue
            pos = _put_try_row(tape, pos, x, op, y, r, OUT_OPEN, vals, d + 1, m - 1)
            pos = _put_row(tape, pos, Event.GO, vals, d + 1, m - 1)
            d += 1
            n_kids[d] = _children(vals, d, m - 1, target, heur, mask, factors, True, kx, kop, ky, kr, ki, kj,
                                  kh, order, d)
            next_kid[d] = 0
        else:
            # nothing left here: back to the deepest ancestor that still has a child to try
            a = d - 1
            while a >= 0 and next_kid[a] >= n_kids[a]:
                a -= 1
            if a < 0:
                return pos, False
            d = a
            pos = _put_row(tape, pos, Event.BACK, vals, d, n - d)


# --------------------------------------------------------------------------- complete DFS


@njit(cache=True)
def _fresh_kid(vals, d, m, ki, kj, kr, order, n_kids, next_kid, keys, key_m, table, probe):
    """Advance next_kid[d] past the children of node d whose state was seen already; returns
    the next fresh child's index, or -1. keys[probe] is scratch. A single number (m == 2) is
    never skipped: the nearest result is tried even when that number was tried before."""
    if m == 2:
        return order[d, next_kid[d]] if next_kid[d] < n_kids[d] else -1
    while next_kid[d] < n_kids[d]:
        c = order[d, next_kid[d]]
        q = 0
        for t in range(m):
            if t != ki[d, c] and t != kj[d, c]:
                keys[probe, q] = vals[d, t]
                q += 1
        keys[probe, q] = kr[d, c]
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
    kx, kop, ky, kr, ki, kj, kh, order = _kid_arrays(n, _MAX_KIDS)
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
    pos = _put_row(tape, 0, Event.START, vals, 0, n)
    n_kids[0] = _children(vals, 0, n, target, HEUR_SUM, mask, factors, False, kx, kop, ky, kr, ki, kj, kh,
                          order, 0)
    d = 0
    tries = 0
    while True:
        m = n - d
        c = _fresh_kid(vals, d, m, ki, kj, kr, order, n_kids, next_kid, keys, key_m, table, seen)
        if c >= 0:
            next_kid[d] += 1
            tries += 1
            if tries > max_tries:
                return pos, False
            if m > 2:
                _, slot = _key_slot(table, keys, key_m, seen)  # the probe holds this child's state
                table[slot] = seen
                seen += 1
            x, op, y, r = kx[d, c], kop[d, c], ky[d, c], kr[d, c]
            path[d, 0], path[d, 1], path[d, 2], path[d, 3] = x, op, y, r
            _child_row(vals, d, m, ki[d, c], kj[d, c], r, vals, d + 1)
            if m == 2:
                goal = r == target
                pos = _put_try_row(tape, pos, x, op, y, r, OUT_GOAL if goal else OUT_DEAD, vals, d + 1, 1)
                if goal:
                    for s in range(d + 1):
                        for q in range(4):
                            plan_out[s, q] = path[s, q]
                    return pos, True
                # the result nearest the target came first: if it missed, every other one misses
                next_kid[d] = n_kids[d]
                continue
            pos = _put_try_row(tape, pos, x, op, y, r, OUT_OPEN, vals, d + 1, m - 1)
            pos = _put_row(tape, pos, Event.GO, vals, d + 1, m - 1)
            d += 1
            n_kids[d] = _children(vals, d, m - 1, target, HEUR_SUM, mask, factors, False, kx, kop, ky, kr, ki,
                                  kj, kh, order, d)
            next_kid[d] = 0
        else:
            # back to the deepest ancestor that still has a fresh child
            a = d - 1
            while a >= 0 and _fresh_kid(vals, a, n - a, ki, kj, kr, order, n_kids, next_kid, keys, key_m,
                                        table, seen) < 0:
                a -= 1
            if a < 0:
                return pos, False
            d = a
            pos = _put_row(tape, pos, Event.BACK, vals, d, n - d)


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
    """Sort keys[row, :m] in place (insertion sort: m <= 6): a state's multiset key."""
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


def bfs_node_capacity(n: int, beam: int, max_tries: int) -> int:
    """Nodes a beam search can generate: its tree of kept children, or the try budget."""
    return min(sum(beam**d for d in range(n)), max_tries) + 1


@njit(cache=True)
def _bfs(nums, target, heur, beam, mask, max_tries, state, tape, plan_out):
    """SoS's beam search (see the module docstring). Returns (tape length, found)."""
    n = nums.shape[0]
    factors = _factor_distances(target) if heur == HEUR_MULT else np.zeros(1, dtype=np.int64)
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
    kx, kop, ky, kr, ki, kj, kh, order = _kid_arrays(1, _MAX_KIDS)
    keep_order = np.empty(_MAX_KIDS, dtype=np.int64)
    batch = np.empty(beam, dtype=np.int64)
    node_vals[0, :] = nums
    node_m[0] = n
    parent[0] = -1
    node_h[0] = 0
    nodes = 1
    heap_size = _heap_push(heap, 0, 0, node_h)
    pos = _put_state(tape, 0, Event.START, nums, n)
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
                pos = _put_row(tape, pos, Event.GO, node_vals, u, m)
            if m == 1:
                continue
            count = _children(node_vals, u, m, target, heur, mask, factors, False, kx, kop, ky, kr, ki, kj,
                              kh, order, 0)
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
                x, op, y, r = kx[0, c], kop[0, c], ky[0, c], kr[0, c]
                _child_row(node_vals, u, m, ki[0, c], kj[0, c], r, node_vals, v)
                node_m[v] = m - 1
                parent[v] = u
                step[v, 0], step[v, 1], step[v, 2], step[v, 3] = x, op, y, r
                node_h[v] = kh[0, c]
                if m == 2 and r == target:
                    pos = _put_try_row(tape, pos, x, op, y, r, OUT_GOAL, node_vals, v, 1)
                    k = n - 2
                    w = v
                    while w != 0:
                        for t in range(4):
                            plan_out[k, t] = step[w, t]
                        k -= 1
                        w = parent[w]
                    return pos, True
                outcome = OUT_DEAD if m == 2 else OUT_OPEN
                pos = _put_try_row(tape, pos, x, op, y, r, outcome, node_vals, v, m - 1)
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
def _backward_children(unused, where, k, goal, mask, kx, kop, ky, kr, kp, ksub, kh, order):
    """Undo moves of the node (unused[:k], goal): pick an unused input a (skipping a value
    already picked at an earlier position: same child) and an operation with a as one operand;
    the other operand is the new subgoal. (kx, kop, ky, kr) is the forward step, kr = goal;
    kp the position of a, ksub the subgoal. Sorted by the mean distance of the remaining inputs
    to the subgoal (stable)."""
    count = 0
    rest = np.empty(max(k - 1, 1), dtype=np.int64)
    for p in range(k):
        a = unused[p]
        repeated = False
        for q in range(p):
            if unused[q] == a:
                repeated = True
        if repeated:
            continue
        r = 0
        for q in range(k):
            if q != p:
                rest[r] = unused[q]
                r += 1
        bound = _make_bound(rest, k - 1)
        last = k - 1 == 1
        for form in range(6):  # + * (x-a) (a-x) (x/a) (a/x)
            op = form if form < 2 else (2 if form < 4 else 3)
            if not (mask >> op) & 1:
                continue
            if form == 0:
                if goal < a:
                    continue
                x = goal - a
            elif form == 1:
                if goal % a != 0:
                    continue
                x = goal // a
            elif form == 2:
                x = goal + a
            elif form == 3:
                if a < goal or goal == 0:  # goal == 0: the same child as form 2
                    continue
                x = a - goal
            elif form == 4:
                if goal == 0 or goal > bound // a:
                    continue
                x = goal * a
            else:
                if goal <= 1 or a % goal != 0:  # goal == 1: the same child as form 4
                    continue
                x = a // goal
            if x > bound and not last:
                continue  # the remaining inputs cannot make a number this large
            if form == 2 or form == 4:
                first, second = x, a
            elif form == 3 or form == 5:
                first, second = a, x
            elif last and where[1 - p] < where[p]:  # both operands are inputs: list order
                first, second = x, a
            else:
                first, second = a, x
            kx[count], kop[count], ky[count], kr[count] = first, op, second, goal
            kp[count], ksub[count] = p, x
            total = 0
            for q in range(k - 1):
                e = rest[q] - x if rest[q] >= x else x - rest[q]
                total += e if e < _DIST_CAP else _DIST_CAP
            kh[count] = total * (_SCALE // (k - 1))
            count += 1
    for c in range(count):
        order[c] = c
    for c in range(1, count):
        t = order[c]
        h = kh[t]
        b = c - 1
        while b >= 0 and kh[order[b]] > h:
            order[b + 1] = order[b]
            b -= 1
        order[b + 1] = t
    return count


@njit(cache=True, inline="always")
def _show(unused, k, goal, shown):
    """A backward node as the tape writes it: the unused inputs, then the subgoal."""
    shown[:k] = unused[:k]
    shown[k] = goal
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
    kx, kop, ky, kr, kp, ksub, kh, order = _kid_arrays(n, maxk)
    n_kids = np.zeros(n, dtype=np.int64)
    next_kid = np.zeros(n, dtype=np.int64)
    path = np.empty((n, 4), dtype=np.int64)
    shown = np.empty(n + 1, dtype=np.int64)
    unused[0, :] = nums
    for s in range(n):
        where[0, s] = s
    goal[0] = target
    pos = _put_state(tape, 0, Event.START, _show(unused[0], n, goal[0], shown), n + 1)
    n_kids[0] = _backward_children(unused[0], where[0], n, goal[0], mask, kx[0], kop[0], ky[0], kr[0],
                                   kp[0], ksub[0], kh[0], order[0])
    d = 0
    tries = 0
    while True:
        k = n - d
        if next_kid[d] < n_kids[d]:
            c = order[d, next_kid[d]]
            next_kid[d] += 1
            tries += 1
            if tries > max_tries:
                return pos, False
            p = kp[d, c]
            r = 0
            for q in range(k):
                if q != p:
                    unused[d + 1, r] = unused[d, q]
                    where[d + 1, r] = where[d, q]
                    r += 1
            goal[d + 1] = ksub[d, c]
            path[d, 0], path[d, 1], path[d, 2], path[d, 3] = kx[d, c], kop[d, c], ky[d, c], kr[d, c]
            if k == 2:  # one input left: it must be the subgoal
                done = unused[d + 1, 0] == goal[d + 1]
                pos = _put_try(tape, pos, kx[d, c], kop[d, c], ky[d, c], kr[d, c],
                               OUT_GOAL if done else OUT_DEAD, _show(unused[d + 1], 1, goal[d + 1], shown), 2)
                if done:
                    for s in range(d + 1):  # forward order: the last undo is the first step
                        plan_out[s, :] = path[d - s, :]
                    return pos, True
                continue
            child = _show(unused[d + 1], k - 1, goal[d + 1], shown)
            pos = _put_try(tape, pos, kx[d, c], kop[d, c], ky[d, c], kr[d, c], OUT_OPEN, child, k)
            pos = _put_state(tape, pos, Event.GO, child, k)
            d += 1
            n_kids[d] = _backward_children(unused[d], where[d], k - 1, goal[d], mask, kx[d], kop[d], ky[d],
                                           kr[d], kp[d], ksub[d], kh[d], order[d])
            next_kid[d] = 0
        else:
            a = d - 1
            while a >= 0 and next_kid[a] >= n_kids[a]:
                a -= 1
            if a < 0:
                return pos, False
            d = a
            pos = _put_state(tape, pos, Event.BACK, _show(unused[d], n - d, goal[d], shown), n - d + 1)


# --------------------------------------------------------------------------- batch driver


@njit(cache=True)
def _search_one(code, nums, target, mask, seed, stream, index, max_tries, tape, plan_out):
    """Run strategy `code` (-1: mix) on one instance; returns (tape length, found, code used).
    The mix draw is made first whatever the strategy, so a BFS shuffles the same way whether
    mix or the user chose it."""
    state = rng.new_state(seed, stream, index, 0)
    draw = rng.randbelow(state, 20)
    used = mix_code(draw) if code < 0 else code
    if used == BACKWARD:
        length, found = _backward(nums, target, mask, max_tries, tape, plan_out)
    elif used == DFS_FULL:
        length, found = _dfs_full(nums, target, mask, max_tries, tape, plan_out)
    elif used < 2:
        length, found = _dfs(nums, target, used, mask, max_tries, tape, plan_out)
    else:
        length, found = _bfs(nums, target, (used - 2) % 2, 1 + (used - 2) // 2, mask, max_tries, state,
                             tape, plan_out)
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

