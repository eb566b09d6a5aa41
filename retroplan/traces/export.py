"""Export a suite as a dataset folder for other tools: Parquet or JSONL (one row per example,
laid out for Hugging Face `datasets`), or (Countdown) the Stream-of-Search data-file format.

`export SUITE --out DIR` builds the new folder DIR (under a temporary name, renamed when
complete):

    README.md                               the dataset card: a YAML header with the provenance
                                            (task, variant, config, options, seed, sizes,
                                            vocabulary, retroplan version, licence, the suite's
                                            meta_sha256, the commands that regenerate it) and
                                            its `configs:` (split -> file), then the fields
    vocab.json                              the token list (position = token id)
    data/{split}-00000-of-00001.parquet     parquet: one file per split; the same provenance
                                            as JSON in the schema metadata (key `retroplan`)
    data/{split}-00000-of-00001.jsonl       jsonl: one file per split
    held_out/data/{split}-00000-of-00001.*  the splits beyond train/val/test (Countdown's
                                            held-out targets `val_target`, `test_target`)
    {split}.json                            sos: one SoS data file per split

Split names follow Hugging Face's where they differ (`SPLIT_NAMES`: retroplan's `val` is
`validation`); the held-out ones keep their names (`val_target`, `test_target`). The card's
`configs:` has two configurations: `default` (train, validation, test) and `held_out` (the
held-out splits), each with its `dataset_info` (features, rows per split).

Why a second folder: `datasets` infers splits from file names by keyword when a folder does
not follow its `data/{split}-NNNNN-of-NNNNN` layout, and `val_target-...` contains the keyword
`val`, so loading `data/` itself with the held-out files beside the others would merge
`val_target` into `validation` and `test_target` into `test`. Kept apart, every way of loading
gives held-out rows their own splits: `load_dataset("parquet", data_dir=DIR)` (or
`load_dataset(DIR)`) -> train/validation/test; `data_dir=DIR/held_out` (or
`load_dataset(DIR, "held_out")`) -> val_target/test_target; `data_dir=DIR/data` ->
train/validation/test by keyword (and `DIR/held_out/data` -> the held-out rows under the
keyword names `validation`/`test`, never mixed with in-distribution rows). The sos files keep
retroplan's names, which are SoS's own (`train`, `val`, `val_target`), for SoS's code, which
names each file; their card's `configs:` keeps the splits apart for `load_dataset(DIR)`.
A split with no rows gets no file (`datasets` cannot load an empty one); the card lists it.
The row fields are described in `ROW_FIELDS` and `SOS_FIELDS`, which every card repeats.
"""

from __future__ import annotations

import json
import numbers
import os
import shlex
from pathlib import Path

from ..contracts import REQUIRED_SPLITS
from ..errors import UserError, require
from ..fsutil import atomic_dir, json_line, json_text, write_text
from ..variants import VARIANT
from ..version import __version__
from .suite import open_suite

FORMATS = ("jsonl", "parquet", "sos")
SPLIT_NAMES = {"val": "validation"}  # retroplan split -> Hugging Face split; the others keep theirs
LICENSE = "MIT"
VOCAB_FILE = "vocab.json"
METADATA_KEY = "retroplan"  # the Parquet schema-metadata key holding the provenance (JSON)
HELD_OUT = "held_out"  # the configuration (and folder) of the splits beyond train/val/test

ROW_FIELDS = """\
Every row carries the task's fields (graph tasks: `edges` as [[u, v], ...], `start`, `goal`,
`plan` the forward reference node list; countdown: `numbers`, `target`, `solution` the reference
forward plan as `"a op b=c"` strings, and `expression`, the same plan as one arithmetic
expression over the inputs, each used once, e.g. `(3 + 5) * (8 - 7)`: the answer format of
reasoning-gym's Countdown), the difficulty fields, the `split` (retroplan's name:
`val` for the `validation` split), the `row` within the split, the instance `index` (the
instance is a pure function of seed, split and index), the row `kind` (revthink: 0 forward,
1 backward question, 2 backward reasoning; a mixture `a+b+...`: 0 for a's rows, 1 for b's
(written with `[b]` after `<bos>`), ...; 0 elsewhere), the `prompt` / `completion` text of
the variant (tokens separated by spaces; the training loss is on the completion only), and,
where the grammar names it, the `searcher` behind the row (countdown: the SoS strategy of a
stream, `backward`, or `optimal` for the oracle) and, for stream variants, the plan the row's
own search `found` (empty when it found none)."""

