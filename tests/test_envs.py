"""Tasks: the generators build what their papers describe, reproducibly, and the Gymnasium
envs keep the contract."""

import copy
import re
import subprocess
import sys
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


# --------------------------------------------------------------- RL: masks, penalty, time limits


def random_walk_success(edges, start, goal, num_nodes, max_steps):
    """The oracle's chance that a walker who picks uniformly among the legal moves (the distinct
    successors of its node) reaches the goal within `max_steps` moves; a node without out-edges
    stops it. Exact: the walk's distribution, moved one step at a time, the goal absorbing."""
    succ = {u: sorted({int(b) for a, b in edges if a == u}) for u in range(num_nodes)}
    mass = np.zeros(num_nodes)
    mass[start] = 1.0
    reached = 0.0
    for _ in range(max_steps):
        after = np.zeros(num_nodes)
        for u in np.flatnonzero(mass):
            for v in succ[u]:
                after[v] += mass[u] / len(succ[u])
        reached += after[goal]
        after[goal] = 0.0
        mass = after
    return reached


def play_masked(env, rng, reset_with, check=None):
    """One episode of the masked random agent from `env.reset(seed=reset_with)` (an int) or
    `env.reset(options=reset_with)` (a dict); returns (reward total, last info)."""
    if isinstance(reset_with, dict):
        obs, info = env.reset(options=reset_with)
    else:
        obs, info = env.reset(seed=reset_with)
    total, done = 0.0, False
    while not done:
        legal = np.flatnonzero(info["action_mask"].reshape(-1))
        assert legal.size, "a running episode always offers a legal move"
        flat = int(rng.choice(legal))
        action = np.array(np.unravel_index(flat, info["action_mask"].shape)) if info["action_mask"].ndim > 1 \
            else flat
        obs, reward, terminated, truncated, info = env.step(action)
        assert not info["illegal"]
        if check is not None:
            check(obs)
        total += reward
        done = terminated or truncated
    if terminated:  # the goal, no legal move left, or (Countdown) no number left to combine
        assert not info["action_mask"].any()
    if terminated and total == 0.0 and "edges" in obs:  # off the goal on a graph: stuck
        assert info["stuck"]
    return total, info


@pytest.mark.parametrize("env_id,kwargs", [
    ("retroplan/PathStar-v0", {"degree": 3, "path_len": 4, "num_nodes": 20}),
    ("retroplan/PathStar-v0", {"degree": 2, "path_len": 6, "num_nodes": 30}),
    ("retroplan/GraphPlan-v0", {"num_nodes": 12, "out_degree": 2, "min_distance": 2, "max_distance": 4}),
    ("retroplan/GraphPlan-v0", {"num_nodes": 14, "out_degree": 2, "min_distance": 2, "max_distance": 4,
                                "structure": "balanced"}),
])
def test_masked_random_agent_reaches_the_goal_at_the_oracle_rate(env_id, kwargs):
    """On each of 10 instances, 150 episodes of the masked random agent reach the goal as often as
    the oracle predicts for that instance (within 4 standard errors). A mask that let an illegal
    move through trips the `illegal` assert and ends episodes early; one that hid a legal move
    moves an instance's rate (path-star, degree 3: to 0 or 1/2 instead of 1/3) by more than 4
    standard errors. Per instance, because over random instances such a mistake can average out."""
    env = gym.make(env_id, **kwargs)
    n, limit = kwargs["num_nodes"], env.spec.max_episode_steps
    assert limit == n
    rng = np.random.default_rng(0)
    episodes, all_successes, all_predicted = 150, 0, 0.0
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        inst = {"edges": obs["edges"].tolist(), "start": int(obs["start"]), "goal": int(obs["goal"])}
        p = random_walk_success(inst["edges"], inst["start"], inst["goal"], n, limit)
        if env_id == "retroplan/PathStar-v0":
            # the arms are chains: 1 / degree at the centre, then one legal move per node
            assert p == pytest.approx(1 / kwargs["degree"])
        successes = sum(play_masked(env, rng, {"instance": inst})[0] == 1.0 for _ in range(episodes))
        assert abs(successes - episodes * p) <= 4 * np.sqrt(episodes * p * (1 - p)) + 1e-9, (seed, p)
        all_successes += successes
        all_predicted += episodes * p
    print(f"{env_id} {kwargs}: {all_successes}/{10 * episodes} reached the goal, "
          f"oracle predicts {all_predicted:.1f}")


