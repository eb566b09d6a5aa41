"""Export a suite's rows for other tools: JSONL or Parquet, one row per example, or (Countdown)
the Stream-of-Search data-file format.

Every JSONL/Parquet row carries the task's fields (graph tasks: `edges` as [[u, v], ...],
`start`, `goal`, `plan` the forward reference node list; countdown: `numbers`, `target`,
`solution` the reference forward plan as `"a op b=c"` strings), the difficulty fields, the
split, the instance `index`, the revthink `kind`, the `prompt` / `completion` text of the
variant, and, where the grammar names it, the `searcher` behind the row (countdown: the SoS
strategy of a stream, `backward`, or `optimal` for the oracle) and, for stream variants, the plan
the row's own search `found` (empty when it found none).

`sos` (countdown only): a JSON array with one object per instance holding the fields of the
SoS data files, `nums`, `target`, `solution`, `search_path`, `optimal_path`, `rating`,
`search_type`, `heuristic`, with `search_path` in their text (`Current State: ...`,
`Exploring Operation: ...`, ...): the suite's stream search (its `searcher` option, `mix` by
default) re-run for each instance from (seed, split, index), so SoS's training code can read
any Countdown suite.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError, require
from ..fsutil import atomic_path
from .suite import open_suite


def iter_rows(suite, split: str | None = None, limit: int = 0):
    searcher_of = getattr(suite.grammar, "searcher_of", None)
    streams = getattr(suite.grammar, "STREAM_VARIANTS", ())
    for name in [split] if split else suite.splits:
        data = suite.split(name)
        n = len(data) if not limit else min(limit, len(data))
        for r in range(n):
            row = suite.describe_row(name, r)
            if searcher_of is not None:
                row["searcher"] = searcher_of(suite, name, row["index"])
                if suite.variant in streams:
                    row["found"] = suite.grammar.parse(suite.variant, data.completion(r), suite.vocab).plan
            yield row


def sos_rows(suite, split: str | None = None, limit: int = 0):
    """Countdown instances as Stream-of-Search data-file rows (see the module docstring)."""
    import numpy as np

    from ..envs import countdown as cd
    from ..searchers import countdown_search as cs
    from . import countdown as grammar

    require(suite.meta["task"] == "countdown",
            f"the sos format is Countdown's (Stream of Search); this suite is {suite.meta['task']}.")
    options = suite.options if suite.variant == "stream" else grammar.Options()
    for name in [split] if split else suite.splits:
        data = suite.split(name)
        count = len(data.index) if not limit else min(limit, len(data.index))
        batch = {key: np.ascontiguousarray(value[:count]) for key, value in data.instances.items()}
        index = np.ascontiguousarray(data.index[:count])
        seed = suite.meta["seed"]
        ex = grammar.write_examples(cd, suite.config, options, "stream", seed, name, index, batch)
        offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
        n_inputs = suite.config.n_inputs
        for i in range(count):
            completion = ex["tokens"][offsets[i] + ex["prompt_len"][i]: offsets[i + 1]]
            parsed = grammar.parse("stream", completion, suite.vocab)
            inst = cd.instance_at(batch, i)
            name_of = (cs.mix_choice(seed, name, int(index[i])) if options.searcher == "mix"
                       else options.searcher)
            bfs = name_of.startswith("bfs")
            path = grammar.sos_search_path(parsed.words, inst["target"], bfs)
            rating = 0.0
            if "Goal Reached" in path:  # SoS's rating: 1 - explored nodes / the full tree's count
                explored = path.count("Exploring Operation") + 1
                rating = max(0.0, 1.0 - explored / cd.max_rating_nodes(n_inputs))
            optimal = grammar.sos_optimal_path(inst["numbers"], inst["target"], inst["solution"])
            yield {"nums": inst["numbers"], "target": inst["target"], "solution": inst["solution"],
                   "search_path": path, "optimal_path": optimal,
                   "rating": rating,
                   "search_type": f"bfs_{name_of[3]}" if bfs else "dfs",
                   "heuristic": f"{'sum' if name_of == 'dfs-full' else name_of.split('-')[1]}_heuristic"}


def export_suite(suite_path: str | os.PathLike, out: str | os.PathLike, fmt: str = "jsonl",
                 split: str | None = None, limit: int = 0) -> int:
    """Write the rows; returns how many. `out` must not exist yet."""
    require(fmt in ("jsonl", "parquet", "sos"),
            f"unknown export format {fmt!r}; allowed: jsonl, parquet, sos.")
    require(isinstance(limit, int) and limit >= 0, f"--limit must be a non-negative integer, got {limit!r}.")
    out = Path(out)
    require(not out.exists(), f"{out} already exists; choose another --out.")
    suite = open_suite(suite_path)
    if split:
        suite.split(split)  # a clear error for an unknown split
    count = 0
    if fmt == "sos":
        with atomic_path(out) as tmp, open(tmp, "w") as f:
            f.write("[")
            for row in sos_rows(suite, split, limit):
                f.write(("," if count else "") + "\n" + json.dumps(row, indent=4))
                count += 1
            f.write("\n]\n")
        return count
    rows = iter_rows(suite, split, limit)
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
