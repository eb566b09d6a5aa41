"""The grammar of `countdown`: writes every trace variant as tokens (Numba) and parses a model's
tokens back into a plan and search events; `StreamTracker` reads a stream with the same reader
while a model writes it. The Stream-of-Search text of a stream is in `traces/sos.py`; RevThink's
backward question, a fact about the instance, is `envs.countdown.backward_questions`. On inputs
12 63 96 99 and target 33:

Prompt      <bos> 12 63 96 99 -> 33 ?
optimal     99 - 96 = 3 , 63 / 3 = 21 , 12 + 21 = 33 <eos>           (the oracle's solution)
reverse     33 = 12 + 21 , 21 = 63 / 3 , 3 = 99 - 96 <eos>           (target back to the inputs)
revfwd      <reverse> ; <optimal> <eos>
stream      at 12 63 96 99 try 99 - 96 = 3 : 12 63 3 go 12 63 3 try 63 - 12 = 51 : 3 51 go 3 51
            try 51 - 3 = 48 : 48 dead try 51 + 3 = 54 : 54 dead back 12 63 3 try 63 / 3 = 21 : 12 21
            go 12 21 try 12 + 21 = 33 : 33 goal ; 99 - 96 = 3 , 63 / 3 = 21 , 12 + 21 = 33 <eos>
backward-stream   at 12 63 96 99 -> 33 try 33 = 12 + 21 : 63 96 99 -> 21 go 63 96 99 -> 21 ...
            try 3 = 99 - 96 : 96 -> 96 goal ; <the forward plan> <eos>
revthink    Q -> plan (exactly `optimal`'s row) | [bq] Q -> `t -> x ?` | [br] Q' -> plan of Q'
            (backward rows in train only; val and test hold the forward rows). Q' is
            RevThink's backward question: the target becomes an input (in the place of the
            first input, in prompt order, unlike the target whose inversion replays) and that
            input the target: `33 63 96 99 -> 12 ?`. Objective (b) is written from the question
            alone, as the paper trains its student: the [bq] row's prompt is Q behind `[bq]`
            and its completion only what Q' changes, the new input and the new target
            (`33 -> 12 ?`); the [br] row's prompt is the whole Q'. Its plan
            inverts the forward plan along that input's path (`99 - 96 = 3 , 63 / 3 = 21 ,
            33 - 21 = 12`), replayed before it is written; an instance with no such input
            keeps its forward row only.
lookahead   99 - 96 = 3 , <T> 12 + 21 = 33 </T> 63 / 3 = 21 , 12 + 21 = 33 <eos>  for a share
            `lookahead_p` of the rows (TRELAWNEY), the others as `optimal`: with T plan steps,
            the cut d (steps written before <T>) uniform in 0..T-1, the span's first step k
            uniform in d+1..T and its last step L in k..T (1-based); no loss on <T>. Eval can
            force `<T>` (the model writes the span) or `<T> a op b = target </T>` (the oracle
            plan's last step, the one that reaches the target: `eval_prefix`).
corrupted   <the `stream` of an unrelated instance of the same split> ; <the oracle's plan>

Stream words (see searchers/countdown_search.py): `at S` the search starts at S; `try a op b =
c : S` an operation from the current node giving the numbers S (`goal` / `dead` follow when S
is a single number); `go S` moves to the earliest generated, not yet entered node whose numbers
are S; `back S` returns to the ancestor whose numbers are S. A backward node is written
`unused inputs -> subgoal` and a backward try `subgoal = a op b`. Stream variants answer with
the plan their own search found, or `none` when it found none (about 44% of `mix` streams, as
in SoS); the other variants answer with the oracle's plan.

Vocabulary: one token per integer 0..999 and a group separator `_`: a number >= 1000 is written
in base-1000 groups, most significant first (9504 -> `9 _ 504`, 1000005 -> `1 _ 0 _ 5`), so
every integer an instance can produce has exactly one spelling with 1,000 number tokens.
Text written the usual way reads too (`text_words`, `parse_text`: what `eval-hf` and outside
scorers judge): `86 * 29 = 2494` is `86 * 29 = 2 _ 494`, and words need no spaces between them
(`99-96=3, 63/3=21`, the exported `solution` strings).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .. import rng
from ..envs import countdown as cd
from ..errors import require, setting
from ..events import Event
from ..searchers import countdown_search as cs
from ..variants import VARIANT
from . import common
from .common import STREAM_VARIANTS, VARIANTS, Parsed, example_rows
from .vocab import MIX_TOKENS, Vocab, forced_open

_WORDS = ["<pad>", "<bos>", "<eos>", "+", "*", "-", "/", "=", ",", ";", ":", "->", "?", "_", "at",
          "try", "go", "back", "goal", "dead", "none", "[bq]", "[br]", "<T>", "</T>"]
(PAD, BOS, EOS, PLUS, TIMES, MINUS, SLASH, EQ, COMMA, SEMI, COLON, ARROW, QMARK, GROUP, AT, TRY, GO, BACK,
 GOAL, DEAD, NONE, BQ, BR, T_OPEN, T_CLOSE) = range(len(_WORDS))
STRUCTURE = _WORDS + MIX_TOKENS   # then the numbers
EOS_WORD = _WORDS[EOS]
OP0 = PLUS            # token of operation code op is OP0 + op (the order of cd.OP_SYMBOLS)
NUM0 = len(STRUCTURE)
NUMBER_TOKENS = 1000  # integers 0..999; larger ones in base-1000 groups

DONOR_SALT = 1 << 40  # `corrupted`: a salt no dedup redraw reaches, so donors are fresh instances


@dataclass(frozen=True)
class Options:
    """How the traces are written (every knob of the writer, stored in meta.json)."""

    searcher: str = setting("mix", "the search behind stream / corrupted: mix (per instance one of "
                                   "SoS's 12 strategies, with SoS's weights), one of them ("
                                   + ", ".join(s.name for s in cs.STRATEGY_TABLE if s.mix_weight)
                                   + ") or dfs-full (complete forward DFS)")
    max_tries: int = setting(10_000, "a search gives up after this many tries (never reached with 4 inputs)")
    lookahead_p: float = setting(0.5, "share of lookahead rows that get a <T> span, in [0, 1]")

    def validate(self) -> None:
        require(self.searcher in cs.FORWARD,
                f"countdown searcher must be one of {', '.join(cs.FORWARD)}, got {self.searcher!r}.")
        require(isinstance(self.max_tries, int) and not isinstance(self.max_tries, bool)
                and self.max_tries >= 1, f"max_tries must be a positive integer, got {self.max_tries!r}.")
        require(isinstance(self.lookahead_p, (int, float)) and not isinstance(self.lookahead_p, bool)
                and 0.0 <= self.lookahead_p <= 1.0,
                f"lookahead_p must be a number in [0, 1], got {self.lookahead_p!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


def make_vocab(cfg) -> Vocab:
    return Vocab(STRUCTURE + [str(i) for i in range(NUMBER_TOKENS)])


def no_loss_tokens(vocab: Vocab) -> list[int]:
    """Targets that carry no loss: TRELAWNEY trains where to continue after <T>, not when to
    open it (`</T>` keeps its loss)."""
    return [T_OPEN]


# --------------------------------------------------------------------------- writer (Numba)


# The same bounded write as the searcher's tape writer (`countdown_search._put`), kept apart on
# purpose: tokens and search tapes are different arrays, and sharing it would tie the grammar's
# kernels to the searcher module's.
@njit(cache=True, inline="always")
def _put(buf, pos, token):
    """Write when `buf` has room (a zero-length `buf` only counts)."""
    if pos < buf.shape[0]:
        buf[pos] = token
    return pos + 1


@njit(cache=True, inline="always")
def _put_number(buf, pos, value):
    if value < NUMBER_TOKENS:
        return _put(buf, pos, NUM0 + value)
    groups = np.empty(8, dtype=np.int64)
    k = 0
    while value > 0:
        groups[k] = value % NUMBER_TOKENS
        value //= NUMBER_TOKENS
        k += 1
    pos = _put(buf, pos, NUM0 + groups[k - 1])
    for g in range(k - 2, -1, -1):
        pos = _put(buf, pos, GROUP)
        pos = _put(buf, pos, NUM0 + groups[g])
    return pos


@njit(cache=True, inline="always")
def _put_question(buf, pos, nums, target):
    for s in range(nums.shape[0]):
        pos = _put_number(buf, pos, nums[s])
    pos = _put(buf, pos, ARROW)
    pos = _put_number(buf, pos, target)
    return _put(buf, pos, QMARK)


@njit(cache=True, inline="always")
def _put_step(buf, pos, step, reverse):
    """`a op b = c`, or `c = a op b` when written from the result back."""
    if reverse:
        pos = _put_number(buf, pos, step[3])
        pos = _put(buf, pos, EQ)
    pos = _put_number(buf, pos, step[0])
    pos = _put(buf, pos, OP0 + step[1])
    pos = _put_number(buf, pos, step[2])
    if not reverse:
        pos = _put(buf, pos, EQ)
        pos = _put_number(buf, pos, step[3])
    return pos


@njit(cache=True, inline="always")
def _put_plan(buf, pos, plan, reverse):
    steps = plan.shape[0]
    for q in range(steps):
        if q > 0:
            pos = _put(buf, pos, COMMA)
        pos = _put_step(buf, pos, plan[steps - 1 - q] if reverse else plan[q], reverse)
    return pos


@njit(cache=True, inline="always")
def _put_node(buf, pos, tape, at, m, backward):
    """The numbers of a tape state (m values from tape[at]); backward: `unused -> subgoal`."""
    shown = m - 1 if backward else m
    for s in range(shown):
        pos = _put_number(buf, pos, tape[at + s])
    if backward:
        pos = _put(buf, pos, ARROW)
        pos = _put_number(buf, pos, tape[at + m - 1])
    return pos


@njit(cache=True)
def _put_tape(buf, pos, tape, lo, hi, backward):
    p = lo
    while p < hi:
        kind = tape[p]
        if kind == Event.TRY:
            outcome, m = tape[p + 5], tape[p + 6]
            pos = _put(buf, pos, TRY)
            pos = _put_step(buf, pos, tape[p + 1: p + 5], backward)
            pos = _put(buf, pos, COLON)
            pos = _put_node(buf, pos, tape, p + 7, m, backward)
            if outcome == cs.OUT_GOAL:
                pos = _put(buf, pos, GOAL)
            elif outcome == cs.OUT_DEAD:
                pos = _put(buf, pos, DEAD)
            p += 7 + m
        else:
            m = tape[p + 1]
            pos = _put(buf, pos, AT if kind == Event.START else (GO if kind == Event.GO else BACK))
            pos = _put_node(buf, pos, tape, p + 2, m, backward)
            p += 2 + m
    return pos


@njit(cache=True, inline="always")
def _number_len(value):
    """Tokens `_put_number` writes for value: one, or 2 per base-1000 group after the first."""
    n = 1
    while value >= NUMBER_TOKENS:
        value //= NUMBER_TOKENS
        n += 2
    return n


@njit(cache=True)
def _count_tape(tape, lo, hi, backward):
    """Tokens `_put_tape` writes for tape[lo:hi], without writing them (the measuring pass of
    the stream variants; `write_examples` checks it against the writing pass)."""
    count = 0
    p = lo
    while p < hi:
        if tape[p] == Event.TRY:
            m = tape[p + 6]
            count += 4 + _number_len(tape[p + 1]) + _number_len(tape[p + 3]) + _number_len(tape[p + 4])
            count += 1 if tape[p + 5] != cs.OUT_OPEN else 0
            at = p + 7
            p += 7 + m
        else:
            m = tape[p + 1]
            count += 1
            at = p + 2
            p += 2 + m
        for s in range(m):
            count += _number_len(tape[at + s])
        if backward:
            count += 1  # the arrow before the subgoal
    return count


@njit(cache=True, inline="always")
def _put_steps(buf, pos, plan, lo, hi):
    """Steps lo..hi-1 of a forward plan, comma-separated."""
    for q in range(lo, hi):
        if q > lo:
            pos = _put(buf, pos, COMMA)
        pos = _put_step(buf, pos, plan[q], False)
    return pos


@njit(cache=True)
def _write_row(buf, code, kind, nums, target, plan, found, tape, lo, hi, q_nums, q_target, q_plan, span):
    """One example; returns (length, prompt length). `buf` of length 0 only measures.
    `span`: lookahead's (cut d, first span step k, last span step L), d < 0 for a plain row."""
    pos = _put(buf, 0, BOS)
    # revthink's backward objectives (its forward rows are optimal's)
    if code == common.REVTHINK and kind != common.KIND_FWD:
        pos = _put(buf, pos, BQ if kind == common.KIND_BQ else BR)
        if kind == common.KIND_BR:
            pos = _put_question(buf, pos, q_nums, q_target)
        else:  # the question alone (RevThink's student sees no answer at objective (b))
            pos = _put_question(buf, pos, nums, target)
    else:
        pos = _put_question(buf, pos, nums, target)
    prompt = pos
    if code == common.OPTIMAL:
        pos = _put_plan(buf, pos, plan, False)
    elif code == common.REVERSE:
        pos = _put_plan(buf, pos, plan, True)
    elif code == common.REVFWD:
        pos = _put_plan(buf, pos, plan, True)
        pos = _put(buf, pos, SEMI)
        pos = _put_plan(buf, pos, plan, False)
    elif code == common.STREAM or code == common.BACKWARD_STREAM or code == common.CORRUPTED:
        # corrupted writes a donor's tape
        if buf.shape[0] == 0:
            pos += _count_tape(tape, lo, hi, code == common.BACKWARD_STREAM)
        else:
            pos = _put_tape(buf, pos, tape, lo, hi, code == common.BACKWARD_STREAM)
        pos = _put(buf, pos, SEMI)
        if found:
            pos = _put_plan(buf, pos, plan, False)
        else:
            pos = _put(buf, pos, NONE)
    elif code == common.REVTHINK:
        if kind == common.KIND_FWD:
            pos = _put_plan(buf, pos, plan, False)
        elif kind == common.KIND_BQ:  # what Q' changes: the target is an input, one input the target
            pos = _put_number(buf, pos, target)
            pos = _put(buf, pos, ARROW)
            pos = _put_number(buf, pos, q_target)
            pos = _put(buf, pos, QMARK)
        else:
            pos = _put_plan(buf, pos, q_plan, False)
    else:  # lookahead
        steps = plan.shape[0]
        d = span[0]
        if d < 0:
            pos = _put_plan(buf, pos, plan, False)
        else:
            pos = _put_steps(buf, pos, plan, 0, d)
            if d > 0:
                pos = _put(buf, pos, COMMA)
            pos = _put(buf, pos, T_OPEN)
            pos = _put_steps(buf, pos, plan, span[1] - 1, span[2])
            pos = _put(buf, pos, T_CLOSE)
            pos = _put_steps(buf, pos, plan, d, steps)
    pos = _put(buf, pos, EOS)
    return pos, prompt


