"""Plain-Python Countdown: the sampler, the exhaustive solver, the SoS DFS and beam searches,
the complete forward DFS (`dfs-full`), the `mix` choice and the `stream` token writer, written
the ordinary Python way (lists, recursion, heapq), the way the Stream-of-Search reference
generator is written.

Two uses: the baseline of benchmarks/bench_countdown.py (same algorithm, same random bits, so
the same tokens as the Numba kernels, byte for byte) and an independent implementation the
tests compare the kernels with. So it shares none of their code on purpose: its own `combine`,
its own children and searches, its own `mix` slots and token writer; only names (constants,
token codes, the strategy table's rows) come from the modules it checks.
`sample(..., rand=random.Random(s))` draws from Python's own generator instead: the SoS
process itself, for the distribution test.
"""

from __future__ import annotations

import heapq

from .. import rng
from ..envs import countdown as cd
from ..events import Event
from ..searchers import countdown_search as cs
from ..traces import countdown as g

SplitMix = rng.SplitMixPy  # the same bits as the Numba kernels, in plain Python


def combine(a: int, b: int, op: int):
    """(result, first, second) of a legal move, or None: the twin of envs.countdown.combine,
    written apart from it on purpose (the tests compare the two)."""
    if op == cd.ADD:
        return a + b, a, b
    if op == cd.MUL:
        return a * b, a, b
    hi, lo = (a, b) if a >= b else (b, a)
    if op == cd.SUB:
        return hi - lo, hi, lo
    if lo != 0 and hi % lo == 0:
        return hi // lo, hi, lo
    return None


def _ops(operations: str) -> list[int]:
    return [op for op in range(4) if cd.OP_SYMBOLS[op] in operations]


def first_solution(nums: list[int], target: int, ops: list[int]):
    """The first move sequence (SoS's order) that ends on the target alone, or None."""
    if len(nums) == 1:
        return [] if nums[0] == target else None
    for i in range(len(nums)):
        for j in range(i + 1, len(nums)):
            rest = nums[:i] + nums[i + 1:j] + nums[j + 1:]
            for op in ops:
                move = combine(nums[i], nums[j], op)
                if move is None:
                    continue
                r, x, y = move
                tail = first_solution(rest + [r], target, ops)
                if tail is not None:
                    return [(x, op, y, r)] + tail
    return None


def sample(cfg: cd.Config, seed: int, split: str, index: int, salt: int = 0, rand=None,
           targets: list[int] | None = None):
    """(numbers, target, solution, draws) of one instance: the target uniform over the split's
    targets, inputs uniform, redrawn until solvable. `rand`: a random.Random to draw with
    instead of the counter-based bits."""
    if targets is None:
        targets = cd.split_targets(cfg, split).tolist()
    if rand is None:
        below = SplitMix(seed, rng.stream_key(rng.STREAM_INSTANCE, split), index, salt).randbelow
    else:
        below = rand.randrange
    ops = _ops(cfg.operations)
    target = targets[below(len(targets))]
    draws = 0
    while True:
        draws += 1
        nums = [cfg.min_input + below(cfg.max_input - cfg.min_input + 1) for _ in range(cfg.n_inputs)]
        solution = first_solution(nums, target, ops)
        if solution is not None:
            return nums, target, solution, draws


# --------------------------------------------------------------------------- searches


def _factors(target: int) -> list[int]:
    return [f for f in range(2, target + 1) if target % f == 0] or [target]


def _dist(v: int, target: int, heur: int, factors: list[int]) -> int:
    d = abs(v - target) if heur == cs.HEUR_SUM else min(abs(v - f) for f in factors)
    return min(d, cs._DIST_CAP)


