"""Decoding options beyond greedy: the thought-switch penalty (TIP); pass@k lives in passk.py.

TIP (Wang et al. 2025, adapted to exact streams): subtract `alpha` from the logits of the
thought-switch tokens while fewer than `beta` moves have been made in the current thought,
and only when a legal move to a not-yet-entered state exists; the oracle-gated upper bound
penalises only when the current state can still reach the goal (R = 1).
"""

from __future__ import annotations

import torch

from .passk import pass_at_k  # noqa: F401  (re-exported: its old home)


class TIPPenalty:
    """A `logits_hook` for `models.generate`: one stream tracker per row of the batch."""

    def __init__(self, trackers: list, switch_ids, alpha: float, beta: int, oracle: bool = False):
        self.trackers = trackers
        self.switch_ids = list(switch_ids)
        self.alpha = float(alpha)
        self.beta = int(beta)
        self.oracle = oracle
        self.penalised_steps = 0

    def __call__(self, logits: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        if generated.shape[1] > 0:
            for tracker, token in zip(self.trackers, generated[:, -1].tolist()):
                tracker.feed(token)
        if self.alpha == 0:
            return logits
        rows = [b for b, tr in enumerate(self.trackers) if tr.should_penalise(self.beta, self.oracle)]
        if rows:
            self.penalised_steps += len(rows)
            logits = logits.clone()
            idx = torch.tensor(rows, device=logits.device)
            for tok in self.switch_ids:
                logits[idx, tok] -= self.alpha
        return logits