SOS_FIELDS = """\
One object per instance holding the fields of the Stream-of-Search data files: `nums`,
`target`, `solution`, `search_path`, `optimal_path`, `rating`, `search_type`, `heuristic`, with
`search_path` in their text (`Current State: ...`, `Exploring Operation: ...`, ...): the suite's
stream search (its `searcher` option, `mix` by default) re-run for each instance from (seed,
split, index), so SoS's training code can read any Countdown suite: its config's `data_dir` is
this folder and `train_file`, `val_file`, `val_target_file` are `train.json`, `val.json`,
`val_target.json`."""


def hf_split(split: str) -> str:
    """The Hugging Face name of a retroplan split."""
    return SPLIT_NAMES.get(split, split)


def config_of(split: str) -> str:
    """The card configuration a split belongs to: `default` for train/val/test, `held_out` for
    the others (Countdown's held-out targets)."""
    return "default" if split in REQUIRED_SPLITS else HELD_OUT


def data_file(fmt: str, split: str) -> str:
    """Where a split's rows go inside the export folder."""
    if fmt == "sos":
        return f"{split}.json"
    folder = "data" if config_of(split) == "default" else f"{HELD_OUT}/data"
    return f"{folder}/{hf_split(split)}-00000-of-00001.{fmt}"


def iter_rows(suite, split: str | None = None, limit: int = 0):
    for name in [split] if split else suite.splits:
        data = suite.split(name)
        n = len(data) if not limit else min(limit, len(data))
        for r in range(n):
            row = suite.describe_row(name, r)
            if suite.meta["task"] == "countdown":  # the solution as one expression (reasoning-gym's answer)
                from ..envs.countdown import expression

                row["expression"] = expression(row["numbers"], row["solution"])
            searcher = suite.grammar.searcher_of(suite, name, row["index"])
            if searcher is not None:
                row["searcher"] = searcher
                if VARIANT[suite.variant].stream:
                    row["found"] = suite.grammar.parse(suite.variant, data.completion(r), suite.vocab).plan
            yield row


def sos_rows(suite, split: str | None = None, limit: int = 0):
    """Countdown instances as Stream-of-Search data-file rows (see `SOS_FIELDS`)."""
    import numpy as np

    from ..envs import countdown as cd
    from ..searchers import countdown_search as cs
    from . import countdown as grammar
    from . import sos

    require(suite.meta["task"] == "countdown",
            f"the sos format is Countdown's (Stream of Search); this suite is {suite.meta['task']}.")
    # the suite's searcher where its own rows are SoS's forward streams, else SoS's defaults
    facts = VARIANT[suite.variant]
    own_forward_stream = facts.own_stream and not facts.backward_search
    options = suite.options if own_forward_stream else grammar.Options()
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
            strategy = cs.STRATEGY_TABLE[cs.STRATEGY_CODE[
                cs.mix_choice(seed, name, int(index[i])) if options.searcher == "mix" else options.searcher]]
            bfs = strategy.kind == "bfs"
            path = sos.sos_search_path(parsed.words, inst["target"], bfs)
            rating = 0.0
            if "Goal Reached" in path:  # SoS's rating: 1 - explored nodes / the full tree's count
                explored = path.count("Exploring Operation") + 1
                rating = max(0.0, 1.0 - explored / cd.max_rating_nodes(n_inputs))
            optimal = sos.sos_optimal_path(inst["numbers"], inst["target"], inst["solution"])
            yield {"nums": inst["numbers"], "target": inst["target"], "solution": inst["solution"],
                   "search_path": path, "optimal_path": optimal,
                   "rating": rating,
                   "search_type": f"bfs_{strategy.beam}" if bfs else "dfs",
                   "heuristic": f"{strategy.heuristic}_heuristic"}


# --------------------------------------------------------------------------- provenance