def countdown_random_play_success(numbers, target, operations):
    """The oracle's chance that a player who picks uniformly among the legal (i, j, op) of the
    current numbers ends on the target (plain Python arithmetic, not the env's code)."""
    if len(numbers) == 1:
        return float(numbers[0] == target)
    outcomes = []
    for i in range(len(numbers)):
        for j in range(len(numbers)):
            if i == j:
                continue
            hi, lo = max(numbers[i], numbers[j]), min(numbers[i], numbers[j])
            results = {"+": numbers[i] + numbers[j], "*": numbers[i] * numbers[j], "-": hi - lo,
                       "/": hi // lo if lo and hi % lo == 0 else None}
            for sym in operations:
                if results[sym] is not None:
                    rest = [v for k, v in enumerate(numbers) if k not in (i, j)] + [results[sym]]
                    outcomes.append(countdown_random_play_success(rest, target, operations))
    return sum(outcomes) / len(outcomes) if outcomes else 0.0


@pytest.mark.parametrize("flat_actions", [False, True])
def test_masked_random_countdown_player_wins_at_the_oracle_rate(flat_actions):
    env = gym.make("retroplan/Countdown-v0", n_inputs=3, max_input=12, min_target=4, max_target=30,
                   flat_actions=flat_actions)
    assert env.spec.max_episode_steps == 8
    space = env.unwrapped.observation_space
    rng = np.random.default_rng(1)
    wins, predicted, variance = 0, 0.0, 0.0
    for episode in range(600):
        obs, _ = env.reset(seed=episode)
        p = countdown_random_play_success(obs["numbers"].tolist(), int(obs["target"][0]), "+-*/")
        predicted += p
        variance += p * (1 - p)
        total, info = play_masked(env, rng, episode, check=lambda o: space.contains(o))
        assert space.contains(obs)
        wins += total == 1.0
    print(f"countdown flat={flat_actions}: {wins}/600 won, oracle predicts {predicted:.1f}")
    assert abs(wins - predicted) <= 4 * np.sqrt(variance)


def legal_by_stepping(env, action):
    """Whether `action` is legal: step a copy of the env and read `info["illegal"]`."""
    twin = copy.deepcopy(env)
    return not twin.step(action)[4]["illegal"]


@pytest.mark.parametrize("env_id,kwargs", [
    ("retroplan/PathStar-v0", {"degree": 3, "path_len": 4, "num_nodes": 12}),
    ("retroplan/GraphPlan-v0", {"num_nodes": 10, "out_degree": 3, "min_distance": 2, "max_distance": 4}),
])
def test_graph_mask_marks_exactly_the_legal_moves(env_id, kwargs):
    env = gym.make(env_id, **kwargs).unwrapped
    rng = np.random.default_rng(2)
    for episode in range(10):
        obs, info = env.reset(seed=episode)
        inst = {"edges": obs["edges"].tolist(), "start": int(obs["start"]), "goal": int(obs["goal"])}
        done = False
        while not done:
            mask = info["action_mask"]
            assert mask.dtype == bool and mask.shape == (kwargs["num_nodes"],)
            assert np.array_equal(mask, env.action_masks())
            node = int(obs["current"])
            assert set(np.flatnonzero(mask)) == {v for u, v in inst["edges"] if u == node}
            assert [legal_by_stepping(env, a) for a in range(kwargs["num_nodes"])] == mask.tolist()
            obs, _, terminated, truncated, info = env.step(int(rng.choice(np.flatnonzero(mask))))
            done = terminated or truncated
        assert not info["action_mask"].any() or truncated


def test_countdown_mask_marks_exactly_the_legal_moves():
    from retroplan.envs import countdown as cd

    for config in ({"max_input": 20}, {"operations": "-/", "max_input": 30, "max_target": 20},
                   {"operations": "/", "n_inputs": 3, "max_input": 12, "min_target": 1, "max_target": 3}):
        env = gym.make("retroplan/Countdown-v0", **config).unwrapped
        operations = env.config.operations
        n = env.config.n_inputs
        rng = np.random.default_rng(3)
        for episode in range(6):
            obs, info = env.reset(seed=episode)
            done = False
            while not done:
                mask = info["action_mask"]
                assert mask.dtype == bool and mask.shape == (n, n, 4)
                numbers = [v for v in obs["numbers"].tolist() if v >= 0]
                for i, j, op in np.ndindex(n, n, 4):
                    assert mask[i, j, op] == legal_by_stepping(env, np.array([i, j, op])), (numbers, i, j, op)
                    if mask[i, j, op]:  # the verifier agrees: the move written as SoS writes it is legal
                        ok, result, first, second = cd.combine(np.int64(numbers[i]), np.int64(numbers[j]), op)
                        step = cd.format_step(first, op, second, result)
                        after, why = cd.apply_step(numbers, step, operations)
                        assert after is not None, why
                i, j, op = np.unravel_index(int(rng.choice(np.flatnonzero(mask))), mask.shape)
                obs, _, terminated, truncated, info = env.step(np.array([i, j, op]))
                done = terminated or truncated
            assert not info["action_mask"].any()


def test_no_legal_move_left_ends_the_episode():
    env = gym.make("retroplan/Countdown-v0", operations="/", n_inputs=3, max_input=12, min_target=1,
                   max_target=3)
    _, info = env.reset(options={"instance": {"numbers": [4, 2, 3], "target": 1}})
    assert sorted(map(tuple, np.argwhere(info["action_mask"]))) == [(0, 1, 3), (1, 0, 3)]  # only 4/2
    obs, reward, terminated, truncated, info = env.step(np.array([0, 1, 3]))  # 4/2, then 3 and 2
    assert obs["numbers"].tolist() == [3, 2, -1] and (reward, terminated, truncated) == (0.0, True, False)
    assert info["stuck"] and not info["illegal"] and not info["action_mask"].any()


def test_flat_countdown_actions_are_the_triples_in_order():
    env = gym.make("retroplan/Countdown-v0", flat_actions=True).unwrapped
    assert env.action_space == gym.spaces.Discrete(4 * 4 * 4)
    _, info = env.reset(options={"instance": {"numbers": [12, 63, 96, 99], "target": 33}})
    assert info["action_mask"].shape == (64,) and not info["action_mask"][(0 * 4 + 3) * 4 + 3]  # 99/12
    # 99-96=3 (slots 2, 3, op 2), then 63/3 (slots 1, 2, op 3), then 12+21 (slots 0, 1, op 0)
    for i, j, op in ((2, 3, 2), (1, 2, 3), (0, 1, 0)):
        assert info["action_mask"][(i * 4 + j) * 4 + op]
        obs, reward, terminated, _, info = env.step((i * 4 + j) * 4 + op)
    assert reward == 1.0 and terminated and obs["numbers"].tolist() == [33, -1, -1, -1]


def test_penalty_keeps_the_state_and_the_time_limit_ends_the_episode():
    env = gym.make("retroplan/PathStar-v0", degree=2, path_len=3, num_nodes=8, illegal="penalty",
                   illegal_penalty=0.25)
    obs, info = env.reset(seed=0)
    start, mask = int(obs["start"]), info["action_mask"]
    non_edge = int(np.flatnonzero(~mask)[0])
    obs2, reward, terminated, truncated, info2 = env.step(non_edge)
    assert (reward, terminated, truncated, info2["illegal"]) == (-0.25, False, False, True)
    assert int(obs2["current"]) == start and np.array_equal(info2["action_mask"], mask)
    for step in range(2, 9):  # max_episode_steps = num_nodes = 8 moves in all
        _, reward, terminated, truncated, info2 = env.step(non_edge)
        assert reward == -0.25 and not terminated and truncated == (step == 8)
    # legal moves still work after illegal ones
    obs, _ = env.reset(seed=0)
    env.step(non_edge)
    inst = {"edges": obs["edges"].tolist(), "start": start, "goal": int(obs["goal"])}
    plan = [int(obs["goal"])]
    while plan[0] != start:
        plan.insert(0, next(u for u, v in inst["edges"] if v == plan[0]))
    for node in plan[1:]:
        _, reward, terminated, _, info2 = env.step(node)
    assert reward == 1.0 and terminated and not info2["illegal"]

    cd_env = gym.make("retroplan/Countdown-v0", illegal="penalty")  # default penalty 0.1, 12 moves
    obs, _ = cd_env.reset(options={"instance": {"numbers": [12, 63, 96, 99], "target": 33}})
    for step in range(1, 13):
        obs2, reward, terminated, truncated, info = cd_env.step(np.array([0, 3, 3]))  # 99/12: inexact
        assert reward == -0.1 and info["illegal"] and info["reachable"] and not terminated
        assert np.array_equal(obs2["numbers"], obs["numbers"]) and truncated == (step == 12)


def test_max_steps_and_the_registered_time_limit():
    from retroplan.envs import countdown as cd

    for env_id, task, kwargs in (("retroplan/PathStar-v0", pathstar, {"num_nodes": 31}),
                                 ("retroplan/GraphPlan-v0", graph, {}),
                                 ("retroplan/Countdown-v0", cd, {"n_inputs": 5})):
        env = gym.make(env_id, **kwargs)
        assert env.spec.max_episode_steps == task.max_episode_steps(make_config(task.NAME, kwargs))
        assert gym.make(env_id, max_steps=7, **kwargs).spec.max_episode_steps == 7
    assert pathstar.max_episode_steps(pathstar.Config(num_nodes=31)) == 31
    assert cd.max_episode_steps(cd.Config(n_inputs=5)) == 16


@pytest.mark.parametrize("env_id,kwargs", [
    ("retroplan/PathStar-v0", {"illegal": "penalty", "illegal_penalty": 1}),
    ("retroplan/GraphPlan-v0", {"structure": "balanced", "illegal": "penalty"}),
    ("retroplan/Countdown-v0", {}),
    ("retroplan/Countdown-v0", {"flat_actions": True, "illegal": "penalty", "n_inputs": 6, "max_input": 999}),
])
def test_every_env_passes_check_env_with_its_mask(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped)
    _, info = env.reset(seed=0)
    assert np.array_equal(info["action_mask"], env.unwrapped.action_masks())
    assert info["action_mask"].dtype == bool and info["action_mask"].any()
    space, cfg = env.unwrapped.observation_space, env.unwrapped.config
    if env_id == "retroplan/Countdown-v0":
        assert space["numbers"].high.max() == max(cfg.max_input, 2) ** cfg.n_inputs
        assert space["numbers"].high.max() < 2**63


@pytest.mark.parametrize("kwargs,fragment", [
    ({"illegal": "skip"}, "illegal must be one of end, penalty, got 'skip'."),
    ({"illegal_penalty": -1}, "illegal_penalty must be a number >= 0, got -1."),
    ({"illegal_penalty": "0.1"}, "illegal_penalty must be a number >= 0"),
    ({"max_steps": 0}, "max_steps must be a positive integer"),
])
def test_bad_env_options_are_refused_with_a_sentence(kwargs, fragment):
    for env_id in ("retroplan/PathStar-v0", "retroplan/Countdown-v0"):
        with pytest.raises(UserError, match=re.escape(fragment)):
            gym.make(env_id, **kwargs)
    with pytest.raises(UserError, match="flat_actions must be true or false"):
        gym.make("retroplan/Countdown-v0", flat_actions="yes")
    with pytest.raises(UserError, match="numbers must lie in 1..99"):
        gym.make("retroplan/Countdown-v0").reset(
            options={"instance": {"numbers": [1, 2, 3, 1000], "target": 33}})
    with pytest.raises(UserError, match="edges of shape"):
        gym.make("retroplan/PathStar-v0").reset(
            options={"instance": {"edges": [[0, 1]], "start": 0, "goal": 1}})


def test_import_retroplan_registers_the_envs_without_loading_them():
    code = (
        "import sys, retroplan, gymnasium\n"
        "assert 'retroplan.envs' not in sys.modules and 'numba' not in sys.modules\n"
        "env = gymnasium.make('retroplan/PathStar-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert info['action_mask'].sum() == 2 and env.spec.max_episode_steps == 50\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_registration_table_names_every_task():
    import retroplan
    from retroplan.envs import TASKS

    assert retroplan.ENV_ENTRY_POINTS == {t.ENV_ID: f"{t.__name__}:make_env" for t in TASKS.values()}
    for env_id in retroplan.ENV_ENTRY_POINTS:
        assert gym.spec(env_id).entry_point == retroplan.ENV_ENTRY_POINTS[env_id]


ENV_IDS = ("retroplan/PathStar-v0", "retroplan/GraphPlan-v0", "retroplan/Countdown-v0")


def test_async_vector_envs_fork_after_the_parent_used_an_env():
    """`gym.make_vec(..., vectorization_mode="async")` forks; GNU OpenMP aborts a process that
    forks after starting its runtime. The env's own path (reset samples an instance, step) runs
    no parallel kernel, so a parent that played every env can still fork vector envs."""
    code = (
        "import gymnasium as gym, numba, numpy as np, retroplan\n"
        f"ids = {ENV_IDS!r}\n"
        "for env_id in ids:\n"
        "    env = gym.make(env_id)\n"
        "    _, info = env.reset(seed=0)\n"
        "    legal = int(np.flatnonzero(info['action_mask'])[0])\n"
        "    mask = info['action_mask']\n"
        "    env.step(np.unravel_index(legal, mask.shape) if mask.ndim > 1 else legal)\n"
        "assert not numba.np.ufunc.parallel._is_initialized  # no threading layer started\n"
        "for env_id in ids:\n"
        "    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode='async')\n"
        "    obs, info = venv.reset(seed=0)\n"
        "    masks = info['action_mask'].reshape(2, -1)\n"
        "    assert masks.any(axis=1).all()  # each env has a legal move\n"
        "    venv.step(venv.action_space.sample())\n"
        "    venv.close()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_serial_sampler_draws_the_same_instances():
    from retroplan.envs import countdown as cd

    for task, cfg in ((pathstar, pathstar.Config()), (graph, graph.Config(structure="balanced")),
                      (graph, graph.Config()), (cd, cd.Config())):
        indices = np.arange(5, 40)
        parallel = task.sample_instances(cfg, 3, "train", indices)
        serial = task.sample_instances(cfg, 3, "train", indices, serial=True)
        assert parallel.keys() == serial.keys()
        assert all(np.array_equal(parallel[k], serial[k]) for k in parallel)


@pytest.mark.parametrize("env_id,kwargs", [
    ("retroplan/PathStar-v0", {}), ("retroplan/GraphPlan-v0", {"structure": "dead-ends"}),
    ("retroplan/Countdown-v0", {"flat_actions": True}), ("retroplan/Countdown-v0", {}),
])
def test_action_masks_is_reachable_from_what_gym_make_returns(env_id, kwargs):
    """MaskablePPO's convention on the object `gym.make` returns (sb3-contrib's
    `get_action_masks` when it is installed, else the method it calls), and through a user's
    own wrapper by `get_wrapper_attr`, as SB3's vector envs reach it."""
    try:
        from sb3_contrib.common.maskable.utils import get_action_masks
    except ImportError:
        def get_action_masks(env):
            return env.action_masks()
    env = gym.make(env_id, **kwargs)
    _, info = env.reset(seed=1)
    assert np.array_equal(get_action_masks(env), info["action_mask"]) and info["action_mask"].any()
    mask = info["action_mask"]
    legal = np.flatnonzero(mask)[0]
    action = int(legal) if mask.ndim == 1 else np.unravel_index(legal, mask.shape)
    info = env.step(action)[-1]
    assert np.array_equal(env.action_masks(), info["action_mask"])
    wrapped = gym.wrappers.RecordEpisodeStatistics(env)
    assert np.array_equal(wrapped.get_wrapper_attr("action_masks")(), info["action_mask"])
    with pytest.raises(gym.error.ResetNeeded):  # gym.make's own wrappers are still there
        gym.make(env_id, **kwargs).step(action)