@njit(cache=True, parallel=True)
def _write_rows(code, row_inst, row_kind, numbers, target, plan, found, tape, tape_off, q_nums, q_target,
                q_plan, spans, offsets, out, lengths, prompt_len):
    """Measure (when `out` is empty) or write every row into `out` at `offsets`."""
    empty = np.empty(0, dtype=out.dtype)
    for r in prange(row_inst.shape[0]):
        i = row_inst[r]
        buf = empty if out.shape[0] == 0 else out[offsets[r]: offsets[r + 1]]
        length, prompt = _write_row(buf, code, row_kind[r], numbers[i], target[i], plan[i], found[i], tape,
                                    tape_off[i], tape_off[i + 1], q_nums[i], q_target[i], q_plan[i], spans[i])
        lengths[r] = length
        prompt_len[r] = prompt


@njit(cache=True, parallel=True)
def _lookahead_spans(seed, stream, indices, steps, p, spans):
    """TRELAWNEY's draw per instance: with probability p a cut d in 0..steps-1, a span start k
    in d+1..steps and end L in k..steps (1-based steps), else d = -1 (a plain row)."""
    for i in prange(indices.shape[0]):
        state = rng.new_state(seed, stream, indices[i], 0)
        spans[i, 0] = -1
        if steps >= 1 and rng.uniform(state) < p:
            d = rng.randbelow(state, steps)
            k = d + 1 + rng.randbelow(state, steps - d)
            spans[i, 0], spans[i, 1], spans[i, 2] = d, k, k + rng.randbelow(state, steps - k + 1)


