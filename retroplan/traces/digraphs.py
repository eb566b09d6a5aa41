"""The grammar of both directed-graph tasks (`pathstar`, `graph`): one place that writes every
trace variant as tokens and parses a model's tokens back into events and a plan.

What it needs of a task beyond `tasks.Task` is `tasks.DigraphTask`: the depth limit of its DFS
searchers (`depth_limit(cfg)`) and whether its backward direction is a chain (`BACKWARD_CHAIN`,
for `variant_note`); it never branches on a task's name.

Prompt      <bos> u v | u v | ... | u v / s g =          (edges in their shuffled order)
            <bos> u v v' | u' v'' | ... / s g =       (option prompt = "adjacency")
            `adjacency` writes each node that has successors, then its successors: the nodes in
            a random order per instance and each node's successors shuffled, drawn from (seed,
            split, index) alone, so every variant writes the same prompt for an instance. No new
            token: a group's first node (after <bos> or `|`) is the source, as in `edges`, which
            is the same form with one successor per group (so one reader serves both).
optimal     p0 p1 ... pk <eos>
reverse     pk ... p1 p0 <eos>
revfwd      pk ... p0 ; p0 ... pk <eos>
stream      at s a b dead back s c ... goal ; p0 ... pk <eos>   (a move: the bare node)
backward-stream   at g x y ... start ; p0 ... pk <eos>
revthink    Q -> plan (exactly `optimal`'s row) | [bq] Q -> Q' tail | [br] Q' -> layers ; answer
            (RevThink, objective (b) from the question alone, as the paper trains its student).
            Q' = `E / start go .. go g =` (k `go`s, k = d*(s), the shortest distance from the
            start to the goal: a function of the question, and the plan's moves on every kept
            instance): the backward question hides the start and asks which nodes reach g in
            k moves (shortest). The [bq] row writes only what Q' adds to the question's edges,
            `start go .. go g =`; the [br] row's prompt is the whole Q', edges included. Its
            reasoning is a breadth-first search from g along reversed edges, one `from`
            per layer (the nodes whose shortest way to g takes j moves, labels ascending), then
            `;` and layer k, which holds the start. Backward rows only in train, and only for
            instances the oracle finds consistent; val and test hold forward rows.
lookahead   y1 .. yd <T> yk .. yL </T> y(d+1) .. yT <eos>   for a share `lookahead_p` of the
            examples (TRELAWNEY): cut d in 0..T-1, span start k in d+1..T, end L in k..T, all
            uniform; the others are plain. Eval can force `<T>` or `<T> g </T>` (eval_prefix).
corrupted   <the stream of an unrelated instance> ; p0 ... pk <eos>

Stream variants answer with the path their search found (so a model can be *faithful* to its
own stream); `optimal`, `reverse`, `revfwd`, `revthink`, `lookahead` and `corrupted` answer
with the reference shortest plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from .. import rng
from ..contracts import DigraphTask
from ..envs import digraph, get_task
from ..errors import require, setting
from ..events import Event
from ..searchers import digraph_search
from ..variants import VARIANT
from . import common
from .common import STREAM_VARIANTS, VARIANTS, Parsed, example_rows  # noqa: F401  (tasks.Grammar)
from .vocab import MIX_TOKENS, Vocab, forced_open

_WORDS = ["<pad>", "<bos>", "<eos>", "|", "/", "=", ";", "at", "go", "from", "dead", "back",
          "goal", "start", "[bq]", "[br]", "<T>", "</T>"]
(PAD, BOS, EOS, BAR, SLASH, EQ, SEMI, AT, GO_T, FROM, DEAD_T, BACK_T, GOAL_T, START_T, BQ,
 BR, T_OPEN, T_CLOSE) = range(len(_WORDS))
STRUCTURE = _WORDS + MIX_TOKENS   # then the node labels
NODE0 = len(STRUCTURE)



PROMPTS = ("edges", "adjacency")
# The adjacency prompt's draws: the trace stream of the instance's split and index, a salt apart
# from the lookahead spans' (salt 0)
_PROMPT_SALT = 1


@dataclass(frozen=True)
class Options:
    """How the traces are written (every knob of the writer, stored in meta.json)."""

    stream_searcher: str = setting("dfs", "the search behind stream / corrupted: dfs or bfs")
    child_order: str = setting("random", "the order successors are tried in: "
                                         + ", ".join(digraph_search.ORDERS))
    lookahead_p: float = setting(0.5, "share of lookahead rows that get a <T> span, in [0, 1]")
    prompt: str = setting("edges", "how the prompt writes the graph: " + ", ".join(PROMPTS))

    def validate(self) -> None:
        require(self.stream_searcher in ("dfs", "bfs"),
                f"stream_searcher must be dfs or bfs, got {self.stream_searcher!r}.")
        require(self.child_order in digraph_search.ORDERS,
                f"child_order must be one of {', '.join(digraph_search.ORDERS)}, got {self.child_order!r}.")
        require(isinstance(self.lookahead_p, (int, float)) and 0.0 <= self.lookahead_p <= 1.0,
                f"lookahead_p must be a number in [0, 1], got {self.lookahead_p!r}.")
        require(self.prompt in PROMPTS,
                f"prompt must be one of {', '.join(PROMPTS)}, got {self.prompt!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


def make_vocab(cfg) -> Vocab:
    return Vocab(STRUCTURE + [str(i) for i in range(cfg.num_nodes)])


def no_loss_tokens(vocab: Vocab) -> list[int]:
    """Targets that carry no loss: TRELAWNEY trains where to *continue* after <T>, not when
    to open it."""
    return [T_OPEN]


# --------------------------------------------------------------------------- writer (Numba)


@njit(cache=True, inline="always")
def _put_edges(row, pos, edges):
    for e in range(edges.shape[0]):
        if e > 0:
            row[pos] = BAR
            pos += 1
        row[pos] = NODE0 + edges[e, 0]
        row[pos + 1] = NODE0 + edges[e, 1]
        pos += 2
    return pos


@njit(cache=True)
def _put_adjacency(row, pos, edges, num_nodes, state):
    """`u v v' | u' v'' | ...`: each node that has successors, then its successors; the nodes in
    a random order and each node's successors shuffled (draws from `state`, one per instance)."""
    order = np.arange(num_nodes)
    rng.shuffle(state, order)
    successors = np.empty(edges.shape[0], dtype=np.int32)
    first = True
    for u in order:
        c = 0
        for e in range(edges.shape[0]):
            if edges[e, 0] == u:
                successors[c] = edges[e, 1]
                c += 1
        if c == 0:
            continue
        rng.shuffle(state, successors[:c])
        if not first:
            row[pos] = BAR
            pos += 1
        first = False
        row[pos] = NODE0 + u
        pos += 1
        for j in range(c):
            row[pos] = NODE0 + successors[j]
            pos += 1
    return pos


