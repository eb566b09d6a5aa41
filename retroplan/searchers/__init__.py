"""Searchers: run a search on each instance and record an event log.

A directed-graph searcher's log (`digraph_search`) is an int32 array of (event, state) rows; a
Countdown searcher writes a tape of variable-length records (`countdown_search`). Both use the
codes of `events.Event`; trace writers turn logs into tokens, and the parser turns model output
back into the same events. Their plain-Python twins are in `retroplan/reference/`.
"""
