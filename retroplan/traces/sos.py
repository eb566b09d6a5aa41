"""Countdown streams as the text of the Stream-of-Search data files (Gandhi et al. 2024): the
`search_path` and `optimal_path` fields `retroplan export --format sos` writes (see
`traces/export.py`). A format for other programs, not a grammar: the stream is read back with
the grammar's parser (`traces/countdown.py`) and laid out as SoS's generator prints it.
"""

from __future__ import annotations

from ..envs import countdown as cd
from ..events import Event
from .countdown import path_steps, walk_words


def _sos_list(values) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def sos_search_path(words, target: int, bfs: bool) -> str:
    """A forward stream in the text of the Stream-of-Search data files (`search_path`):
    `Current State`, `Exploring Operation`, `Generated Node #id`, `Moving to Node #id`,
    `equal: Goal Reached` / `unequal: No Solution` lines; node ids are SoS's child-index paths.
    DFS streams return to the node after every child (as SoS writes them); a BFS stream that
    ends without the goal ends with `No solution found.` Unlike SoS, ids are unique (SoS gives
    a dead child the id of its next sibling) and number lists are always right."""
    lines: list[str] = []

    def state_line(node):
        return f"Current State: {target}:{_sos_list(node.state)}, Operations: {path_steps(node)}"

    previous = None
    reached = False
    for event, payload, current, node in walk_words(words):
        if event == Event.START:
            lines.append(state_line(node))
        elif event == Event.TRY:
            if not bfs and previous == Event.DEAD:
                lines += [f"Moving to Node #{current.ident}", state_line(current)]
            lines.append(f"Exploring Operation: {payload.step}, "
                         f"Resulting Numbers: {_sos_list(payload.state)}")
            value = payload.state[0]
            if payload.outcome == Event.GOAL:
                lines.append(f"{value},{target} equal: Goal Reached")
                reached = True
                break
            if payload.outcome == Event.DEAD:
                lines.append(f"{value},{target} unequal: No Solution")
            else:
                lines.append(f"Generated Node #{node.ident}: {target}:{_sos_list(payload.state)} "
                             f"Operation: {payload.step}")
            previous = payload.outcome
            continue
        else:
            lines += [f"Moving to Node #{node.ident}", state_line(node)]
        previous = event
    if bfs and not reached:
        lines.append("No solution found.")
    return "\n".join(lines) + "\n"


def sos_optimal_path(numbers, target: int, solution: list[str]) -> str:
    """SoS's `optimal_path` text for a plan (their convert_to_path layout, with the number lists
    computed by removing exactly the two operands)."""
    left = list(numbers)
    done: list[str] = []
    lines = [f"Current State: {target}:{_sos_list(left)}, Operations: []"]
    node = 1
    for step in solution:
        left, _ = cd.apply_step(left, step)
        lines.append(f"Exploring Operation: {step}, Resulting Numbers: {_sos_list(left)}")
        if len(left) == 1:
            lines.append(f"{left[0]},{target} equal: Goal Reached")
        else:
            node += 1
            lines.append(f"Generated Node #{node}: {_sos_list(left)} from Operation: {step}")
            done.append(step)
            lines.append(f"Current State: {target}:{_sos_list(left)}, Operations: {done}")
    return "\n".join(lines) + "\n"