@njit(cache=True, inline="always")
def _put_graph(row, pos, edges, num_nodes, adjacency, seed, stream, index):
    """The graph part of a prompt: the edge list in its shuffled order, or (`adjacency`) each
    node's successors, drawn from (seed, stream, index) alone so that every variant, mixture
    component and RevThink row of an instance writes the same prompt."""
    if adjacency:
        return _put_adjacency(row, pos, edges, num_nodes, rng.new_state(seed, stream, index, _PROMPT_SALT))
    return _put_edges(row, pos, edges)


@njit(cache=True, inline="always")
def _put_question(row, pos, edges, s, g, num_nodes, adjacency, seed, stream, index):
    """`u v | ... | u v / s g =` (or the adjacency lists, then `/ s g =`)"""
    pos = _put_graph(row, pos, edges, num_nodes, adjacency, seed, stream, index)
    row[pos] = SLASH
    row[pos + 1] = NODE0 + s
    row[pos + 2] = NODE0 + g
    row[pos + 3] = EQ
    return pos + 4


@njit(cache=True, inline="always")
def _put_backward_tail(row, pos, g, k):
    """What RevThink's backward question adds to the question's graph, `start go .. go g =`
    (k `go`s): the start hidden, which nodes reach g in k moves? (the [bq] row's completion)"""
    row[pos] = START_T
    pos += 1
    for _ in range(k):
        row[pos] = GO_T
        pos += 1
    row[pos] = NODE0 + g
    row[pos + 1] = EQ
    return pos + 2


