"""Searchers: each event log is a legal search, complete, and ends on a real path."""

import numpy as np
import pytest

from retroplan.envs import digraph, graph, pathstar
from retroplan.events import Event
from retroplan.searchers.digraph_search import run_search


def check_log(events, n, edges, start, goal, path, backward=False, ancestor_backtracks=True):
    """Replay a log by hand: every GO follows an edge (reversed when searching backward) from
    the current node, every BACK returns to a node on the current path, it ends at GOAL on
    the target, and the reported path is the final root-to-goal path."""
    edge_set = {(int(u), int(v)) for u, v in edges}
    if backward:
        edge_set = {(v, u) for u, v in edge_set}
        start, goal = goal, start
    assert events[0][0] == Event.START and events[0][1] == start
    stack = [start]
    visited = {start}
    for kind, node in events[1:n]:
        if kind == Event.GO:
            assert (stack[-1], node) in edge_set
            stack.append(int(node))
            visited.add(int(node))
        elif kind == Event.BACK:
            if ancestor_backtracks:
                assert node in stack
                stack = stack[: stack.index(node) + 1]
            else:
                assert node in visited
                stack = [node]  # BFS jumps: only the endpoint matters below
        elif kind == Event.JUMP:  # breadth-first switch to a node entered elsewhere in the tree
            assert not ancestor_backtracks and node in visited
            stack = [node]
        elif kind == Event.DEAD:
            pass
        else:
            assert kind == Event.GOAL
            assert stack[-1] == goal
    assert events[n - 1][0] == Event.GOAL
    found = [int(x) for x in path]
    if backward:
        found = found[::-1]
    if ancestor_backtracks:
        assert stack == found


@pytest.mark.parametrize("order", ["random", "distance"])
@pytest.mark.parametrize("searcher", ["dfs", "backward"])
def test_dfs_and_backward_logs_are_legal_and_end_on_the_found_path(searcher, order):
    cfg = graph.Config(num_nodes=14, out_degree=2, min_distance=2, max_distance=5)
    batch = graph.sample_instances(cfg, 0, "train", np.arange(200))
    out = run_search(batch, 14, 5, searcher, order, 0, np.arange(200))
    for i in range(200):
        n, pl = out["n_events"][i], out["path_len"][i]
        assert pl > 0, "a complete search must find the reachable goal"
        assert pl - 1 <= 5  # within the depth limit
        check_log(out["events"][i], n, batch["edges"][i], batch["start"][i], batch["goal"][i],
                  out["path"][i, :pl], backward=searcher == "backward")
        ok, why = digraph.replay_plan(graph.instance_at(batch, i), out["path"][i, :pl].tolist())
        assert ok, why


def test_bfs_finds_a_shortest_path():
    cfg = graph.Config(num_nodes=16, out_degree=3, min_distance=3, max_distance=5)
    batch = graph.sample_instances(cfg, 2, "train", np.arange(200))
    out = run_search(batch, 16, 5, "bfs", "random", 2, np.arange(200))
    for i in range(200):
        pl = out["path_len"][i]
        assert pl == batch["plan_len"][i]  # as short as the oracle's plan
        check_log(out["events"][i], out["n_events"][i], batch["edges"][i], batch["start"][i],
                  batch["goal"][i], out["path"][i, :pl], ancestor_backtracks=False)


def test_depth_limited_dfs_is_complete_exactly_at_the_optimal_depth():
    # with the limit equal to the true distance the search must still find the goal
    cfg = graph.Config(num_nodes=20, out_degree=3, min_distance=3, max_distance=6)
    batch = graph.sample_instances(cfg, 9, "train", np.arange(300))
    for d in range(3, 7):
        sel = np.flatnonzero(batch["plan_len"] - 1 == d)
        sub = {k: v[sel] for k, v in batch.items()}
        out = run_search(sub, 20, d, "dfs", "random", 9, sel)
        assert np.all(out["path_len"] == d + 1)


def test_pathstar_dfs_explores_whole_wrong_arms_and_backward_search_never_backtracks():
    cfg = pathstar.Config(degree=4, path_len=5, num_nodes=40)
    batch = pathstar.sample_instances(cfg, 0, "train", np.arange(400))
    fwd = run_search(batch, 40, 4, "dfs", "random", 0, np.arange(400))
    back = run_search(batch, 40, 4, "backward", "random", 0, np.arange(400))
    dead_ends = np.array([(fwd["events"][i, : fwd["n_events"][i], 0] == Event.DEAD).sum()
                          for i in range(400)])
    # random arm order: the goal arm is tried 1st..4th equally often -> 1.5 dead ends on average
    assert abs(dead_ends.mean() - 1.5) < 0.15
    assert set(np.unique(dead_ends)) == {0, 1, 2, 3}
    assert np.all(back["n_events"] == 1 + 4 + 1)  # at goal, 4 regressions, start
    assert np.array_equal(back["path"][:, :5], batch["plan"])


def test_distance_order_is_a_perfect_heuristic():
    cfg = pathstar.Config(degree=5, path_len=4, num_nodes=30)
    batch = pathstar.sample_instances(cfg, 1, "train", np.arange(100))
    out = run_search(batch, 30, 3, "dfs", "distance", 1, np.arange(100))
    assert np.all(out["n_events"] == 1 + 3 + 1)