def _flag(name: str, value) -> list[str]:
    """`--name value` as `retroplan generate` reads it (booleans: `--name` / `--no-name`)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    text = str(value)
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def regenerate_commands(suite, fmt: str, split: str | None, limit: int, out: Path) -> list[str]:
    """The shell commands that make this export again: generate the suite (whose meta.json
    then has the same meta_sha256), then export it the same way."""
    meta = suite.meta
    name = suite.path.name
    generate = ["retroplan", "generate", meta["task"], "--variant", meta["variant"],
                "--seed", str(meta["seed"])]
    for s in suite.task.SPLITS:  # a split the suite lacks (a TOML's sizes) is made empty here
        generate += _flag(s, meta["sizes"].get(s, 0))
    for key, value in meta["config"].items():
        generate += _flag(key, value)
    for key, value in meta["options"].items():
        generate += _flag(key, value)
    if meta.get("shard"):
        generate += ["--shard", f"{meta['shard'][0]}/{meta['shard'][1]}"]
    generate += ["--out", name]
    export = ["retroplan", "export", name, "--format", fmt]
    if split:
        export += ["--split", split]
    if limit:
        export += ["--limit", str(limit)]
    export += ["--out", out.name]
    return [shlex.join(generate), shlex.join(export)]


def provenance(suite, fmt: str, split: str | None, limit: int, counts: dict[str, int],
               out: Path) -> dict:
    """What the export is and how to make it again: the card's YAML and the Parquet metadata."""
    meta = suite.meta
    stats = meta["splits"]
    return {
        "task": meta["task"],
        "variant": meta["variant"],
        "config": meta["config"],
        "options": meta["options"],
        "seed": meta["seed"],
        "format": fmt,
        "splits": {s: {"name": s if fmt == "sos" else hf_split(s),
                       "file": data_file(fmt, s) if counts[s] else None,
                       "rows": counts[s],
                       "suite_rows": stats[s]["examples"],
                       "suite_instances": stats[s]["instances"]} for s in counts},
        "limit": limit,
        "vocabulary": {"size": len(meta["vocab"]), "file": VOCAB_FILE},
        "retroplan_version": meta.get("retroplan_version"),
        "exported_by": f"retroplan {__version__}",
        "suite_digest": meta.get("meta_sha256"),  # = run.json's and metrics.json's suite_digest
        "license": LICENSE,
        "regenerate": regenerate_commands(suite, fmt, split, limit, out),
    }


def _feature(value):
    """The `datasets` feature type of one value as the card's `dataset_info` writes it (a dtype
    name, or `{"list": ...}` for a list); None while unknown (an empty list)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int64"
    if isinstance(value, numbers.Real):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        inner = next((t for t in map(_feature, value) if t is not None), None)
        return None if inner is None else {"list": inner}
    raise TypeError(f"no feature type for {value!r}")


class Features:
    """The columns of a configuration's rows and their feature types, learnt as rows go by (a
    column's type comes from its first value that is not an empty list)."""

    def __init__(self):
        self.types: dict[str, object] = {}

    def add(self, row: dict) -> None:
        for key, value in row.items():
            if self.types.get(key) is None:
                self.types[key] = _feature(value)

    def yaml_list(self) -> list[dict]:
        """As `datasets.Features._to_yaml_list()` writes them (a never-filled list: of null)."""
        out = []
        for name, t in self.types.items():
            t = {"list": "null"} if t is None else t
            out.append({"name": name, "dtype": t} if isinstance(t, str) else {"name": name, **t})
        return out