def _children(vals, target, heur, ops, factors, prune):
    """Children of `vals` as (scaled heuristic, step, child numbers), sorted by heuristic."""
    m = len(vals)
    total = sum(_dist(v, target, heur, factors) for v in vals)
    out = []
    for i in range(m):
        for j in range(i + 1, m):
            rest = vals[:i] + vals[i + 1:j] + vals[j + 1:]
            for op in ops:
                move = combine(vals[i], vals[j], op)
                if move is None:
                    continue
                r, x, y = move
                child_total = (total - _dist(vals[i], target, heur, factors)
                               - _dist(vals[j], target, heur, factors) + _dist(r, target, heur, factors))
                limit = target * (m - 1) if heur == cs.HEUR_SUM else target
                if prune and child_total > limit:
                    continue
                h = child_total * (cs._SCALE // (m - 1)) if heur == cs.HEUR_SUM else child_total * cs._SCALE
                out.append((h, (x, op, y, r), rest + [r]))
    out.sort(key=lambda c: c[0])  # stable: ties keep the generation order
    return out


class _Budget(Exception):
    pass


def dfs(nums, target, heur, ops, max_tries):
    """SoS's DFS. Returns (tape, plan or None). It and `dfs_full` write their try/go/back records
    each in full on purpose: each twin reads top to bottom as its own search."""
    factors = _factors(target)
    tape = [Event.START, len(nums), *nums]
    tries = [0]

    def visit(vals, path):
        kids = _children(vals, target, heur, ops, factors, True)
        for k, (_, step, child) in enumerate(kids):
            tries[0] += 1
            if tries[0] > max_tries:
                raise _Budget
            if len(child) == 1:
                goal = step[3] == target
                tape.extend([Event.TRY, *step, cs.OUT_GOAL if goal else cs.OUT_DEAD, 1, step[3]])
                if goal:
                    return path + [step]
                continue
            tape.extend([Event.TRY, *step, cs.OUT_OPEN, len(child), *child])
            tape.extend([Event.GO, len(child), *child])
            found = visit(child, path + [step])
            if found is not None:
                return found
            if k < len(kids) - 1:  # back here for the next child
                tape.extend([Event.BACK, len(vals), *vals])
        return None

    try:
        return tape, visit(list(nums), [])
    except _Budget:
        return tape, None


def dfs_full(nums, target, ops, max_tries):
    """The complete forward DFS: children by the sum heuristic, no heuristic prune; a child
    whose number multiset was entered before is skipped, and of a two-number node only the
    first (nearest) result is tried. Returns (tape, plan or None)."""
    tape = [Event.START, len(nums), *nums]
    seen = {tuple(sorted(nums))}
    tries = [0]

    def fresh(kids, k):  # the next child not entered before (a single number always is fresh)
        while k < len(kids) and len(kids[k][2]) > 1 and tuple(sorted(kids[k][2])) in seen:
            k += 1
        return k

    def visit(vals, path):
        kids = _children(vals, target, cs.HEUR_SUM, ops, [], False)
        k = fresh(kids, 0)
        while k < len(kids):
            _, step, child = kids[k]
            tries[0] += 1
            if tries[0] > max_tries:
                raise _Budget
            if len(child) == 1:
                goal = step[3] == target
                tape.extend([Event.TRY, *step, cs.OUT_GOAL if goal else cs.OUT_DEAD, 1, step[3]])
                if goal:
                    return path + [step]
                return None  # the result nearest the target missed: every other one misses

            seen.add(tuple(sorted(child)))
            tape.extend([Event.TRY, *step, cs.OUT_OPEN, len(child), *child])
            tape.extend([Event.GO, len(child), *child])
            found = visit(child, path + [step])
            if found is not None:
                return found
            k = fresh(kids, k + 1)
            if k < len(kids):  # back here for the next fresh child
                tape.extend([Event.BACK, len(vals), *vals])
        return None

    try:
        return tape, visit(list(nums), [])
    except _Budget:
        return tape, None


def bfs(nums, target, heur, beam, ops, max_tries, rand: SplitMix):
    """SoS's beam search (tries kept children in a random order, skips states, number
    multisets, already expanded). Returns (tape, plan or None)."""
    factors = _factors(target)
    tape = [Event.START, len(nums), *nums]
    vals, parent, step = [list(nums)], [-1], [None]
    heap = [(0, 0)]
    closed = set()
    tries = 0
    while heap:
        batch = [heapq.heappop(heap)[1] for _ in range(min(beam, len(heap)))]
        for u in batch:
            state = tuple(sorted(vals[u]))  # a state is a multiset of numbers
            if state in closed:
                continue
            closed.add(state)
            if u != 0:
                tape.extend([Event.GO, len(vals[u]), *vals[u]])
            if len(vals[u]) == 1:
                continue
            kept = _children(vals[u], target, heur, ops, factors, False)[:beam]
            rand.shuffle(kept)
            for h, move, child in kept:
                tries += 1
                if tries > max_tries:
                    return tape, None
                v = len(vals)
                vals.append(child)
                parent.append(u)
                step.append(move)
                if len(child) == 1 and move[3] == target:
                    tape.extend([Event.TRY, *move, cs.OUT_GOAL, 1, move[3]])
                    plan = []
                    while v != 0:
                        plan.append(step[v])
                        v = parent[v]
                    return tape, plan[::-1]
                outcome = cs.OUT_DEAD if len(child) == 1 else cs.OUT_OPEN
                tape.extend([Event.TRY, *move, outcome, len(child), *child])
                heapq.heappush(heap, (h, v))
    return tape, None


# SoS's `mix`: 20 equal slots, five for each DFS and one for each beam search (written out here,
# apart from the searchers' table, so that the tests check that table's slots)
_MIX_SLOTS = (("dfs-sum",) * 5 + ("dfs-mult",) * 5
              + tuple(f"bfs{b}-{h}" for b in range(1, 6) for h in ("sum", "mult")))


def mix_search(nums, target, cfg: cd.Config, seed: int, split: str, index: int, max_tries: int = 10_000,
               searcher: str = "mix"):
    """The `mix` strategy, or the forward `searcher` named: (strategy code, tape, plan or None)."""
    rand = SplitMix(seed, rng.stream_key(rng.STREAM_SEARCH, split), index, 0)
    draw = rand.randbelow(len(_MIX_SLOTS))
    name = _MIX_SLOTS[draw] if searcher == "mix" else searcher
    strategy = cs.STRATEGY_TABLE[cs.strategy_code(name)]
    heur = cs.HEURISTICS.index(strategy.heuristic)
    ops = _ops(cfg.operations)
    if strategy.kind == "backward":
        raise ValueError("the plain-Python twin has no backward search")
    if strategy.kind == "dfs-full":
        tape, plan = dfs_full(nums, target, ops, max_tries)
    elif strategy.kind == "dfs":
        tape, plan = dfs(nums, target, heur, ops, max_tries)
    else:
        tape, plan = bfs(nums, target, heur, strategy.beam, ops, max_tries, rand)
    return cs.strategy_code(name), tape, plan


# --------------------------------------------------------------------------- tokens


def _number(value: int) -> list[int]:
    if value < g.NUMBER_TOKENS:
        return [g.NUM0 + value]
    groups = []
    while value:
        groups.append(value % g.NUMBER_TOKENS)
        value //= g.NUMBER_TOKENS
    out = [g.NUM0 + groups[-1]]
    for group in reversed(groups[:-1]):
        out += [g.GROUP, g.NUM0 + group]
    return out


def stream_tokens(nums, target, tape, plan) -> list[int]:
    """The `stream` row: prompt, the tape as words, `;`, the plan found (or `none`), <eos>."""
    out = [g.BOS]
    for v in nums:
        out += _number(v)
    out += [g.ARROW, *_number(target), g.QMARK]
    p = 0
    while p < len(tape):
        kind = tape[p]
        if kind == Event.TRY:
            x, op, y, r, outcome, m = tape[p + 1: p + 7]
            out += [g.TRY, *_number(x), g.OP0 + op, *_number(y), g.EQ, *_number(r), g.COLON]
            for v in tape[p + 7: p + 7 + m]:
                out += _number(v)
            if outcome != cs.OUT_OPEN:
                out.append(g.GOAL if outcome == cs.OUT_GOAL else g.DEAD)
            p += 7 + m
        else:
            m = tape[p + 1]
            out.append(g.AT if kind == Event.START else (g.GO if kind == Event.GO else g.BACK))
            for v in tape[p + 2: p + 2 + m]:
                out += _number(v)
            p += 2 + m
    out.append(g.SEMI)
    if plan is None:
        out.append(g.NONE)
    else:
        for k, (x, op, y, r) in enumerate(plan):
            if k:
                out.append(g.COMMA)
            out += [*_number(x), g.OP0 + op, *_number(y), g.EQ, *_number(r)]
    out.append(g.EOS)
    return out


def generate_stream_rows(cfg: cd.Config, seed: int, split: str, indices, max_tries: int = 10_000,
                         searcher: str = "mix"):
    """Instances `indices` of (seed, split), each with its `stream` (the `mix` search, or the
    forward `searcher` named), as token rows: what sample_instances + write_examples(variant=
    "stream") make, in plain Python."""
    targets = cd.split_targets(cfg, split).tolist()
    rows = []
    for index in indices:
        nums, target, _, _ = sample(cfg, seed, split, int(index), targets=targets)
        _, tape, plan = mix_search(nums, target, cfg, seed, split, int(index), max_tries, searcher)
        rows.append(stream_tokens(nums, target, tape, plan))
    return rows
