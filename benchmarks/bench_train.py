"""Trainer efficiency against a bare training loop, and generation with and without the KV cache.

Training, in one process, on the same model, batch shapes, dtype/autocast and compile setting:
  bare     a plain loop: the same GPT, AdamW (the trainer's parameter groups, fused on CUDA) and
           gradient clipping, on random token batches made on the device beforehand, of the
           widths the trainer's batches have step by step; forward, backward, step, and
           `loss.item()` every `--log-every` steps, as the trainer logs.
  trainer  `retroplan.train.train` on a generated suite: batch order, collate and loss mask,
           host-to-device copies, counters, logging; timed between its own log lines. Its
           data path (all but the model and optimizer) is also timed alone, in ms per step.
Both are timed over the same steps (after `--warmup` steps, which take the compiling), run
alternately `--repeats` times each, and compared as the best rate of each (a shared machine only
ever slows a run down) in tokens/s: batch positions per second, the same positions in both.
On CUDA (or wherever `--peak-tflops` is given) also MFU: model FLOPs per second (per position,
6 x parameters + the attention term 12 x layers x width x sequence) over the card's dense bf16
peak (`PEAK_BF16_TFLOPS`, or `--peak-tflops`).

Generation (fp32, as eval generates), random weights so that no row stops early:
  `models.gpt.generate` of `--gen-tokens` tokens with the KV cache vs without it (baseline), and
  prompts of `--mixed-lengths` different lengths generated as eval's `generate_completions` does (one
  batch per prompt length, no padding) vs the same number of prompts of one length (baseline).
  Each timed `--repeats` + 1 times, the best kept.

Workloads (`--workload`): path-star `optimal` suites, whose rows all have one length:
  quick     degree 2, path_len 4, 20 labels (27 tokens), batch 64: the CPU demo's task
  pathstar  degree 5, path_len 5, 50 labels (70 tokens), batch 256: retroplan/experiments/pathstar.toml
  long      degree 113, path_len 4, 400 labels (1,026 tokens, cut to a context of 1,024), batch 16

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/bench_train.py --preset small
    .venv/bin/python benchmarks/bench_train.py --preset paper --workload pathstar --compile \\
        --steps 200 --warmup 30 --gen-tokens 1024 --json out.json                 (on a GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import cpu_name  # benchmarks/timing.py (this folder is on sys.path)

from retroplan import device as devices
from retroplan.batching import IGNORE, BatchOrder, collate, compile_widths, pad_to_bucket
from retroplan.models import GPT, GPTConfig, generate
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite
from retroplan.train import (
    TrainConfig,
    _autocast,
    _make_optimizer,
    compile_model,
    lr_at,
    masked_loss,
    resolve_precision,
    train,
    training_rows,
)

WORKLOADS = {
    "quick": dict(config={"degree": 2, "path_len": 4, "num_nodes": 20}, batch_size=64, context=0),
    "pathstar": dict(config={"degree": 5, "path_len": 5, "num_nodes": 50}, batch_size=256, context=0),
    "long": dict(config={"degree": 113, "path_len": 4, "num_nodes": 400}, batch_size=16, context=1024),
}

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; the first
# entry whose words all appear in torch.cuda.get_device_name() (lower case) applies.
PEAK_BF16_TFLOPS = (
    (("h100", "pcie"), 756.0),
    (("h100", "nvl"), 835.0),
    (("h100",), 989.0),      # SXM ("NVIDIA H100 80GB HBM3")
    (("h200",), 989.0),
    (("a100",), 312.0),
)


def peak_tflops(name: str) -> float | None:
    lower = name.lower()
    for words, peak in PEAK_BF16_TFLOPS:
        if all(w in lower for w in words):
            return peak
    return None


def machine(device: torch.device) -> dict:
    info = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_step(n_params: int, cfg: GPTConfig, batch: int, width: int) -> float:
    """Training FLOPs of one step on a (batch, width) batch: 6 x parameters per position
    (forward and backward of every weight, the tied output head included) plus attention's
    12 x layers x width x sequence length per position (PaLM's estimate, as nanoGPT's)."""
    per_position = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * width
    return per_position * batch * width


# ---------------------------------------------------------------------------------------------
# training


def make_suite(workload: str, batch_size: int, steps: int, folder: Path) -> Path:
    spec = WORKLOADS[workload]
    rows = max(4 * batch_size, min(20_000, batch_size * steps))
    return generate_suite(SuiteSpec("pathstar", "optimal", spec["config"], {}, 0,
                                    {"train": rows, "val": 64, "test": 8}), folder, progress=False)


def step_widths(suite_path: Path, cfg: TrainConfig, steps: int) -> tuple[list[int], list[int] | None]:
    """The width of the trainer's batch at each step (padded up as the trainer pads it under
    compile) and the widths it compiles for (None: dynamic)."""
    suite = open_suite(suite_path)
    split = suite.split("train")
    rows, context, _, _ = training_rows(split, cfg, suite.max_len())
    order = BatchOrder(split.lengths, rows, cfg.batch_size, cfg.seed)
    widths = compile_widths(split.lengths, order, context + 1) if cfg.compile else None
    out = []
    for step in range(steps):
        w = min(int(split.lengths[order.batch(step)].max()), context + 1) - 1
        out.append(next(b for b in widths if b >= w) if widths else w)
    return out, widths


def bare_loop(suite_path: Path, cfg: TrainConfig, device: torch.device) -> dict:
    """Elapsed seconds at every log step of a plain loop over the trainer's batch shapes."""
    suite = open_suite(suite_path)
    _, context, _, _ = training_rows(suite.split("train"), cfg, suite.max_len())
    model_cfg = cfg.model_config(len(suite.vocab), context)
    widths, compiled = step_widths(suite_path, cfg, cfg.steps)
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = _make_optimizer(model, cfg, device)
    net = compile_model(model, compiled) if cfg.compile else model
    autocast = _autocast(resolve_precision(cfg, device), device)
    batch = min(cfg.batch_size, len(suite.split("train")))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    data = {w: (torch.randint(0, model_cfg.vocab_size, (batch, w), device=device, generator=gen),
                torch.randint(0, model_cfg.vocab_size, (batch, w), device=device, generator=gen))
            for w in sorted(set(widths))}
    model.train()
    elapsed = {}
    sync(device)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        x, y = data[widths[step]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        with autocast:
            loss = masked_loss(net, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            loss.item()  # the trainer's log line waits for the loss the same way
            elapsed[step + 1] = time.perf_counter() - t0
    return {"elapsed": elapsed, "widths": widths, "params": model.num_params(), "model_cfg": model_cfg,
            "batch": batch}


def data_path_ms(suite_path: Path, cfg: TrainConfig, device: torch.device, steps: range) -> float:
    """Milliseconds per step of the trainer's work outside the model, done alone: batch order,
    collate and loss mask, the counters, padding to a compiled width, the copy to the device."""
    suite = open_suite(suite_path)
    split = suite.split("train")
    rows, context, _, _ = training_rows(split, cfg, suite.max_len())
    order = BatchOrder(split.lengths, rows, cfg.batch_size, cfg.seed)
    widths = compile_widths(split.lengths, order, context + 1) if cfg.compile else None
    no_loss = suite.grammar.no_loss_tokens(suite.vocab)
    kind = np.asarray(split.kind)
    sync(device)
    t0 = time.perf_counter()
    for step in steps:
        batch_rows = order.batch(step)
        x, y = collate(split, batch_rows, suite.vocab.pad_id, no_loss, context + 1)
        counts = (len(batch_rows), int((kind[batch_rows] == 0).sum()), int((y != IGNORE).sum()), x.numel())
        if widths:
            x, y = pad_to_bucket(x, y, widths, suite.vocab.pad_id)
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    assert counts[0] > 0
    return 1000 * (time.perf_counter() - t0) / len(steps)


def trainer_run(suite_path: Path, cfg: TrainConfig, out: Path) -> dict:
    summary = train(suite_path, out, cfg, progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"elapsed": {r["step"]: r["elapsed_s"] for r in log},
            "graphs": {r["step"]: r.get("compiled_graphs", 0) for r in log}, "summary": summary}


def bench_training(args, device: torch.device, tmp: Path) -> dict:
    spec = WORKLOADS[args.workload]
    every = args.log_every
    warmup = math.ceil(args.warmup / every) * every
    steps = math.ceil(args.steps / every) * every
    batch_size = args.batch_size or spec["batch_size"]
    cfg = TrainConfig(preset=args.preset, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                      steps=warmup + steps, batch_size=batch_size, log_every=every,
                      checkpoint_every=10**9, warmup_steps=min(100, warmup + steps),
                      context=spec["context"], long_examples="cut", device=str(device),
                      precision=args.precision, compile=args.compile, threads=args.threads)
    cfg.validate()
    precision = resolve_precision(cfg, device)
    suite_path = make_suite(args.workload, batch_size, warmup + steps, tmp / "suite")

    runs = {"bare": [], "trainer": []}
    for i in range(args.repeats):
        runs["bare"].append(bare_loop(suite_path, cfg, device))
        runs["trainer"].append(trainer_run(suite_path, cfg, tmp / f"run-{i}"))

    bare0 = runs["bare"][0]
    widths, batch = bare0["widths"], bare0["batch"]
    positions = sum(batch * w for w in widths[warmup: warmup + steps])
    flops = sum(flops_per_step(bare0["params"], bare0["model_cfg"], batch, w)
                for w in widths[warmup: warmup + steps])

    def window(elapsed: dict) -> float:
        return elapsed[warmup + steps] - elapsed[warmup]

    bare_rates = [positions / window(r["elapsed"]) for r in runs["bare"]]
    trainer_rates = [positions / window(r["elapsed"]) for r in runs["trainer"]]
    bare_rate, trainer_rate = max(bare_rates), max(trainer_rates)
    trainer = runs["trainer"][0]
    result = {
        "workload": args.workload, "task_config": spec["config"], "preset": args.preset,
        "model": {k: getattr(bare0["model_cfg"], k) for k in ("n_layer", "n_head", "n_embd", "vocab_size",
                                                              "block_size")},
        "parameters": bare0["params"], "batch_size": batch, "widths": sorted(set(widths)),
        "precision": precision, "compile": args.compile, "warmup_steps": warmup, "timed_steps": steps,
        "log_every": every, "positions_per_step": positions / steps,
        "bare_runs_tokens_per_s": [round(r, 1) for r in bare_rates],
        "trainer_runs_tokens_per_s": [round(r, 1) for r in trainer_rates],
        "bare_tokens_per_s": round(bare_rate, 1), "trainer_tokens_per_s": round(trainer_rate, 1),
        "trainer_vs_bare": round(trainer_rate / bare_rate, 3),
        "step_ms": {"bare": round(1000 * positions / bare_rate / steps, 2),
                    "trainer": round(1000 * positions / trainer_rate / steps, 2),
                    "trainer_data_path_alone": round(data_path_ms(suite_path, cfg, device,
                                                                  range(warmup, warmup + steps)), 3)},
    }
    if args.compile:
        graphs = trainer["graphs"]
        result["compile_widths"] = trainer["summary"]["compile"]["widths"]
        result["trainer_compiled_graphs"] = trainer["summary"]["compile"]["graphs"]
        result["graphs_compiled_in_timed_window"] = graphs[warmup + steps] - graphs[warmup]
    result["model_tflops_per_step"] = float(f"{flops / steps / 1e12:.6g}")
    if device.type == "cuda" or args.peak_tflops:
        peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name(device))
        if peak:
            result["peak_bf16_tflops"] = peak
            result["mfu"] = {"bare": round(flops / (positions / bare_rate) / (peak * 1e12), 4),
                             "trainer": round(flops / (positions / trainer_rate) / (peak * 1e12), 4)}
    return result


# ---------------------------------------------------------------------------------------------
# generation


def timed_generate(model: GPT, prompts: torch.Tensor, tokens: int, use_cache: bool) -> float:
    device = prompts.device
    sync(device)
    t0 = time.perf_counter()
    out = generate(model, prompts, tokens, eos_id=-1, use_cache=use_cache)  # -1: no row stops
    sync(device)
    assert out.shape == (prompts.shape[0], tokens)
    return time.perf_counter() - t0


def best_of(repeats: int, *jobs) -> list[float]:
    """The least time of each job (a function returning seconds), the jobs run in turn."""
    times = [[] for _ in jobs]
    for _ in range(repeats):
        for t, job in zip(times, jobs):
            t.append(job())
    return [min(t) for t in times]


def bench_generation(args, device: torch.device) -> dict:
    from retroplan.models import PRESETS

    size = dict(PRESETS[args.preset])
    for name in ("n_layer", "n_head", "n_embd"):
        if getattr(args, name):
            size[name] = getattr(args, name)
    vocab, prompt, tokens, batch = args.gen_vocab, args.gen_prompt, args.gen_tokens, args.gen_batch
    lengths = [prompt + 8 * i for i in range(args.mixed_lengths)]
    block = max(prompt + tokens, max(lengths) + args.mixed_tokens)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, **size)).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)

    def prompts(n: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (n, length), device=device, generator=gen)

    same = prompts(batch, prompt)
    timed_generate(model, same, 8, True)  # warm-up (allocations, kernels)
    timed_generate(model, same, 8, False)
    cache_s, plain_s = best_of(args.repeats + 1, lambda: timed_generate(model, same, tokens, True),
                               lambda: timed_generate(model, same, tokens, False))

    n = args.mixed_prompts
    per_length = [n // len(lengths) + (i < n % len(lengths)) for i in range(len(lengths))]
    one = prompts(n, lengths[len(lengths) // 2])
    groups = [prompts(k, length) for k, length in zip(per_length, lengths) if k]
    one_s, grouped_s = best_of(
        args.repeats + 1, lambda: timed_generate(model, one, args.mixed_tokens, True),
        lambda: sum(timed_generate(model, g, args.mixed_tokens, True) for g in groups))
    return {
        "preset": args.preset, "parameters": model.num_params(), "dtype": "fp32", "vocab_size": vocab,
        "kv_cache": {"batch": batch, "prompt_tokens": prompt, "new_tokens": tokens,
                     "cache_tokens_per_s": round(batch * tokens / cache_s, 1),
                     "no_cache_tokens_per_s": round(batch * tokens / plain_s, 1),
                     "cache_vs_no_cache": round(plain_s / cache_s, 2)},
        "mixed_prompts": {"prompts": n, "lengths": lengths, "new_tokens": args.mixed_tokens,
                          "grouped_tokens_per_s": round(n * args.mixed_tokens / grouped_s, 1),
                          "one_length_tokens_per_s": round(n * args.mixed_tokens / one_s, 1),
                          "grouped_vs_one_length": round(one_s / grouped_s, 3)},
    }


# ---------------------------------------------------------------------------------------------


def print_report(result: dict) -> None:
    m = result["machine"]
    print(f"machine: {m.get('gpu') or m['cpu']}; torch {m['torch']}, {m['torch_threads']} CPU threads")
    t = result.get("training")
    if t:
        size = f"{t['model']['n_layer']}x{t['model']['n_embd']}, {t['parameters'] / 1e6:.1f}M parameters"
        print(f"\ntraining: {t['preset']} ({size}), "
              f"workload {t['workload']} "
              f"(batch {t['batch_size']} x widths {t['widths']}), {t['precision']}, compile "
              f"{'on' if t['compile'] else 'off'}; {t['timed_steps']} timed steps after {t['warmup_steps']}")
        print("| loop | tokens/s | ms/step | vs bare |")
        print("|---|---|---|---|")
        runs = {k: ", ".join(f"{r:,.0f}" for r in t[f"{k}_runs_tokens_per_s"]) for k in ("bare", "trainer")}
        print(f"| bare (baseline; runs: {runs['bare']}) | {t['bare_tokens_per_s']:,.0f} | "
              f"{t['step_ms']['bare']} | 1.00x |")
        print(f"| trainer (runs: {runs['trainer']}) | {t['trainer_tokens_per_s']:,.0f} | "
              f"{t['step_ms']['trainer']} | **{t['trainer_vs_bare']:.2f}x** |")
        print(f"the trainer's data path alone (order, collate, mask, counters, copy): "
              f"{t['step_ms']['trainer_data_path_alone']} ms/step")
        if "mfu" in t:
            print(f"MFU (vs {t['peak_bf16_tflops']:.0f} TFLOP/s bf16 peak): "
                  f"bare {100 * t['mfu']['bare']:.1f}%, trainer {100 * t['mfu']['trainer']:.1f}%")
        if t["compile"]:
            print(f"compiled widths: {t['compile_widths']}; graphs the trainer compiled: "
                  f"{t['trainer_compiled_graphs']} ({t['graphs_compiled_in_timed_window']} "
                  "in the timed window)")
    g = result.get("generation")
    if g:
        kv, mp = g["kv_cache"], g["mixed_prompts"]
        print(f"\ngeneration: {g['preset']} ({g['parameters'] / 1e6:.1f}M), fp32, random weights")
        print("| what | tokens/s | vs baseline |")
        print("|---|---|---|")
        print(f"| {kv['new_tokens']} tokens x {kv['batch']} rows, no cache (baseline) | "
              f"{kv['no_cache_tokens_per_s']:,.0f} | 1.00x |")
        print(f"| same, KV cache | {kv['cache_tokens_per_s']:,.0f} | **{kv['cache_vs_no_cache']:.2f}x** |")
        print(f"| {mp['prompts']} prompts of one length, one batch (baseline) | "
              f"{mp['one_length_tokens_per_s']:,.0f} | 1.00x |")
        print(f"| {mp['prompts']} prompts of {len(mp['lengths'])} lengths, a batch per length (eval) | "
              f"{mp['grouped_tokens_per_s']:,.0f} | **{mp['grouped_vs_one_length']:.2f}x** |")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--n-layer", type=int, default=0)
    ap.add_argument("--n-head", type=int, default=0)
    ap.add_argument("--n-embd", type=int, default=0)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="quick")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the workload's")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (rounded up to --log-every)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps (compiling)")
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loop (best kept)")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="the card's dense bf16 peak in TFLOP/s, where the table lacks it")
    ap.add_argument("--gen-tokens", type=int, default=128, help="tokens generated per row (GPU: 1024)")
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--gen-prompt", type=int, default=64)
    ap.add_argument("--gen-vocab", type=int, default=128)
    ap.add_argument("--mixed-prompts", type=int, default=32)
    ap.add_argument("--mixed-lengths", type=int, default=4)
    ap.add_argument("--mixed-tokens", type=int, default=32)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    return ap


def run(args) -> dict:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = devices.resolve_device(args.device)
        result = {"machine": machine(device)}
        with tempfile.TemporaryDirectory() as tmp:
            if not args.skip_train:
                result["training"] = bench_training(args, device, Path(tmp))
        if not args.skip_generate:
            result["generation"] = bench_generation(args, device)
    finally:
        torch.set_num_threads(threads)  # as it was (a caller's other work)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    result = run(args)
    result["command"] = "benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
