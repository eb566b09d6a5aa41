"""The path-star graph of Bachmann & Nagarajan (2024), "The pitfalls of next-token prediction".

A centre node, `degree` arms of `path_len - 1` further nodes each (so a centre-to-leaf path
has `path_len` nodes, counting the centre), node labels drawn without replacement from
`num_nodes`, and the directed edges (centre -> arm, along each arm) shuffled. The start is
the centre, the goal the leaf of one arm, and the plan is the centre -> goal path.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from .. import rng
from ..errors import require, require_field_types, setting
from . import digraph, rl

# The Task members (tasks.Task) both digraph tasks share, exported as this task's own.
from .digraph import Walk, assess, fingerprints, instance_at, max_episode_steps, replay_plan, state_label

NAME = "pathstar"
ENV_ID = "retroplan/PathStar-v0"
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 1000, "val": 100, "test": 100}
MAX_NODES = 4096


@dataclass(frozen=True)
class Config:
    degree: int = setting(2, "arms leaving the centre (at least 2)")
    path_len: int = setting(5, "nodes on a centre-to-leaf path, counting the centre (at least 2)")
    num_nodes: int = setting(50, f"node labels drawn from 0..num_nodes-1 (at most {MAX_NODES}; at least "
                                 "degree x (path_len - 1) + 1)")

    def validate(self) -> None:
        require_field_types(self, "pathstar")
        require(self.degree >= 2, f"pathstar degree must be at least 2, got {self.degree}.")
        require(self.path_len >= 2,
                f"pathstar path_len must be at least 2 (it counts the centre), got {self.path_len}.")
        require(2 <= self.num_nodes <= MAX_NODES,
                f"pathstar num_nodes must be between 2 and {MAX_NODES}, got {self.num_nodes}.")
        need = self.degree * (self.path_len - 1) + 1
        require(need <= self.num_nodes,
                f"a path-star graph with degree {self.degree} and path_len {self.path_len} has "
                f"{need} nodes, more than num_nodes={self.num_nodes}; raise num_nodes to at least {need}.")

    def to_dict(self) -> dict:
        return asdict(self)


def num_edges(cfg: Config) -> int:
    return cfg.degree * (cfg.path_len - 1)


def depth_limit(cfg: Config) -> int:
    """How deep the DFS searchers may go: the longest plan the config allows (centre to leaf)."""
    return cfg.path_len - 1


# Every node but the centre has one predecessor: searching backwards from the goal is following
# a chain (`traces/digraphs.variant_note` says so next to the backward variants).
BACKWARD_CHAIN = True


def chance(cfg: Config) -> float:
    """Accuracy of guessing the arm: what a forward model that only follows edges reaches."""
    return 1.0 / cfg.degree


def difficulty(cfg: Config, batch: dict) -> dict[str, np.ndarray]:
    """Per-instance difficulty, recorded in every exported row and eval record."""
    n = batch["start"].shape[0]
    return {"degree": np.full(n, cfg.degree), "path_len": np.full(n, cfg.path_len)}


def describe(cfg: Config) -> list[str]:
    """Lines `retroplan inspect` prints about the config: none, the config line says it all."""
    return []


def instance_bounds(cfg: Config) -> dict:
    """Nodes are labels 0..num_nodes-1; a plan is the path_len nodes centre -> goal."""
    node = cfg.num_nodes - 1
    return {"edges": ((num_edges(cfg), 2), 0, node), "start": ((), 0, node), "goal": ((), 0, node),
            "plan": ((cfg.path_len,), 0, node), "plan_len": ((), cfg.path_len, cfg.path_len)}


def split_summary(cfg: Config, instances: dict) -> str | None:
    """A line about a split's instances for `retroplan inspect`: None, every path-star instance
    of a config has the same shape (degree arms of path_len nodes)."""
    return None


@njit(cache=True, parallel=True)
def _sample(seed, stream, indices, salts, degree, path_len, num_nodes, edges, start, goal, plan):
    for k in prange(indices.shape[0]):
        _sample_at(k, seed, stream, indices, salts, degree, path_len, num_nodes, edges, start, goal, plan)


# The same draws on the calling thread, for the Gymnasium env (rl.sample_one): no parallel
# kernel, so no OpenMP runtime starts in a process that may fork vector envs later.
@njit(cache=True)
def _sample_serial(seed, stream, indices, salts, degree, path_len, num_nodes, edges, start, goal, plan):
    for k in range(indices.shape[0]):
        _sample_at(k, seed, stream, indices, salts, degree, path_len, num_nodes, edges, start, goal, plan)


@njit(cache=True)
def _sample_at(k, seed, stream, indices, salts, degree, path_len, num_nodes, edges, start, goal, plan):
    """Instance k of the batch."""
    arm_len = path_len - 1
    n_edges = degree * arm_len
    state = rng.new_state(seed, stream, indices[k], salts[k])
    labels = np.arange(num_nodes, dtype=np.int32)
    for i in range(n_edges + 1):  # partial Fisher-Yates: labels without replacement
        j = i + rng.randbelow(state, num_nodes - i)
        t = labels[i]
        labels[i] = labels[j]
        labels[j] = t
    order = np.arange(n_edges, dtype=np.int32)
    rng.shuffle(state, order)
    centre = labels[0]
    e = 0
    for a in range(degree):
        prev = centre
        for j in range(arm_len):
            node = labels[1 + a * arm_len + j]
            edges[k, order[e], 0] = prev
            edges[k, order[e], 1] = node
            e += 1
            prev = node
    g = rng.randbelow(state, degree)
    start[k] = centre
    plan[k, 0] = centre
    for j in range(arm_len):
        plan[k, 1 + j] = labels[1 + g * arm_len + j]
    goal[k] = plan[k, arm_len]


def sample_instances(cfg: Config, seed: int, split: str, indices: np.ndarray,
                     salts: np.ndarray | None = None, serial: bool = False) -> dict:
    """Instances `indices` of (`seed`, `split`); `salts` redraws chosen ones (dedup); `serial`
    draws on the calling thread (the same instances; what the Gymnasium env uses)."""
    indices, salts, batch = digraph.empty_batch(indices, salts, num_edges(cfg), cfg.path_len)
    batch["plan_len"][:] = cfg.path_len  # every plan runs from the centre to a leaf
    stream = rng.stream_key(rng.STREAM_INSTANCE, split)
    kernel = _sample_serial if serial else _sample
    kernel(np.uint64(seed), stream, indices, salts, cfg.degree, cfg.path_len,
            cfg.num_nodes, batch["edges"], batch["start"], batch["goal"], batch["plan"])
    return batch


class Env(digraph.DigraphEnv):
    """`retroplan/PathStar-v0`: walk from the centre to the goal leaf."""

    task = sys.modules[__name__]


make_env = rl.entry_point(Env)
