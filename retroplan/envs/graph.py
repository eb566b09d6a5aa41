"""General graph planning: a directed graph, a start and a goal at a shortest distance in
[`min_distance`, `max_distance`] moves; the plan is a shortest start -> goal path.

A *dead end* is a node from which the goal cannot be reached (R = 0). The *lookahead* of an
instance is how many moves one must look ahead from the start before the right first move is
known (`digraph.lookahead`; after Saparov et al. 2025). `structure` picks the generator:

- `dead-ends` (default): the goal is reachable from the start but not from everywhere. The
  nodes are split at random into a one-way *dead region* of D = max(out_degree + 1,
  round(dead_share * num_nodes)) nodes and a *live part* of the others. Live part: a
  Hamiltonian cycle through its nodes in random order, plus out_degree - 1 edges per node to
  distinct random nodes of the whole graph (so an edge may lead into the dead region). Dead
  region: out_degree edges per node to distinct random nodes of the dead region only. Nothing
  leaves the dead region, so a node is a dead end exactly when it lies in it, and every live
  node reaches every other. Start and goal are live: the start uniform, the goal uniform among
  the live nodes at the requested distance (the graph is redrawn when there is none).
- `strongly-connected`: the earlier generator, byte for byte: a Hamiltonian cycle through all
  nodes plus out_degree - 1 random chords per node; every node reaches every other (no dead
  ends), the start uniform, the goal uniform among the nodes at the requested distance.
- `balanced` (after Saparov et al. 2025): the lookahead L is drawn uniformly from
  1..max_lookahead (0: max_distance), then the distance d uniformly from
  max(min_distance, L)..max_distance. The start has out_degree branches, each a path whose
  nodes have one out-edge: one reaches the goal after d moves; the other out_degree - 1 stop
  at a node without out-edges after m moves (m = L when d > L, L or L + 1 at random when
  d = L), so the branches look alike for L moves. The goal and the remaining nodes carry the
  rest of the edges, to random targets; nothing on a branch leads to those nodes, so they
  change neither the distance nor the lookahead (both are checked on every instance).

Every structure has exactly num_nodes * out_degree edges (`edges` is (N, num_nodes *
out_degree, 2)): one out_degree per node in `dead-ends` and `strongly-connected`; in
`balanced`, branch nodes have one (or none) and the goal and the other nodes share the rest
as evenly as possible.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from .. import rng
from ..errors import UserError, require, require_field_types, setting
from . import digraph, rl

# The Task members (tasks.Task) both digraph tasks share, exported as this task's own.
from .digraph import Walk, assess, fingerprints, instance_at, max_episode_steps, replay_plan, state_label

NAME = "graph"
ENV_ID = "retroplan/GraphPlan-v0"
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 1000, "val": 100, "test": 100}
MAX_NODES = 4096
_ATTEMPTS = 256  # redraws of one instance before we call the config infeasible
STRUCTURES = ("dead-ends", "strongly-connected", "balanced")
_DEAD_ENDS, _STRONGLY_CONNECTED, _BALANCED = range(len(STRUCTURES))  # codes `_sample` takes


# Like every task's Config (tasks.Settings), a list of typed fields with defaults: alike in shape
# to Countdown's, with nothing shared but the form.
@dataclass(frozen=True)
class Config:
    num_nodes: int = setting(20, f"nodes of the graph, 3 to {MAX_NODES}")
    out_degree: int = setting(2, "out-edges per node (in balanced: on average)")
    min_distance: int = setting(3, "shortest start-to-goal distance drawn, in moves")
    max_distance: int = setting(6, "longest start-to-goal distance drawn, in moves (at most num_nodes - 1)")
    structure: str = setting("dead-ends", f"the generator: {', '.join(STRUCTURES)} (this module's "
                                          "docstring describes each)")
    dead_share: float = setting(0.4, "dead-ends: share of the nodes in the one-way dead region, in (0, 1)")
    max_lookahead: int = setting(0, "balanced: the lookahead is drawn from 1..max_lookahead "
                                    "(0: max_distance)")

    def validate(self) -> None:
        require_field_types(self, "graph")
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
        require(self.structure in STRUCTURES,
                f"graph structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}.")
        require(0 < self.dead_share < 1,
                f"graph dead_share must be a number strictly between 0 and 1, got {self.dead_share!r}.")
        require(0 <= self.max_lookahead <= self.max_distance,
                f"graph max_lookahead must be between 0 (meaning max_distance) and max_distance = "
                f"{self.max_distance}, got {self.max_lookahead}.")
        if self.structure == "dead-ends":
            self._validate_dead_ends()
        elif self.structure == "balanced":
            self._validate_balanced()

    def _validate_dead_ends(self) -> None:
        k, n = self.out_degree, self.num_nodes
        require(k >= 2, "graph structure dead-ends needs out_degree >= 2 (one edge of each live node "
                        "keeps the live part connected, the others may lead into the dead region), "
                        f"got {k}.")
        dead = dead_nodes(self)
        require(dead <= n - 2,
                f"graph structure dead-ends needs 2 live nodes, but its dead region takes {dead} of "
                f"the {n} (dead_share {self.dead_share} of them, and at least out_degree + 1 = {k + 1} "
                "as each dead node points to out_degree other dead nodes); lower out_degree or "
                "dead_share, or raise num_nodes.")
        require(self.min_distance <= n - dead - 1,
                f"graph structure dead-ends keeps {n - dead} live nodes, so no goal is more than "
                f"{n - dead - 1} moves from the start, below min_distance {self.min_distance}; lower "
                "min_distance or dead_share, or raise num_nodes.")

    def _validate_balanced(self) -> None:
        k = self.out_degree
        require(k >= 2, "graph structure balanced needs out_degree >= 2 (the start's out_degree "
                        f"branches: one to the goal, the others dead), got {k}.")
        need = _balanced_min_nodes(self)
        fix = (f"raise num_nodes to at least {need} or lower" if need <= MAX_NODES
               else f"no num_nodes up to {MAX_NODES} fits; lower")
        require(need <= self.num_nodes,
                f"graph structure balanced with out_degree {k}, max_distance {self.max_distance} and "
                f"max_lookahead {lookahead_max(self)} needs {need} nodes for its largest instances; "
                f"{fix} max_distance, max_lookahead or out_degree.")

    def to_dict(self) -> dict:
        return asdict(self)


def dead_nodes(cfg: Config) -> int:
    """`dead-ends`: how many nodes the dead region has."""
    return max(cfg.out_degree + 1, int(cfg.dead_share * cfg.num_nodes + 0.5))


def lookahead_max(cfg: Config) -> int:
    """`balanced`: the largest lookahead drawn."""
    return cfg.max_lookahead or cfg.max_distance


def _balanced_fits(n: int, k: int, branch_nodes: int) -> bool:
    """Whether a balanced instance whose branches hold `branch_nodes` nodes (the start
    included) fits n nodes: the goal and the nodes off the branches carry the other edges."""
    free = n - branch_nodes + 1            # the goal and the nodes off the branches
    return branch_nodes <= n and n * k - (branch_nodes - 1) <= free * (n - 1)


def _balanced_min_nodes(cfg: Config) -> int:
    """The fewest nodes every balanced instance of `cfg` fits in (MAX_NODES + 1: none). The
    largest instance binds: distance d with dead branches of d + 1 moves when the lookahead can
    be d, of max_lookahead moves otherwise."""
    k, lmax = cfg.out_degree, lookahead_max(cfg)
    branch = max(1 + d + (k - 1) * (d + 1 if d <= lmax else lmax)
                 for d in range(cfg.min_distance, cfg.max_distance + 1))
    n = cfg.num_nodes
    while n <= MAX_NODES and not _balanced_fits(n, k, branch):
        n += 1
    return n


def num_edges(cfg: Config) -> int:
    return cfg.num_nodes * cfg.out_degree


def depth_limit(cfg: Config) -> int:
    """How deep the DFS searchers may go: the longest plan the config allows."""
    return cfg.max_distance


# Backward searches branch as forward ones do (`traces/digraphs.variant_note`).
BACKWARD_CHAIN = False


def chance(cfg: Config) -> None:
    """No single chance level: it depends on each graph's branching."""
    return None


