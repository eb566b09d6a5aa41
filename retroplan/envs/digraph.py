"""What the two directed-graph tasks (`pathstar`, `graph`) share.

An instance is a directed graph given as a shuffled edge list, a start and a goal; a plan is
a node list from start to goal whose consecutive pairs are edges. A batch of instances is a
dict of arrays with a leading instance axis:

    edges     (N, E, 2) int32   the edge list in prompt order
    start     (N,)      int32
    goal      (N,)      int32
    plan      (N, P)    int32   the reference plan (a shortest path), padded with -1
    plan_len  (N,)      int32   nodes in the reference plan (moves + 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numba import njit, prange

from .. import rng
from ..errors import require
from . import rl


def empty_batch(indices, salts, n_edges: int, plan_width: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """What a digraph task's `sample_instances` fills: (indices as int64, salts as int64, zeros
    when None, and the batch's empty arrays: edges, start, goal, plan, plan_len)."""
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    n = indices.shape[0]
    salts = np.zeros(n, dtype=np.int64) if salts is None else np.ascontiguousarray(salts, np.int64)
    return indices, salts, {
        "edges": np.empty((n, n_edges, 2), dtype=np.int32),
        "start": np.empty(n, dtype=np.int32),
        "goal": np.empty(n, dtype=np.int32),
        "plan": np.empty((n, plan_width), dtype=np.int32),
        "plan_len": np.empty(n, dtype=np.int32),
    }


def instance_at(batch: dict, i: int) -> dict:
    """Instance `i` of a batch as plain Python values (what exports and the env use)."""
    n = int(batch["plan_len"][i])
    return {
        "edges": batch["edges"][i].tolist(),
        "start": int(batch["start"][i]),
        "goal": int(batch["goal"][i]),
        "plan": batch["plan"][i, :n].tolist(),
    }


# --------------------------------------------------------------------------- oracle


@njit(cache=True)
def bfs_distances(src, dst, root, num_nodes):
    """Moves from `root` to every node along the edges src -> dst, -1 if unreachable."""
    ptr, adj = csr(src, dst, num_nodes)
    dist = np.full(num_nodes, -1, dtype=np.int32)
    queue = np.empty(num_nodes, dtype=np.int32)
    dist[root] = 0
    queue[0] = root
    head, tail = 0, 1
    while head < tail:
        u = queue[head]
        head += 1
        for j in range(ptr[u], ptr[u + 1]):
            v = adj[j]
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue[tail] = v
                tail += 1
    return dist


@njit(cache=True)
def distances_to_goal(edges, goal, num_nodes):
    """d*(s) for every node s: moves on the shortest path s -> goal, -1 if unreachable
    (breadth-first search from the goal along reversed edges)."""
    return bfs_distances(edges[:, 1], edges[:, 0], goal, num_nodes)


@njit(cache=True)
def csr(src, dst, num_nodes):
    """Adjacency in compressed sparse rows; each row keeps the edge-list order."""
    ptr = np.zeros(num_nodes + 1, dtype=np.int32)
    for e in range(src.shape[0]):
        ptr[src[e] + 1] += 1
    for u in range(num_nodes):
        ptr[u + 1] += ptr[u]
    fill = ptr[:-1].copy()
    adj = np.empty(src.shape[0], dtype=np.int32)
    for e in range(src.shape[0]):
        adj[fill[src[e]]] = dst[e]
        fill[src[e]] += 1
    return ptr, adj


@njit(cache=True)
def shortest_plan(edges, start, goal, num_nodes, out):
    """Write the shortest start -> goal path into `out`; return its node count (0: none).

    Ties are broken towards the smallest node label, so the plan is a function of the graph.
    """
    dist = distances_to_goal(edges, goal, num_nodes)
    if dist[start] < 0:
        return 0
    ptr, adj = csr(edges[:, 0], edges[:, 1], num_nodes)
    u = start
    out[0] = u
    n = 1
    while u != goal:
        best = -1
        for j in range(ptr[u], ptr[u + 1]):
            v = adj[j]
            if dist[v] == dist[u] - 1 and (best < 0 or v < best):
                best = v
        u = best
        out[n] = u
        n += 1
    return n