@njit(cache=True, inline="always")
def _put_backward_question(row, pos, edges, g, k, num_nodes, adjacency, seed, stream, index):
    """RevThink's whole backward question `u v | ... | u v / start go .. go g =` (the [br]
    row's prompt): the same graph, written as the forward prompt writes it, then the tail."""
    pos = _put_graph(row, pos, edges, num_nodes, adjacency, seed, stream, index)
    row[pos] = SLASH
    return _put_backward_tail(row, pos + 1, g, k)


@njit(cache=True)
def _put_layers(row, pos, edges, g, k, num_nodes):
    """The backward question's reasoned answer: `at g from <layer 1> ... from <layer k> ;
    <layer k>`, a breadth-first search from g along reversed edges where layer j is every node
    whose shortest way to g takes j moves (the oracle's distances; labels ascending)."""
    dist = digraph.distances_to_goal(edges, g, num_nodes)
    keys = np.empty(2 * edges.shape[0], dtype=np.int64)
    c = 0
    for e in range(edges.shape[0]):
        for side in range(2):
            u = edges[e, side]
            if 1 <= dist[u] <= k:
                keys[c] = np.int64(dist[u]) * num_nodes + u
                c += 1
    keys = np.unique(keys[:c])  # sorted: by layer, then label
    row[pos] = AT
    row[pos + 1] = NODE0 + g
    pos += 2
    layer = 0
    for j in range(keys.shape[0]):
        if keys[j] // num_nodes != layer:
            layer = keys[j] // num_nodes
            row[pos] = FROM
            pos += 1
        row[pos] = NODE0 + keys[j] % num_nodes
        pos += 1
    row[pos] = SEMI
    pos += 1
    for j in range(keys.shape[0]):
        if keys[j] // num_nodes == k:
            row[pos] = NODE0 + keys[j] % num_nodes
            pos += 1
    return pos


@njit(cache=True, inline="always")
def _put_nodes(row, pos, nodes, n, backwards):
    for j in range(n):
        row[pos + j] = NODE0 + (nodes[n - 1 - j] if backwards else nodes[j])
    return pos + n


@njit(cache=True, inline="always")
def _put_events(row, pos, events, n_events, backward):
    for j in range(n_events):
        kind = events[j, 0]
        if kind == Event.START:
            row[pos] = AT
            row[pos + 1] = NODE0 + events[j, 1]
            pos += 2
        elif kind == Event.GO:  # a bare node: the state it leaves is the token just before it
            row[pos] = NODE0 + events[j, 1]
            pos += 1
        elif kind == Event.DEAD:
            row[pos] = DEAD_T
            pos += 1
        elif kind == Event.BACK:
            row[pos] = BACK_T
            row[pos + 1] = NODE0 + events[j, 1]
            pos += 2
        elif kind == Event.JUMP:  # a breadth-first switch: `at t` again, mid-stream
            row[pos] = AT
            row[pos + 1] = NODE0 + events[j, 1]
            pos += 2
        else:
            row[pos] = START_T if backward else GOAL_T
            pos += 1
    return pos