def difficulty(cfg: Config, batch: dict) -> dict[str, np.ndarray]:
    """Per-instance difficulty: the optimal number of moves and the lookahead
    (`digraph.lookahead`: moves to look ahead before the right first move is known), named
    `lookahead_depth` because eval records already use `lookahead` for the decoding mode."""
    return {"distance": batch["plan_len"] - 1,
            "lookahead_depth": digraph.lookaheads(batch["edges"], batch["start"], batch["goal"],
                                                  cfg.num_nodes)}


def describe(cfg: Config) -> list[str]:
    """Lines `retroplan inspect` prints about the config: what the structure means."""
    if cfg.structure == "dead-ends":
        dead = dead_nodes(cfg)
        return [f"structure dead-ends: {dead} of {cfg.num_nodes} nodes form a one-way dead region "
                "(the goal is not reachable from them); the others reach each other"]
    if cfg.structure == "balanced":
        return [f"structure balanced: lookahead uniform over 1..{lookahead_max(cfg)}, "
                "distance uniform over max(min_distance, lookahead)..max_distance"]
    return ["structure strongly-connected: every node reaches the goal (no dead ends)"]


@njit(cache=True, parallel=True)
def _dead_end_counts(edges, start, goal, n):
    """Per instance: dead ends (R = 0) among all nodes, among the start's successors, and the
    start's successors."""
    out = np.zeros((edges.shape[0], 3), dtype=np.int64)
    for i in prange(edges.shape[0]):
        dist = digraph.distances_to_goal(edges[i], goal[i], n)
        for v in range(n):
            out[i, 0] += dist[v] < 0
        for e in range(edges.shape[1]):
            if edges[i, e, 0] == start[i]:
                out[i, 1] += dist[edges[i, e, 1]] < 0
                out[i, 2] += 1
    return out