def write_examples(task, cfg, options: Options, variant: str, seed: int, split: str,
                   indices: np.ndarray, batch: dict) -> dict:
    """Token rows for the instances `batch` (instances `indices` of `split`).

    Returns `tokens` (flat), `lengths`, `prompt_len`, `instance` (row -> position in batch)
    and `kind` (revthink's example kind; 0 elsewhere).
    """
    require(variant in VARIANTS, f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}.")
    n_inst, n = batch["numbers"].shape
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    plan = batch["plan"]
    found = np.ones(n_inst, dtype=np.bool_)
    tape = np.zeros(0, dtype=np.int64)
    tape_off = np.zeros(n_inst + 1, dtype=np.int64)
    facts = VARIANT[variant]
    if facts.own_stream:
        searcher = "backward" if facts.backward_search else options.searcher
        result = cs.run_search(cfg, batch, searcher, seed, split, indices, options.max_tries)
        tape, tape_off, plan, found = result["tape"], result["offsets"], result["plan"], result["found"]
    elif facts.foreign_stream:
        # the stream of a fresh, unrelated instance of the same split (shard-independent), then
        # this instance's oracle plan
        donors = cd.sample_instances(cfg, seed, split, indices, salts=np.full(n_inst, DONOR_SALT, np.int64))
        result = cs.run_search(cfg, donors, options.searcher, seed, split, indices, options.max_tries)
        tape, tape_off = result["tape"], result["offsets"]
    trace_stream = rng.stream_key(rng.STREAM_TRACE, split)
    spans = np.full((n_inst, 3), -1, dtype=np.int64)
    if facts.lookahead_spans:
        _lookahead_spans(np.uint64(seed), trace_stream, indices, n - 1, float(options.lookahead_p), spans)
    keep = None
    if facts.backward_objectives:
        q = cd.backward_questions(cfg, batch)
        q_nums, q_target, q_plan = q["numbers"], q["target"], q["plan"]
        keep = q["ok"]  # RevThink keeps consistent examples only: no input to ask, no backward rows
    else:
        q_nums, q_target, q_plan = batch["numbers"], batch["target"], plan
    row_inst, row_kind = example_rows(variant, split, n_inst, keep)
    rows = row_inst.shape[0]
    lengths = np.zeros(rows, dtype=np.int32)
    prompt_len = np.zeros(rows, dtype=np.int32)
    args = (common.VARIANT_CODE[variant], row_inst, row_kind, batch["numbers"], batch["target"], plan, found,
            tape, tape_off, q_nums, q_target, q_plan, spans)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    _write_rows(*args, offsets, np.zeros(0, dtype=np.int32), lengths, prompt_len)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=np.int32)  # every position is written
    written = np.zeros(rows, dtype=np.int32)
    _write_rows(*args, offsets, tokens, written, prompt_len)
    assert np.array_equal(written, lengths), "the measuring and the writing pass disagree"
    return {"tokens": tokens, "lengths": lengths, "prompt_len": prompt_len, "instance": row_inst,
            "kind": row_kind}


