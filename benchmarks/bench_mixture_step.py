"""A mixture's optimizer step: each component padded and run on its own (the trainer) against the
whole batch padded to its longest row (the baseline: the trainer before 2026-12-06).

A mixture batch holds every component in its share (`BatchOrder`, issue 20): Countdown's
`optimal+backward-stream` puts 32 plans of ~25 tokens beside 32 backward streams of ~150, and
padded as one tensor the plans cost as much as the streams. The trainer now runs each component's
part forward and backward at its own width, the summed loss divided by the whole batch's
supervised targets, so the gradient is the padded batch's (tests/test_mixed_batches.py checks it).

Both ways run the same batches of the same suite (the first `--steps` of the seed-0 order) on the
same model (2 layers x 128, AdamW, clipping at 1.0, fp32, 1 thread), alternately `--repeats`
times; the best time of each is kept (a shared machine only ever slows a run down).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/bench_mixture_step.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import cpu_name  # benchmarks/timing.py (this folder is on sys.path)

from retroplan.batching import IGNORE, BatchOrder, collate
from retroplan.models import GPT, GPTConfig
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite
from retroplan.train import masked_loss

COUNTDOWN = {"n_inputs": 3, "min_input": 1, "max_input": 30, "min_target": 10, "max_target": 60}


def step_seconds(model, optimizer, split, batches, pad, no_loss, in_parts: bool) -> float:
    t0 = time.perf_counter()
    for batch, parts in batches:
        pieces = parts if in_parts else [batch]
        tensors = [collate(split, p, pad, no_loss) for p in pieces]
        total = sum(int((y != IGNORE).sum()) for _, y in tensors)
        optimizer.zero_grad(set_to_none=True)
        for x, y in tensors:
            (masked_loss(model, x, y, reduction="sum") / total).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return (time.perf_counter() - t0) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="optimal+backward-stream,optimal+stream,optimal+reverse",
                    help="Countdown mixtures to time, comma-separated (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=30, help="batches timed per repeat (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating repeats of each way (default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {cpu_name()}, 1 thread, torch {torch.__version__}, fp32; model 2 x 128, batch 64")
    print("| mixture | padded batch: s/step (baseline) | in parts: s/step | speed-up | "
          "batch positions, padded → in parts |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            spec = SuiteSpec(task="countdown", variant=variant, config=COUNTDOWN,
                             sizes={"train": 4000, "val": 10, "test": 10}, seed=0)
            suite = open_suite(generate_suite(spec, Path(tmp) / variant, progress=False))
            split = suite.split("train")
            order = BatchOrder(split.lengths, np.arange(len(split)), 64, 0, kinds=split.kind)
            batches = [(order.batch(s), order.parts(order.batch(s))) for s in range(args.steps)]
            pad, no_loss = suite.vocab.pad_id, suite.grammar.no_loss_tokens(suite.vocab)
            positions = [sum(collate(split, p, pad, no_loss)[0].numel() for p in pieces)
                         for pieces in ([b for b, _ in batches], [q for _, ps in batches for q in ps])]
            torch.manual_seed(0)
            model = GPT(GPTConfig(vocab_size=len(suite.vocab), block_size=int(split.lengths.max()),
                                  n_layer=2, n_head=4, n_embd=128))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            step_seconds(model, optimizer, split, batches[:3], pad, no_loss, True)  # warm-up
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.repeats):
                for in_parts in (False, True):
                    best[in_parts] = min(best[in_parts], step_seconds(model, optimizer, split, batches, pad,
                                                                      no_loss, in_parts))
            speedup = best[False] / best[True]
            print(f"| {variant} | {best[False]:.3f} | {best[True]:.3f} | **{speedup:.2f}x** | "
                  f"{positions[0]:,} → {positions[1]:,} |", flush=True)


if __name__ == "__main__":
    main()