def instance_bounds(cfg: Config) -> dict:
    """Nodes are 0..num_nodes-1; a plan holds up to max_distance + 1 nodes, padded with -1."""
    node, width = cfg.num_nodes - 1, cfg.max_distance + 1
    return {"edges": ((num_edges(cfg), 2), 0, node), "start": ((), 0, node), "goal": ((), 0, node),
            "plan": ((width,), -1, node), "plan_len": ((), 1, width)}


def split_summary(cfg: Config, instances: dict) -> str:
    """One line about a split's instances for `retroplan inspect`: the measured lookahead
    and distance distributions and the share of dead ends."""
    n = int(instances["start"].shape[0])
    if not n:
        return "no instances"
    looks = difficulty(cfg, instances)["lookahead_depth"]
    counts = _dead_end_counts(instances["edges"], instances["start"], instances["goal"],
                              cfg.num_nodes).sum(axis=0)

    def hist(values):
        return " ".join(f"{v}:{c}" for v, c in enumerate(np.bincount(values)) if c)

    return (f"lookahead {hist(looks)} (mean {looks.mean():.2f}); distance "
            f"{hist(instances['plan_len'] - 1)}; dead ends (R = 0) {counts[0] / (n * cfg.num_nodes):.1%} "
            f"of nodes, {counts[1] / max(1, counts[2]):.1%} of the start's successors")


# --------------------------------------------------------------------------- kernels


@njit(cache=True, inline="always")
def _distinct_edges(state, u, count, pool, size, taken, edges_out, e):
    """`count` edges from u to distinct nodes pool[r], r uniform below `size`, none of them
    already `taken` (marked as they are drawn); returns the next free row of edges_out."""
    for _ in range(count):
        v = pool[rng.randbelow(state, size)]
        while taken[v]:
            v = pool[rng.randbelow(state, size)]
        taken[v] = True
        edges_out[e, 0] = u
        edges_out[e, 1] = v
        e += 1
    return e


@njit(cache=True)
def _cycle_with_chords(state, order, lo, c, n, k, taken, labels, edges_out, e):
    """Nodes order[lo:lo+c]: each gets an edge to the next in a cycle through them, then k - 1
    edges to distinct other random nodes among all n; returns the next free row of edges_out."""
    for i in range(c):
        u = order[lo + i]
        succ = order[lo + (i + 1) % c]
        edges_out[e, 0] = u
        edges_out[e, 1] = succ
        e += 1
        taken[:] = False
        taken[u] = True
        taken[succ] = True
        e = _distinct_edges(state, u, k - 1, labels, n, taken, edges_out, e)
    return e


@njit(cache=True)
def _draw(state, n, k, labels, edges_out):
    """One random strongly connected k-out digraph; fills edges_out (n*k, 2) unshuffled."""
    order = np.arange(n, dtype=np.int32)
    rng.shuffle(state, order)
    _cycle_with_chords(state, order, 0, n, n, k, np.zeros(n, dtype=np.bool_), labels, edges_out, 0)


