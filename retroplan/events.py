"""The search-event language: one set of event codes that every searcher writes into its
event log or tape, that every grammar's parser returns for a written stream, and that the
behaviour metrics (`metrics.py`) judge.

An `IntEnum`, so Numba kernels store and compare the codes as plain integers, and Python code
reads them by name (`Event.GO`), prints them by name (`Event.GO.name.lower()` -> "go").
"""

from __future__ import annotations

from enum import IntEnum


class Event(IntEnum):
    START = 0  # the search begins at a state
    GO = 1     # move from the current state to a successor (a predecessor, searching backward)
    DEAD = 2   # the current state has nothing left to try
    BACK = 3   # return to an earlier state on the current path
    GOAL = 4   # the current state is the goal (the start, searching backward)
    JUMP = 5   # switch to an earlier entered state elsewhere in the tree (breadth-first)
    TRY = 6    # Countdown: an operation tried from the current state, generating a child
