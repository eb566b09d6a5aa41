"""The `graph` task's structures: dead ends that matter (`dead-ends`, the default), today's
strongly connected graphs kept as they were, and the `balanced` lookahead distribution after
Saparov et al. (2025). Every check here is against plain-Python breadth-first searches."""

from collections import deque

import gymnasium as gym
import numba
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from retroplan.cli import main
from retroplan.envs import digraph, graph, make_config
from retroplan.errors import UserError
from retroplan.events import Event
from retroplan.metrics import analyse_stream
from retroplan.searchers.digraph_search import run_search
from retroplan.traces.suite import SuiteSpec, generate_suite


def reach(edges, src):
    """Moves from src to every node it reaches (plain BFS)."""
    succ = {}
    for u, v in edges:
        succ.setdefault(int(u), []).append(int(v))
    dist, queue = {int(src): 0}, deque([int(src)])
    while queue:
        u = queue.popleft()
        for v in succ.get(u, []):
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def live_nodes(edges, goal, n):
    """The nodes from which the goal is reachable (R = 1)."""
    return {u for u in range(n) if goal in reach(edges, u)}


# --------------------------------------------------------------------------- dead-ends


def test_dead_ends_exist_and_the_goal_is_reachable_at_the_requested_distance():
    cfg = graph.Config(num_nodes=18, out_degree=2, min_distance=4, max_distance=5)
    assert cfg.structure == "dead-ends"  # the default
    batch = graph.sample_instances(cfg, 1, "val", np.arange(300))
    dead_region = graph.dead_nodes(cfg)
    assert dead_region == 7  # round(0.4 * 18)
    start_succ = dead_succ = with_dead_succ = 0
    for i in range(300):
        inst = graph.instance_at(batch, i)
        edges = [tuple(e) for e in inst["edges"]]
        assert len(edges) == 36 and len(set(edges)) == 36 and all(u != v for u, v in edges)
        assert np.all(np.bincount([u for u, _ in edges], minlength=18) == 2)
        live = live_nodes(edges, inst["goal"], 18)
        dead = set(range(18)) - live
        assert len(dead) == dead_region  # R = 0 exactly on the dead region
        assert all(v in dead for u, v in edges if u in dead)  # nothing leaves it
        assert inst["start"] in live
        d = reach(edges, inst["start"])[inst["goal"]]
        assert 4 <= d <= 5 and len(inst["plan"]) - 1 == d
        assert digraph.replay_plan(inst, inst["plan"])[0]
        succ = [v for u, v in edges if u == inst["start"]]
        start_succ += len(succ)
        dead_succ += sum(v in dead for v in succ)
        with_dead_succ += any(v in dead for v in succ)
    # the first move can lead into a dead end: about a fifth of the start's successors do
    assert 0.12 < dead_succ / start_succ < 0.35
    assert with_dead_succ > 60


def test_teacher_dfs_backtracks_are_a_mix_of_necessary_and_premature():
    """On strongly connected graphs every state reaches the goal, so the depth-limited DFS's
    backtracks out of states with untried successors all count as premature; with a dead
    region most of its backtracks are necessary, and the premature ones are the depth-limit
    cut-offs in live territory."""
    shares = {}
    for structure in ("dead-ends", "strongly-connected"):
        cfg = graph.Config(structure=structure)
        batch = graph.sample_instances(cfg, 3, "train", np.arange(300))
        out = run_search(batch, cfg.num_nodes, cfg.max_distance, "dfs", "random", 3, np.arange(300))
        assert np.all(out["path_len"] > 0)  # the teacher finds the goal on every instance
        premature = necessary = 0
        for i in range(300):
            events = [(Event(int(k)), int(p)) for k, p in out["events"][i, : out["n_events"][i]]]
            stats = analyse_stream(events, [], digraph.Walk(cfg, batch, i), 0)
            premature += stats.premature
            necessary += stats.necessary
        shares[structure] = premature / (premature + necessary)
    assert shares["strongly-connected"] > 0.6
    assert 0.03 < shares["dead-ends"] < 0.3