@njit(cache=True)
def _draw_dead_ends(state, n, k, n_dead, labels, edges_out, live):
    """A `dead-ends` graph: fills edges_out (n*k, 2) unshuffled and `live` (n,) with the live
    mask; returns the node order (dead region first)."""
    order = np.arange(n, dtype=np.int32)
    rng.shuffle(state, order)
    c = n - n_dead
    taken = np.zeros(n, dtype=np.bool_)
    live[:] = False
    for i in range(c):
        live[order[n_dead + i]] = True
    # the live part: a cycle through it plus k - 1 edges anywhere
    e = _cycle_with_chords(state, order, n_dead, c, n, k, taken, labels, edges_out, 0)
    for i in range(n_dead):  # the dead region: k edges inside it
        u = order[i]
        taken[:] = False
        taken[u] = True
        e = _distinct_edges(state, u, k, order, n_dead, taken, edges_out, e)
    return order


@njit(cache=True)
def _draw_balanced(state, n, k, dmin, dmax, lmax, labels, edges_out):
    """A `balanced` graph: fills edges_out (n*k, 2) unshuffled; returns (start, goal,
    lookahead, distance) as drawn."""
    look = 1 + rng.randbelow(state, lmax)
    lo = max(dmin, look)
    d = lo + rng.randbelow(state, dmax - lo + 1)
    m = look
    if d == look:
        m += rng.randbelow(state, 2)
    # the goal and the nodes off the branches carry the rest, as evenly as possible
    pos = d + 1 + (k - 1) * m
    n_free = n - pos + 1
    left = n * k - d - (k - 1) * m
    if pos > n or left > n_free * (n - 1):  # does not fit (validate() rules this out)
        return -1, -1, look, d
    order = np.arange(n, dtype=np.int32)
    rng.shuffle(state, order)
    s = order[0]
    e = 0
    for i in range(1, d + 1):  # the branch to the goal
        edges_out[e, 0] = order[i - 1]
        edges_out[e, 1] = order[i]
        e += 1
    g = order[d]
    pos = d + 1
    for _ in range(k - 1):  # the dead branches
        prev = s
        for _ in range(m):
            edges_out[e, 0] = prev
            edges_out[e, 1] = order[pos]
            prev = order[pos]
            pos += 1
            e += 1
    base = left // n_free
    rank = np.arange(n_free, dtype=np.int32)
    rng.shuffle(state, rank)
    taken = np.zeros(n, dtype=np.bool_)
    for j in range(n_free):
        u = g if j == 0 else order[pos + j - 1]
        deg = base + (1 if rank[j] < left - base * n_free else 0)
        taken[:] = False
        taken[u] = True
        e = _distinct_edges(state, u, deg, labels, n, taken, edges_out, e)
    return s, g, look, d


@njit(cache=True)
def _emit(state, raw, s, g, n, edges_i, plan_i):
    """Shuffle the edge order into edges_i, write the reference plan; returns its length."""
    n_edges = raw.shape[0]
    order = np.arange(n_edges, dtype=np.int32)
    rng.shuffle(state, order)
    for e in range(n_edges):
        edges_i[order[e], 0] = raw[e, 0]
        edges_i[order[e], 1] = raw[e, 1]
    plan_i[:] = -1
    return digraph.shortest_plan(edges_i, s, g, n, plan_i)


@njit(cache=True, inline="always")
def _pick_goal(state, dist, live, dmin, dmax):
    """A goal drawn uniformly among the live nodes at distance dmin..dmax; -1 (and no draw)
    when there is none."""
    count = 0
    for v in range(dist.shape[0]):
        if live[v] and dmin <= dist[v] <= dmax:
            count += 1
    if count == 0:
        return -1
    pick = rng.randbelow(state, count)
    for v in range(dist.shape[0]):
        if live[v] and dmin <= dist[v] <= dmax:
            if pick == 0:
                return v
            pick -= 1
    return -1


@njit(cache=True, parallel=True)
def _sample(structure, seed, stream, indices, salts, n, k, dmin, dmax, n_dead, lmax, edges, start,
            goal, plan, plan_len):
    for idx in prange(indices.shape[0]):
        _sample_at(idx, structure, seed, stream, indices, salts, n, k, dmin, dmax, n_dead, lmax, edges,
                   start, goal, plan, plan_len)