@njit(cache=True, parallel=True)
def _write_rows(code, row_inst, row_kind, edges, start, goal, answer, answer_len, events,
                n_events, seed, stream, indices, lookahead_p, num_nodes, adjacency, out, prompt_len,
                total_len):
    for r in prange(row_inst.shape[0]):
        i = row_inst[r]
        kind = row_kind[r]
        row = out[r]
        s = start[i]
        g = goal[i]
        n = answer_len[i]
        row[0] = BOS
        pos = 1
        k = 0  # revthink's backward rows: the moves d*(s), computed from the question alone
        if code == common.REVTHINK and kind != common.KIND_FWD:
            k = digraph.distances_to_goal(edges[i], g, num_nodes)[s]
        if code == common.REVTHINK and kind == common.KIND_BQ:  # the question alone -> backward question
            row[pos] = BQ
            pos = _put_question(row, pos + 1, edges[i], s, g, num_nodes, adjacency, seed, stream,
                                indices[i])
        elif code == common.REVTHINK and kind == common.KIND_BR:  # backward question -> its answer
            row[pos] = BR
            pos = _put_backward_question(row, pos + 1, edges[i], g, k, num_nodes, adjacency, seed,
                                         stream, indices[i])
        else:  # every forward row, revthink's included: exactly `optimal`'s prompt
            pos = _put_question(row, pos, edges[i], s, g, num_nodes, adjacency, seed, stream, indices[i])
        prompt_len[r] = pos
        if code == common.OPTIMAL:
            pos = _put_nodes(row, pos, answer[i], n, False)
        elif code == common.REVERSE:
            pos = _put_nodes(row, pos, answer[i], n, True)
        elif code == common.REVFWD:
            pos = _put_nodes(row, pos, answer[i], n, True)
            row[pos] = SEMI
            pos = _put_nodes(row, pos + 1, answer[i], n, False)
        elif code == common.STREAM or code == common.CORRUPTED:  # corrupted: a donor instance's events
            pos = _put_events(row, pos, events[i], n_events[i], False)
            row[pos] = SEMI
            pos = _put_nodes(row, pos + 1, answer[i], n, False)
        elif code == common.BACKWARD_STREAM:
            pos = _put_events(row, pos, events[i], n_events[i], True)
            row[pos] = SEMI
            pos = _put_nodes(row, pos + 1, answer[i], n, False)
        elif code == common.REVTHINK:
            if kind == common.KIND_BQ:
                pos = _put_backward_tail(row, pos, g, k)
            elif kind == common.KIND_BR:
                pos = _put_layers(row, pos, edges[i], g, k, num_nodes)
            else:
                pos = _put_nodes(row, pos, answer[i], n, False)
        else:  # lookahead (TRELAWNEY): y1..yd <T> yk..yL </T> y(d+1)..yT, 1-based, d < k <= L <= T
            state = rng.new_state(seed, stream, indices[i], 0)
            if rng.uniform(state) < lookahead_p:
                d = rng.randbelow(state, n)              # nodes before <T>: 0..T-1 (0: after the prompt)
                k = d + rng.randbelow(state, n - d)      # the span's first node, 0-based: d..T-1
                last = k + rng.randbelow(state, n - k)   # its last node, 0-based: k..T-1
                pos = _put_nodes(row, pos, answer[i], d, False)
                row[pos] = T_OPEN
                pos += 1
                for j in range(k, last + 1):
                    row[pos] = NODE0 + answer[i, j]
                    pos += 1
                row[pos] = T_CLOSE
                pos += 1
                for j in range(d, n):
                    row[pos] = NODE0 + answer[i, j]
                    pos += 1
            else:
                pos = _put_nodes(row, pos, answer[i], n, False)
        row[pos] = EOS
        total_len[r] = pos + 1


@njit(cache=True, parallel=True)
def _concatenate_rows(rows, lengths, offsets, flat):
    """flat = rows[0, :lengths[0]] + rows[1, :lengths[1]] + ... (in parallel)."""
    for r in prange(rows.shape[0]):
        flat[offsets[r]: offsets[r + 1]] = rows[r, : lengths[r]]