# --------------------------------------------------------------------------- parser


class Try(NamedTuple):
    """A parsed `try`: the step as `a op b=c`, the numbers it leads to, and its outcome:
    Event.GOAL, Event.DEAD or None (open). Backward states are (unused inputs, subgoal)."""

    step: str
    state: tuple
    outcome: Event | None


class _ParseError(Exception):
    pass


class _Reader:
    def __init__(self, ids: list[int], vocab_size: int):
        self.ids = ids
        self.pos = 0
        self.number_end = min(NUM0 + NUMBER_TOKENS, vocab_size)

    def done(self) -> bool:
        return self.pos >= len(self.ids)

    def peek(self) -> int:
        return self.ids[self.pos] if self.pos < len(self.ids) else -1

    def expect(self, token: int, what: str) -> None:
        if self.peek() != token:
            raise _ParseError(f"token {self.pos}: expected {STRUCTURE[token]!r} {what}")
        self.pos += 1

    def is_number(self) -> bool:
        return NUM0 <= self.peek() < self.number_end

    def number(self) -> int:
        if not self.is_number():
            raise _ParseError(f"token {self.pos}: expected a number")
        value = self.ids[self.pos] - NUM0
        start = self.pos
        self.pos += 1
        while self.peek() == GROUP:
            self.pos += 1
            if not self.is_number():
                raise _ParseError(f"token {self.pos}: `_` must be followed by a group 0..999")
            if value == 0:
                raise _ParseError(f"token {start}: a grouped number cannot start with 0")
            value = value * NUMBER_TOKENS + self.ids[self.pos] - NUM0
            self.pos += 1
        return value

    def numbers(self) -> list[int]:
        out = []
        while self.is_number():
            out.append(self.number())
        return out

    def op(self) -> str:
        t = self.peek()
        if not OP0 <= t < OP0 + 4:
            raise _ParseError(f"token {self.pos}: expected an operation")
        self.pos += 1
        return cd.OP_SYMBOLS[t - OP0]

    def step(self, reverse: bool) -> str:
        """`a op b = c` (or `c = a op b`), returned as the string `a op b=c`."""
        if reverse:
            c = self.number()
            self.expect(EQ, "after the result")
        a = self.number()
        sym = self.op()
        b = self.number()
        if not reverse:
            self.expect(EQ, "before the result")
            c = self.number()
        return f"{a}{sym}{b}={c}"

    def plan(self, reverse: bool) -> list[str]:
        steps = [self.step(reverse)]
        while self.peek() == COMMA:
            self.pos += 1
            steps.append(self.step(reverse))
        return steps

    def state(self, backward: bool) -> tuple:
        nums = tuple(self.numbers())
        if not backward:
            if not nums:
                raise _ParseError(f"token {self.pos}: expected the numbers of a state")
            return nums
        self.expect(ARROW, "between the unused inputs and the subgoal")
        return (nums, self.number())


