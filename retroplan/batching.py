"""Turning suite rows into model batches: padding, the completion-only loss mask, and a
length-bucketed, seeded batch order that is a pure function of (seed, step); and, from that
order, how many steps a budget of examples or supervised tokens takes (`budget_steps`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import UserError, require

IGNORE = -100  # cross-entropy's ignore_index
BUDGETS = ("steps", "examples", "tokens", "forward_examples")  # what `budget_steps` can match
EXACT_TOKEN_LIMIT = 50_000_000  # `budget_steps` counts tokens exactly up to this split size


def collate(split, rows: np.ndarray, pad_id: int, no_loss: list[int], max_len: int | None = None,
            teacherless: bool = False):
    """Inputs, targets and prompt lengths for `rows` of a split, right-padded.

    Targets are IGNORE on prompt positions, padding, and `no_loss` tokens. Rows longer than
    `max_len` are cut to it (callers decide beforehand whether such rows are used at all).
    `teacherless` (Bachmann & Nagarajan 2024): every completion position's input is the dummy
    token `pad_id` (a token no completion holds), so the model predicts each answer token from
    the prompt alone, never from its own earlier answer tokens; the targets are unchanged.
    """
    seqs = [split.row(int(r)) for r in rows]
    if max_len is not None:
        seqs = [s[:max_len] for s in seqs]
    width = max(len(s) for s in seqs) - 1
    x = np.full((len(seqs), width), pad_id, dtype=np.int64)
    y = np.full((len(seqs), width), IGNORE, dtype=np.int64)
    for b, (s, r) in enumerate(zip(seqs, rows)):
        n = len(s) - 1
        x[b, :n] = s[:-1]
        y[b, :n] = s[1:]
        p = int(split.prompt_len[int(r)])
        y[b, : max(0, p - 1)] = IGNORE
        if teacherless:
            x[b, p:] = pad_id
    if no_loss:
        y[np.isin(y, no_loss)] = IGNORE
    return torch.from_numpy(x), torch.from_numpy(y)


def component_counts(sizes: list[int], batch_size: int) -> list[int]:
    """Rows of each component in a batch of `batch_size`: its share sizes[c] / sum(sizes) of the
    batch, rounded by largest remainder (ties: the earlier component), at least 1 each (taken
    from the largest count). 1:1 at 64 -> [32, 32]; 2:1 at 64 -> [43, 21]."""
    total = sum(sizes)
    exact = [batch_size * n / total for n in sizes]
    counts = [int(math.floor(e)) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda c: (-(exact[c] - counts[c]), c))
    for c in by_remainder[: batch_size - sum(counts)]:
        counts[c] += 1
    for c in range(len(counts)):
        if counts[c] == 0:
            counts[max(range(len(counts)), key=lambda k: counts[k])] -= 1
            counts[c] = 1
    return counts


class BatchOrder:
    """Which rows form batch `step`: epochs are seeded permutations; within windows of
    `bucket` batches, rows are sorted by length so a batch pads little (the window is then
    split and the batches shuffled, so lengths don't drift through an epoch).

    A mixture (`kinds` given, the suite's row kind array, with more than one kind among `rows`)
    mixes within every batch: each batch holds each component's `component_counts` rows (its
    share of the batch, largest-remainder rounding), drawn from that component's own seeded
    permutation and length-bucketed within the component, so no batch is one component only.
    Without `kinds` (or with one kind) the order is exactly the unmixed one."""

    def __init__(self, lengths: np.ndarray, rows: np.ndarray, batch_size: int, seed: int,
                 bucket: int = 32, kinds: np.ndarray | None = None):
        self.lengths = lengths
        self.rows = rows
        self.batch_size = min(batch_size, len(rows))
        self.seed = seed
        self.bucket = bucket
        self.per_epoch = max(1, len(rows) // self.batch_size)
        self.components: list[np.ndarray] = []  # a mixture: each kind's rows, kinds ascending
        self.kinds = None if kinds is None else np.asarray(kinds)
        self.component_counts: list[int] = []   # ... and its rows in every batch
        if kinds is not None:
            row_kinds = self.kinds[rows]
            present = np.unique(row_kinds)
            if len(present) > 1:
                self.components = [rows[row_kinds == k] for k in present]
                self.component_counts = component_counts(
                    [len(c) for c in self.components], self.batch_size)
                self.per_epoch = max(1, min(len(c) // n for c, n in
                                            zip(self.components, self.component_counts)))
        self._epoch = -1
        self._batches: list[np.ndarray] = []

    def _plan(self, epoch: int) -> list[np.ndarray]:
        if self.components:
            return self._plan_mixed(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        perm = self.rows[rng.permutation(len(self.rows))][: self.per_epoch * self.batch_size]
        batches = []
        window = self.bucket * self.batch_size
        for lo in range(0, len(perm), window):
            part = perm[lo: lo + window]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches.extend(part[i: i + self.batch_size] for i in range(0, len(part), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _plan_mixed(self, epoch: int) -> list[np.ndarray]:
        """Batch j of the epoch = chunk j of every component, concatenated in kind order. Each
        component is permuted (its own stream of (seed, epoch)) and cut into windows of `bucket`
        chunks, sorted by length within the window: chunk j of every component comes from the
        same window position, so the parts of one batch have similar lengths."""
        rng = np.random.default_rng([self.seed, epoch])
        chunks = []
        for c, (rows, count) in enumerate(zip(self.components, self.component_counts)):
            crng = np.random.default_rng([self.seed, epoch, 1 + c])
            perm = rows[crng.permutation(len(rows))][: self.per_epoch * count]
            parts = []
            for lo in range(0, len(perm), self.bucket * count):
                part = perm[lo: lo + self.bucket * count]
                part = part[np.argsort(self.lengths[part], kind="stable")]
                parts.extend(part[i: i + count] for i in range(0, len(part), count))
            chunks.append(parts)
        batches = [np.concatenate([parts[j] for parts in chunks]) for j in range(self.per_epoch)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """The batches of one epoch, in the order they are drawn (steps epoch * per_epoch ...)."""
        if epoch != self._epoch:
            self._batches, self._epoch = self._plan(epoch), epoch
        return self._batches

    def batch(self, step: int) -> np.ndarray:
        epoch, j = divmod(step, self.per_epoch)
        return self.epoch(epoch)[j]

    def parts(self, rows: np.ndarray) -> list[np.ndarray]:
        """`rows` (a batch, or a rank's slice of one) as the pieces the trainer pads and runs
        separately: one per component of a mixture (kind order, row order kept), else all of
        them. A mixture's components differ in length (a 20-token plan beside a 130-token
        stream), and padded as one tensor the short rows would cost as much as the long ones."""
        if not self.components:
            return [rows]
        row_kinds = self.kinds[rows]
        return [rows[row_kinds == k] for k in np.unique(row_kinds)]


def supervised_tokens_per_row(split, no_loss, max_len: int | None = None,
                              rows: np.ndarray | None = None,
                              chunk_tokens: int = 1 << 22) -> np.ndarray:
    """Per row (of `rows`, default every row of the split): the targets that carry loss in
    `collate(..., no_loss, max_len)`, i.e. completion tokens within `max_len`, minus the
    `no_loss` tokens. The same count the trainer takes from the batches it draws."""
    lengths = np.asarray(split.lengths, dtype=np.int64)
    end = lengths if max_len is None else np.minimum(lengths, max_len)
    start = np.maximum(np.asarray(split.prompt_len, dtype=np.int64), 1)
    no_loss = np.asarray(sorted(no_loss), dtype=np.int64)
    if rows is not None:  # a subset: row by row
        out = np.zeros(len(rows), dtype=np.int64)
        for k, r in enumerate(rows):
            r = int(r)
            tok = split.row(r)[start[r]: end[r]]
            out[k] = len(tok) - (int(np.isin(tok, no_loss).sum()) if len(no_loss) else 0)
        return np.maximum(out, 0)
    n = len(lengths)
    out = np.zeros(n, dtype=np.int64)
    offsets = split.offsets
    r0 = 0
    while r0 < n:  # contiguous chunks of about `chunk_tokens` tokens, vectorised
        r1 = int(np.searchsorted(offsets, offsets[r0] + chunk_tokens, side="right")) - 1
        r1 = min(n, max(r1, r0 + 1))
        lo, hi = int(offsets[r0]), int(offsets[r1])
        tok = np.asarray(split.tokens[lo:hi])
        row = np.repeat(np.arange(r1 - r0), lengths[r0:r1])
        pos = np.arange(hi - lo) - (offsets[r0:r1] - lo)[row]
        keep = (pos >= start[r0:r1][row]) & (pos < end[r0:r1][row])
        if len(no_loss):
            keep &= ~np.isin(tok, no_loss)
        out[r0:r1] = np.bincount(row[keep], minlength=r1 - r0)
        r0 = r1
    return out


def budget_steps(split, batch_size: int, what: str, amount: int, *, seed: int = 0,
                 rows: np.ndarray | None = None, no_loss=(), max_len: int | None = None,
                 exact: bool | None = None, mixed: bool = False) -> int:
    """The optimizer steps after which the trainer has seen `amount` of `what`, predicted
    without training, under `BatchOrder(split.lengths, rows, batch_size, seed)` (a mixture's
    order, mixed within every batch, with `mixed`).

    `what`: "steps" (returned as is), "examples" (rows drawn), "forward_examples" (rows
    of kind 0) or "tokens" (supervised tokens: completion tokens that carry loss, counted
    as `collate(..., no_loss, max_len)` masks them). The counts are those of the whole batch,
    which DDP ranks split between them, so the answer holds for any number of GPUs.

    Examples and forward examples are always exact: the first step whose running count
    reaches `amount`. Tokens are exact too (the batches drawn are summed with every row's
    count) when the split holds at most `EXACT_TOKEN_LIMIT` tokens or `exact=True`;
    otherwise (or with `exact=False`) the expected value ceil(amount / (batch rows x mean
    supervised tokens per row)), the mean taken over up to 20,000 evenly spaced rows.
    `rows`: the rows the trainer draws from (default all; `train` drops rows longer than the
    context); `max_len`: the context + 1, as the trainer collates.
    """
    require(what in BUDGETS, f"budget kind must be one of {', '.join(BUDGETS)}, got {what!r}.")
    require(isinstance(amount, (int, np.integer)) and not isinstance(amount, bool) and amount >= 1,
            f"a {what} budget must be a positive integer, got {amount!r}.")
    require(isinstance(batch_size, int) and batch_size >= 1,
            f"batch_size must be a positive integer, got {batch_size!r}.")
    amount = int(amount)
    if what == "steps":
        return amount
    rows = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
    require(len(rows) > 0, "a budget needs at least one training row.")
    order = BatchOrder(split.lengths, rows, batch_size, seed,
                       kinds=np.asarray(split.kind) if mixed else None)
    if what == "examples":
        return math.ceil(amount / order.batch_size)
    if what == "forward_examples":
        weight = (np.asarray(split.kind) == 0).astype(np.int64)
    else:
        if exact is None:
            exact = int(split.offsets[-1]) <= EXACT_TOKEN_LIMIT
        if not exact:
            sample = rows[np.linspace(0, len(rows) - 1, min(len(rows), 20_000)).astype(np.int64)]
            mean = float(supervised_tokens_per_row(split, no_loss, max_len, rows=sample).mean())
            require(mean > 0, "the training rows carry no supervised tokens, so no step count "
                    "reaches a token budget.")
            return math.ceil(amount / (order.batch_size * mean))
        weight = supervised_tokens_per_row(split, no_loss, max_len)
    if int(weight[rows].sum()) == 0:
        raise UserError(f"no training row counts towards a {what} budget (none is "
                        f"{'a forward row' if what == 'forward_examples' else 'supervised'}), "
                        "so no step count reaches it.")
    seen, epoch = 0, 0
    while True:
        per_batch = weight[np.stack(order.epoch(epoch))].sum(axis=1)
        running = seen + np.cumsum(per_batch)
        if running[-1] >= amount:
            return epoch * order.per_epoch + int(np.searchsorted(running, amount)) + 1
        seen = int(running[-1])
        epoch += 1


# --- Batch widths under torch.compile -------------------------------------------------------
# A batch is as wide as its longest row, and a model compiled for static shapes compiles one
# graph per width. With `compile` on, the trainer asks `compile_widths` what to compile for:
# where the run's batches have at most COMPILE_BUCKETS widths (path-star rows, Countdown plans:
# 1 to 5 widths), exactly those, as static shapes, and a batch of a width not among them is padded
# up to the next (`pad_to_bucket`: IGNORE targets, which causal attention never reads back, so the
# loss is unchanged up to float rounding). Where there are more (search streams: hundreds), 8
# buckets would pad most batches a long way, so the width is compiled as a dynamic dimension:
# one graph, no padding.
COMPILE_BUCKETS = 8


def batch_widths(lengths: np.ndarray, order: BatchOrder, epoch: int, max_len: int) -> np.ndarray:
    """The width `collate(..., max_len)` gives each part (`order.parts`) of each batch of
    `order`'s `epoch`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.array([min(int(lengths[part].max()), max_len) - 1 for b in order.epoch(epoch)
                     for part in order.parts(b)], dtype=np.int64)


def compile_widths(lengths: np.ndarray, order: BatchOrder, max_len: int,
                   most: int = COMPILE_BUCKETS) -> list[int] | None:
    """The batch widths to compile static graphs for: those of `order`'s first epoch and the
    widest batch any epoch can draw, when that is at most `most` widths; else None (compile
    the width as a dynamic dimension)."""
    widest = min(int(np.asarray(lengths)[order.rows].max()), max_len) - 1
    widths = set(batch_widths(lengths, order, 0, max_len).tolist()) | {widest}
    return sorted(widths) if len(widths) <= most else None


def pad_to_bucket(x: torch.Tensor, y: torch.Tensor, buckets: list[int], pad_id: int):
    """`x`, `y` right-padded (pad_id, IGNORE) to the narrowest of `buckets` that holds them."""
    width = x.shape[1]
    target = next(b for b in buckets if b >= width)
    if target == width:
        return x, y
    x = torch.nn.functional.pad(x, (0, target - width), value=pad_id)
    y = torch.nn.functional.pad(y, (0, target - width), value=IGNORE)
    return x, y