# The same draws on the calling thread, for the Gymnasium env (rl.sample_one): no parallel
# kernel, so no OpenMP runtime starts in a process that may fork vector envs later.
@njit(cache=True)
def _sample_serial(structure, seed, stream, indices, salts, n, k, dmin, dmax, n_dead, lmax, edges,
                   start, goal, plan, plan_len):
    for idx in range(indices.shape[0]):
        _sample_at(idx, structure, seed, stream, indices, salts, n, k, dmin, dmax, n_dead, lmax, edges,
                   start, goal, plan, plan_len)


@njit(cache=True)
def _sample_at(idx, structure, seed, stream, indices, salts, n, k, dmin, dmax, n_dead, lmax, edges,
               start, goal, plan, plan_len):
    """Instance idx of the batch, any structure: up to _ATTEMPTS draws (plan_len 0 when all fail)."""
    n_edges = n * k
    plan_len[idx] = 0
    if structure == _DEAD_ENDS and (n_dead < k + 1 or n - n_dead < 2):
        return  # does not fit (validate() rules this out)
    raw = np.empty((n_edges, 2), dtype=np.int32)
    live = np.ones(n, dtype=np.bool_)
    labels = np.arange(n, dtype=np.int32)  # the node labels, for draws among all nodes
    for attempt in range(_ATTEMPTS):
        state = rng.new_state(seed, stream, indices[idx], salts[idx] * _ATTEMPTS + attempt)
        if structure == _BALANCED:
            s, g, look, d = _draw_balanced(state, n, k, dmin, dmax, lmax, labels, raw)
            # the construction guarantees d and the lookahead; checked so that no instance
            # can break them
            if (s < 0 or digraph.bfs_distances(raw[:, 0], raw[:, 1], s, n)[g] != d
                    or digraph.lookahead(raw, s, g, n) != look):
                continue
        else:
            if structure == _DEAD_ENDS:
                order = _draw_dead_ends(state, n, k, n_dead, labels, raw, live)
                s = order[n_dead + rng.randbelow(state, n - n_dead)]
            else:
                _draw(state, n, k, labels, raw)
                s = rng.randbelow(state, n)
            g = _pick_goal(state, digraph.bfs_distances(raw[:, 0], raw[:, 1], s, n), live, dmin, dmax)
            if g < 0:
                continue
        start[idx] = s
        goal[idx] = g
        plan_len[idx] = _emit(state, raw, s, g, n, edges[idx], plan[idx])
        break


def sample_instances(cfg: Config, seed: int, split: str, indices: np.ndarray,
                     salts: np.ndarray | None = None, serial: bool = False) -> dict:
    """Instances `indices` of (`seed`, `split`); `salts` redraws chosen ones (dedup); `serial`
    draws on the calling thread (the same instances; what the Gymnasium env uses)."""
    indices, salts, batch = digraph.empty_batch(indices, salts, num_edges(cfg), cfg.max_distance + 1)
    n = indices.shape[0]
    out = (batch["edges"], batch["start"], batch["goal"], batch["plan"], batch["plan_len"])
    stream = rng.stream_key(rng.STREAM_INSTANCE, split)
    n_dead = dead_nodes(cfg) if cfg.structure == "dead-ends" else 0
    lmax = lookahead_max(cfg) if cfg.structure == "balanced" else 0
    kernel = _sample_serial if serial else _sample
    kernel(STRUCTURES.index(cfg.structure), np.uint64(seed), stream, indices, salts, cfg.num_nodes,
            cfg.out_degree, cfg.min_distance, cfg.max_distance, n_dead, lmax, *out)
    if n and batch["plan_len"].min() == 0:
        where = " (its live part)" if cfg.structure == "dead-ends" else ""
        raise UserError(
            f"no graph with {cfg.num_nodes} nodes and out_degree {cfg.out_degree} had a goal at "
            f"distance {cfg.min_distance}..{cfg.max_distance} from the start{where} in {_ATTEMPTS} "
            "draws; lower min_distance or out_degree.")
    return batch


class Env(digraph.DigraphEnv):
    """`retroplan/GraphPlan-v0`: walk a shortest (or any) path from start to goal."""

    task = sys.modules[__name__]


make_env = rl.entry_point(Env)
