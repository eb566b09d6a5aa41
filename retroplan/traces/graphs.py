"""The grammar of both graph tasks (`pathstar`, `graph`): one place that writes every trace
variant as tokens and parses a model's tokens back into events and a plan.

Prompt      <bos> u v | u v | ... | u v / s g =          (edges in their shuffled order)
optimal     p0 p1 ... pk <eos>
reverse     pk ... p1 p0 <eos>
revfwd      pk ... p0 ; p0 ... pk <eos>
stream      at s go a go b dead back s go c ... goal ; p0 ... pk <eos>
backward-stream   at g from x from y ... start ; p0 ... pk <eos>
revthink    [fwd] Q -> plan | [bq] Q plan ; -> Q' | [br] Q' -> reversed plan   (Q' = the
            question with every edge reversed, from the goal to the start); train only,
            val and test hold [fwd] examples
lookahead   p0 .. pd <T> pj .. pk </T> p(d+1) .. pk <eos>   for half the examples (TRELAWNEY)
corrupted   <the stream of an unrelated instance> ; p0 ... pk <eos>

Stream variants answer with the path their search found (so a model can be *faithful* to its
own stream); `optimal`, `reverse`, `revfwd`, `revthink`, `lookahead` and `corrupted` answer
with the reference shortest plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from numba import njit, prange

from .. import rng
from ..envs.splits import split_stream
from ..errors import require
from ..searchers import BACK, DEAD, GO, START, graph_search
from .vocab import Vocab

VARIANTS = ("optimal", "reverse", "revfwd", "stream", "backward-stream", "revthink",
            "lookahead", "corrupted")
STREAM_VARIANTS = ("stream", "backward-stream", "corrupted")

STRUCTURE = ["<pad>", "<bos>", "<eos>", "|", "/", "=", ";", "at", "go", "from", "dead", "back",
             "goal", "start", "[fwd]", "[bq]", "[br]", "<T>", "</T>"]
(PAD, BOS, EOS, BAR, SLASH, EQ, SEMI, AT, GO_T, FROM, DEAD_T, BACK_T, GOAL_T, START_T, FWD, BQ,
 BR, T_OPEN, T_CLOSE) = range(len(STRUCTURE))
NODE0 = len(STRUCTURE)

# revthink example kinds (the `kind` array of a suite split)
KIND_FWD, KIND_BQ, KIND_BR = 0, 1, 2


@dataclass(frozen=True)
class Options:
    """How the traces are written (every knob of the writer, stored in meta.json)."""

    stream_searcher: str = "dfs"        # dfs | bfs: the search behind `stream`/`corrupted`
    child_order: str = "random"         # random | distance: the order successors are tried in
    lookahead_p: float = 0.5            # share of `lookahead` examples that get a <T> span

    def validate(self) -> None:
        require(self.stream_searcher in ("dfs", "bfs"),
                f"stream_searcher must be dfs or bfs, got {self.stream_searcher!r}.")
        require(self.child_order in graph_search.ORDERS,
                f"child_order must be one of {', '.join(graph_search.ORDERS)}, got {self.child_order!r}.")
        require(isinstance(self.lookahead_p, (int, float)) and 0.0 <= self.lookahead_p <= 1.0,
                f"lookahead_p must be a number in [0, 1], got {self.lookahead_p!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


def make_vocab(cfg) -> Vocab:
    return Vocab(STRUCTURE + [str(i) for i in range(cfg.num_nodes)])


def no_loss_tokens(vocab: Vocab) -> list[int]:
    """Targets that carry no loss: TRELAWNEY trains where to *continue* after <T>, not when
    to open it."""
    return [T_OPEN]


def depth_limit(task, cfg) -> int:
    """How deep the DFS searchers may go: the longest plan the task config allows."""
    return cfg.path_len - 1 if task.NAME == "pathstar" else cfg.max_distance


# --------------------------------------------------------------------------- writer (Numba)


@njit(cache=True, inline="always")
def _put_question(row, pos, edges, s, g, swap):
    for e in range(edges.shape[0]):
        if e > 0:
            row[pos] = BAR
            pos += 1
        a, b = (edges[e, 1], edges[e, 0]) if swap else (edges[e, 0], edges[e, 1])
        row[pos] = NODE0 + a
        row[pos + 1] = NODE0 + b
        pos += 2
    row[pos] = SLASH
    row[pos + 1] = NODE0 + s
    row[pos + 2] = NODE0 + g
    row[pos + 3] = EQ
    return pos + 4


@njit(cache=True, inline="always")
def _put_nodes(row, pos, nodes, n, backwards):
    for j in range(n):
        row[pos + j] = NODE0 + (nodes[n - 1 - j] if backwards else nodes[j])
    return pos + n


@njit(cache=True, inline="always")
def _put_events(row, pos, events, n_events, backward):
    for j in range(n_events):
        kind = events[j, 0]
        if kind == START:
            row[pos] = AT
            row[pos + 1] = NODE0 + events[j, 1]
            pos += 2
        elif kind == GO:
            row[pos] = FROM if backward else GO_T
            row[pos + 1] = NODE0 + events[j, 1]
            pos += 2
        elif kind == DEAD:
            row[pos] = DEAD_T
            pos += 1
        elif kind == BACK:
            row[pos] = BACK_T
            row[pos + 1] = NODE0 + events[j, 1]
            pos += 2
        else:
            row[pos] = START_T if backward else GOAL_T
            pos += 1
    return pos


@njit(cache=True, parallel=True)
def _write_rows(code, row_inst, row_kind, edges, start, goal, answer, answer_len, events,
                n_events, seed, stream, indices, lookahead_p, out, prompt_len, total_len):
    for r in prange(row_inst.shape[0]):
        i = row_inst[r]
        kind = row_kind[r]
        row = out[r]
        s = start[i]
        g = goal[i]
        n = answer_len[i]
        row[0] = BOS
        pos = 1
        if code == 5:  # revthink
            if kind == 0:
                row[pos] = FWD
                pos = _put_question(row, pos + 1, edges[i], s, g, False)
            elif kind == 1:
                row[pos] = BQ
                pos = _put_question(row, pos + 1, edges[i], s, g, False)
                pos = _put_nodes(row, pos, answer[i], n, False)
                row[pos] = SEMI
                pos += 1
            else:
                row[pos] = BR
                pos = _put_question(row, pos + 1, edges[i], g, s, True)
        else:
            pos = _put_question(row, pos, edges[i], s, g, False)
        prompt_len[r] = pos
        if code == 0:  # optimal
            pos = _put_nodes(row, pos, answer[i], n, False)
        elif code == 1:  # reverse
            pos = _put_nodes(row, pos, answer[i], n, True)
        elif code == 2:  # revfwd
            pos = _put_nodes(row, pos, answer[i], n, True)
            row[pos] = SEMI
            pos = _put_nodes(row, pos + 1, answer[i], n, False)
        elif code == 3 or code == 7:  # stream, corrupted (events of a donor instance)
            pos = _put_events(row, pos, events[i], n_events[i], False)
            row[pos] = SEMI
            pos = _put_nodes(row, pos + 1, answer[i], n, False)
        elif code == 4:  # backward-stream
            pos = _put_events(row, pos, events[i], n_events[i], True)
            row[pos] = SEMI
            pos = _put_nodes(row, pos + 1, answer[i], n, False)
        elif code == 5:
            if kind == 0:
                pos = _put_nodes(row, pos, answer[i], n, False)
            elif kind == 1:
                pos = _put_question(row, pos, edges[i], g, s, True)
            else:
                pos = _put_nodes(row, pos, answer[i], n, True)
        else:  # lookahead
            state = rng.new_state(seed, stream, indices[i], 0)
            if n >= 2 and rng.uniform(state) < lookahead_p:
                d = 1 + rng.randbelow(state, n - 1)      # nodes written before <T>: 1..n-1
                k = d + rng.randbelow(state, n - d)      # the span starts at node k (d <= k < n)
                pos = _put_nodes(row, pos, answer[i], d, False)
                row[pos] = T_OPEN
                pos += 1
                for j in range(k, n):
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


def write_examples(task, cfg, options: Options, variant: str, seed: int, split: str,
                   indices: np.ndarray, batch: dict) -> dict:
    """Token rows for the instances `batch` (instances `indices` of `split`).

    Returns `tokens` (flat), `lengths`, `prompt_len`, `instance` (row -> position in batch)
    and `kind` (revthink's example kind; 0 elsewhere).
    """
    require(variant in VARIANTS, f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}.")
    n_inst = batch["start"].shape[0]
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    limit = depth_limit(task, cfg)
    answer, answer_len = batch["plan"], batch["plan_len"]
    events = np.zeros((n_inst, 1, 2), dtype=np.int32)
    n_events = np.zeros(n_inst, dtype=np.int32)
    if variant in ("stream", "backward-stream"):
        searcher = "backward" if variant == "backward-stream" else options.stream_searcher
        found = graph_search.run_search(batch, cfg.num_nodes, limit, searcher, options.child_order,
                                        seed, indices, stream_salt=split_stream(split) & 0xFF)
        assert found["path_len"].min() > 0, "a complete search missed a reachable goal"
        events, n_events = found["events"], found["n_events"]
        answer, answer_len = found["path"], found["path_len"]
    elif variant == "corrupted":
        # Each example's stream belongs to a fresh, unrelated instance of the same split.
        donors = task.sample_instances(cfg, seed, split, indices,
                                       salts=np.full(n_inst, _DONOR_SALT, dtype=np.int64))
        found = graph_search.run_search(donors, cfg.num_nodes, limit, options.stream_searcher,
                                        options.child_order, seed, indices,
                                        stream_salt=split_stream(split) & 0xFF)
        events, n_events = found["events"], found["n_events"]
    row_inst, row_kind = example_rows(variant, split, n_inst)
    e, p = batch["edges"].shape[1], answer.shape[1]
    width = 3 * e + p + 6 + max(3 * e + 4, 2 * events.shape[1] + p + 2, 2 * p + 2, 2 * p + 3)
    out = np.empty((row_inst.shape[0], width), dtype=np.int32)  # only row[:total_len] is read
    prompt_len = np.zeros(row_inst.shape[0], dtype=np.int32)
    total_len = np.zeros(row_inst.shape[0], dtype=np.int32)
    _write_rows(VARIANTS.index(variant), row_inst, row_kind, batch["edges"], batch["start"],
                batch["goal"], answer, answer_len, events, n_events, np.uint64(seed),
                (rng.STREAM_TRACE << 8) | (split_stream(split) & 0xFF), indices,
                float(options.lookahead_p), out, prompt_len, total_len)
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


def example_rows(variant: str, split: str, n_inst: int) -> tuple[np.ndarray, np.ndarray]:
    """(row -> instance, row kind): revthink trains on three examples per instance (fwd, bq,
    br) and evaluates forward only; every other variant has one row per instance."""
    if variant == "revthink" and split == "train":
        return (np.repeat(np.arange(n_inst, dtype=np.int64), 3),
                np.tile(np.array([KIND_FWD, KIND_BQ, KIND_BR], dtype=np.int8), n_inst))
    return np.arange(n_inst, dtype=np.int64), np.zeros(n_inst, dtype=np.int8)


_DONOR_SALT = 1 << 40  # a salt no dedup redraw reaches: donors are fresh instances


# --------------------------------------------------------------------------- parser


@dataclass
class Parsed:
    """What a completion says. `plan` is the forward plan (None when unparseable, with the
    reason in `error`); `events` are the search events of stream variants as
    (name, node) pairs with name in start/go/dead/back/goal; `backward` marks a backward
    stream (its `go` steps move to predecessors)."""

    plan: list[int] | None
    events: list[tuple[str, int]] = field(default_factory=list)
    backward: bool = False
    reverse_plan: list[int] | None = None
    error: str | None = None
    event_ends: list[int] = field(default_factory=list)  # completion tokens up to each event's end


def _nodes(ids: list[int], vocab_size: int, what: str) -> list[int]:
    out = []
    for pos, t in enumerate(ids):
        if not NODE0 <= t < vocab_size:
            raise _ParseError(f"{what}: token {pos} is not a node")
        out.append(t - NODE0)
    return out


class _ParseError(Exception):
    pass


def _strip_lookahead(ids: list[int]) -> list[int]:
    out, inside = [], False
    for t in ids:
        if t == T_OPEN:
            if inside:
                raise _ParseError("<T> opened twice")
            inside = True
        elif t == T_CLOSE:
            if not inside:
                raise _ParseError("</T> without <T>")
            inside = False
        elif not inside:
            out.append(t)
    if inside:
        raise _ParseError("<T> never closed")
    return out


def _events(ids: list[int], vocab_size: int, backward: bool):
    """(events, event_ends) of a stream's tokens."""
    step, finish = (FROM, START_T) if backward else (GO_T, GOAL_T)
    if len(ids) < 2 or ids[0] != AT:
        raise _ParseError("a stream must begin with `at <node>`")
    events: list[tuple[str, int]] = []
    ends: list[int] = []
    pos = 0
    while pos < len(ids):
        t = ids[pos]
        if t in (AT, step, BACK_T):
            if pos + 1 >= len(ids) or not NODE0 <= ids[pos + 1] < vocab_size:
                raise _ParseError(f"stream token {pos} must be followed by a node")
            if t == AT and pos != 0:
                raise _ParseError("`at` may only begin a stream")
            name = {AT: "start", step: "go", BACK_T: "back"}[t]
            events.append((name, ids[pos + 1] - NODE0))
            pos += 2
        elif t == DEAD_T:
            events.append(("dead", -1))
            pos += 1
        elif t == finish:
            events.append(("goal", -1))
            pos += 1
        else:
            raise _ParseError(f"stream token {pos} is not a stream word")
        ends.append(pos)
    return events, ends


def stream_plan(parsed: Parsed) -> list[int] | None:
    """The start -> goal path a parsed stream ends on: the root-to-current path after
    replaying its moves and backtracks (reversed for a backward stream). None when the
    completion has no stream or a backtrack leaves the current path."""
    if not parsed.events:
        return None
    path: list[int] = []
    for name, node in parsed.events:
        if name == "start":
            path = [node]
        elif name == "go":
            path.append(node)
        elif name == "back":
            if node not in path:
                return None
            path = path[: path.index(node) + 1]
        elif name == "goal":
            break
    return path[::-1] if parsed.backward else path


def parse(variant: str, ids, vocab: Vocab) -> Parsed:
    """Parse a completion (the tokens after the prompt, ending with <eos>). Never raises:
    anything malformed comes back with `plan=None` and the reason in `error`."""
    ids = [int(t) for t in ids]
    if EOS not in ids:
        return Parsed(None, error="no <eos>: the completion did not finish")
    ids = ids[: ids.index(EOS)]
    size = len(vocab)
    try:
        if variant in ("optimal", "revthink"):
            return Parsed(_nodes(ids, size, "plan"))
        if variant == "lookahead":
            return Parsed(_nodes(_strip_lookahead(ids), size, "plan"))
        if variant == "reverse":
            back = _nodes(ids, size, "reversed plan")
            return Parsed(back[::-1], reverse_plan=back)
        if SEMI not in ids:
            raise _ParseError("no `;` before the plan")
        cut = ids.index(SEMI)
        head, plan = ids[:cut], _nodes(ids[cut + 1:], size, "plan")
        if variant == "revfwd":
            return Parsed(plan, reverse_plan=_nodes(head, size, "reversed plan"))
        backward = variant == "backward-stream"
        events, ends = _events(head, size, backward)
        return Parsed(plan, events=events, backward=backward, event_ends=ends)
    except _ParseError as exc:
        return Parsed(None, error=str(exc))


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
        if self._pending is not None:
            node = token - NODE0
            if self._pending == "at":
                self.current, self.entered, self.thought_moves = node, {node}, 0
            elif self._pending == "go":
                self.current = node
                self.entered.add(node)
                self.thought_moves += 1
            else:
                self.current, self.thought_moves = node, 0
            self._pending = None
        elif token in (SEMI, EOS):
            self._done = True
        elif token == AT:
            self._pending = "at"
        elif token in (GO_T, FROM):
            self._pending = "go"
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
