"""Searchers: run a search on each instance and record an event log.

An event log is an int32 array of (kind, state) rows; the kinds are below. Trace writers
turn logs into tokens, and the parser turns model output back into the same events.
"""

START = 0  # (START, s): the search begins at s
GO = 1     # (GO, s): move from the current state to its successor s (a predecessor, searching backward)
DEAD = 2   # (DEAD, -1): the current state has nothing left to try
BACK = 3   # (BACK, t): return to the earlier state t
GOAL = 4   # (GOAL, -1): the current state is the goal (the start, searching backward)
JUMP = 5   # (JUMP, t): switch to the earlier entered state t elsewhere in the tree (breadth-first)

EVENT_NAMES = {START: "start", GO: "go", DEAD: "dead", BACK: "back", GOAL: "goal", JUMP: "jump"}