@dataclass
class CountdownParsed(Parsed):
    """`Parsed`, plus the stream's own words: (Event.START, state), (Event.TRY, Try),
    (Event.GO, state), (Event.BACK, state). `events` holds the same stream as the metrics judge
    it (see `_metric_events`)."""

    words: list = field(default_factory=list)


class Move(NamedTuple):
    """A `go` payload for the metrics: the step applied and the numbers it claims to give."""

    step: str | None
    state: tuple


def _words(r: _Reader, backward: bool, terminated: bool) -> tuple[list, list[int], str | None]:
    """(words, token position after each word, error) of a stream, read as far as it goes:
    reading stops at the first token that does not continue a word (`error` says which) and
    keeps the words before it. Unless `terminated` (a `;` or <eos> follows the stream), the
    stream was cut, so a word that reaches the end is dropped (a number or a state may still
    grow), unless a `try`'s `goal` / `dead` closed it."""
    words: list[tuple] = []
    ends: list[int] = []
    while not r.done():
        start = r.pos
        try:
            if not words:
                r.expect(AT, "at the start of a stream")
                word = (Event.START, r.state(backward))
            else:
                t = r.peek()
                r.pos += 1
                if t == TRY:
                    step = r.step(backward)
                    r.expect(COLON, "before the state a try leads to")
                    state = r.state(backward)
                    outcome = None
                    if r.peek() in (GOAL, DEAD):
                        outcome = Event.GOAL if r.peek() == GOAL else Event.DEAD
                        r.pos += 1
                    word = (Event.TRY, Try(step, state, outcome))
                elif t in (GO, BACK):
                    word = (Event.GO if t == GO else Event.BACK, r.state(backward))
                else:
                    raise _ParseError(f"token {start}: not a stream word")
        except _ParseError as exc:
            if r.pos >= len(r.ids) and not terminated:
                return words, ends, None  # a word cut off by the end
            return words, ends, str(exc)
        closed = word[0] == Event.TRY and word[1].outcome is not None
        if r.done() and not terminated and not closed:
            break  # the last word may have been cut
        words.append(word)
        ends.append(r.pos)
    if not words and terminated:
        return words, ends, "token 0: expected 'at' at the start of a stream"
    return words, ends, None


class _Node:
    __slots__ = ("state", "parent", "step", "entered", "kids", "ident")

    def __init__(self, state, parent, step, ident):
        self.state, self.parent, self.step, self.ident = state, parent, step, ident
        self.entered = parent is None
        self.kids = 0


def walk_words(words, strict: bool = True):
    """Replay stream words: yields (event, payload, current node after it, node it created or
    reached). `go S` reaches the earliest generated node with numbers S not yet entered, `back
    S` the ancestor with numbers S. strict: a move to a node that does not exist raises
    _ParseError; otherwise `go` makes a stand-in node (step None) and `back` goes to any entered
    node with those numbers (or stays)."""
    nodes: list[_Node] = []
    current = None
    for event, payload in words:
        if event == Event.START:
            current = _Node(payload, None, None, "0")
            nodes = [current]
            yield event, payload, current, current
        elif current is None:
            raise _ParseError("a stream must start with `at`")
        elif event == Event.TRY:
            child = _Node(payload.state, current, payload.step, f"{current.ident},{current.kids}")
            current.kids += 1
            nodes.append(child)
            yield event, payload, current, child
        elif event == Event.GO:
            target = next((x for x in nodes if not x.entered and x.state == payload), None)
            if target is None:
                if strict:
                    raise _ParseError(f"`go` to {payload}, which no try generated")
                target = _Node(payload, current, None, f"{current.ident},?")
                nodes.append(target)
            target.entered = True
            current = target
            yield event, payload, current, target
        else:
            node = current
            while node is not None and node.state != payload:
                node = node.parent
            if node is None:
                if strict:
                    raise _ParseError(f"`back` to {payload}, which is not an ancestor")
                node = next((x for x in reversed(nodes) if x.entered and x.state == payload), current)
            current = node
            yield event, payload, current, node


def _key(state, backward: bool):
    return cd.state_key(state[0], state[1]) if backward else cd.state_key(state)