@njit(cache=True)
def lookahead(edges, start, goal, num_nodes):
    """How many moves one must look ahead from the start before the right first move is known
    (after Saparov et al. 2025, "Transformers Struggle to Learn to Search").

    A successor c of the start is *right* when it lies on a shortest path (d*(c) = d*(start)
    - 1). A wrong successor is told apart in one of two ways: when it is a dead end (the goal
    is not reachable from it), by looking far enough to see everything reachable from it end
    without the goal, that is 1 + the largest breadth-first depth from c (a successor with no
    out-edges: 1); when it is live (the goal is reachable from it, only not as fast), only by
    finding the goal through a right successor, after d*(start) moves. The lookahead is
    min(d*(start), the largest of these over the wrong successors), 0 when every successor is
    right (a single successor, or only shortest ones), -1 when the goal is not reachable.
    """
    dist = distances_to_goal(edges, goal, num_nodes)
    d0 = dist[start]
    if d0 < 0:
        return -1
    worst = 0
    for e in range(edges.shape[0]):
        if edges[e, 0] != start:
            continue
        c = edges[e, 1]
        if dist[c] == d0 - 1:
            continue
        if dist[c] >= 0:
            return d0
        reach = bfs_distances(edges[:, 0], edges[:, 1], c, num_nodes)
        worst = max(worst, 1 + reach.max())
    return min(d0, worst)


@njit(cache=True, parallel=True)
def lookaheads(edges, start, goal, num_nodes):
    """`lookahead` of every instance of a batch."""
    out = np.empty(edges.shape[0], dtype=np.int32)
    for i in prange(edges.shape[0]):
        out[i] = lookahead(edges[i], start[i], goal[i], num_nodes)
    return out


@njit(cache=True, parallel=True)
def instance_hashes(edges, start, goal):
    """A 64-bit fingerprint of each instance that ignores edge order (used to keep test
    instances out of training)."""
    n = edges.shape[0]
    out = np.empty(n, dtype=np.uint64)
    for i in prange(n):
        codes = np.empty(edges.shape[1], dtype=np.uint64)
        for e in range(edges.shape[1]):
            codes[e] = (np.uint64(edges[i, e, 0]) << np.uint64(32)) | np.uint64(edges[i, e, 1])
        codes.sort()
        h = rng.mix64(np.uint64(start[i]) * np.uint64(0x100000001B3) + np.uint64(goal[i]))
        for e in range(codes.shape[0]):
            h = rng.mix64(h ^ codes[e])
        out[i] = h
    return out


def fingerprints(batch: dict) -> np.ndarray:
    return instance_hashes(batch["edges"], batch["start"], batch["goal"])


# --------------------------------------------------------------------------- verifier


def replay_plan(instance: dict, plan: list[int]) -> tuple[bool, str]:
    """Replay `plan` move by move in the instance's graph.

    Returns (True, "reaches the goal") or (False, the first reason it fails). Plain Python on
    purpose: this is the judge of every number we report.
    """
    if not plan:
        return False, "empty plan"
    edge_set = {(int(u), int(v)) for u, v in instance["edges"]}
    if plan[0] != instance["start"]:
        return False, f"starts at {plan[0]}, not at the start {instance['start']}"
    for u, v in zip(plan, plan[1:]):
        if (u, v) not in edge_set:
            return False, f"{u}->{v} is not an edge"
    if plan[-1] != instance["goal"]:
        return False, f"ends at {plan[-1]}, not at the goal {instance['goal']}"
    return True, "reaches the goal"