def write_examples(task: DigraphTask, cfg, options: Options, variant: str, seed: int, split: str,
                   indices: np.ndarray, batch: dict) -> dict:
    """Token rows for the instances `batch` (instances `indices` of `split`).

    Returns `tokens` (flat), `lengths`, `prompt_len`, `instance` (row -> position in batch)
    and `kind` (revthink's example kind; 0 elsewhere).
    """
    require(variant in VARIANTS, f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}.")
    n_inst = batch["start"].shape[0]
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    limit = task.depth_limit(cfg)
    answer, answer_len = batch["plan"], batch["plan_len"]
    events = np.zeros((n_inst, 1, 2), dtype=np.int32)
    n_events = np.zeros(n_inst, dtype=np.int32)
    facts = VARIANT[variant]
    if facts.own_stream:
        searcher = "backward" if facts.backward_search else options.stream_searcher
        found = digraph_search.run_search(batch, cfg.num_nodes, limit, searcher, options.child_order,
                                        seed, indices, split=split)
        assert found["path_len"].min() > 0, "a complete search missed a reachable goal"
        events, n_events = found["events"], found["n_events"]
        answer, answer_len = found["path"], found["path_len"]
    elif facts.foreign_stream:
        # Each example's stream belongs to a fresh, unrelated instance of the same split.
        donors = task.sample_instances(cfg, seed, split, indices,
                                       salts=np.full(n_inst, _DONOR_SALT, dtype=np.int64))
        found = digraph_search.run_search(donors, cfg.num_nodes, limit, options.stream_searcher,
                                        options.child_order, seed, indices,
                                        split=split)
        events, n_events = found["events"], found["n_events"]
    keep = None
    if facts.backward_objectives and split == "train":  # RevThink keeps consistent examples only
        keep = revthink_consistent(batch, cfg.num_nodes)
    row_inst, row_kind = example_rows(variant, split, n_inst, keep)
    e, p = batch["edges"].shape[1], answer.shape[1]
    # prompt <= 3e + p + 5 ([br]: the edges, `/ start`, k < p `go`s, `g =`); completion
    # <= 4e + p + 4 ([br]: every node twice plus k `from`s), 2 * events + p + 2 (streams),
    # 2p + 3 (lookahead)
    width = 3 * e + p + 6 + max(4 * e + p + 4, 2 * events.shape[1] + p + 2, 2 * p + 3)
    out = np.empty((row_inst.shape[0], width), dtype=np.int32)  # only row[:total_len] is read
    prompt_len = np.zeros(row_inst.shape[0], dtype=np.int32)
    total_len = np.zeros(row_inst.shape[0], dtype=np.int32)
    _write_rows(common.VARIANT_CODE[variant], row_inst, row_kind, batch["edges"], batch["start"],
                batch["goal"], answer, answer_len, events, n_events, np.uint64(seed),
                rng.stream_key(rng.STREAM_TRACE, split), indices,
                float(options.lookahead_p), cfg.num_nodes, options.prompt == "adjacency", out,
                prompt_len, total_len)
    offsets = np.zeros(row_inst.shape[0] + 1, dtype=np.int64)
    np.cumsum(total_len, out=offsets[1:])
    tokens = np.empty(offsets[-1], dtype=np.int32)
    _concatenate_rows(out, total_len, offsets, tokens)
    return {
        "tokens": tokens,
        "lengths": total_len,
        "prompt_len": prompt_len,
        "instance": row_inst,
        "kind": row_kind,
    }


@njit(cache=True, parallel=True)
def _revthink_consistent(edges, start, goal, plan, plan_len, num_nodes, ok):
    for i in prange(start.shape[0]):
        n = plan_len[i]
        good = n >= 2 and plan[i, 0] == start[i] and plan[i, n - 1] == goal[i]
        for j in range(n - 1):  # the forward answer replays, edge by edge
            if not good:
                break
            good = False
            for e in range(edges.shape[1]):
                if edges[i, e, 0] == plan[i, j] and edges[i, e, 1] == plan[i, j + 1]:
                    good = True
                    break
        if good:  # ... and is as short as the oracle says: layer n-1 of [br] holds the start
            good = digraph.distances_to_goal(edges[i], goal[i], num_nodes)[start[i]] == n - 1
        ok[i] = good


def revthink_consistent(batch: dict, num_nodes: int) -> np.ndarray:
    """Per instance, whether RevThink's forward and backward examples agree, by the oracle:
    the forward plan replays from the start to the goal in as many moves as the shortest
    distance d*(start), so the backward question (which nodes reach the goal in that many
    moves?) has the start among its answers."""
    ok = np.zeros(batch["start"].shape[0], dtype=np.bool_)
    _revthink_consistent(batch["edges"], batch["start"], batch["goal"], batch["plan"],
                         batch["plan_len"], num_nodes, ok)
    return ok


