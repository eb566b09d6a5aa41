"""General graph planning: a random strongly connected directed graph, a start and a goal
at a chosen shortest-path distance; the plan is a shortest start -> goal path.

Construction: a Hamiltonian cycle through the nodes in random order (so every node reaches
every other), then `out_degree - 1` further out-edges per node to distinct random targets.
The start is uniform; the goal is uniform among the nodes whose distance from the start lies
in [`min_distance`, `max_distance`] moves (the graph is redrawn when there is none).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from .. import rng
from ..errors import UserError, require
from . import digraph
from .splits import split_stream

NAME = "graph"
ENV_ID = "retroplan/GraphPlan-v0"
MAX_NODES = 4096
_ATTEMPTS = 256  # redraws of one instance before we call the config infeasible


@dataclass(frozen=True)
class Config:
    num_nodes: int = 20
    out_degree: int = 2
    min_distance: int = 3
    max_distance: int = 6

    def validate(self) -> None:
        for name in ("num_nodes", "out_degree", "min_distance", "max_distance"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"graph {name} must be an integer, got {value!r}.")
        require(3 <= self.num_nodes <= MAX_NODES,
                f"graph num_nodes must be between 3 and {MAX_NODES}, got {self.num_nodes}.")
        require(1 <= self.out_degree < self.num_nodes,
                f"graph out_degree must be between 1 and num_nodes - 1 = {self.num_nodes - 1}, "
                f"got {self.out_degree}.")
        require(1 <= self.min_distance <= self.max_distance,
                f"graph needs 1 <= min_distance <= max_distance, got min_distance="
                f"{self.min_distance} and max_distance={self.max_distance}.")
        require(self.max_distance <= self.num_nodes - 1,
                f"graph max_distance must be at most num_nodes - 1 = {self.num_nodes - 1}, "
                f"got {self.max_distance}.")

    def to_dict(self) -> dict:
        return asdict(self)


def num_edges(cfg: Config) -> int:
    return cfg.num_nodes * cfg.out_degree


def chance(cfg: Config) -> None:
    """No single chance level: it depends on each graph's branching."""
    return None


def difficulty(cfg: Config, batch: dict) -> dict[str, np.ndarray]:
    """Per-instance difficulty: the optimal number of moves."""
    return {"distance": batch["plan_len"] - 1}


@njit(cache=True)
def _draw(state, n, k, edges_out):
    """One random strongly connected k-out digraph; fills edges_out (n*k, 2) unshuffled."""
    order = np.arange(n, dtype=np.int32)
    rng.shuffle(state, order)
    taken = np.zeros(n, dtype=np.bool_)
    e = 0
    for i in range(n):
        u = order[i]
        succ = order[(i + 1) % n]
        edges_out[e, 0] = u
        edges_out[e, 1] = succ
        e += 1
        taken[:] = False
        taken[u] = True
        taken[succ] = True
        for _ in range(k - 1):
            v = rng.randbelow(state, n)
            while taken[v]:
                v = rng.randbelow(state, n)
            taken[v] = True
            edges_out[e, 0] = u
            edges_out[e, 1] = v
            e += 1


@njit(cache=True, parallel=True)
def _sample(seed, stream, indices, salts, n, k, dmin, dmax, edges, start, goal, plan, plan_len):
    n_edges = n * k
    for idx in prange(indices.shape[0]):
        plan_len[idx] = 0
        raw = np.empty((n_edges, 2), dtype=np.int32)
        for attempt in range(_ATTEMPTS):
            state = rng.new_state(seed, stream, indices[idx], salts[idx] * _ATTEMPTS + attempt)
            _draw(state, n, k, raw)
            s = rng.randbelow(state, n)
            dist = digraph.bfs_distances(raw[:, 0], raw[:, 1], s, n)
            count = 0
            for v in range(n):
                if dmin <= dist[v] <= dmax:
                    count += 1
            if count == 0:
                continue
            pick = rng.randbelow(state, count)
            g = -1
            for v in range(n):
                if dmin <= dist[v] <= dmax:
                    if pick == 0:
                        g = v
                        break
                    pick -= 1
            order = np.arange(n_edges, dtype=np.int32)
            rng.shuffle(state, order)
            for e in range(n_edges):
                edges[idx, order[e], 0] = raw[e, 0]
                edges[idx, order[e], 1] = raw[e, 1]
            start[idx] = s
            goal[idx] = g
            plan[idx, :] = -1
            plan_len[idx] = digraph.shortest_plan(edges[idx], s, g, n, plan[idx])
            break


def sample_instances(cfg: Config, seed: int, split: str, indices: np.ndarray,
                     salts: np.ndarray | None = None) -> dict:
    """Instances `indices` of (`seed`, `split`); `salts` redraws chosen ones (dedup)."""
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    n = indices.shape[0]
    salts = np.zeros(n, dtype=np.int64) if salts is None else np.ascontiguousarray(salts, np.int64)
    batch = {
        "edges": np.empty((n, num_edges(cfg), 2), dtype=np.int32),
        "start": np.empty(n, dtype=np.int32),
        "goal": np.empty(n, dtype=np.int32),
        "plan": np.empty((n, cfg.max_distance + 1), dtype=np.int32),
        "plan_len": np.empty(n, dtype=np.int32),
    }
    _sample(np.uint64(seed), split_stream(split), indices, salts, cfg.num_nodes, cfg.out_degree,
            cfg.min_distance, cfg.max_distance, batch["edges"], batch["start"], batch["goal"],
            batch["plan"], batch["plan_len"])
    if n and batch["plan_len"].min() == 0:
        raise UserError(
            f"no graph with {cfg.num_nodes} nodes and out_degree {cfg.out_degree} had a goal at "
            f"distance {cfg.min_distance}..{cfg.max_distance} from the start in {_ATTEMPTS} "
            "draws; lower min_distance or out_degree.")
    return batch


class Env(digraph.DigraphEnv):
    """`retroplan/GraphPlan-v0`: walk a shortest (or any) path from start to goal."""

    task = sys.modules[__name__]


fingerprints = digraph.fingerprints
instance_at = digraph.instance_at
replay_plan = digraph.replay_plan
assess = digraph.assess
Walk = digraph.Walk
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 1000, "val": 100, "test": 100}
