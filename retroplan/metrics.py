"""Behaviour metrics of a search stream, judged step by step against the task's oracle
(../shared/METRICS.md). The same code judges a model's generated stream and the teacher's.

A parsed stream is a list of events: ("start", s), ("go", payload), ("dead", _),
("back", payload), ("goal", _). The task's `Walk` says what a `go` payload means (the state
the stream claims to reach, and why the move is illegal if it is), which state a `back`
payload names, the legal successors of a state, R(s) (`live`) and d*(s) (`distance`).

Definitions used here:
- a *step* is a GO or a BT event; a GO is *invalid* when the walk says so (sub-kinds from the
  task: not_a_state, not_available, wrong_arithmetic, wrong_state); a BT is invalid when its
  target was never entered or is not a proper ancestor of the current state on the current
  path. After an invalid step the stream is followed where it *claims* to be, so one mistake
  is counted once, not again at every later step.
- a GO is *redundant* when it enters a state that was already entered.
- a *thought* is a maximal run of GO events between two backtracks; it is *live* when the
  state its first GO enters has R = 1.
- a valid BT is *premature* when a state on the abandoned segment (the path below the target,
  down to the current state) still has a successor u that was never entered and has R(u) = 1;
  otherwise it is *necessary*. Its depth is how many levels it undoes.
- a *self-loop*: some run of at most 8 events repeated at least 3 times in a row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SELF_LOOP_MAX_PERIOD = 8
SELF_LOOP_REPEATS = 3


@dataclass
class TraceStats:
    steps: int = 0
    moves: int = 0
    backtracks: int = 0
    invalid: int = 0
    invalid_kinds: dict = field(default_factory=dict)
    redundant: int = 0
    false_goal: int = 0
    expanded: int = 1               # distinct states entered, the root included
    premature: int = 0
    necessary: int = 0
    invalid_backtracks: int = 0
    backtrack_depths: dict = field(default_factory=lambda: {"necessary": [], "premature": [], "invalid": []})
    self_loop: bool = False
    thoughts: int = 0
    first_live_thought_end: int | None = None   # tokens up to the end of the first live thought
    tokens: int = 0
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


def analyse_stream(events: list, event_ends: list[int], walk, n_tokens: int) -> TraceStats:
    """Judge every step of one parsed stream."""
    st = TraceStats(tokens=n_tokens)
    root = walk.root
    st.root_distance = walk.distance(root) if walk.live(root) else None
    current = root
    path = [root]
    parent = {root: None}
    entered = {root}
    in_thought = False
    live_thought_open = False  # inside the first thought that began in a live state
    for k, (name, payload) in enumerate(events):
        end = event_ends[k] if k < len(event_ends) else n_tokens
        if name == "start":
            if k != 0 or payload != root:
                st.steps += 1
                st.invalid += 1
                st.invalid_kinds["wrong_start"] = st.invalid_kinds.get("wrong_start", 0) + 1
        elif name == "go":
            st.steps += 1
            st.moves += 1
            state, why = walk.go(current, payload)
            if why:
                st.invalid += 1
                st.invalid_kinds[why] = st.invalid_kinds.get(why, 0) + 1
            elif state in entered:
                st.redundant += 1
            if not in_thought:
                in_thought = True
                st.thoughts += 1
                if st.first_live_thought_end is None and why is None and walk.live(state):
                    live_thought_open = True
            if live_thought_open:
                st.first_live_thought_end = end
            if state is None:
                continue
            st.tree.append((current, state, "invalid" if why else "move"))
            if state not in entered:
                entered.add(state)
                parent[state] = current
            path.append(state)
            current = state
        elif name == "back":
            st.steps += 1
            st.backtracks += 1
            in_thought = live_thought_open = False
            target = walk.back_target(payload)
            if target is not None and target in path[:-1]:
                idx = path.index(target)
                abandoned = path[idx + 1:]
                live_left = [(v, u) for v in abandoned for u in walk.successors(v)
                             if u not in entered and walk.live(u)]
                premature = bool(live_left)
                st.abandoned_live += live_left
                label = "premature" if premature else "necessary"
                st.premature += premature
                st.necessary += not premature
                st.backtrack_depths[label].append(len(abandoned))
                st.tree.append((current, target, label))
                path = path[: idx + 1]
                current = target
            else:
                st.invalid += 1
                st.invalid_backtracks += 1
                st.invalid_kinds["bad_backtrack"] = st.invalid_kinds.get("bad_backtrack", 0) + 1
                st.backtrack_depths["invalid"].append(0)
                if target is not None and target in entered:
                    st.tree.append((current, target, "invalid_back"))
                    path = _path_to(parent, target)
                    current = target
        elif name == "dead":
            st.dead_ends.append(current)
        elif name == "goal" and not walk.is_goal(current):
            st.false_goal += 1
    st.expanded = len(entered)
    st.self_loop = has_self_loop(events)
    st.path = path
    return st


def _path_to(parent: dict, state) -> list:
    path = [state]
    while parent.get(path[-1]) is not None:
        path.append(parent[path[-1]])
    return path[::-1]


# --------------------------------------------------------------------------- aggregation


def _rate(num: float, den: int) -> dict:
    return {"value": (num / den) if den else None, "n": den}


def summarize_behaviour(stats: list[TraceStats], solved: list[bool],
                        teacher: list[TraceStats | None] | None = None,
                        teacher_tokens: list[int] | None = None) -> dict:
    """The behaviour block of metrics.json, every number with the count it is over."""
    steps = sum(s.steps for s in stats)
    invalid = sum(s.invalid for s in stats)
    kinds: dict[str, int] = {}
    for s in stats:
        for k, v in s.invalid_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    backs = sum(s.backtracks for s in stats)
    premature = sum(s.premature for s in stats)
    failed = [s for s, ok in zip(stats, solved) if not ok]
    # xi_UT: without a live thought T-hat = T, so such a trace adds 0
    xi = [1.0 - s.first_live_thought_end / s.tokens if s.first_live_thought_end is not None and s.tokens
          else 0.0 for s in failed]
    depths = {lab: [d for s in stats for d in s.backtrack_depths[lab]]
              for lab in ("necessary", "premature", "invalid")}
    out = {
        "traces": len(stats),
        "trace_validity": _rate(steps - invalid, steps),
        "invalid_steps_by_kind": {k: _rate(v, steps) for k, v in sorted(kinds.items())},
        "wandering": _rate(invalid + sum(s.redundant for s in stats), steps),
        "redundant_moves": _rate(sum(s.redundant for s in stats), sum(s.moves for s in stats)),
        "self_loop_rate": _rate(sum(s.self_loop for s in stats), len(stats)),
        "false_goal_claims": _rate(sum(s.false_goal for s in stats), len(stats)),
        "premature_backtracks": _rate(premature, backs),
        "failed_with_premature": _rate(sum(s.premature > 0 for s in failed), len(failed)),
        "xi_ut": {"value": (sum(xi) / len(xi)) if xi else None, "n": len(xi)},
        "backtracks_per_trace": {"mean": backs / len(stats) if stats else None,
                                 "max": max((s.backtracks for s in stats), default=None),
                                 "n": len(stats)},
        "backtrack_depth": {lab: {"count": len(v), "mean": (sum(v) / len(v)) if v else None,
                                  "max": max(v, default=None)} for lab, v in depths.items()},
        "states_expanded": {"mean": sum(s.expanded for s in stats) / len(stats) if stats else None,
                            "n": len(stats)},
        "tokens": {"mean": sum(s.tokens for s in stats) / len(stats) if stats else None, "n": len(stats)},
    }
    solved_stats = [(k, s) for k, (s, ok) in enumerate(zip(stats, solved)) if ok]
    eff = [s.root_distance / s.expanded for _, s in solved_stats if s.root_distance is not None]
    out["efficiency_dstar_over_expanded"] = {"value": sum(eff) / len(eff) if eff else None, "n": len(eff)}
    if teacher is not None:
        ratio = [teacher[k].expanded / s.expanded for k, s in solved_stats if teacher[k] is not None]
        out["states_teacher_over_model"] = {"value": sum(ratio) / len(ratio) if ratio else None,
                                            "n": len(ratio)}
    if teacher_tokens is not None:
        ilr = [s.tokens / teacher_tokens[k] for k, s in solved_stats if teacher_tokens[k]]
        out["ilr"] = {"value": sum(ilr) / len(ilr) if ilr else None, "n": len(ilr)}
    return out


BEHAVIOUR_COLUMNS = {
    # results.csv column -> path in the behaviour block
    "trace_validity": ("trace_validity", "value"),
    "wandering": ("wandering", "value"),
    "self_loop_rate": ("self_loop_rate", "value"),
    "premature_backtracks": ("premature_backtracks", "value"),
    "failed_with_premature": ("failed_with_premature", "value"),
    "xi_ut": ("xi_ut", "value"),
    "backtracks_per_trace": ("backtracks_per_trace", "mean"),
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
