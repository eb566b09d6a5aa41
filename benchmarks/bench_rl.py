"""`retroplan rl` on a CPU: where the time of a GRPO step goes, against eval's own generation.

One run: a path-star stream suite (the quick demo's task: degree 2, path_len 4, 20 labels), a
model of preset `small` (4x128) trained `--sft-steps` steps, then, in the same process:

* eval's generation rate: `eval.generate_completions` (the KV-cache sampler `retroplan eval
  --temperature 1 --samples G` uses, batches of 256) on `--prompts` test prompts x G samples;
* RL's sampling rate: `rl.sample_groups` (the same KV-cache generation, one step's
  prompts_per_step x group_size completions at a time) on the same number of completions;
* judging: `eval.judge` (parse, replay, every stream step judged) of those completions;
* whole GRPO steps (`rl.rl`, sampling + judging + one update; the log's elapsed time) per second
  and completions per second.

Ratios are against eval's generation rate measured in the same run. Every rate is the best of
`--repeats`.

    NUMBA_CACHE_DIR=.numba_cache OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rl.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import cpu_name  # benchmarks/timing.py (this folder is on sys.path)

from retroplan import checkpoint
from retroplan.eval import EvalConfig, generate_completions, judge
from retroplan.rl import RLConfig, rl, sample_groups
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite
from retroplan.train import TrainConfig, train

QUICK = {"degree": 2, "path_len": 4, "num_nodes": 20}


def best_rate(work, count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return count / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=64, help="test prompts for the generation rates")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--rl-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        suite_path = generate_suite(SuiteSpec(task="pathstar", variant="stream", config=QUICK, seed=0,
                                              sizes={"train": 2000, "val": 10, "test": args.prompts}),
                                    tmp / "suite", progress=False)
        train(suite_path, tmp / "sft", TrainConfig(preset="small", steps=args.sft_steps, batch_size=32,
                                                   log_every=50, device="cpu"), progress=False)
        model, _, _ = checkpoint.load_model(tmp / "sft", "cpu")
        suite = open_suite(suite_path)
        test, train_split = suite.split("test"), suite.split("train")
        g = args.group_size
        completions = args.prompts * g
        sampled = EvalConfig(temperature=1.0, samples=g, device="cpu")
        eval_rate = best_rate(lambda: generate_completions(model, suite, test, np.arange(args.prompts),
                                                           sampled, "cpu", progress=False),
                              completions, args.repeats)
        cfg = RLConfig(prompts_per_step=args.prompts_per_step, group_size=g, device="cpu")
        train_rows = np.arange(args.prompts)
        per_step = args.prompts_per_step

        def rl_sampling():
            for step, lo in enumerate(range(0, args.prompts, per_step)):
                sample_groups(model, suite, train_split, train_rows[lo: lo + per_step], cfg, step, "cpu")

        rl_sample_rate = best_rate(rl_sampling, completions, args.repeats)
        sampled_ids = sample_groups(model, suite, train_split, train_rows, cfg, 0, "cpu")
        instances = [int(train_split.instance[r]) for r in train_rows for _ in range(g)]
        judge_rate = best_rate(lambda: [judge(suite, train_split.instances, i, c)
                                        for i, c in zip(instances, sampled_ids)], completions, args.repeats)
        step_rates = []
        for k in range(args.repeats):
            out = tmp / f"rl{k}"
            rl(tmp / "sft", out, RLConfig(steps=args.rl_steps, prompts_per_step=per_step, group_size=g,
                                          checkpoint_every=10 ** 6, device="cpu"), progress=False)
            log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
            step_rates.append(args.rl_steps / log[-1]["elapsed_s"])
        steps_per_s = max(step_rates)
        rl_completion_rate = steps_per_s * per_step * g
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s); model small (4x128), "
          f"path-star stream degree 2 path_len 4; {args.prompts} prompts x {g} samples; "
          f"best of {args.repeats}")
    print(f"eval generation (batches of 256):        {eval_rate:8.1f} completions/s  (1.00x, the baseline)")
    print(f"rl sampling ({per_step} prompts x {g} per call):   {rl_sample_rate:8.1f} completions/s  "
          f"({rl_sample_rate / eval_rate:.2f}x)")
    print(f"rl judging (parse, replay, stream metrics): {judge_rate:8.1f} completions/s  "
          f"({judge_rate / eval_rate:.2f}x)")
    print(f"rl whole GRPO steps:                     {steps_per_s:8.2f} steps/s = {rl_completion_rate:.1f} "
          f"completions/s ({rl_completion_rate / eval_rate:.2f}x)")


if __name__ == "__main__":
    main()
