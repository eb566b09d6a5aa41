"""Names of the data splits and the random stream each one draws from."""

from __future__ import annotations

from .. import rng
from ..errors import require

# Fixed forever: changing an id changes every suite ever generated.
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "env": 3, "val_target": 4, "test_target": 5}


def split_stream(split: str) -> int:
    require(split in SPLIT_IDS, f"unknown split {split!r}; allowed: {', '.join(SPLIT_IDS)}.")
    return (rng.STREAM_INSTANCE << 8) | SPLIT_IDS[split]
