"""Export a suite's rows for other tools: JSONL or Parquet, one row per example.

Every row carries the task's fields (graph tasks: `edges` as [[u, v], ...], `start`,
`goal`, `plan` the forward reference node list), the difficulty fields, the split, the
instance `index`, the revthink `kind`, and the `prompt` / `completion` text of the variant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError, require
from ..fsutil import atomic_path
from .suite import open_suite


def iter_rows(suite, split: str | None = None, limit: int = 0):
    for name in [split] if split else suite.splits:
        data = suite.split(name)
        n = len(data) if not limit else min(limit, len(data))
        for r in range(n):
            yield suite.describe_row(name, r)


def export_suite(suite_path: str | os.PathLike, out: str | os.PathLike, fmt: str = "jsonl",
                 split: str | None = None, limit: int = 0) -> int:
    """Write the rows; returns how many. `out` must not exist yet."""
    require(fmt in ("jsonl", "parquet"), f"unknown export format {fmt!r}; allowed: jsonl, parquet.")
    require(isinstance(limit, int) and limit >= 0, f"--limit must be a non-negative integer, got {limit!r}.")
    out = Path(out)
    require(not out.exists(), f"{out} already exists; choose another --out.")
    suite = open_suite(suite_path)
    if split:
        suite.split(split)  # a clear error for an unknown split
    rows = iter_rows(suite, split, limit)
    count = 0
    if fmt == "jsonl":
        with atomic_path(out) as tmp, open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                count += 1
        return count
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("parquet export needs pyarrow: pip install 'retroplan[parquet]'.") from None
    table = pa.Table.from_pylist(list(rows))
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows
