"""A suite on disk: one task config, one trace variant, one seed, its splits.

    meta.json                  config, variant, options, seed, vocabulary, counts, version,
                               the sha256 of every other file (`files`) and of its own
                               content (`meta_sha256`, see `meta_digest`)
    {split}.tokens.npy         all token rows of the split, concatenated
    {split}.lengths.npy        tokens per row
    {split}.prompt_len.npy     prompt tokens per row (the loss is on the rest)
    {split}.instance.npy       row -> instance position in the split
    {split}.kind.npy           row kind (revthink: fwd / bq / br; 0 elsewhere)
    {split}.index.npy          instance position -> its (seed, split, index) index
    {split}.inst.{field}.npy   the instances themselves (what eval replays plans in)
    preview.txt                a few rows of each split, readable

Same spec -> byte-identical files (no timestamps, counter-based randomness), whatever the
thread count; `merge_shards` puts the pieces of `--shard i/N` runs together into exactly the
unsharded suite. Instances of
`test` never occur in `val` or `train`, and those of `val` never in `train`: a colliding
instance is redrawn with the next salt, the same way on every machine and shard.

Opening a suite checks every file's checksum and meta.json's own digest (a suite written
before the digest existed has none and is not refused for it); opening a split checks that
every token id, length and row -> instance index is in range and that meta.json's counts
are the arrays' (`SplitData._check`), so a recomputed checksum cannot smuggle in an index
that would crash a reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..envs import get_task, make_config, out_of_bounds
from ..errors import UserError, plain, require
from ..fsutil import NpyAppender, atomic_dir, sha256_file, write_json, write_npy, write_text
from ..version import __version__
from . import check_variant, components, get_grammar

FORMAT = "retroplan-suite/1"
CHUNK = 8192  # instances per generation chunk (bounds memory for search event logs)
_MAX_REDRAWS = 64
MAX_SPLIT_SIZE = 10**9  # instances per split (instance indices, row offsets and disks stay sane)


@dataclass
class SuiteSpec:
    """Everything that determines a suite's bytes."""

    task: str
    variant: str
    config: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    seed: int = 0
    sizes: dict = field(default_factory=lambda: {"train": 1000, "val": 100, "test": 100})

    def __post_init__(self):  # np.int64 and friends are the numbers they hold
        self.config, self.options, self.sizes, self.seed = plain(
            (self.config, self.options, self.sizes, self.seed))

    def resolve(self):
        """Validate everything; return (task module, config, grammar, options)."""
        task = get_task(self.task)
        check_variant(self.task, self.variant)
        cfg = make_config(self.task, self.config)
        grammar = get_grammar(self.task)
        opt_fields = grammar.Options.__dataclass_fields__
        unknown = sorted(set(self.options) - set(opt_fields))
        if unknown:
            raise UserError(f"unknown trace option {unknown[0]!r}; allowed: {', '.join(opt_fields)}.")
        options = grammar.Options(**self.options)
        options.validate()
        require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63,
                f"seed must be an integer in [0, 2**63), got {self.seed!r}.")
        require(isinstance(self.sizes, dict) and self.sizes, "sizes must name at least one split.")
        for split, count in self.sizes.items():
            require(split in task.SPLITS,
                    f"unknown split {split!r} for task {self.task}; allowed: {', '.join(task.SPLITS)}.")
            require(isinstance(count, int) and not isinstance(count, bool) and count >= 0,
                    f"the {split} size must be a non-negative integer, got {count!r}.")
            require(count <= MAX_SPLIT_SIZE,
                    f"the {split} size must be at most {MAX_SPLIT_SIZE:,} instances, got {count:,}.")
        return task, cfg, grammar, options


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`i/N` -> (i, N): piece i (0-based) of N."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/N (for example 0/4), got {text!r}.") from None
    require(n >= 1 and 0 <= i < n, f"--shard {text} needs 0 <= i < N.")
    return i, n


def _split_order(task, sizes: dict) -> list[str]:
    """Held-out splits first (each kept apart from the ones before), train last."""
    return [s for s in task.SPLITS if s in sizes and s != "train"] + (
        ["train"] if "train" in sizes else [])