_DONOR_SALT = 1 << 40  # a salt no dedup redraw reaches: donors are fresh instances


def eval_prefix(variant: str, mode: str, instances: dict, i: int, vocab: Vocab) -> list[int]:
    """The tokens eval forces after instance i's prompt before the model writes (TRELAWNEY's
    inference modes): `plain` none, `model-goal` `<T>` (the model writes the span, then the
    plan), `given-goal` `<T> g </T>` (the user gives the goal). The judged completion is these
    tokens followed by the generated ones. Only `lookahead` models know `<T>`."""
    if not forced_open(variant, mode):
        return []
    if mode == "model-goal":
        return [T_OPEN]
    return [T_OPEN, NODE0 + int(instances["goal"][i]), T_CLOSE]


def deciding_index(variant: str, completion, vocab: Vocab) -> int | None:
    """The completion index of the deciding token of a (reference) completion: the first token
    the prompt and the grammar do not fix (`p0`, the start, and the goal are copies of the
    prompt's `/ s g` slots; `at` a fixed word). optimal, revthink, lookahead: the first move p1
    (the second plan node outside a `<T>` span); reverse, revfwd: the node written after the
    copied goal; stream, backward-stream: the first move of the search (after `at s` / `at
    g`); corrupted: the first move of the plan after the last `;` (its stream is another
    instance's, so nothing in it decides this one). None where the completion has no such
    token (a plan without moves)."""
    ids = [int(t) for t in completion]
    size = len(vocab)
    facts = VARIANT[variant]
    if not facts.stream and not facts.reversed_plan:  # the plan alone
        outside, inside = [], False
        for j, t in enumerate(ids):
            if t in (T_OPEN, T_CLOSE):
                inside = t == T_OPEN
            elif not inside and NODE0 <= t < size:
                outside.append(j)
        return outside[1] if len(outside) > 1 else None
    if facts.reversed_plan:
        j = 1
    elif facts.own_stream:
        j = 2
    else:  # another instance's stream
        if SEMI not in ids:
            return None
        j = len(ids) - ids[::-1].index(SEMI) + 1   # the last `;`, then p0, then p1
    return j if j < len(ids) and NODE0 <= ids[j] < size else None


def variant_note(task_name: str, variant: str) -> str | None:
    """What a report should say next to this task's variant, or None: where the task's backward
    direction is a chain (`BACKWARD_CHAIN`; path-star: every node but the centre has one
    predecessor), the backward variants write no search at all."""
    facts = VARIANT.get(variant)  # None for a mixture: its components have the notes
    if facts is None or not get_task(task_name).BACKWARD_CHAIN:
        return None
    if facts.backward_search:
        return "no search on path-star: the backward direction is a chain"
    if facts.backward_objectives:
        return ("no search in the backward objectives on path-star: the backward direction "
                "is a chain (one node per layer), and the backward question's move count is "
                "path_len - 1 for every instance")
    if facts.reversed_plan:
        return "the plan written goal-first needs no search on path-star: the backward direction is a chain"
    return None


def searcher_of(suite, split: str, index: int) -> str | None:
    """The search behind a row, for exports: None, the graph tasks' exports name none (a
    stream's searcher is the suite's `stream_searcher` option, the same for every row)."""
    return None


# --------------------------------------------------------------------------- parser


def prompt_successors(prompt, vocab_size: int) -> dict[int, list[int]]:
    """Each node's successors as a forward prompt (`<bos> ... / s g =`) lists them, in prompt
    order: a group (between `|`s) is a source node followed by its successors, which reads
    both encodings (`edges` has one successor per group). Analysis reads graphs from the
    instances; this is for what depends on the prompt's order (the `arm` probe's label)."""
    ids = [int(t) for t in prompt]
    ids = ids[: ids.index(SLASH)] if SLASH in ids else ids
    out: dict[int, list[int]] = {}
    group: list[int] = []
    for t in ids + [BAR]:
        if t == BAR:
            if group:
                out.setdefault(group[0], []).extend(group[1:])
            group = []
        elif NODE0 <= t < vocab_size:
            group.append(t - NODE0)
    return out


