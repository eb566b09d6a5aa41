"""Behaviour metrics of a search stream, judged step by step against the task's oracle.
docs/METRICS.md defines every number; the same code judges a model's stream and the teacher's.

A parsed stream is a list of events `(event, payload)` or `(event, payload, written)`, with
`event` one of `events.Event`: START, GO, BACK, JUMP, DEAD, GOAL (TRY is Countdown's tape
only). The task's `Walk` says what a GO payload means (the state the stream claims to reach,
and why the move is illegal if it is), which state a
`back`/`jump` payload names, the legal successors of a state, R(s) (`live`) and d*(s)
(`distance`). `written=False` marks an event the grammar implies without tokens of its own
(Countdown: the return to the parent after a dead single number).

Definitions used here:
- a *step* is a GO, BT or JUMP event; a GO is *invalid* when the walk says so (sub-kinds from
  the task: not_a_state, not_available, wrong_arithmetic, wrong_state); a BT is invalid when
  its target was never entered or is not a proper ancestor of the current state on the
  current path; a JUMP (a breadth-first switch to another part of the tree) is invalid when
  its target was never entered. After an invalid step the stream is followed where it
  *claims* to be, so one mistake is counted once, not again at every later step.
- a state is *expanded* once a move has left it; a GO is *redundant* when it enters a state
  that was already expanded (a re-expansion). Entering a dead leaf again is not redundant.
- a *thought* is a maximal run of events between two thought switches (a written BT, or a
  JUMP); it is *live* when the state its first GO enters has R = 1; it ends with its last
  event. An implied return (Countdown: to the parent of a dead single number, no tokens of
  its own) is no switch: trying the next operation there continues the thought, as TIP's
  `StreamTracker` counts it.
- a valid BT is *premature* when a state on the abandoned segment (the path below the target,
  down to the current state) still has a successor u that was never entered and has R(u) = 1;
  otherwise it is *necessary*. Its depth is how many levels it undoes. Jumps are not judged.
- a *self-loop*: some run of at most 8 events repeated at least 3 times in a row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .events import Event

SELF_LOOP_MAX_PERIOD = 8
SELF_LOOP_REPEATS = 3


@dataclass
class TraceStats:
    steps: int = 0
    moves: int = 0
    backtracks: int = 0                  # written and implied
    written_backtracks: int = 0          # backtracks with tokens of their own
    jumps: int = 0
    invalid: int = 0
    invalid_kinds: dict = field(default_factory=dict)
    redundant: int = 0
    false_goal: int = 0
    entered: int = 1                # distinct states entered, the root included
    expanded: int = 0               # distinct states a move left from
    premature: int = 0
    necessary: int = 0
    invalid_backtracks: int = 0
    backtrack_depths: dict = field(default_factory=lambda: {"necessary": [], "premature": [], "invalid": []})
    self_loop: bool = False
    thoughts: int = 0
    first_live_thought_end: int | None = None   # tokens up to the end of the first live thought
    tokens: int = 0                             # the stream's own tokens (not the plan after it)
    finished: bool = True                       # False: no <eos>, cut at the context, unreadable
    first_move_optimal: bool = False            # the stream's first move is valid and on a shortest path
    root_distance: int | None = None            # d*(root)
    tree: list = field(default_factory=list)    # (from, to, kind) in stream order, for pictures
    path: list = field(default_factory=list)    # the root-to-current path at the end
    dead_ends: list = field(default_factory=list)         # states where the stream said `dead`
    abandoned_live: list = field(default_factory=list)    # (state, its live untried successor)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("tree", "path", "dead_ends", "abandoned_live"):
            d.pop(key)
        return d

    @property
    def xi_ut(self) -> float:
        """1 - T-hat / T (Wang et al. 2025): 0 without a live thought or with a single thought."""
        if self.thoughts <= 1 or self.first_live_thought_end is None or not self.tokens:
            return 0.0
        return 1.0 - min(self.first_live_thought_end, self.tokens) / self.tokens


def has_self_loop(events: list) -> bool:
    n = len(events)
    for period in range(1, SELF_LOOP_MAX_PERIOD + 1):
        span = period * SELF_LOOP_REPEATS
        for i in range(0, n - span + 1):
            block = events[i: i + period]
            repeats = range(1, SELF_LOOP_REPEATS)
            if all(events[i + r * period: i + (r + 1) * period] == block for r in repeats):
                return True
    return False


def analyse_stream(events: list, event_ends: list[int], walk, n_tokens: int | None = None,
                   finished: bool = True) -> TraceStats:
    """Judge every step of one parsed stream. `n_tokens`: the stream's own tokens (default:
    the end of its last event); `finished=False` for a stream read only as far as it goes."""
    if n_tokens is None:
        n_tokens = max(event_ends, default=0)
    judge = _StreamJudge(walk, TraceStats(tokens=n_tokens, finished=finished))
    st = judge.st
    for k, event in enumerate(events):
        kind, payload = event[0], event[1]
        written = event[2] if len(event) > 2 else True
        end = event_ends[k] if k < len(event_ends) else n_tokens
        judge.thought_boundary(kind, written, end)
        if kind == Event.START:
            judge.start(k, payload)
        elif kind == Event.GO:
            judge.go(payload, end)
        elif kind == Event.JUMP:
            judge.jump(payload)
        elif kind == Event.BACK:
            judge.back(payload, written)
        elif kind == Event.DEAD:
            st.dead_ends.append(judge.current)
        elif kind == Event.GOAL and not walk.is_goal(judge.current):
            st.false_goal += 1
    st.entered = len(judge.entered)
    st.expanded = len(judge.expanded)
    st.self_loop = has_self_loop([tuple(e[:2]) for e in events])
    st.path = judge.path
    return st


class _StreamJudge:
    """`analyse_stream`'s walk through one stream: where the stream is (`current`, on `path`
    from the root), the states it entered (each with the `parent` it was first entered from)
    and expanded, and whether it is inside a thought; one method per event kind counts into
    `st`."""

    def __init__(self, walk, st: TraceStats):
        self.walk, self.st = walk, st
        root = walk.root
        st.root_distance = walk.distance(root) if walk.live(root) else None
        self.root = self.current = root
        self.path = [root]
        self.parent = {root: None}
        self.entered = {root}
        self.expanded: set = set()
        self.in_thought = False
        self.live_thought_open = False  # inside the first thought that began in a live state
        self.first_move_seen = False

    def bad(self, kind: str) -> None:
        self.st.invalid += 1
        self.st.invalid_kinds[kind] = self.st.invalid_kinds.get(kind, 0) + 1

    def thought_boundary(self, kind, written: bool, end: int) -> None:
        """A written BT or a JUMP ends the thought; inside the first live thought, every event
        moves its end to `end`."""
        if kind in (Event.BACK, Event.JUMP) and written:  # an implied return is no thought switch
            self.in_thought = self.live_thought_open = False
        elif self.live_thought_open:
            self.st.first_live_thought_end = end

    def start(self, k: int, payload) -> None:
        if k != 0 or payload != self.root:
            self.st.steps += 1
            self.bad("wrong_start")

    def go(self, payload, end: int) -> None:
        st, walk = self.st, self.walk
        st.steps += 1
        st.moves += 1
        state, why = walk.go(self.current, payload)
        if why:
            self.bad(why)
        elif state in self.expanded:
            st.redundant += 1
        if not self.first_move_seen:
            self.first_move_seen = True
            st.first_move_optimal = (why is None and st.root_distance is not None and walk.live(state)
                                     and walk.distance(state) == st.root_distance - 1)
        if not self.in_thought:
            self.in_thought = True
            st.thoughts += 1
            if st.first_live_thought_end is None and why is None and walk.live(state):
                self.live_thought_open = True
                st.first_live_thought_end = end
        if state is None:
            return
        self.expanded.add(self.current)
        st.tree.append((self.current, state, "invalid" if why else "move"))
        if state not in self.entered:
            self.entered.add(state)
            self.parent[state] = self.current
        self.path.append(state)
        self.current = state

    def jump(self, payload) -> None:
        self.st.steps += 1
        self.st.jumps += 1
        target = self.walk.back_target(payload)
        if target is not None and target in self.entered:
            self.st.tree.append((self.current, target, "jump"))
            self.path = _path_to(self.parent, target)
            self.current = target
        else:
            self.bad("bad_jump")

    def back(self, payload, written: bool) -> None:
        st, path = self.st, self.path
        st.steps += 1
        st.backtracks += 1
        st.written_backtracks += bool(written)
        target = self.walk.back_target(payload)
        if target is not None and target in path[:-1]:
            idx = path.index(target)
            abandoned = path[idx + 1:]
            live_left = [(v, u) for v in abandoned for u in self.walk.successors(v)
                         if u not in self.entered and self.walk.live(u)]
            premature = bool(live_left)
            st.abandoned_live += live_left
            label = "premature" if premature else "necessary"
            st.premature += premature
            st.necessary += not premature
            st.backtrack_depths[label].append(len(abandoned))
            st.tree.append((self.current, target, label))
            self.path = path[: idx + 1]
            self.current = target
            return
        self.bad("bad_backtrack")
        st.invalid_backtracks += 1
        st.backtrack_depths["invalid"].append(0)
        if target is not None and target in self.entered:
            st.tree.append((self.current, target, "invalid_back"))
            self.path = _path_to(self.parent, target)
            self.current = target


def _path_to(parent: dict, state) -> list:
    path = [state]
    while parent.get(path[-1]) is not None:
        path.append(parent[path[-1]])
    return path[::-1]


# --------------------------------------------------------------------------- aggregation


def _rate(num: float, den: int) -> dict:
    return {"value": (num / den) if den else None, "n": den}


def _mean(values: list, n: int | None = None) -> dict:
    return {"value": (sum(values) / len(values)) if values else None, "n": len(values) if n is None else n}


def summarize_behaviour(stats: list[TraceStats], solved: list[bool],
                        teacher: list[TraceStats | None] | None = None) -> dict:
    """The behaviour block of metrics.json, every number with the count it is over
    (docs/METRICS.md). `stats` holds one record per evaluated stream, unfinished ones
    included; `teacher` the teacher's stream of the same instances."""
    steps = sum(s.steps for s in stats)
    invalid = sum(s.invalid for s in stats)
    kinds: dict[str, int] = {}
    for s in stats:
        for k, v in s.invalid_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    backs = sum(s.backtracks for s in stats)
    premature = sum(s.premature for s in stats)
    failed = [s for s, ok in zip(stats, solved) if not ok]
    depths = {lab: [d for s in stats for d in s.backtrack_depths[lab]]
              for lab in ("necessary", "premature", "invalid")}
    n = len(stats)

    def per_trace(attr):
        values = [getattr(s, attr) for s in stats]
        return {"mean": sum(values) / n if n else None, "max": max(values, default=None), "n": n}

    out = {
        "traces": n,
        "unfinished_streams": _rate(sum(not s.finished for s in stats), n),
        "trace_validity": _rate(steps - invalid, steps),
        "invalid_steps_by_kind": {k: _rate(v, steps) for k, v in sorted(kinds.items())},
        "wandering": _rate(invalid + sum(s.redundant for s in stats), steps),
        "redundant_moves": _rate(sum(s.redundant for s in stats), sum(s.moves for s in stats)),
        "self_loop_rate": _rate(sum(s.self_loop for s in stats), n),
        "false_goal_claims": _rate(sum(s.false_goal for s in stats), n),
        "first_move_optimal": _rate(sum(s.first_move_optimal for s in stats), n),
        "premature_backtracks": _rate(premature, backs),
        "failed_with_premature": _rate(sum(s.premature > 0 for s in failed), len(failed)),
        "xi_ut": _mean([s.xi_ut for s in failed]),
        "backtracks_per_trace": per_trace("backtracks"),
        "written_backtracks_per_trace": per_trace("written_backtracks"),
        "jumps_per_trace": per_trace("jumps"),
        "backtrack_depth": {lab: {"count": len(v), "mean": (sum(v) / len(v)) if v else None,
                                  "max": max(v, default=None)} for lab, v in depths.items()},
        "states_expanded": {"mean": sum(s.expanded for s in stats) / n if n else None, "n": n},
        "states_entered": {"mean": sum(s.entered for s in stats) / n if n else None, "n": n},
        "tokens": {"mean": sum(s.tokens for s in stats) / n if n else None, "n": n},
    }
    solved_stats = [(k, s) for k, (s, ok) in enumerate(zip(stats, solved)) if ok]
    out["efficiency_dstar_over_expanded"] = _mean(
        [s.root_distance / max(1, s.expanded) for _, s in solved_stats if s.root_distance is not None])
    if teacher is not None:
        pairs = [(teacher[k], s) for k, s in solved_stats if teacher[k] is not None]
        out["states_teacher_over_model"] = _mean([t.expanded / max(1, s.expanded) for t, s in pairs])
        # Searchformer's direction: > 1 means the model's trace is shorter than its teacher's
        out["ilr"] = _mean([t.tokens / s.tokens for t, s in pairs if s.tokens])
    return out