def _metric_events(words, ends, backward: bool) -> tuple[list, list[int]]:
    """The stream as the metrics judge it (metrics.py), as (event, payload, written) triples:
    - a `try` followed by `go` to the node it generated is one GO (a DFS descent); a `try` of a
      single number is a GO, then `goal` or `dead`; a `try` whose node is not entered at once is
      a generation, not a move (BFS);
    - when the stream goes on from the parent of a single number it tried, a BACK to that parent
      comes first, with no tokens of its own (written=False): the grammar implies it;
    - a `back S` word is a written BACK;
    - a `go` to a node that is not a child of where the stream stands (after that implied
      BACK) is a JUMP to the node's parent (a BFS frontier switch: a step, not a backtrack),
      then a GO; a `try` from a node where the stream does not stand (never in a teacher's
      stream) is a JUMP there with no tokens of its own.
    Synthetic events end where the word before them ended; the last event ends where the last
    word ends (a BFS stream may end with generations), so its end counts every stream token."""
    items = list(walk_words(words, strict=False))
    events: list[tuple] = []
    out_ends: list[int] = []
    here = None      # the node the metrics stand on
    leaves = set()   # the single-number nodes a `try` reached (dead ends, the goal)

    def settle(parent, before, written):
        """Bring the metrics to `parent` before a move from it."""
        nonlocal here
        if here is parent or parent is None:
            return
        if here in leaves and here.parent is parent:
            events.append((Event.BACK, parent.state, False))
        else:
            events.append((Event.JUMP, parent.state, written))
        out_ends.append(before)
        here = parent

    k = 0
    while k < len(items):
        event, payload, current, node = items[k]
        end = ends[k]
        before = ends[k - 1] if k else 0
        if event == Event.START:
            events.append((Event.START, _key(payload, backward), True))
            out_ends.append(end)
            here = node
        elif event == Event.TRY:
            settle(node.parent, before, False)
            following = items[k + 1] if k + 1 < len(items) else None
            if payload.outcome is not None:
                events += [(Event.GO, Move(payload.step, payload.state), True), (payload.outcome, -1, True)]
                out_ends += [end, end]
                leaves.add(node)
                here = node
            elif following is not None and following[0] == Event.GO and following[3] is node:
                events.append((Event.GO, Move(payload.step, payload.state), True))
                out_ends.append(ends[k + 1])
                here = node
                k += 1
        elif event == Event.GO:
            settle(node.parent, before, True)
            events.append((Event.GO, Move(node.step, payload), True))
            out_ends.append(end)
            here = node
        else:
            events.append((Event.BACK, payload, True))
            out_ends.append(end)
            here = node
        k += 1
    if out_ends and ends:
        out_ends[-1] = max(out_ends[-1], ends[-1])
    return events, out_ends


def _strip_lookahead(ids: list[int]) -> list[int]:
    """The tokens without their `<T> ... </T>` spans (TRELAWNEY's copied future steps)."""
    out, inside = [], False
    for pos, t in enumerate(ids):
        if t == T_OPEN:
            if inside:
                raise _ParseError(f"token {pos}: <T> inside a <T> span")
            inside = True
        elif t == T_CLOSE:
            if not inside:
                raise _ParseError(f"token {pos}: </T> without <T>")
            inside = False
        elif not inside:
            out.append(t)
    if inside:
        raise _ParseError("<T> never closed")
    return out


def _parse_stream(variant: str, ids: list[int], vocab: Vocab) -> CountdownParsed:
    """A stream variant: the events of as much of the stream as can be read, always; the plan
    after `;` only when the completion finished and everything before it reads."""
    backward = VARIANT[variant].backward_search
    finished = EOS in ids
    body = ids[: ids.index(EOS)] if finished else ids
    cut = body.index(SEMI) if SEMI in body else len(body)
    words, ends, error = _words(_Reader(body[:cut], len(vocab)), backward, finished or cut < len(body))
    events, event_ends = _metric_events(words, ends, backward)
    plan = None
    if not finished:
        error = "no <eos>: the completion did not finish"
    elif error is None and cut == len(body):
        error = "no `;` before the plan"
    elif error is None:
        tail = _Reader(body[cut + 1:], len(vocab))
        try:
            if tail.peek() == NONE and len(tail.ids) == 1:
                plan = []
            else:
                plan = tail.plan(reverse=False)
                if not tail.done():
                    raise _ParseError(f"token {cut + 1 + tail.pos}: unexpected after the plan")
        except _ParseError as exc:
            plan, error = None, str(exc)
    return CountdownParsed(plan, events=events, backward=backward, event_ends=event_ends, words=words,
                           error=error)