def _nodes(ids: list[int], vocab_size: int, what: str) -> list[int]:
    out = []
    for pos, t in enumerate(ids):
        if not NODE0 <= t < vocab_size:
            raise _ParseError(f"{what}: token {pos} is not a node")
        out.append(t - NODE0)
    return out


class _ParseError(Exception):
    pass


def _strip_lookahead(ids: list[int], vocab_size: int) -> list[int]:
    """The completion without its `<T> span </T>` (at most one, of one or more nodes, as the
    writer and every eval mode make it)."""
    out, span, inside, spans = [], [], False, 0
    for t in ids:
        if t == T_OPEN:
            if inside:
                raise _ParseError("<T> opened twice")
            if spans:
                raise _ParseError("a second <T> span")
            inside = True
        elif t == T_CLOSE:
            if not inside:
                raise _ParseError("</T> without <T>")
            if not span:
                raise _ParseError("the <T> span is empty")
            inside, spans = False, 1
        elif inside:
            span.append(t)
        else:
            out.append(t)
    if inside:
        raise _ParseError("<T> never closed")
    _nodes(span, vocab_size, "<T> span")
    return out


def _events(ids: list[int], vocab_size: int, backward: bool):
    """(events, event_ends, error) of a stream's tokens, read as far as they go: reading stops
    at the first token that is not a stream word (error says which) or at a word cut off by
    the end; the events before it are kept, so an unfinished stream can still be judged."""
    finish = START_T if backward else GOAL_T
    if len(ids) < 2 or ids[0] != AT or not NODE0 <= ids[1] < vocab_size:
        return [], [], "a stream must begin with `at <node>`"
    events: list[tuple[Event, int]] = []
    ends: list[int] = []
    pos = 0
    while pos < len(ids):
        t = ids[pos]
        if NODE0 <= t < vocab_size and pos:  # a bare node is a move to it
            events.append((Event.GO, t - NODE0))
            pos += 1
        elif t in (AT, BACK_T):
            if pos + 1 >= len(ids) or not NODE0 <= ids[pos + 1] < vocab_size:
                return events, ends, f"stream token {pos} must be followed by a node"
            # `at` begins a stream; later it is a breadth-first jump to a state entered before
            event = {AT: Event.JUMP if pos else Event.START, BACK_T: Event.BACK}[t]
            events.append((event, ids[pos + 1] - NODE0))
            pos += 2
        elif t == DEAD_T:
            events.append((Event.DEAD, -1))
            pos += 1
        elif t == finish:
            events.append((Event.GOAL, -1))
            pos += 1
        else:
            return events, ends, f"stream token {pos} is not a stream word"
        ends.append(pos)
    return events, ends, None


def stream_plan(parsed: Parsed) -> list[int] | None:
    """The start -> goal path a parsed stream ends on: the root-to-current path after
    replaying its moves, backtracks and jumps (reversed for a backward stream). None when the
    completion has no stream or a backtrack or jump names a node the stream never entered."""
    if not parsed.events:
        return None
    path: list[int] = []
    parent: dict[int, int | None] = {}
    for event, node in parsed.events:
        if event == Event.START:
            path, parent = [node], {node: None}
        elif event == Event.GO:
            parent[node] = path[-1] if path else None
            path.append(node)
        elif event == Event.BACK:
            if node not in path:
                return None
            path = path[: path.index(node) + 1]
        elif event == Event.JUMP:
            if node not in parent:
                return None
            path = [node]
            while parent.get(path[-1]) is not None and len(path) <= len(parent):
                path.append(parent[path[-1]])
            path = path[::-1]
        elif event == Event.GOAL:
            break
    return path[::-1] if parsed.backward else path