# --------------------------------------------------------------------------- lookahead


@pytest.mark.parametrize("edges,start,goal,expected", [
    # a right branch of 3 moves, a wrong successor without out-edges: seen at once
    ([(0, 1), (1, 2), (2, 3), (0, 4)], 0, 3, 1),
    # the wrong branch ends after 2 moves: 2 moves of lookahead
    ([(0, 1), (1, 2), (2, 3), (0, 4), (4, 5)], 0, 3, 2),
    # a dead cycle is also told apart once all of it is in sight (4 -> 5 -> 4: 2 moves)
    ([(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 4)], 0, 3, 2),
    # a wrong branch longer than the path: the goal is found first (2 moves)
    ([(0, 1), (1, 3), (0, 4), (4, 5), (5, 6)], 0, 3, 2),
    # a live wrong successor (a detour to the goal): only the goal tells them apart
    ([(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (6, 3)], 0, 3, 3),
    # every successor is right (two shortest paths), or there is one: nothing to look ahead
    ([(0, 1), (0, 2), (1, 3), (2, 3)], 0, 3, 0),
    ([(0, 1), (1, 2)], 0, 2, 0),
    # the goal is not reachable
    ([(0, 1), (2, 3)], 0, 3, -1),
])
def test_lookahead_on_hand_built_graphs(edges, start, goal, expected):
    assert digraph.lookahead(np.array(edges, dtype=np.int32), start, goal, 7) == expected


def test_balanced_lookahead_is_uniform_and_the_default_is_not():
    n = 3000
    cfg = graph.Config(structure="balanced")
    batch = graph.sample_instances(cfg, 0, "train", np.arange(n))
    diff = graph.difficulty(cfg, batch)
    assert set(diff) == {"distance", "lookahead_depth"}  # eval records use `lookahead` already
    looks = diff["lookahead_depth"]
    counts = np.bincount(looks, minlength=7)
    assert counts[0] == 0 and counts.sum() == n
    assert np.all(np.abs(counts[1:] - n / 6) < 90), counts  # about 4 standard deviations
    assert np.all(looks <= diff["distance"])
    assert np.all((3 <= diff["distance"]) & (diff["distance"] <= 6))
    for i in range(200):
        inst = graph.instance_at(batch, i)
        assert digraph.replay_plan(inst, inst["plan"])[0]
        edges = [tuple(e) for e in inst["edges"]]
        assert len(set(edges)) == 40 and all(u != v for u, v in edges)
        succ = [v for u, v in edges if u == inst["start"]]
        live = live_nodes(edges, inst["goal"], 20)
        assert len(succ) == 2 and sum(v in live for v in succ) == 1  # one right, one dead
    # the naive (default) distribution puts nearly all instances at lookahead 3 and 4
    base = graph.difficulty(graph.Config(), graph.sample_instances(graph.Config(), 0, "train", np.arange(n)))
    base_counts = np.bincount(base["lookahead_depth"], minlength=7)
    assert base_counts[1] + base_counts[2] < 0.01 * n
    assert base_counts[3] + base_counts[4] > 0.6 * n


def test_balanced_max_lookahead_and_wider_branching():
    cfg = make_config("graph", {"structure": "balanced", "num_nodes": 30, "out_degree": 3,
                                "min_distance": 2, "max_distance": 5, "max_lookahead": 3})
    batch = graph.sample_instances(cfg, 4, "test", np.arange(1200))
    looks = graph.difficulty(cfg, batch)["lookahead_depth"]
    counts = np.bincount(looks, minlength=4)
    assert counts[0] == 0 and len(counts) == 4 and np.all(np.abs(counts[1:] - 400) < 70), counts
    out = run_search(batch, 30, 5, "dfs", "random", 4, np.arange(1200))
    assert np.all(out["path_len"] > 0)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("structure", graph.STRUCTURES)
def test_instances_are_the_same_whatever_the_batch_and_thread_count(structure):
    cfg = make_config("graph", {"num_nodes": 20, "out_degree": 3, "min_distance": 2,
                                "max_distance": 4, "structure": structure})
    salts = np.arange(300) % 4
    whole = graph.sample_instances(cfg, 11, "train", np.arange(300), salts)
    parts = [graph.sample_instances(cfg, 11, "train", np.arange(lo, min(lo + 37, 300)), salts[lo: lo + 37])
             for lo in range(0, 300, 37)]
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = graph.sample_instances(cfg, 11, "train", np.arange(300), salts)
    finally:
        numba.set_num_threads(threads)
    for key in whole:
        assert np.array_equal(whole[key], np.concatenate([p[key] for p in parts]))
        assert np.array_equal(whole[key], single[key])
    # the salt redraws an instance; seed and split change everything
    unsalted = graph.sample_instances(cfg, 11, "train", np.arange(300))
    assert np.array_equal(unsalted["edges"][salts == 0], whole["edges"][salts == 0])
    assert not np.array_equal(unsalted["edges"][salts != 0], whole["edges"][salts != 0])
    assert not np.array_equal(graph.sample_instances(cfg, 12, "train", np.arange(300))["edges"],
                              unsalted["edges"])
    assert not np.array_equal(graph.sample_instances(cfg, 11, "test", np.arange(300))["edges"],
                              unsalted["edges"])


# --------------------------------------------------------------------------- config, env, inspect


@pytest.mark.parametrize("values,fragment", [
    ({"structure": "maze"}, "graph structure must be one of dead-ends, strongly-connected, balanced, got 'maze'."),  # noqa: E501
    ({"dead_share": 1.5}, "graph dead_share must be a number strictly between 0 and 1, got 1.5."),
    ({"max_lookahead": 9}, "graph max_lookahead must be between 0 (meaning max_distance) and max_distance = 6, got 9."),  # noqa: E501
    ({"out_degree": 1}, "graph structure dead-ends needs out_degree >= 2"),
    ({"num_nodes": 8, "min_distance": 5, "max_distance": 6}, "keeps 5 live nodes"),
    ({"structure": "balanced", "out_degree": 1}, "graph structure balanced needs out_degree >= 2"),
    ({"structure": "balanced", "num_nodes": 12}, "raise num_nodes to at least 15"),
])
def test_bad_structure_settings_get_one_sentence(values, fragment):
    with pytest.raises(UserError) as err:
        make_config("graph", values)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0


@pytest.mark.parametrize("structure", graph.STRUCTURES)
def test_env_passes_check_env_for_every_structure(structure):
    env = gym.make("retroplan/GraphPlan-v0", num_nodes=16, out_degree=2, min_distance=2,
                   max_distance=4, structure=structure)
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=3)
    inst = {"edges": obs["edges"].tolist(), "start": int(obs["start"]), "goal": int(obs["goal"])}
    plan = np.empty(5, dtype=np.int32)
    n = digraph.shortest_plan(obs["edges"].astype(np.int32), inst["start"], inst["goal"], 16, plan)
    total = 0.0
    for node in plan[1:n]:
        _, reward, terminated, _, info = env.step(int(node))
        total += reward
        assert not info["illegal"]
    assert total == 1.0 and terminated


def test_inspect_shows_the_lookahead_distribution(tmp_path, capsys):
    spec = SuiteSpec("graph", "stream", {"structure": "balanced"}, {}, 0,
                     {"train": 600, "val": 20, "test": 20})
    path = generate_suite(spec, tmp_path / "suite", progress=False)
    assert main(["inspect", str(path), "--split", "train", "--rows", "0"]) == 0
    out = capsys.readouterr().out
    assert "structure balanced: lookahead uniform over 1..6" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("lookahead "))
    hist = dict(item.split(":") for item in line.split(";")[0].split()[1:7])
    assert sorted(hist) == ["1", "2", "3", "4", "5", "6"]
    assert all(60 < int(c) < 140 for c in hist.values())
    assert "dead ends (R = 0)" in line
