"""Type-I error of the verdict rule under the null, by simulation (docs/METRICS.md, Verdicts).

Baseline and variant are the same procedure: per seed each model's accuracy is
0.5 + N(0, sigma²) (retraining noise), then each of n test instances is right independently.
For each sigma: the share of simulated studies the seed-level rule calls helps/hurts (paired t
over per-seed deltas; one comparison, so Holm changes nothing) and the share the pooled exact
McNemar over (seed, instance) pairs rejects at 0.05 (the rule before issue 20).

    python experiments/verdict_null.py [--studies 20000] [--seeds 3] [--n 500]
"""

import argparse

import numpy as np

from retroplan.stats import binom_sign_test, paired_t, tost, verdict


def simulate(sigma: float, studies: int, seeds: int, n: int, rng) -> np.ndarray:
    """Counts (studies, seeds, 4): both right, only variant right, only baseline right, both wrong."""
    p_var = np.clip(0.5 + sigma * rng.standard_normal((studies, seeds)), 0, 1)
    p_base = np.clip(0.5 + sigma * rng.standard_normal((studies, seeds)), 0, 1)
    cells = np.stack([p_var * p_base, p_var * (1 - p_base), (1 - p_var) * p_base,
                      (1 - p_var) * (1 - p_base)], axis=-1)
    return rng.multinomial(n, cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=20000)
    p.add_argument("--pooled-studies", type=int, default=2000, help="the exact McNemar is slower")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n", type=int, default=500)
    args = p.parse_args()
    print(f"{args.seeds} seeds x {args.n} instances; seed rule over {args.studies} studies, "
          f"pooled McNemar over the first {args.pooled_studies}")
    print("| sigma | seed rule: helps/hurts | seed rule: equivalent within ±0.05 | pooled McNemar p < 0.05 |")
    print("|---|---|---|---|")
    for sigma in (0.0, 0.02, 0.05, 0.2):
        counts = simulate(sigma, args.studies, args.seeds, args.n, np.random.default_rng(20))
        deltas = (counts[..., 1] - counts[..., 2]) / args.n
        words = [verdict(m, pd, pe, 0.05) for m, pd, pe in
                 zip(deltas.mean(axis=1), paired_t(deltas)["p"], tost(deltas, 0.05)["p"])]
        claims = np.mean([w in ("helps", "hurts") for w in words])
        equivalent = np.mean([w.startswith("equivalent") for w in words])
        first = counts[:args.pooled_studies]
        b10, b01 = first[..., 1].sum(axis=1), first[..., 2].sum(axis=1)
        pooled = np.mean([binom_sign_test(int(k), int(k + j)) < 0.05 for k, j in zip(b10, b01)])
        print(f"| {sigma:g} | {claims:.3f} | {equivalent:.3f} | {pooled:.3f} |")


if __name__ == "__main__":
    main()