def parse(variant: str, ids, vocab: Vocab) -> Parsed:
    """Parse a completion (the tokens after the prompt, ending with <eos>). Never raises:
    anything malformed comes back with `plan=None` and the reason in `error`."""
    ids = [int(t) for t in ids]
    size = len(vocab)
    if variant not in VARIANTS:
        return Parsed(None, error=f"unknown variant {variant!r}")
    facts = VARIANT[variant]
    if EOS not in ids:
        if facts.stream:  # judge the stream as far as it goes
            head = ids[: ids.index(SEMI)] if SEMI in ids else ids
            backward = facts.backward_search
            events, ends, _ = _events(head, size, backward)
            return Parsed(None, events=events, backward=backward, event_ends=ends,
                          error="no <eos>: the completion did not finish")
        return Parsed(None, error="no <eos>: the completion did not finish")
    ids = ids[: ids.index(EOS)]
    try:
        if not facts.stream and not facts.reversed_plan:  # the plan alone
            return Parsed(_nodes(_strip_lookahead(ids, size) if facts.lookahead_spans else ids, size, "plan"))
        if facts.reversed_plan and not facts.forward_plan:
            back = _nodes(ids, size, "reversed plan")
            return Parsed(back[::-1])
        if facts.reversed_plan:  # the plan goal-first, `;`, the plan
            if SEMI not in ids:
                raise _ParseError("no `;` before the plan")
            cut = ids.index(SEMI)
            _nodes(ids[:cut], size, "reversed plan")  # must be readable, though eval judges the plan
            return Parsed(_nodes(ids[cut + 1:], size, "plan"))
    except _ParseError as exc:
        return Parsed(None, error=str(exc))
    # stream variants: the events are kept even when the rest is unreadable
    backward = facts.backward_search
    cut = ids.index(SEMI) if SEMI in ids else len(ids)
    events, ends, error = _events(ids[:cut], size, backward)
    plan = None
    if cut == len(ids):
        error = "no `;` before the plan" + (f" ({error})" if error else "")
    if error is None:
        try:
            plan = _nodes(ids[cut + 1:], size, "plan")
        except _ParseError as exc:
            error = str(exc)
    return Parsed(plan, events=events, backward=backward, event_ends=ends, error=error)


class StreamTracker:
    """Follows a graph stream token by token while a model writes it, for decoding
    penalties: where the stream is, how many moves the current thought has made, and
    whether a legal move to a state not yet entered is left."""

    switch_tokens = (DEAD_T, BACK_T)  # a thought switch begins with `dead`, then `back t`

    def __init__(self, walk):
        self.walk = walk
        self.current = None
        self.entered: set[int] = set()
        self.thought_moves = 0
        self._pending = None  # the word waiting for its node
        self._done = False    # past the stream (`;` or <eos>)

    def feed(self, token: int) -> None:
        if self._done:
            return
        if self._pending is None and token >= NODE0 and self.current is not None:
            self.current = token - NODE0  # a bare node: a move to it
            self.entered.add(self.current)
            self.thought_moves += 1
        elif self._pending is not None:
            node = token - NODE0
            if self._pending == "at":  # the start, or a breadth-first jump (a thought switch)
                if self.current is None:
                    self.entered = {node}
                self.current, self.thought_moves = node, 0
            else:
                self.current, self.thought_moves = node, 0
            self._pending = None
        elif token in (SEMI, EOS):
            self._done = True
        elif token == AT:
            self._pending = "at"
        elif token == BACK_T:
            self._pending = "back"

    def unexpanded_move_left(self) -> bool:
        return self.current is not None and any(u not in self.entered
                                                for u in self.walk.successors(self.current))

    def should_penalise(self, beta: int, oracle: bool) -> bool:
        """TIP's condition: inside the stream, at a word boundary, fewer than `beta` moves into
        the current thought, a legal unexpanded move left, and (oracle-gated) R(current) = 1."""
        if self._done or self._pending is not None or self.current is None:
            return False
        if self.thought_moves >= beta or not self.unexpanded_move_left():
            return False
        return not oracle or self.walk.live(self.current)
