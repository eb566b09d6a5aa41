"""The trace variants and every fact about each, in one place.

A variant is a way of writing an instance's solution as a completion (traces/ writes and
parses it for each task). Code asks a variant's facts (`VARIANT[name].stream`) instead of
comparing names, and every list of variants derives from `REGISTRY`: the names and their
Numba codes (traces.common), the mixture tokens (traces.vocab), what each writes and after
which paper (`retroplan inspect`, reports), the stream variants, the probe's and RLP's.
Adding a variant is one entry here plus its writer and parser in each grammar.

Imports nothing of retroplan, so every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    writes: str      # what a model trained on it writes at test time (reports print it beside
                     # every accuracy: only some variants plan forward when they are evaluated)
    cites: str       # the work it follows (docs/REFERENCES.md), as `retroplan inspect` prints it
    stream: bool = False           # the completion is a search stream, `;`, then the forward plan
    backward_search: bool = False  # ... a regression search from the goal
    foreign_stream: bool = False   # ... another instance's search (the plan is this instance's)
    reversed_plan: bool = False    # the completion opens with the plan written goal to start
    forward_plan: bool = True      # the completion ends with the forward plan
    lookahead_spans: bool = False  # training rows carry `<T> ... </T>` spans (TRELAWNEY)
    backward_objectives: bool = False  # train: three rows per instance (RevThink's objectives)
    mixable: bool = True           # may be a component of a mixture a+b+...
    # its first written decision is the forward choice from the start: for these, and only for
    # these, a task's chance level (e.g. 1/degree on path-star) is a meaningful baseline
    forward_first: bool = False

    @property
    def own_stream(self) -> bool:
        """Its stream is the instance's own search (the probe's `live` target reads it)."""
        return self.stream and not self.foreign_stream

    @property
    def thought(self) -> bool:
        """It writes something before the forward plan (a search, or the plan goal-first):
        RLP's information gain rewards that thought."""
        return self.forward_plan and (self.stream or self.reversed_plan)


# The order is the variants' Numba codes (traces.common) and the mixture tokens' order in
# every vocabulary: append, never reorder (the suite digests pin it).
REGISTRY = (
    Variant("optimal", "forward plan",
            "optimal-trajectory training (OT), the baseline of Stream of Search (Gandhi et al. "
            "2024) and the forward model of Bachmann & Nagarajan (2024)",
            forward_first=True),
    Variant("reverse", "backward plan (goal to start)",
            "the reversed target of Bachmann & Nagarajan (2024), 'The pitfalls of next-token "
            "prediction': the path written goal to start",
            reversed_plan=True, forward_plan=False),
    Variant("revfwd", "backward plan, then forward plan",
            "backward then forward reasoning at test time (the backward plan, then the plan)",
            reversed_plan=True),
    Variant("stream", "forward search, then forward plan",
            "Stream of Search (Gandhi et al. 2024): the search with its dead ends and backtracks, "
            "then the plan",
            stream=True, forward_first=True),
    Variant("backward-stream", "backward search from the goal, then forward plan",
            "a regression search from the goal (backward search stream), then the plan",
            stream=True, backward_search=True),
    Variant("revthink", "forward plan (backward objectives only in training)",
            "RevThink (Chen et al. 2024): question -> answer; [bq] question alone -> "
            "backward question (what it adds to the question); [br] backward question -> "
            "backward reasoning; test: forward only",
            backward_objectives=True, mixable=False, forward_first=True),
    Variant("lookahead", "forward plan (<T> spans in training)",
            "TRELAWNEY (Thankaraj et al. 2025): a future span of the answer copied inside "
            "<T> ... </T> at a random cut, mixed with plain rows",
            lookahead_spans=True, forward_first=True),
    Variant("corrupted", "another instance's search, then forward plan",
            "swapped traces (Stechly et al. 2025, 'Beyond semantics'): another instance's "
            "search, then this instance's right plan",
            stream=True, foreign_stream=True, forward_first=True),
)

VARIANT = {v.name: v for v in REGISTRY}
NAMES = tuple(VARIANT)


def names(fact: str) -> tuple[str, ...]:
    """The variants for which `fact` (a field or property of `Variant`) holds, in registry order."""
    return tuple(v.name for v in REGISTRY if getattr(v, fact))