def dataset_card(prov: dict, columns: list[str], features: dict[str, Features] | None = None) -> str:
    """README.md: the dataset card, built with `huggingface_hub`'s card classes: the YAML header
    Hugging Face reads (licence, `configs:` naming each split's file, `dataset_info` with the
    features and rows per split of each configuration) with the provenance under `retroplan:`,
    then a short description of the data."""
    try:
        from huggingface_hub import DatasetCard, DatasetCardData
    except ImportError:
        raise UserError("export writes its dataset card with huggingface_hub: "
                        "pip install 'retroplan[parquet]'.") from None
    fmt = prov["format"]
    written = {s: v for s, v in prov["splits"].items() if v["file"]}
    title = f"retroplan {prov['task']} / {prov['variant']}"
    by_config: dict[str, dict] = {}
    for s, info in written.items():
        by_config.setdefault(config_of(s), {})[s] = info
    configs = [{"config_name": name, "data_files": [{"split": info["name"], "path": info["file"]}
                                                     for info in splits.values()]}
               for name, splits in by_config.items()]
    dataset_info = [{"config_name": name,
                     "features": (features or {}).get(name, Features()).yaml_list(),
                     "splits": [{"name": info["name"], "num_examples": info["rows"]}
                                for info in splits.values()]}
                    for name, splits in by_config.items()]
    card_data = DatasetCardData(license=LICENSE.lower(), pretty_name=title,
                                task_categories=["text-generation"],
                                tags=["synthetic", "planning", "retroplan"],
                                configs=configs, dataset_info=dataset_info,
                                **{METADATA_KEY: prov})
    rows = ["| split | retroplan split | file | rows | suite rows | suite instances |",
            "|---|---|---|---:|---:|---:|"]
    for s, info in prov["splits"].items():
        rows.append(f"| {info['name']} | {s} | {info['file'] or '(none: no rows)'} | {info['rows']} | "
                    f"{info['suite_rows']} | {info['suite_instances']} |")
    if fmt == "sos":
        load = ("datasets.load_dataset(\"json\", data_files={\"train\": \"train.json\", ...})  "
                "# as SoS's train.py does")
        fields = SOS_FIELDS
    else:
        builder = "parquet" if fmt == "parquet" else "json"
        load = f"datasets.load_dataset({builder!r}, data_dir=THIS_FOLDER)  # or load_dataset(THIS_FOLDER)"
        if HELD_OUT in by_config:
            load += (f"\ndatasets.load_dataset({builder!r}, data_dir=THIS_FOLDER + \"/{HELD_OUT}\")  "
                     f"# or load_dataset(THIS_FOLDER, {HELD_OUT!r})")
        fields = ROW_FIELDS
    body = [
        f"# {title} (seed {prov['seed']})",
        "",
        "Synthetic planning-task data generated by retroplan (no personal or third-party data), "
        f"under the {LICENSE} licence of the retroplan project. Every row is a pure function of "
        "the task config, the trace variant and options, the seed, the split and the instance "
        "index; the suite it came from has `meta_sha256` "
        f"`{prov['suite_digest']}` (`suite_digest` in a retroplan run.json or metrics.json).",
        "",
        *rows,
        "",
        ("Split names are retroplan's, which are SoS's (`train`, `val`, `val_target`)." if fmt == "sos"
         else "Split names: retroplan's `val` is Hugging Face's `validation`; the others keep their names.")
        + " Held-out splits (`test`, and Countdown's held-out targets `val_target`, `test_target`) "
        "never share a file, or an instance, with `train`."
        + ("" if fmt == "sos" or HELD_OUT not in by_config else
           f" The held-out targets are their own configuration, `{HELD_OUT}`, in their own folder "
           f"`{HELD_OUT}/data/`: `datasets` reads a split from a file name by keyword (`val`, "
           "`test`), so `val_target` beside `validation` in `data/` would be merged into it.")
        + (f" At most {prov['limit']} per split were exported (`--limit`)." if prov["limit"] else "")
        + " A split with no rows has no file.",
        "",
        "```python",
        "import datasets",
        load,
        "```",
        "",
        "## Fields",
        "",
        f"Columns: {', '.join(f'`{c}`' for c in columns)}." if columns else "No rows.",
        "",
        fields,
        "",
        f"Token ids: `{VOCAB_FILE}` lists the {prov['vocabulary']['size']} tokens of the suite's "
        "vocabulary (position = id)" + ("; the SoS text above is SoS's, not written in them."
                                       if fmt == "sos" else
                                       "; `prompt` and `completion` hold the tokens, separated by spaces."),
        "",
        "## Provenance",
        "",
        "The YAML header's `retroplan:` section" + (
            " (also in every Parquet file's schema metadata, key `retroplan`, as JSON)"
            if fmt == "parquet" else "")
        + " records the task, variant, config, options, seed, sizes and versions. To make this "
        "export again:",
        "",
        "```",
        *prov["regenerate"],
        "```",
        "",
    ]
    return str(DatasetCard("---\n" + card_data.to_yaml() + "\n---\n\n" + "\n".join(body)))


