"""Searchers on directed graphs (both graph tasks), as batched Numba kernels.

`dfs`: depth-first with backtracking, at most `limit` moves deep. When the current node has
nothing left to try (or sits at the depth limit) it emits DEAD, then BACK to the deepest
node on the current path that still has a successor to try.
`bfs`: breadth-first; each dequeued node is reached by JUMP to its parent (when the parent
is not the current node) and GO. A jump is a switch between frontier nodes, not a backtrack:
the metrics judge it as such (`metrics.py`), so the teacher's BFS streams are fully valid.
`backward`: the same DFS from the goal along reversed edges, until the start (regression).
The other variants' answer, the reference shortest plan, needs no search: the sampler writes it
(`digraph.shortest_plan`).

Child order is `random` (seeded by (seed, index), independent of batch and threads) or
`distance` (closest to the goal first, by the oracle; ties random): a perfect heuristic.
Every kernel also returns the path it found (start -> goal, for `backward` too).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import rng
from ..envs import digraph
from ..errors import require
from ..events import Event

SEARCHERS = ("dfs", "bfs", "backward")
ORDERS = ("random", "distance")


def max_events(num_nodes: int, limit: int) -> int:
    """An upper bound on the events one search writes (DFS: <= n * (limit + 1) moves, each
    followed by at most a DEAD and a BACK; BFS: one JUMP and one GO per node)."""
    return 3 * num_nodes * (limit + 1) + 2


@njit(cache=True)
def _goal_distances(src, dst, goal, n, order_code):
    """Distances to the goal along this search's own direction, which only the `distance`
    order needs (the `random` order skips the breadth-first search)."""
    if order_code != 1:
        return np.empty(0, dtype=np.int32)
    return digraph.bfs_distances(dst, src, goal, n)


@njit(cache=True)
def _child_order(ptr, adj, u, dist_goal, order_code, state, buf):
    """Successors of u in the order the search tries them; returns how many."""
    m = 0
    for j in range(ptr[u], ptr[u + 1]):
        buf[m] = adj[j]
        m += 1
    # random tie-breaking for both orders: shuffle, then (for `distance`) a stable sort
    for i in range(m - 1, 0, -1):
        j = rng.randbelow(state, i + 1)
        t = buf[i]
        buf[i] = buf[j]
        buf[j] = t
    if order_code == 1:
        for i in range(1, m):
            x = buf[i]
            dx = dist_goal[x] if dist_goal[x] >= 0 else 1 << 30
            j = i - 1
            while j >= 0:
                dj = dist_goal[buf[j]] if dist_goal[buf[j]] >= 0 else 1 << 30
                if dj <= dx:
                    break
                buf[j + 1] = buf[j]
                j -= 1
            buf[j + 1] = x
    return m


@njit(cache=True)
def _dfs_one(src, dst, start, goal, n, limit, order_code, state, events, path):
    """Depth-limited DFS on the graph src->dst; returns (events written, path length).

    A node is entered again only when reached at a strictly smaller depth than before,
    which keeps the search complete under the depth limit (a path of at most `limit` moves
    is found whenever one exists) and bounds it by n * (limit + 1) moves.
    """
    ptr, adj = digraph.csr(src, dst, n)
    dist_goal = _goal_distances(src, dst, goal, n, order_code)
    width = max(1, src.shape[0])
    children = np.empty((limit + 1, width), dtype=np.int32)
    n_children = np.zeros(limit + 1, dtype=np.int32)
    next_child = np.zeros(limit + 1, dtype=np.int32)
    buf = np.empty(width, dtype=np.int32)
    best_depth = np.full(n, limit + 1, dtype=np.int32)
    best_depth[start] = 0
    depth = 0
    path[0] = start
    events[0, 0] = Event.START
    events[0, 1] = start
    ne = 1
    n_children[0] = _child_order(ptr, adj, start, dist_goal, order_code, state, buf)
    children[0, : n_children[0]] = buf[: n_children[0]]
    while True:
        if path[depth] == goal:
            events[ne, 0] = Event.GOAL
            events[ne, 1] = -1
            return ne + 1, depth + 1
        moved = False
        while depth < limit and next_child[depth] < n_children[depth]:
            v = children[depth, next_child[depth]]
            next_child[depth] += 1
            if best_depth[v] > depth + 1:
                best_depth[v] = depth + 1
                depth += 1
                path[depth] = v
                events[ne, 0] = Event.GO
                events[ne, 1] = v
                ne += 1
                m = _child_order(ptr, adj, v, dist_goal, order_code, state, buf)
                children[depth, :m] = buf[:m]
                n_children[depth] = m
                next_child[depth] = 0
                moved = True
                break
        if moved:
            continue
        events[ne, 0] = Event.DEAD
        events[ne, 1] = -1
        ne += 1
        # back to the deepest node on the path that still has a successor worth entering
        found = False
        while depth > 0 and not found:
            depth -= 1
            for j in range(next_child[depth], n_children[depth]):
                if best_depth[children[depth, j]] > depth + 1:
                    found = True
                    break
        if not found:  # nothing within the depth limit reaches the goal
            return ne, 0
        events[ne, 0] = Event.BACK
        events[ne, 1] = path[depth]
        ne += 1


@njit(cache=True)
def _bfs_one(src, dst, start, goal, n, order_code, state, events, path):
    ptr, adj = digraph.csr(src, dst, n)
    dist_goal = _goal_distances(src, dst, goal, n, order_code)
    buf = np.empty(max(1, src.shape[0]), dtype=np.int32)
    parent = np.full(n, -1, dtype=np.int32)
    seen = np.zeros(n, dtype=np.bool_)
    queue = np.empty(n, dtype=np.int32)
    head, tail = 0, 1
    queue[0] = start
    seen[start] = True
    ne = 0
    events[ne, 0] = Event.START
    events[ne, 1] = start
    ne += 1
    cur = start
    while head < tail:
        u = queue[head]
        head += 1
        if u != start:
            if parent[u] != cur:
                events[ne, 0] = Event.JUMP
                events[ne, 1] = parent[u]
                ne += 1
            events[ne, 0] = Event.GO
            events[ne, 1] = u
            ne += 1
            cur = u
        if u == goal:
            events[ne, 0] = Event.GOAL
            events[ne, 1] = -1
            ne += 1
            length = 0
            v = goal
            while v != -1:
                length += 1
                v = parent[v]
            v = goal
            for i in range(length - 1, -1, -1):
                path[i] = v
                v = parent[v]
            return ne, length
        m = _child_order(ptr, adj, u, dist_goal, order_code, state, buf)
        for i in range(m):
            v = buf[i]
            if not seen[v]:
                seen[v] = True
                parent[v] = u
                queue[tail] = v
                tail += 1
    return ne, 0


@njit(cache=True, parallel=True)
def _run(searcher_code, order_code, edges, start, goal, n, limit, seed, stream, indices, events,
         n_events, path, path_len):
    for i in prange(edges.shape[0]):
        state = rng.new_state(seed, stream, indices[i], 0)
        if searcher_code == 0:
            ne, pl = _dfs_one(edges[i, :, 0], edges[i, :, 1], start[i], goal[i], n, limit, order_code,
                              state, events[i], path[i])
        elif searcher_code == 1:
            ne, pl = _bfs_one(edges[i, :, 0], edges[i, :, 1], start[i], goal[i], n, order_code,
                              state, events[i], path[i])
        else:  # backward: search from the goal along reversed edges, then flip the path
            ne, pl = _dfs_one(edges[i, :, 1], edges[i, :, 0], goal[i], start[i], n, limit, order_code,
                              state, events[i], path[i])
            for j in range(pl // 2):
                t = path[i, j]
                path[i, j] = path[i, pl - 1 - j]
                path[i, pl - 1 - j] = t
        n_events[i] = ne
        path_len[i] = pl


def run_search(batch: dict, num_nodes: int, limit: int, searcher: str, order: str, seed: int,
               indices: np.ndarray, split: str = "train") -> dict:
    """Run `searcher` on every instance of `batch`; DFS searches go at most `limit` moves deep.

    Returns `events` (N, max_events, 2) of which row i holds `n_events[i]`, `path`
    (N, num_nodes) of which row i holds `path_len[i]` nodes: the start -> goal path the search
    found (0 when none).
    """
    require(searcher in SEARCHERS, f"unknown searcher {searcher!r}; allowed: {', '.join(SEARCHERS)}.")
    require(order in ORDERS, f"unknown child order {order!r}; allowed: {', '.join(ORDERS)}.")
    n = batch["start"].shape[0]
    # Only the first n_events / path_len entries of a row are written and ever read; leaving
    # the rest uninitialised keeps the (loose) worst-case bound from costing memory traffic.
    nodes = min(num_nodes, batch["edges"].shape[1] + 1)  # nodes an instance can have
    out = {
        "events": np.empty((n, max_events(nodes, limit), 2), dtype=np.int32),
        "n_events": np.zeros(n, dtype=np.int32),
        "path": np.empty((n, num_nodes), dtype=np.int32),
        "path_len": np.zeros(n, dtype=np.int32),
    }
    stream = rng.stream_key(rng.STREAM_SEARCH, split)
    _run(SEARCHERS.index(searcher), ORDERS.index(order), batch["edges"], batch["start"],
         batch["goal"], num_nodes, limit, np.uint64(seed), stream,
         np.ascontiguousarray(indices, dtype=np.int64), out["events"], out["n_events"],
         out["path"], out["path_len"])
    return out