def assess(cfg, instances: dict, i: int, plan: list[int]) -> dict:
    """Every verdict eval reports on one plan: `correct` and `reason` (from replay_plan),
    `first_step` (the first move lies on a shortest path to the goal), `optimal`, and
    `optimal_moves` = d*(start) (for SWC)."""
    inst = instance_at(instances, i)
    ok, reason = replay_plan(inst, plan)
    dist = distances_to_goal(instances["edges"][i], instances["goal"][i], cfg.num_nodes)
    d0 = int(dist[inst["start"]])
    first = False
    if len(plan) >= 2 and plan[0] == inst["start"] and 0 <= plan[1] < cfg.num_nodes:
        is_edge = any(u == plan[0] and v == plan[1] for u, v in inst["edges"])
        first = bool(is_edge and dist[plan[1]] == d0 - 1)
    return {"correct": ok, "reason": reason, "first_step": first,
            "optimal": bool(ok and len(plan) - 1 == d0), "optimal_moves": d0}


class Walk:
    """What the behaviour metrics need to judge a search stream on one instance.

    A forward stream starts at the start and moves along edges towards the goal; a backward
    stream starts at the goal and moves along reversed edges towards the start. `live(s)` is
    R(s) (the stream's target is reachable from s) and `distance(s)` is d*(s), both in the
    stream's own direction.
    """

    def __init__(self, cfg, instances: dict, i: int, backward: bool = False):
        edges = np.asarray(instances["edges"][i])
        start, goal = int(instances["start"][i]), int(instances["goal"][i])
        if backward:
            edges = np.ascontiguousarray(edges[:, ::-1])
            start, goal = goal, start
        self.num_nodes = cfg.num_nodes
        self.root, self.target = start, goal
        self._succ: dict[int, list[int]] = {}
        for u, v in edges.tolist():
            self._succ.setdefault(u, []).append(v)
        self._dist = distances_to_goal(edges.astype(np.int32), goal, cfg.num_nodes)

    def go(self, current, payload):
        """(the state the stream claims to be in, why the move is invalid or None)."""
        if not 0 <= payload < self.num_nodes:
            return None, "not_a_state"
        if payload not in self._succ.get(current, ()):
            return payload, "not_available"
        return payload, None

    def back_target(self, payload):
        return payload if 0 <= payload < self.num_nodes else None

    def successors(self, state) -> list[int]:
        return self._succ.get(state, [])

    def live(self, state) -> bool:
        return state is not None and 0 <= state < self.num_nodes and bool(self._dist[state] >= 0)

    def distance(self, state) -> int:
        return int(self._dist[state])

    def is_goal(self, state) -> bool:
        return state == self.target


def state_label(state) -> str:
    """How search-tree pictures label a state: the node."""
    return str(state)


# --------------------------------------------------------------------------- Gymnasium


@dataclass
class _EnvInstance:
    edges: np.ndarray
    start: int
    goal: int


def max_episode_steps(cfg) -> int:
    """Moves before a graph-task episode is truncated: `num_nodes` (a walk that enters no node
    twice needs at most num_nodes - 1; the rest is room for illegal moves with
    `illegal="penalty"`)."""
    return cfg.num_nodes