BEHAVIOUR_COLUMNS = {
    # results.csv column -> path in the behaviour block
    "trace_validity": ("trace_validity", "value"),
    "wandering": ("wandering", "value"),
    "unfinished_streams": ("unfinished_streams", "value"),
    "self_loop_rate": ("self_loop_rate", "value"),
    "first_move_optimal": ("first_move_optimal", "value"),
    "premature_backtracks": ("premature_backtracks", "value"),
    "failed_with_premature": ("failed_with_premature", "value"),
    "xi_ut": ("xi_ut", "value"),
    "backtracks_per_trace": ("backtracks_per_trace", "mean"),
    "written_backtracks_per_trace": ("written_backtracks_per_trace", "mean"),
    "jumps_per_trace": ("jumps_per_trace", "mean"),
    "states_expanded": ("states_expanded", "mean"),
    "stream_tokens": ("tokens", "mean"),
    "efficiency": ("efficiency_dstar_over_expanded", "value"),
    "states_teacher_over_model": ("states_teacher_over_model", "value"),
    "ilr": ("ilr", "value"),
}


def flatten_behaviour(block: dict | None, prefix: str = "") -> dict:
    """The behaviour block as flat columns (None where it does not apply)."""
    out = {}
    for col, (key, sub) in BEHAVIOUR_COLUMNS.items():
        value = (block or {}).get(key, {})
        out[prefix + col] = value.get(sub) if isinstance(value, dict) else None
    return out
