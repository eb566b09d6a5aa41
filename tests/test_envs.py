"""Tasks: the generators build what their papers describe, reproducibly, and the Gymnasium
envs keep the contract."""

from collections import deque

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from retroplan.envs import digraph, graph, make_config, pathstar
from retroplan.errors import UserError


def bfs_dist(edges, src):
    adj = {}
    for u, v in edges:
        adj.setdefault(u, []).append(v)
    dist = {src: 0}
    q = deque([src])
    while q:
        u = q.popleft()
        for v in adj.get(u, []):
            if v not in dist:
                dist[v] = dist[u] + 1
                q.append(v)
    return dist


@pytest.mark.parametrize("degree,path_len,num_nodes", [(2, 5, 50), (5, 5, 50), (3, 2, 7), (4, 8, 40)])
def test_pathstar_is_the_paper_graph(degree, path_len, num_nodes):
    cfg = pathstar.Config(degree=degree, path_len=path_len, num_nodes=num_nodes)
    batch = pathstar.sample_instances(cfg, 3, "train", np.arange(50))
    for i in range(50):
        inst = pathstar.instance_at(batch, i)
        edges = inst["edges"]
        assert len(edges) == degree * (path_len - 1)
        nodes = {u for e in edges for u in e}
        assert len(nodes) == degree * (path_len - 1) + 1  # labels without replacement
        assert all(0 <= u < num_nodes for u in nodes)
        centre = inst["start"]
        outdeg = {u: sum(1 for a, _ in edges if a == u) for u in nodes}
        indeg = {u: sum(1 for _, b in edges if b == u) for u in nodes}
        assert outdeg[centre] == degree and indeg[centre] == 0
        leaves = [u for u in nodes if outdeg[u] == 0]
        assert len(leaves) == degree and inst["goal"] in leaves
        assert all(indeg[u] == 1 for u in nodes if u != centre)
        # every leaf is path_len - 1 moves from the centre; the plan is the centre->goal path
        dist = bfs_dist(edges, centre)
        assert all(dist[leaf] == path_len - 1 for leaf in leaves)
        plan = inst["plan"]
        assert len(plan) == path_len and plan[0] == centre and plan[-1] == inst["goal"]
        assert all((u, v) in {tuple(e) for e in edges} for u, v in zip(plan, plan[1:]))


def test_pathstar_edges_are_shuffled_and_goal_arm_uniform():
    cfg = pathstar.Config(degree=3, path_len=4, num_nodes=30)
    batch = pathstar.sample_instances(cfg, 0, "train", np.arange(3000))
    # the first listed edge leaves the centre in 3/9 of graphs if edges are shuffled
    first_from_centre = np.mean(batch["edges"][:, 0, 0] == batch["start"])
    assert abs(first_from_centre - 1 / 3) < 0.04
    # the goal's arm is the i-th centre edge in order of the edge list uniformly
    position = []
    for i in range(3000):
        centre_edges = [v for u, v in batch["edges"][i] if u == batch["start"][i]]
        position.append(centre_edges.index(batch["plan"][i, 1]))
    counts = np.bincount(position, minlength=3) / 3000
    assert np.all(np.abs(counts - 1 / 3) < 0.04)


@pytest.mark.parametrize("task,cfg", [
    (pathstar, pathstar.Config(degree=3, path_len=5, num_nodes=40)),
    (graph, graph.Config(num_nodes=15, out_degree=3, min_distance=2, max_distance=4)),
])
def test_instance_depends_only_on_seed_split_index(task, cfg):
    whole = task.sample_instances(cfg, 11, "train", np.arange(200))
    parts = [task.sample_instances(cfg, 11, "train", np.arange(lo, lo + 37)) for lo in range(0, 200, 37)]
    for key in whole:
        glued = np.concatenate([p[key] for p in parts])[:200]
        assert np.array_equal(whole[key], glued)
    other_split = task.sample_instances(cfg, 11, "test", np.arange(200))
    other_seed = task.sample_instances(cfg, 12, "train", np.arange(200))
    assert not np.array_equal(whole["edges"], other_split["edges"])
    assert not np.array_equal(whole["edges"], other_seed["edges"])


def test_strongly_connected_graph_is_connected_with_goal_at_requested_distance():
    # the default structure (`dead-ends`) has dead ends on purpose: tests/test_graph_task.py
    cfg = graph.Config(num_nodes=18, out_degree=2, min_distance=4, max_distance=5,
                       structure="strongly-connected")
    batch = graph.sample_instances(cfg, 1, "val", np.arange(300))
    for i in range(300):
        inst = graph.instance_at(batch, i)
        edges = [tuple(e) for e in inst["edges"]]
        assert len(edges) == 36 and len(set(edges)) == 36 and all(u != v for u, v in edges)
        outdeg = np.bincount([u for u, _ in edges], minlength=18)
        assert np.all(outdeg == 2)
        for src in range(18):  # strongly connected
            assert len(bfs_dist(edges, src)) == 18
        d = bfs_dist(edges, inst["start"])[inst["goal"]]
        assert 4 <= d <= 5
        assert len(inst["plan"]) - 1 == d  # the reference plan is a shortest path
        ok, _ = digraph.replay_plan(inst, inst["plan"])
        assert ok