class DigraphEnv(gym.Env):
    """Walk from the start to the goal of one graph instance.

    Observation: the instance (`edges`, `start`, `goal`) and the `current` node.
    Action: the next node (`Discrete(num_nodes)`). Reward 1 on reaching the goal (the episode
    ends). A move to a node without out-edges other than the goal ends the episode with reward 0
    and `info["stuck"] = True` (no legal move is left). A move along a non-edge sets
    `info["illegal"] = True` and, with `illegal="end"` (default), ends the episode with reward 0;
    with `illegal="penalty"` it gives reward `-illegal_penalty` and leaves the walker where it
    was. The episode is truncated after `max_steps` moves (default `num_nodes`).
    `info["action_mask"]` / `action_masks()`: bool (num_nodes,), True at the current node's
    successors (all False once the episode has ended). See `envs/rl.py`.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    task = None  # the task module; set by subclasses

    def __init__(self, render_mode: str | None = None, illegal: str = "end",
                 illegal_penalty: float = rl.DEFAULT_ILLEGAL_PENALTY, max_steps: int | None = None,
                 **config):
        self.config = self.task.Config(**config)
        self.config.validate()
        rl.check_options(illegal, illegal_penalty, max_steps)
        self.illegal = illegal
        self.illegal_penalty = float(illegal_penalty)
        self.max_steps = max_episode_steps(self.config) if max_steps is None else max_steps
        n = self.config.num_nodes
        self._num_edges = self.task.num_edges(self.config)
        self.observation_space = spaces.Dict(
            {
                "edges": spaces.Box(0, n - 1, shape=(self._num_edges, 2), dtype=np.int64),
                "start": spaces.Discrete(n),
                "goal": spaces.Discrete(n),
                "current": spaces.Discrete(n),
            }
        )
        self.action_space = rl.MaskedDiscrete(n)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}.")
        self.render_mode = render_mode
        self._inst = None
        self._current = 0
        self._moves = 0
        self._over = False
        self._edge_set: set[tuple[int, int]] = set()
        self._succ_start = np.zeros(n + 1, dtype=np.int64)  # CSR: successors of u are
        self._succ = np.zeros(0, dtype=np.int64)             # _succ[_succ_start[u]:_succ_start[u + 1]]

    def _obs(self):
        return {
            "edges": self._inst.edges.astype(np.int64),
            "start": np.int64(self._inst.start),
            "goal": np.int64(self._inst.goal),
            "current": np.int64(self._current),
        }

    def _successors(self, node: int) -> np.ndarray:
        return self._succ[self._succ_start[node]:self._succ_start[node + 1]]

    def action_masks(self) -> np.ndarray:
        """bool (num_nodes,): True where a move from the current state is legal."""
        mask = np.zeros(self.config.num_nodes, dtype=bool)
        if not self._over:
            mask[self._successors(self._current)] = True
        return mask

    def _info(self, illegal: bool | None = None, stuck: bool = False) -> dict:
        info = {"action_mask": self.action_masks()}
        if illegal is not None:
            info["illegal"] = illegal
            info["stuck"] = stuck
        return info

    def _given_instance(self, given) -> _EnvInstance:
        n = self.config.num_nodes
        edges = np.asarray(given["edges"], dtype=np.int64)
        require(edges.shape == (self._num_edges, 2),
                f"the instance has edges of shape {edges.shape}; this env takes ({self._num_edges}, 2).")
        start, goal = int(given["start"]), int(given["goal"])
        require(bool(np.all((edges >= 0) & (edges < n))) and 0 <= start < n and 0 <= goal < n,
                f"the instance's nodes must lie in 0..{n - 1} (num_nodes={n}).")
        return _EnvInstance(edges, start, goal)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "instance" in options:
            inst = self._given_instance(options["instance"])
        else:
            instance_seed = int(self.np_random.integers(0, 2**62))
            batch = rl.sample_one(self.task, self.config, instance_seed)
            inst = _EnvInstance(batch["edges"][0].astype(np.int64), int(batch["start"][0]),
                                int(batch["goal"][0]))
        self._inst = inst
        self._edge_set = {(int(u), int(v)) for u, v in inst.edges}
        pairs = np.array(sorted(self._edge_set), dtype=np.int64).reshape(-1, 2)  # distinct, by source
        self._succ = pairs[:, 1].copy()
        self._succ_start = np.searchsorted(pairs[:, 0], np.arange(self.config.num_nodes + 1))
        self._current = inst.start
        self._moves = 0
        self._over = False
        return self._obs(), self._info()

    def step(self, action):
        action = int(action)
        self._moves += 1
        out_of_moves = self._moves >= self.max_steps
        if (self._current, action) not in self._edge_set:
            if self.illegal == "end":
                self._over = True
                return self._obs(), 0.0, True, False, self._info(illegal=True)
            return self._obs(), -self.illegal_penalty, False, out_of_moves, self._info(illegal=True)
        self._current = action
        reached = action == self._inst.goal
        stuck = not reached and self._successors(action).shape[0] == 0
        self._over = reached or stuck
        truncated = not self._over and out_of_moves
        reward = 1.0 if reached else 0.0
        return self._obs(), reward, self._over, truncated, self._info(illegal=False, stuck=stuck)

    def render(self):
        if self.render_mode == "ansi":
            edges = " ".join(f"{u}>{v}" for u, v in self._inst.edges)
            return f"{edges} | start {self._inst.start} goal {self._inst.goal} at {self._current}"
        return None
