"""Turning suite rows into model batches: padding, the completion-only loss mask, and a
length-bucketed, seeded batch order that is a pure function of (seed, step)."""

from __future__ import annotations

import numpy as np
import torch

IGNORE = -100  # cross-entropy's ignore_index


def collate(split, rows: np.ndarray, pad_id: int, no_loss: list[int], max_len: int | None = None):
    """Inputs, targets and prompt lengths for `rows` of a split, right-padded.

    Targets are IGNORE on prompt positions, padding, and `no_loss` tokens. Rows longer than
    `max_len` are cut to it (callers decide beforehand whether such rows are used at all).
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
    if no_loss:
        y[np.isin(y, no_loss)] = IGNORE
    return torch.from_numpy(x), torch.from_numpy(y)


class BatchOrder:
    """Which rows form batch `step`: epochs are seeded permutations; within windows of
    `bucket` batches, rows are sorted by length so a batch pads little (the window is then
    split and the batches shuffled, so lengths don't drift through an epoch)."""

    def __init__(self, lengths: np.ndarray, rows: np.ndarray, batch_size: int, seed: int,
                 bucket: int = 32):
        self.lengths = lengths
        self.rows = rows
        self.batch_size = min(batch_size, len(rows))
        self.seed = seed
        self.bucket = bucket
        self.per_epoch = max(1, len(rows) // self.batch_size)
        self._epoch = -1
        self._batches: list[np.ndarray] = []

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = self.rows[rng.permutation(len(self.rows))][: self.per_epoch * self.batch_size]
        batches = []
        window = self.bucket * self.batch_size
        for lo in range(0, len(perm), window):
            part = perm[lo: lo + window]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches.extend(part[i: i + self.batch_size] for i in range(0, len(part), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, step: int) -> np.ndarray:
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._batches, self._epoch = self._plan(epoch), epoch
        return self._batches[j]