def parse(variant: str, ids, vocab: Vocab) -> Parsed:
    """Parse a completion (the tokens after the prompt, ending with <eos>). Never raises:
    anything malformed comes back with `plan=None` and the reason in `error`. A stream that
    answers `none` parses to the empty plan (a wrong answer, not a parse failure). A stream
    variant keeps the events of the stream as far as it can be read even when the completion
    is unparseable (no <eos>, cut at the context, garbage mid-stream, no `;`): eval judges that
    partial stream as a failed trace."""
    ids = [int(t) for t in ids]
    if variant not in VARIANTS:
        return CountdownParsed(None, error=f"unknown variant {variant!r}")
    if variant in STREAM_VARIANTS:
        return _parse_stream(variant, ids, vocab)
    if EOS not in ids:
        return CountdownParsed(None, error="no <eos>: the completion did not finish")
    ids = ids[: ids.index(EOS)]
    facts = VARIANT[variant]
    try:
        if not (facts.reversed_plan and facts.forward_plan):  # one plan, forward or goal-first
            r = _Reader(_strip_lookahead(ids) if facts.lookahead_spans else ids, len(vocab))
            steps = r.plan(reverse=facts.reversed_plan)
            if not r.done():
                raise _ParseError(f"token {r.pos}: unexpected after the plan")
            return CountdownParsed(steps[::-1] if facts.reversed_plan else steps)
        # revfwd: the plan goal-first, `;`, the plan
        if SEMI not in ids:
            raise _ParseError("no `;` before the plan")
        cut = ids.index(SEMI)
        head, tail = _Reader(ids[:cut], len(vocab)), _Reader(ids[cut + 1:], len(vocab))
        head.plan(reverse=True)  # must be readable, though eval judges the plan
        if not head.done():
            raise _ParseError(f"token {head.pos}: unexpected after the reversed plan")
        plan = tail.plan(reverse=False)
        if not tail.done():
            raise _ParseError(f"token {cut + 1 + tail.pos}: unexpected after the plan")
        return CountdownParsed(plan)
    except _ParseError as exc:
        return CountdownParsed(None, error=str(exc))


# --------------------------------------------------------------------------- text written the usual way

# One word of a text: a run of digits, `->`, a bracketed word (`<eos>`, `</T>`, `[bq]`), a run of
# letters, or any other single character (`+ - * / = , ; : ? _`).
_TEXT_WORD = re.compile(r"[0-9]+|->|<[^<>\s]*>|\[[^\[\]\s]*\]|[A-Za-z]+|\S")


def spell_number(value: int) -> list[str]:
    """The grammar's words for a non-negative integer: itself below 1,000, else its base-1000
    groups, most significant first (2494 -> `2 _ 494`), as the writer spells it."""
    groups = [value % NUMBER_TOKENS]  # least significant first
    while value >= NUMBER_TOKENS:
        value //= NUMBER_TOKENS
        groups.append(value % NUMBER_TOKENS)
    words = [str(groups[-1])]
    for group in reversed(groups[:-1]):
        words += ["_", str(group)]
    return words


def text_words(text: str) -> list[str]:
    """The grammar's words of a text written the usual way: words need no spaces between them
    (`99-96=3,`) and a plain integer of any size is one number (`2494` -> `2 _ 494`). The
    suite's own spelling reads unchanged. A number written with a leading zero (`007`) is kept
    as written: it is no number of this grammar, so the text does not parse."""
    words = []
    for word in _TEXT_WORD.findall(text):
        if word[0] in "0123456789" and (word == "0" or word[0] != "0"):
            words += spell_number(int(word))
        else:
            words.append(word)
    return words


def parse_text(variant: str, text: str, vocab: Vocab) -> Parsed:
    """`parse` of a completion written as text the usual way (`text_words`), for scorers that
    hold text, not token ids: `parse_text("optimal", "86*29=2494, 2494-2470=24", vocab)`. The
    text ends where it ends (an `<eos>` is added when it has none). A word outside the
    vocabulary is a parse failure that names it."""
    words = text_words(text)
    unknown = [w for w in words if w not in vocab.ids]
    if unknown:
        return CountdownParsed(None, error=f"the word {unknown[0]!r} is not in the suite's vocabulary")
    if EOS_WORD not in words:
        words.append(EOS_WORD)
    return parse(variant, [vocab.ids[w] for w in words], vocab)


def eval_prefix(variant: str, mode: str, instances: dict, i: int, vocab: Vocab) -> list[int]:
    """The tokens eval forces after instance i's prompt before the model writes (TRELAWNEY's
    inference modes): `plain` none; `model-goal` `<T>` (the model writes the span, then the
    plan); `given-goal` `<T> a op b = target </T>`, the goal given as the last step of the
    oracle's plan (the step that reaches the target: a span training rows hold, cut 0 and span
    = the last step). The judged completion is these tokens followed by the generated ones.
    Only `lookahead` models know `<T>`."""
    if not forced_open(variant, mode):
        return []
    if mode == "model-goal":
        return [T_OPEN]
    last = np.asarray(instances["plan"][i][-1], dtype=np.int64)
    buf = np.zeros(64, dtype=np.int32)
    n = _put_step(buf, 0, last, False)
    return [T_OPEN] + [int(t) for t in buf[:n]] + [T_CLOSE]


def deciding_index(variant: str, completion, vocab: Vocab) -> int | None:
    """The completion index of the deciding token of a (reference) completion: the first token
    the prompt and the grammar do not fix (the target and the inputs in their given order are
    copies of the prompt; `at`, `try`, `=` fixed words). optimal, revthink, lookahead: the
    first operand of the first step (which input to use first is a choice; for lookahead the
    first token outside the `<T>` span), so on Countdown it is the first token unless a span
    comes first; reverse, revfwd: the first operand after `target =`; stream: the first operand
    after the first `try`; backward-stream: the first operand after the first `try subgoal =`;
    corrupted: the first token of the plan after the last `;`. None where there is none."""
    ids = [int(t) for t in completion]
    j = None
    facts = VARIANT[variant]
    if not facts.stream and not facts.reversed_plan:  # the plan alone
        inside = False
        for k, t in enumerate(ids):
            if t in (T_OPEN, T_CLOSE):
                inside = t == T_OPEN
            elif not inside:
                j = k
                break
    elif facts.reversed_plan:
        if EQ in ids:
            j = ids.index(EQ) + 1
    elif facts.foreign_stream:
        if SEMI in ids:
            j = len(ids) - ids[::-1].index(SEMI)
    elif facts.backward_search:
        if TRY in ids and EQ in ids[ids.index(TRY):]:
            j = ids.index(EQ, ids.index(TRY)) + 1
    elif TRY in ids:  # stream
        j = ids.index(TRY) + 1
    return j if j is not None and j < len(ids) and NUM0 <= ids[j] < len(vocab) else None


