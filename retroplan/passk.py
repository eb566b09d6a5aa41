"""pass@k: the chance that at least one of k samples solves an instance, for k = 1..n.

From n samples of an instance of which c are correct, the unbiased estimator of Chen et al.
(2021, "Evaluating large language models trained on code") is

    pass@k = 1 - C(n - c, k) / C(n, k)  =  1 - prod_{i = n - c + 1}^{n} (1 - k / i)

(the product form: no huge binomials, stable for any n). It is averaged over instances.
Sampling k of the n without replacement is what makes it unbiased; 1 - (1 - c/n)^k is not.
Yue et al. (2025) read RL's effect off the whole curve: RL that only sharpens lifts pass@1
and leaves pass@n flat or lower; RL that adds capability lifts pass@n too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .errors import require


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021), 1 <= k <= n."""
    require(0 <= c <= n and 1 <= k <= n,
            f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_k_curve(records: list[dict]) -> dict:
    """pass@k for k = 1..n averaged over instances, from an evaluation's records (one per
    (row, sample), with `correct`): {"k": [1..n], "value": [...], "n": instances, "samples": n},
    where n is the fewest samples any instance has (every instance has all of them in `eval`)."""
    by_row = defaultdict(list)
    for r in records:
        by_row[r["row"]].append(bool(r["correct"]))
    require(len(by_row) > 0, "pass@k needs at least one evaluated instance.")
    n = min(len(v) for v in by_row.values())
    ks = list(range(1, n + 1))
    values = [sum(pass_at_k(len(v), sum(v), k) for v in by_row.values()) / len(by_row) for k in ks]
    return {"k": ks, "value": values, "n": len(by_row), "samples": n}


def read_curve(eval_dir: str | Path) -> dict:
    """The pass@k curve of an evaluation folder: from its records.jsonl (so an evaluation made
    before metrics.json held the curve has one too)."""
    path = Path(eval_dir) / "records.jsonl"
    require(path.is_file(), f"{eval_dir} is not an evaluation folder (it has no records.jsonl).")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pass_at_k_curve(records)