# --------------------------------------------------------------------------- writing


def _parquet_tables(suite, names: list[str], limit: int) -> dict:
    """One pyarrow table per split, all with one schema (a column that is empty in one split,
    such as `found`, gets the other splits' type)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise UserError("parquet export needs pyarrow: pip install 'retroplan[parquet]'.") from None
    tables = {name: pa.Table.from_pylist(list(iter_rows(suite, name, limit))) for name in names}
    filled = [t.schema for t in tables.values() if t.num_rows]
    if not filled:
        return tables
    schema = pa.unify_schemas(filled, promote_options="permissive")
    return {name: t.cast(schema) if t.num_rows else t for name, t in tables.items()}


def export_suite(suite_path: str | os.PathLike, out: str | os.PathLike, fmt: str = "jsonl",
                 split: str | None = None, limit: int = 0) -> dict[str, int]:
    """Write the suite's splits (or one) as the new dataset folder `out` (see the module
    docstring); returns the rows written per split (retroplan's split names). `out` must not
    exist, or be an empty folder (left as it was if the export fails or is killed)."""
    require(fmt in FORMATS, f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}.")
    require(isinstance(limit, int) and limit >= 0, f"--limit must be a non-negative integer, got {limit!r}.")
    out = Path(out)
    empty_folder = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    require(empty_folder or not (out.exists() or out.is_symlink()),
            f"{out} already exists; export writes a new folder there, so choose another --out.")
    suite = open_suite(suite_path)
    if split:
        suite.split(split)  # a clear error for an unknown split
    require(fmt != "sos" or suite.meta["task"] == "countdown",
            f"the sos format is Countdown's (Stream of Search); this suite is {suite.meta['task']}.")
    names = [split] if split else [s for s in suite.task.SPLITS if s in suite.splits]
    # built in a hidden sibling and renamed onto `out` (an empty folder is replaced by the
    # rename itself): a failed or killed export leaves the user's folder as it was
    with atomic_dir(out, onto_empty=True) as tmp:
        return _write(suite, tmp, fmt, names, split, limit, out)


def _write(suite, tmp: Path, fmt: str, names: list[str], split: str | None, limit: int,
           out: Path) -> dict[str, int]:
    """The export's files, written into the folder `tmp` (renamed onto `out` when complete)."""
    counts: dict[str, int] = {}
    columns: list[str] = []
    features: dict[str, Features] = {}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        tables = _parquet_tables(suite, names, limit)
        counts = {name: t.num_rows for name, t in tables.items()}
        prov = provenance(suite, fmt, split, limit, counts, out)
        metadata = {METADATA_KEY: json_text(prov, indent=None, sort_keys=False)}
        for name, table in tables.items():
            if table.num_rows:
                columns = columns or table.column_names
                for row in table.to_pylist():
                    features.setdefault(config_of(name), Features()).add(row)
                path = tmp / data_file(fmt, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table.replace_schema_metadata(metadata), path)
    else:
        for name in names:
            rows = sos_rows(suite, name, limit) if fmt == "sos" else iter_rows(suite, name, limit)
            path = tmp / data_file(fmt, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            config = features.setdefault(config_of(name), Features())
            count = 0
            with open(path, "w") as f:
                if fmt == "sos":  # SoS's files: one JSON array, indented as theirs
                    f.write("[")
                for row in rows:
                    columns = columns or list(row)
                    config.add(row)
                    if fmt == "sos":
                        f.write(("," if count else "") + "\n" + json.dumps(row, indent=4))
                    else:
                        f.write(json_line(row))
                    count += 1
                if fmt == "sos":
                    f.write("\n]\n")
            counts[name] = count
            if not count:  # datasets cannot load an empty file; the card lists the split
                path.unlink()
        for folder in (tmp / HELD_OUT / "data", tmp / HELD_OUT, tmp / "data"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        prov = provenance(suite, fmt, split, limit, counts, out)
    write_text(tmp / VOCAB_FILE, json_text(suite.meta["vocab"], indent=None) + "\n")
    write_text(tmp / "README.md", dataset_card(prov, columns, features))
    return counts