def path_steps(node: _Node) -> list[str]:
    """The steps (`a op b=c`) of the path from the start to a node of `walk_words`."""
    steps = []
    while node.parent is not None:
        steps.append(node.step)
        node = node.parent
    return steps[::-1]


def stream_plan(parsed: Parsed) -> list[str] | None:
    """The forward plan a parsed stream reached: the steps from the start to the first `try`
    that claims the goal (reversed for a backward stream, whose path runs from the target).
    None when the stream never claims the goal or moves to a node it never generated."""
    words = getattr(parsed, "words", None)
    if not words:
        return None
    try:
        for event, payload, _, node in walk_words(words):
            if event == Event.TRY and payload.outcome == Event.GOAL:
                steps = path_steps(node)
                return steps[::-1] if parsed.backward else steps
    except _ParseError:
        return None
    return None


def variant_note(task_name: str, variant: str) -> str | None:
    """What a report should say next to a Countdown variant: how complete its teacher is, so
    that `stream` vs `backward-stream` is not read as direction alone."""
    facts = VARIANT.get(variant)  # None for a mixture: its components have the notes
    if facts is None:
        return None
    if facts.foreign_stream:
        return "the stream shown is another instance's; the plan is this instance's"
    if facts.backward_search:
        return "teacher: backward DFS, chain solutions only (~95% of instances)"
    if facts.stream:
        return "teacher: Options.searcher; SoS's mix reaches the goal in ~57% of streams (dfs-full: 100%)"
    return None


def searcher_of(suite, split: str, index: int) -> str:
    """The search behind a row of this suite: the strategy of a stream (for `corrupted`, of the
    unrelated instance's stream it shows), `backward` for backward-stream, `optimal` (the
    oracle, no search) for the other variants."""
    facts = VARIANT[suite.variant]
    if facts.backward_search:
        return "backward"
    if facts.stream:
        if suite.options.searcher == "mix":
            return cs.mix_choice(suite.meta["seed"], split, index)
        return suite.options.searcher
    return "optimal"


class StreamTracker:
    """Follows a Countdown stream token by token while a model writes it, for the
    thought-switch penalty: the state the stream stands on, the moves made in the current
    thought (a `go`, or a `try` that ends in `goal` / `dead`, as the metrics count them), and
    whether a legal move to a state not yet entered is left. A word's last number may still
    grow, so the conditions are judged as if the word being written ended now (a `back` would
    end it); a stream that stops parsing is never penalised."""

    switch_tokens = (BACK,)
    _WORD_STARTS = (AT, TRY, GO, BACK)

    def __init__(self, walk):
        self.walk = walk
        self.current = None
        self.entered: set = set()
        self.thought_moves = 0
        self._word: list[int] = []
        self._done = False
        self._broken = False
        self._left_cache: dict = {}

    def _effect(self, word: list[int]):
        """(kind, state key, counts as a move) of a complete word, or None if it is not one."""
        backward = self.walk.backward
        r = _Reader(word[1:], NUM0 + NUMBER_TOKENS)
        try:
            if word[0] == TRY:
                r.step(backward)
                r.expect(COLON, "before the state")
                state = r.state(backward)
                outcome = r.peek() in (GOAL, DEAD)
                r.pos += outcome
            else:
                state = r.state(backward)
                outcome = False
            if not r.done():
                return None
            return word[0], _key(state, backward), outcome
        except (_ParseError, TypeError, ValueError, IndexError):
            return None

    def _after(self, effect):
        """(current, entered, thought_moves) once `effect` is applied."""
        kind, state, outcome = effect
        if kind == AT:
            return state, {state}, 0
        if kind == GO:
            return state, self.entered | {state}, self.thought_moves + 1
        if kind == BACK:
            return state, self.entered, 0
        return self.current, self.entered, self.thought_moves + outcome  # a try stays put

    def feed(self, token: int) -> None:
        if self._done:
            return
        if token in self._WORD_STARTS or token in (SEMI, EOS):
            if self._word and not self._broken:
                effect = self._effect(self._word)
                if effect is None:
                    self._broken = True
                else:
                    self.current, self.entered, self.thought_moves = self._after(effect)
            self._word = []
            if token in (SEMI, EOS):
                self._done = True
                return
        elif not self._word:  # a stream word must come first
            self._broken = True
        self._word.append(token)

    def _unexpanded_left(self, current, entered) -> bool:
        key = (current, len(entered))
        if key not in self._left_cache:
            self._left_cache[key] = any(s not in entered for s in self.walk.successors(current))
        return self._left_cache[key]

    def should_penalise(self, beta: int, oracle: bool) -> bool:
        if self._done or self._broken or not self._word:
            return False
        effect = self._effect(self._word)
        if effect is None:
            return False
        current, entered, moves = self._after(effect)
        if current is None or moves >= beta or not self._unexpanded_left(current, entered):
            return False
        return not oracle or self.walk.live(current)
