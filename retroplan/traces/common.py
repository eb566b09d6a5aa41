"""What both grammars share: the variant names (from retroplan/variants.py) and the codes
Numba writers dispatch on, the row kinds of a suite split, the rows each variant writes per
instance, and `Parsed`, the one shape every grammar's parser returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..events import Event
from ..variants import NAMES, VARIANT, names

# every grammar's VARIANTS and STREAM_VARIANTS (tasks.Grammar), derived from the registry
VARIANTS = NAMES
STREAM_VARIANTS = names("stream")

# A variant's code is its index in VARIANTS; Numba writers compare against these names, never
# against bare numbers.
(OPTIMAL, REVERSE, REVFWD, STREAM, BACKWARD_STREAM, REVTHINK, LOOKAHEAD,
 CORRUPTED) = range(len(VARIANTS))
VARIANT_CODE = {v: k for k, v in enumerate(VARIANTS)}

# revthink example kinds (the `kind` array of a suite split)
KIND_FWD, KIND_BQ, KIND_BR = 0, 1, 2


def example_rows(variant: str, split: str, n_inst: int,
                 keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row -> instance, row kind): revthink trains on three examples per instance (fwd, bq,
    br) and evaluates forward only; every other variant has one row per instance. `keep`
    (revthink, per instance): False drops that instance's two backward rows."""
    if VARIANT[variant].backward_objectives and split == "train":
        rows = np.repeat(np.arange(n_inst, dtype=np.int64), 3)
        kinds = np.tile(np.array([KIND_FWD, KIND_BQ, KIND_BR], dtype=np.int8), n_inst)
        if keep is not None:
            chosen = (kinds == KIND_FWD) | np.repeat(np.asarray(keep, dtype=bool), 3)
            rows, kinds = rows[chosen], kinds[chosen]
        return rows, kinds
    return np.arange(n_inst, dtype=np.int64), np.zeros(n_inst, dtype=np.int8)


@dataclass
class Parsed:
    """What a completion says. `plan` is the forward plan (None when unparseable, with the
    reason in `error`); `events` are the search events of stream variants as (Event, payload)
    pairs or (Event, payload, written) triples (see metrics.py); `backward` marks a backward
    stream (its GO steps move to predecessors)."""

    plan: list | None
    events: list[tuple[Event, object]] = field(default_factory=list)
    backward: bool = False
    error: str | None = None
    event_ends: list[int] = field(default_factory=list)  # completion tokens up to each event's end