def _sample_apart(task, cfg, seed, split, indices, exclude: np.ndarray):
    """Sample instances, redrawing (next salt) any whose fingerprint is in `exclude`."""
    salts = np.zeros(indices.shape[0], dtype=np.int64)
    batch = task.sample_instances(cfg, seed, split, indices, salts)
    fp = task.fingerprints(batch)
    bad = np.flatnonzero(np.isin(fp, exclude))
    redrawn = 0
    for _ in range(_MAX_REDRAWS):
        if bad.size == 0:
            return batch, fp, redrawn
        redrawn += bad.size
        salts[bad] += 1
        again = task.sample_instances(cfg, seed, split, indices[bad], salts[bad])
        for key in batch:
            batch[key][bad] = again[key]
        fp[bad] = task.fingerprints(again)
        bad = bad[np.isin(fp[bad], exclude)]
    raise UserError(
        f"the {split} split keeps drawing instances that are already in another split; this "
        f"{task.NAME} config has too few distinct instances for the requested sizes.")


def _held_out_fingerprints(task, cfg, seed, order, sizes, upto) -> np.ndarray:
    """Fingerprints of every split before `upto` in `order` (whole splits, whatever shard)."""
    fps = np.zeros(0, dtype=np.uint64)
    for split in order:
        if split == upto:
            break
        for lo in range(0, sizes[split], CHUNK):
            idx = np.arange(lo, min(lo + CHUNK, sizes[split]), dtype=np.int64)
            _, fp, _ = _sample_apart(task, cfg, seed, split, idx, fps)
            fps = np.concatenate([fps, fp])
    return np.unique(fps)


@contextlib.contextmanager
def _row_files(tmp: Path, split: str, dtypes: dict):
    """The per-row files of a split, appended chunk by chunk; finished together on success,
    their temporaries removed on failure."""
    files = {name: NpyAppender(tmp / f"{split}.{name}.npy", dtype) for name, dtype in dtypes.items()}
    try:
        yield files
    except BaseException:
        for f in files.values():
            f.abort()
        raise
    for f in files.values():
        f.finish()