def test_oracle_distances_match_plain_bfs():
    cfg = graph.Config(num_nodes=12, out_degree=2, min_distance=2, max_distance=5)
    batch = graph.sample_instances(cfg, 5, "train", np.arange(40))
    for i in range(40):
        edges = batch["edges"][i]
        dist = digraph.distances_to_goal(edges, batch["goal"][i], 12)
        reversed_edges = [(int(v), int(u)) for u, v in edges]
        expect = bfs_dist(reversed_edges, int(batch["goal"][i]))
        for s in range(12):
            assert dist[s] == expect.get(s, -1)


def test_replay_plan_rejects_each_kind_of_bad_plan():
    inst = {"edges": [[0, 3], [3, 7], [0, 5], [5, 2]], "start": 0, "goal": 2}
    assert digraph.replay_plan(inst, [0, 5, 2]) == (True, "reaches the goal")
    assert not digraph.replay_plan(inst, [])[0]
    assert "not at the start" in digraph.replay_plan(inst, [5, 2])[1]
    assert "not an edge" in digraph.replay_plan(inst, [0, 2])[1]
    assert "not an edge" in digraph.replay_plan(inst, [0, 3, 2])[1]
    assert "not at the goal" in digraph.replay_plan(inst, [0, 3, 7])[1]


@pytest.mark.parametrize("env_id,kwargs", [
    ("retroplan/PathStar-v0", {"degree": 3, "path_len": 4, "num_nodes": 20}),
    ("retroplan/GraphPlan-v0", {"num_nodes": 10, "out_degree": 2, "min_distance": 2, "max_distance": 4}),
])
def test_gymnasium_envs_pass_check_env_and_play_by_the_rules(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=4)
    obs2, _ = env.reset(seed=4)
    assert np.array_equal(obs["edges"], obs2["edges"])  # seeded reset is reproducible
    edges = [tuple(e) for e in obs["edges"].tolist()]
    # follow the reference plan: reward 1 exactly at the goal
    inst = {"edges": edges, "start": int(obs["start"]), "goal": int(obs["goal"])}
    dist = bfs_dist([(v, u) for u, v in edges], inst["goal"])
    node, total = inst["start"], 0.0
    while node != inst["goal"]:
        node = min((v for u, v in edges if u == node and v in dist), key=lambda v: dist[v])
        obs, reward, terminated, truncated, info = env.step(node)
        total += reward
        assert not info["illegal"]
    assert total == 1.0 and terminated
    # an illegal move ends the episode without reward
    env.reset(seed=5)
    start = int(env.unwrapped._inst.start)
    non_edge = next(v for v in range(kwargs["num_nodes"]) if (start, v) not in env.unwrapped._edge_set)
    _, reward, terminated, _, info = env.step(non_edge)
    assert reward == 0.0 and terminated and info["illegal"]


@pytest.mark.parametrize("task,values,fragment", [
    ("pathstar", {"degree": 5, "path_len": 5, "num_nodes": 20}, "raise num_nodes to at least 21"),
    ("pathstar", {"degree": 1}, "degree must be at least 2"),
    ("pathstar", {"path_len": 1}, "path_len must be at least 2"),
    ("pathstar", {"degree": "2"}, "must be an integer"),
    ("pathstar", {"colour": 3}, "unknown pathstar setting 'colour'"),
    ("graph", {"out_degree": 0}, "out_degree must be between 1"),
    ("graph", {"num_nodes": 5, "max_distance": 9}, "max_distance must be at most"),
    ("graph", {"min_distance": 4, "max_distance": 3}, "min_distance <= max_distance"),
    ("graph", {"structure": "maze"}, "structure must be one of dead-ends, strongly-connected, balanced"),
    ("graph", {"num_nodes": 30, "out_degree": 29}, "dead region takes 30 of the 30"),
    ("chess", {}, "unknown task 'chess'"),
])
def test_impossible_configs_are_refused_with_a_sentence(task, values, fragment):
    with pytest.raises(UserError, match=fragment):
        make_config(task, values)


def test_infeasible_distance_is_reported_not_looped_forever():
    cfg = graph.Config(num_nodes=30, out_degree=29, min_distance=5, max_distance=6,
                       structure="strongly-connected")
    with pytest.raises(UserError, match="lower min_distance or out_degree"):
        graph.sample_instances(cfg, 0, "train", np.arange(2))
