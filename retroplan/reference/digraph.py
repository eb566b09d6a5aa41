"""Path-star `stream` rows in plain Python: the same counter-based RNG, sampler, depth-limited
DFS and token writer as the Numba kernels, written out again without them.

Two uses: the speed baseline of `benchmarks/bench_graphs.py` (same seed, same rows, the ratio
is only meaningful because the output is byte-identical), and an independent re-derivation of
what the kernels produce (tests/test_graph_reference.py).
"""

from __future__ import annotations

from .. import rng as nrng
from ..events import Event
from ..rng import SplitMixPy as Rng
from ..traces import digraphs as g


def sample_pathstar(degree: int, path_len: int, num_nodes: int, seed: int, split: str, index: int):
    """(edges, start, goal, plan) of one instance, as `pathstar.sample_instances` draws it."""
    r = Rng(seed, nrng.stream_key(nrng.STREAM_INSTANCE, split), index, 0)
    arm = path_len - 1
    n_edges = degree * arm
    labels = list(range(num_nodes))
    for i in range(n_edges + 1):
        j = i + r.randbelow(num_nodes - i)
        labels[i], labels[j] = labels[j], labels[i]
    order = list(range(n_edges))
    r.shuffle(order)
    edges = [None] * n_edges
    e = 0
    for a in range(degree):
        prev = labels[0]
        for j in range(arm):
            node = labels[1 + a * arm + j]
            edges[order[e]] = (prev, node)
            e += 1
            prev = node
    goal_arm = r.randbelow(degree)
    plan = [labels[0]] + labels[1 + goal_arm * arm: 1 + (goal_arm + 1) * arm]
    return edges, labels[0], plan[-1], plan


def dfs(edges, start: int, goal: int, limit: int, r: Rng):
    """(events, path) of the depth-limited DFS with random child order."""
    succ: dict[int, list[int]] = {}
    for u, v in edges:
        succ.setdefault(u, []).append(v)

    def children(u):
        kids = list(succ.get(u, []))
        r.shuffle(kids)
        return kids

    best = {start: 0}
    path = [start]
    todo = [children(start)]
    events = [(Event.START, start)]
    while True:
        if path[-1] == goal:
            events.append((Event.GOAL, -1))
            return events, path
        depth = len(path) - 1
        moved = False
        while depth < limit and todo[depth]:
            v = todo[depth].pop(0)
            if best.get(v, limit + 1) > depth + 1:
                best[v] = depth + 1
                path.append(v)
                todo.append(children(v))
                events.append((Event.GO, v))
                moved = True
                break
        if moved:
            continue
        events.append((Event.DEAD, -1))
        while len(path) > 1:
            path.pop()
            todo.pop()
            depth = len(path) - 1
            if any(best.get(v, limit + 1) > depth + 1 for v in todo[depth]):
                break
        else:
            return events, []
        events.append((Event.BACK, path[-1]))


def stream_row(degree: int, path_len: int, num_nodes: int, seed: int, split: str, index: int):
    """(tokens, prompt length) of the `stream` row of one instance."""
    edges, start, goal, _ = sample_pathstar(degree, path_len, num_nodes, seed, split, index)
    r = Rng(seed, nrng.stream_key(nrng.STREAM_SEARCH, split), index, 0)
    events, path = dfs(edges, start, goal, path_len - 1, r)
    row = [g.BOS]
    for k, (u, v) in enumerate(edges):
        row += ([g.BAR] if k else []) + [g.NODE0 + u, g.NODE0 + v]
    row += [g.SLASH, g.NODE0 + start, g.NODE0 + goal, g.EQ]
    prompt_len = len(row)
    words = {Event.START: [g.AT], Event.GO: [], Event.BACK: [g.BACK_T]}  # a move is the bare node
    for kind, node in events:
        if kind in words:
            row += words[kind] + [g.NODE0 + node]
        else:
            row.append(g.DEAD_T if kind == Event.DEAD else g.GOAL_T)
    row += [g.SEMI] + [g.NODE0 + v for v in path] + [g.EOS]
    return row, prompt_len