def generate_suite(spec: SuiteSpec, out: str | os.PathLike, shard: tuple[int, int] | None = None,
                   progress: bool = True) -> Path:
    """Generate the suite `spec` (or piece `shard` of it) into the new folder `out`."""
    if shard is not None:  # before anything is written: (3, 2) made a piece no one could open
        given = shard
        shard = plain(tuple(shard)) if isinstance(shard, (list, tuple)) else ()
        require(len(shard) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
                and 0 <= shard[0] < shard[1],
                f"shard must be a pair (i, N) of integers with 0 <= i < N, got {given!r}.")
    task, cfg, grammar, options = spec.resolve()
    if progress:  # a first run compiles the kernels (minutes): say so rather than look hung
        from .. import compile_notice

        compile_notice.install()
    vocab = grammar.make_vocab(cfg)
    out = Path(out)
    order = _split_order(task, spec.sizes)
    total = sum(spec.sizes[s] for s in order)
    if shard is not None:  # this piece's share of every split
        total = sum(spec.sizes[s] * (shard[0] + 1) // shard[1] - spec.sizes[s] * shard[0] // shard[1]
                    for s in order)
    bar = tqdm(total=total, desc=f"generate {spec.task}/{spec.variant}", unit="inst",
               disable=None if progress else True, leave=False)
    # where the bar cannot draw (a batch log), a plain line per chunk of a multi-chunk suite
    plain_lines = progress and bar.disable and total > CHUNK
    started = time.perf_counter()
    splits_meta = {}
    done, written = 0, 0  # instances generated so far (all splits) and the bytes their rows took
    with atomic_dir(out) as tmp:
        for split in order:
            count = spec.sizes[split]
            lo, hi = (0, count) if shard is None else (count * shard[0] // shard[1],
                                                       count * (shard[0] + 1) // shard[1])
            exclude = _held_out_fingerprints(task, cfg, spec.seed, order, spec.sizes, split)
            inst_parts: dict[str, list[np.ndarray]] = {}
            stats = {"instances": hi - lo, "examples": 0, "tokens": 0, "max_len": 0, "redrawn": 0}
            dtypes = {"tokens": vocab.dtype, "lengths": np.int32, "prompt_len": np.int32,
                      "instance": np.int64, "kind": np.int8, "index": np.int64}
            with _row_files(tmp, split, dtypes) as files:
                for start in range(lo, hi, CHUNK):
                    idx = np.arange(start, min(start + CHUNK, hi), dtype=np.int64)
                    batch, _, redrawn = _sample_apart(task, cfg, spec.seed, split, idx, exclude)
                    ex = write_rows(grammar, task, cfg, options, spec.variant, spec.seed, split,
                                    idx, batch, vocab)
                    files["tokens"].append(ex["tokens"])
                    files["lengths"].append(ex["lengths"])
                    files["prompt_len"].append(ex["prompt_len"])
                    files["instance"].append(ex["instance"] + (start - lo))
                    files["kind"].append(ex["kind"])
                    files["index"].append(idx)
                    for key, value in batch.items():
                        inst_parts.setdefault(key, []).append(value)
                    stats["examples"] += int(ex["lengths"].shape[0])
                    stats["tokens"] += int(ex["lengths"].sum())
                    stats["max_len"] = max(stats["max_len"], int(ex["lengths"].max(initial=0)))
                    stats["redrawn"] += redrawn
                    bar.update(idx.shape[0])
                    done += idx.shape[0]
                    if plain_lines:
                        print(f"generate {spec.task}/{spec.variant}: {done}/{total} instances "
                              f"({split}), {time.perf_counter() - started:.0f} s", flush=True)
                    written += sum(getattr(v, "nbytes", 0) for part in (ex, batch) for v in part.values())
                    _require_space(out, tmp, written, done, total - done)
            for key, parts in inst_parts.items():
                write_npy(tmp / f"{split}.inst.{key}.npy", np.concatenate(parts))
            if not inst_parts:  # an empty split still gets (empty) instance files
                empty = task.sample_instances(cfg, spec.seed, split, np.zeros(0, dtype=np.int64))
                for key, value in empty.items():
                    write_npy(tmp / f"{split}.inst.{key}.npy", value)
            splits_meta[split] = stats
        bar.close()
        meta = {
            "format": FORMAT,
            "retroplan_version": __version__,
            "task": spec.task,
            "variant": spec.variant,
            "config": cfg.to_dict(),
            "options": options.to_dict(),
            "seed": spec.seed,
            "sizes": {s: spec.sizes[s] for s in order},
            "shard": list(shard) if shard else None,
            "splits": splits_meta,
            "vocab": vocab.to_json(),
            "token_dtype": np.dtype(vocab.dtype).name,
        }
        _seal(tmp, meta)
    return out


def _require_space(out: Path, tmp: Path, written: int, done: int, remaining: int) -> None:
    """Refuse early when the instances still to generate would need more bytes (at the rate
    of those generated so far) than the disk has free, rather than filling it."""
    if remaining <= 0 or done <= 0:
        return
    needed = written * remaining // done
    free = shutil.disk_usage(tmp).free
    require(needed <= free,
            f"No space left on device for suite {out}: the rest of it needs about "
            f"{needed / 1e6:,.1f} MB and {free / 1e6:,.1f} MB are free; generate fewer instances "
            "or free some space.")


def shortest_prompt(spec: SuiteSpec, count: int = 8) -> int:
    """The shortest prompt (tokens) of the first `count` test instances of `spec`'s suite,
    written in memory only: a model context no longer than it can evaluate none of them
    (`retroplan run` checks its file with it before it writes anything)."""
    task, cfg, grammar, options = spec.resolve()
    split = "test" if "test" in task.SPLITS else task.SPLITS[-1]
    idx = np.arange(count, dtype=np.int64)
    batch = task.sample_instances(cfg, spec.seed, split, idx, np.zeros(count, dtype=np.int64))
    ex = write_rows(grammar, task, cfg, options, spec.variant, spec.seed, split, idx, batch,
                    grammar.make_vocab(cfg))
    return int(ex["prompt_len"].min())


def write_rows(grammar, task, cfg, options, variant: str, seed: int, split: str,
               indices: np.ndarray, batch: dict, vocab) -> dict:
    """The grammar's rows for a variant; for a mixture `a+b+...`, train holds a's rows exactly
    as a's own suite writes them (kind 0) and then, for every other component c, c's rows of
    the same instances with `[c]` after `<bos>` (kind = c's position). Held-out splits hold a's
    rows only: a mixture is evaluated on exactly a's prompts."""
    parts = components(variant)
    first = grammar.write_examples(task, cfg, options, parts[0], seed, split, indices, batch)
    if len(parts) == 1 or split != "train":
        return first
    pieces = [first]
    for j, part in enumerate(parts[1:], 1):
        ex = grammar.write_examples(task, cfg, options, part, seed, split, indices, batch)
        n = ex["lengths"].shape[0]
        starts = np.concatenate([[0], np.cumsum(ex["lengths"])[:-1]]).astype(np.int64)
        # one token inserted after each row's <bos>: positions shift by the row's number
        tokens = np.insert(ex["tokens"], starts + 1, vocab[f"[{part}]"]).astype(ex["tokens"].dtype)
        pieces.append({"tokens": tokens, "lengths": ex["lengths"] + 1,
                       "prompt_len": ex["prompt_len"] + 1, "instance": ex["instance"],
                       "kind": np.full(n, j, dtype=np.int8)})
    return {key: np.concatenate([p[key] for p in pieces]) for key in first}


def meta_digest(meta: dict) -> str:
    """The sha256 of meta.json's own content (canonical JSON: sorted keys, no spaces), leaving
    out `files` (each file's checksum binds that file) and the digest itself. Stored as
    `meta_sha256`, it makes a hand-edited meta.json (variant, config, counts, ...) an error."""
    content = {k: v for k, v in meta.items() if k not in ("files", "meta_sha256")}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _seal(folder: Path, meta: dict) -> None:
    """Finish a suite folder: preview.txt, then meta.json with every file's checksum and its
    own content's digest."""
    meta.pop("meta_sha256", None)
    suite = Suite(folder, meta=meta, verify=False)
    write_text(folder / "preview.txt", suite.preview(rows_per_split=3))
    meta["files"] = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    meta["meta_sha256"] = meta_digest(meta)
    write_json(folder / "meta.json", meta)


_SPLIT_STATS = ("instances", "examples", "tokens", "max_len", "redrawn")
_ROW_FILES = ("tokens", "lengths", "prompt_len", "instance", "kind", "index")
_COPY_BLOCK = 1 << 22  # elements copied at a time when merging (bounds memory)


def merge_shards(pieces: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Put the pieces of a sharded suite (`generate --shard i/N` for every i) together in
    the new folder `out`. The result is byte-identical to the suite generated unsharded."""
    require(len(pieces) > 0, "merge-shards needs the suite's pieces (folders made with --shard).")
    suites = [open_suite(p) for p in pieces]  # checks every piece against its checksums
    first = suites[0]
    by_index: dict[int, Suite] = {}
    for suite in suites:
        shard = suite.meta.get("shard")
        require(shard is not None, f"suite {suite.path} is not a piece (it was generated without --shard).")
        i, count = shard
        require(count == first.meta["shard"][1],
                f"suite {suite.path} is piece {i} of {count}, but {first.path} is a piece of "
                f"{first.meta['shard'][1]}.")
        for key in sorted(set(suite.meta) | set(first.meta)):
            require(key in ("shard", "splits", "files", "meta_sha256")
                    or suite.meta.get(key) == first.meta.get(key),
                    f"suite {suite.path} is a piece of another suite than {first.path} (its {key} differs).")
        require(i not in by_index, f"suites {by_index.get(i, suite).path} and {suite.path} are both "
                f"piece {i} of {count}.")
        by_index[i] = suite
    count = first.meta["shard"][1]
    missing = [i for i in range(count) if i not in by_index]
    require(not missing, f"piece {missing[0] if missing else 0} of {count} is missing; "
            "merge-shards needs every piece.")
    ordered = [by_index[i] for i in range(count)]
    meta = {k: v for k, v in first.meta.items() if k not in ("files", "splits", "meta_sha256")}
    meta["shard"] = None
    meta["splits"] = {}
    with atomic_dir(out) as tmp:
        for split in _split_order(first.task, first.meta["splits"]):  # generate_suite's order
            parts = [suite.split(split) for suite in ordered]
            stats = {"instances": 0, "examples": 0, "tokens": 0, "max_len": 0, "redrawn": 0}
            dtypes = {name: getattr(parts[0], name).dtype for name in _ROW_FILES}
            with _row_files(tmp, split, dtypes) as files:
                for suite, part in zip(ordered, parts):
                    for name in _ROW_FILES:
                        array = getattr(part, name)
                        for lo in range(0, array.shape[0], _COPY_BLOCK):
                            block = array[lo: lo + _COPY_BLOCK]
                            if name == "instance":  # row -> instance, re-based onto the whole split
                                block = block + stats["instances"]
                            files[name].append(block)
                    piece_stats = suite.meta["splits"][split]
                    for key in ("instances", "examples", "tokens", "redrawn"):
                        stats[key] += piece_stats[key]
                    stats["max_len"] = max(stats["max_len"], piece_stats["max_len"])
            for key in parts[0].instances:
                write_npy(tmp / f"{split}.inst.{key}.npy",
                          np.concatenate([part.instances[key] for part in parts]))
            meta["splits"][split] = stats
        _seal(tmp, meta)
    return Path(out)


# --------------------------------------------------------------------------- reading


def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """A suite's .npy file; never unpickles (an object array is refused as corrupt)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).split(". ")[0].rstrip(".")
        raise UserError(f"suite file {path} is not a readable array ({reason}); "
                        "the suite is corrupt.") from None


class SplitData:
    """One split of a suite: token rows (memory-mapped) and the instances they came from."""

    def __init__(self, root: Path, split: str, files: list[str] | None = None,
                 vocab_size: int | None = None, counts: dict | None = None,
                 instance_bounds: dict | None = None):
        """`files`: the suite's checksummed file names (meta.json); only those are read.
        `vocab_size` and `counts` (meta.json's counts of the split), when given, are checked
        against the arrays: every token id, length and row -> instance index in range; so are
        the instance arrays against the task's `instance_bounds(cfg)`, when given."""
        def load(name):
            return _load_array(root / f"{split}.{name}.npy", mmap=True)

        self.name = split
        self.tokens = load("tokens")
        self.lengths = np.asarray(load("lengths"))
        self.prompt_len = np.asarray(load("prompt_len"))
        self.instance = np.asarray(load("instance"))
        self.kind = np.asarray(load("kind"))
        self.index = np.asarray(load("index"))
        for name in ("tokens", "lengths", "prompt_len", "instance", "kind", "index"):
            array = getattr(self, name)
            require(array.ndim == 1 and array.dtype.kind in "iu",
                    f"suite file {root / f'{split}.{name}.npy'} holds a {array.ndim}-D {array.dtype} "
                    "array where a 1-D integer array belongs (the suite is corrupt).")
        self.offsets = np.zeros(self.lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        rows = self.lengths.shape[0]
        require(self.prompt_len.shape[0] == self.instance.shape[0] == self.kind.shape[0] == rows
                and self.offsets[-1] == self.tokens.shape[0],
                f"the {split} files of suite {root} disagree on the number of rows (the suite is corrupt).")
        self.instances = {}
        prefix = f"{split}.inst."
        names = sorted(files) if files is not None else sorted(p.name for p in root.glob(f"{prefix}*.npy"))
        for name in names:
            if name.startswith(prefix) and name.endswith(".npy"):
                self.instances[name[len(prefix): -4]] = _load_array(root / name)
        self._check(root, vocab_size, counts, instance_bounds)

    def _check(self, root: Path, vocab_size: int | None, counts: dict | None,
               instance_bounds: dict | None = None) -> None:
        """Every value the readers index with is in range (vectorised; the checksums have just
        read these bytes, so this costs a pass over memory, not over the disk)."""
        where = f"the {self.name} split of suite {root}"

        def fail(what: str) -> None:
            raise UserError(f"{where} has {what} (the suite is corrupt).")

        def bounds(a: np.ndarray) -> tuple[int, int]:
            return (int(a.min()), int(a.max())) if a.size else (0, -1)

        n_inst = self.index.shape[0]
        for key, value in self.instances.items():
            if value.ndim == 0 or value.shape[0] != n_inst:
                fail(f"{value.shape[0] if value.ndim else 'no'} instances in {self.name}.inst.{key}.npy "
                     f"but {n_inst} in {self.name}.index.npy")
        lo, longest = bounds(self.lengths)
        if lo < 0:
            fail(f"a negative row length ({lo})")
        if (self.prompt_len < 0).any() or (self.prompt_len > self.lengths).any():
            fail("a prompt length outside 0..its row's length")
        lo, hi = bounds(self.instance)
        if lo < 0 or hi >= n_inst:
            fail(f"a row of instance {lo if lo < 0 else hi}, outside 0..{n_inst - 1}")
        if (self.kind < 0).any():
            fail("a negative row kind")
        if (self.index < 0).any():
            fail("a negative instance index")
        if vocab_size is not None and self.tokens.size:
            # one pass over the (memory-mapped) tokens where the dtype cannot hold negatives
            lo, hi = (0, int(self.tokens.max())) if self.tokens.dtype.kind == "u" else bounds(self.tokens)
            if lo < 0 or hi >= vocab_size:
                fail(f"a token id {lo if lo < 0 else hi}, outside the vocabulary's 0..{vocab_size - 1}")
        if instance_bounds is not None:  # goal, start, edges, numbers...: what kernels index with
            problem = out_of_bounds(self.instances, instance_bounds, self.name)
            if problem is not None:
                fail(problem)
        if counts is not None:
            actual = {"instances": n_inst, "examples": len(self), "tokens": int(self.tokens.shape[0]),
                      "max_len": max(0, longest)}
            for key, value in actual.items():
                if counts.get(key) != value:
                    fail(f"{value} {key.replace('_', ' ')} where meta.json says {counts.get(key)}")

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def row(self, r: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[r]: self.offsets[r + 1]], dtype=np.int64)

    def prompt(self, r: int) -> np.ndarray:
        return self.row(r)[: self.prompt_len[r]]

    def completion(self, r: int) -> np.ndarray:
        return self.row(r)[self.prompt_len[r]:]


class Suite:
    """A suite folder. Opening it checks every file against meta.json's checksums."""

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, verify: bool = True):
        self.path = Path(path)
        if meta is None:
            meta = read_meta(self.path)
        self.meta = meta
        if verify:
            self.verify()
        self.task = get_task(meta["task"])
        unknown = [s for s in meta["splits"] if s not in self.task.SPLITS]
        require(not unknown, f"{self.path}/meta.json names a split {unknown[0] if unknown else ''!r} that "
                f"{meta['task']} does not have (the suite is corrupt).")
        if verify and "meta_sha256" in meta:  # suites written before the digest existed have none
            require(meta["meta_sha256"] == meta_digest(meta),
                    f"{self.path}/meta.json does not match its own checksum (meta_sha256): it was "
                    "edited or is corrupt.")
        self.config = make_config(meta["task"], meta["config"])
        self.grammar = get_grammar(meta["task"])
        self.options = self.grammar.Options(**meta["options"])
        self.name = meta["variant"]                # a variant, or a mixture such as optimal+reverse
        self.variant = components(self.name)[0]    # what its evaluated (kind 0) rows are written in
        self.vocab = self.grammar.make_vocab(self.config)
        require(self.vocab.to_json() == meta["vocab"],
                f"{self.path}/meta.json has a vocabulary that this retroplan version does not write.")
        self._splits: dict[str, SplitData] = {}

    def verify(self) -> None:
        files = self.meta.get("files")
        require(isinstance(files, dict) and files, f"{self.path}/meta.json lists no files.")
        for name, digest in sorted(files.items()):
            require("/" not in name and not name.startswith("."),
                    f"{self.path}/meta.json names a file outside the suite: {name!r}.")
            p = self.path / name
            require(p.is_file(), f"suite file {p} is missing.")
            require(sha256_file(p) == digest,
                    f"suite file {p} does not match its checksum in meta.json (corrupt or changed).")

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> SplitData:
        require(name in self.meta["splits"],
                f"suite {self.path} has no split {name!r}; it has: {', '.join(self.splits)}.")
        if name not in self._splits:
            files = self.meta.get("files")  # absent only while generate_suite is writing them
            self._splits[name] = SplitData(self.path, name, list(files) if files else None,
                                           vocab_size=len(self.vocab), counts=self.meta["splits"][name],
                                           instance_bounds=self.task.instance_bounds(self.config))
        return self._splits[name]

    def max_len(self) -> int:
        return max(s["max_len"] for s in self.meta["splits"].values())

    def describe_row(self, split: str, r: int) -> dict:
        """One row as readable fields: the instance, its difficulty, prompt and completion."""
        data = self.split(split)
        i = int(data.instance[r])
        inst = self.task.instance_at(data.instances, i)
        diff = self.task.difficulty(self.config, {k: v[i: i + 1] for k, v in data.instances.items()})
        row = {"split": split, "row": r, "index": int(data.index[i]), "kind": int(data.kind[r])}
        row.update(inst)
        row.update({k: int(v[0]) for k, v in diff.items()})
        row["prompt"] = self.vocab.decode(data.prompt(r))
        row["completion"] = self.vocab.decode(data.completion(r))
        return row

    def preview(self, rows_per_split: int = 3) -> str:
        lines = [f"# {self.meta['task']} / {self.meta['variant']}  seed {self.meta['seed']}  "
                 f"config {json.dumps(self.meta['config'], sort_keys=True)}"]
        for split in self.splits:
            data = self.split(split)
            for r in range(min(rows_per_split, len(data))):
                lines.append(f"[{split} {r}] {self.vocab.decode(data.prompt(r))}")
                lines.append(f"    -> {self.vocab.decode(data.completion(r))}")
        return "\n".join(lines) + "\n"


def read_meta(path: Path) -> dict:
    meta_path = path / "meta.json"
    require(path.is_dir(), f"suite {path} does not exist (or is not a folder).")
    require(meta_path.is_file(), f"{path} is not a suite: it has no meta.json.")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{meta_path} is not valid JSON (the suite is corrupt).") from None
    require(isinstance(meta, dict) and meta.get("format") == FORMAT,
            f"{meta_path} is not a retroplan suite of format {FORMAT}.")
    for key, kind in (("task", str), ("variant", str), ("config", dict), ("options", dict),
                      ("seed", int), ("splits", dict), ("vocab", list)):
        require(isinstance(meta.get(key), kind),
                f"{meta_path} lacks a valid {key!r} field (the suite is corrupt).")
    for split, stats in meta["splits"].items():
        require(isinstance(stats, dict) and all(
                    isinstance(stats.get(k), int) and not isinstance(stats.get(k), bool) and stats[k] >= 0
                    for k in _SPLIT_STATS),
                f"{meta_path} has no valid counts for split {split!r} (the suite is corrupt).")
    shard = meta.get("shard")
    require(shard is None or (isinstance(shard, list) and len(shard) == 2
                              and all(isinstance(x, int) for x in shard) and 0 <= shard[0] < shard[1]),
            f"{meta_path} has an invalid 'shard' field (the suite is corrupt).")
    return meta


def open_suite(path: str | os.PathLike) -> Suite:
    return Suite(Path(path))
