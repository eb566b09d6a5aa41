"""CPU training in bf16 autocast against fp32: speed and accuracy parity, same run.

Speed: optimizer steps per second of the real trainer (`retroplan.train.train`, timed between
its log lines after `--warmup` steps, so suite loading, model building and the final
checkpoint are left out) for the presets `small` (4x128) and `base` (4x256) on a path-star
suite, fp32 then bf16, printed with the bf16/fp32 ratio. Parity: the quick demo's task
(path-star degree 2, path_len 4, 20 labels; the optimal and reverse variants), trained
`--parity-steps` steps in fp32 and in bf16 with the demo's optimizer settings, then the final
val loss (fp32 forward) and the verified accuracy of `retroplan.eval.evaluate` on the test split.

`TrainConfig(precision="bf16")` is refused on a CPU without native BF16 instructions
(avx512_bf16 / amx_bf16 / Arm bf16): torch then emulates bf16 matrix products. To measure
what that refusal avoids, this benchmark forces the bf16 path on such a CPU (it says so in
its output); the bf16 parity runs there only with `--force-parity`, since emulated bf16
makes them slow (the projected time is printed).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/bench_train_precision.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from timing import cpu_name  # benchmarks/timing.py (this folder is on sys.path)

from retroplan import device as devices
from retroplan.eval import EvalConfig, evaluate
from retroplan.traces.suite import SuiteSpec, generate_suite
from retroplan.train import TrainConfig, train

QUICK = {"degree": 2, "path_len": 4, "num_nodes": 20}
DEMO_OPT = dict(batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100)


def steps_per_second(suite, out: Path, preset: str, precision: str, steps: int, warmup: int,
                     threads: int) -> float:
    cfg = TrainConfig(preset=preset, steps=warmup + steps, log_every=1, checkpoint_every=10**6,
                      precision=precision, device="cpu", threads=threads, **DEMO_OPT)
    train(suite, out, cfg, progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in log}
    return steps / (elapsed[warmup + steps] - elapsed[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="small,base")
    ap.add_argument("--steps", type=int, default=12, help="timed fp32 steps per preset")
    ap.add_argument("--bf16-steps", type=int, default=0,
                    help="timed bf16 steps (0: as --steps where bf16 is native, else 3)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parity-steps", type=int, default=600)
    ap.add_argument("--parity-preset", default="base")
    ap.add_argument("--parity-variants", default="optimal,reverse")
    ap.add_argument("--test", type=int, default=500, help="test instances the accuracy is over")
    ap.add_argument("--force-parity", action="store_true",
                    help="run the bf16 parity runs even where this CPU emulates bf16 (slow)")
    ap.add_argument("--skip-parity", action="store_true")
    args = ap.parse_args()

    native = devices.cpu_bf16_supported()
    if not native:
        devices.cpu_bf16_supported = lambda: True  # measure the path the trainer refuses here
    bf16_steps = args.bf16_steps or (args.steps if native else 3)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, {args.threads} torch threads; torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}; native BF16: "
          f"{'yes' if native else 'no (bf16 below is forced; the trainer refuses it here)'}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        suites = {}
        for variant in args.parity_variants.split(","):
            suites[variant] = generate_suite(SuiteSpec(
                task="pathstar", variant=variant, config=QUICK, seed=0,
                sizes={"train": 50000, "val": 200, "test": args.test}), tmp / f"suite-{variant}",
                progress=False)
        speed_suite = suites[args.parity_variants.split(",")[0]]

        presets = [p for p in args.presets.split(",") if p]
        if presets:
            print(f"\nspeed: steps/s of train(), batch 64, path-star {QUICK}, "
                  f"{args.steps} fp32 / {bf16_steps} bf16 steps after {args.warmup} warm-up steps")
            print("| preset | fp32 steps/s | bf16 steps/s | bf16 / fp32 |")
            print("|---|---|---|---|")
        rates = {}
        for preset in presets:
            fp32 = steps_per_second(speed_suite, tmp / f"speed-{preset}-fp32", preset, "fp32",
                                    args.steps, args.warmup, args.threads)
            bf16 = steps_per_second(speed_suite, tmp / f"speed-{preset}-bf16", preset, "bf16",
                                    bf16_steps, args.warmup, args.threads)
            rates[preset] = (fp32, bf16)
            print(f"| {preset} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f}x |", flush=True)

        if args.skip_parity:
            return
        preset = args.parity_preset
        if not native and not args.force_parity:
            bf16_rate = rates.get(preset, (None, None))[1]
            if bf16_rate:
                minutes = len(suites) * args.parity_steps / bf16_rate / 60
                print(f"\nparity skipped: this CPU emulates bf16, so the bf16 runs of "
                      f"{args.parity_steps} steps ({preset}) would take about {minutes:.0f} min; "
                      "pass --force-parity to run them anyway")
            else:
                print("\nparity skipped: this CPU emulates bf16; pass --force-parity")
            return
        print(f"\nparity: {preset} preset, {args.parity_steps} steps of 64, lr 1e-3 -> 1e-4, "
              f"warm-up 100; verified accuracy on {args.test} test instances")
        print("| variant | precision | final val loss | accuracy | train s |")
        print("|---|---|---|---|---|")
        for variant, suite in suites.items():
            for precision in ("fp32", "bf16"):
                run = tmp / f"parity-{variant}-{precision}"
                t0 = time.perf_counter()
                summary = train(suite, run, TrainConfig(
                    preset=preset, steps=args.parity_steps, precision=precision, device="cpu",
                    threads=args.threads, checkpoint_every=10**6, log_every=50, **DEMO_OPT),
                    progress=False)
                seconds = time.perf_counter() - t0
                m = evaluate(run, cfg=EvalConfig(batch_size=500, device="cpu"), progress=False)
                acc = m["accuracy"]
                print(f"| {variant} | {precision} | {summary['val_loss']:.4f} | "
                      f"{acc['value']:.3f} (n={acc['n']}) | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
