"""One command for a GPU check (`make gpu-check`): the trainer and generation benchmarks at GPU
sizes and the two GPU studies scaled to fit, about 10 minutes on one H100, written to
benchmarks/gpu_check.json and benchmarks/gpu_check.md (rewritten after every stage, so a run
cut short keeps what it measured).

Stages (`--only` picks some):
  train-paper       benchmarks/bench_train.py: `paper` preset (6 x 384), retroplan/experiments/pathstar.toml's
                    degree-5 task at batch 256, bf16 autocast, compiled: trainer vs bare loop, MFU
  train-85m         the same for `gpt2-small` (12 x 768, ~85M) at a context of 1,024, batch 16
  generate          `paper` preset, 1,024 new tokens, KV cache vs none; prompts of 4 lengths
  study-pathstar    retroplan/experiments/pathstar.toml scaled: the degree-5 condition, optimal and reverse,
                    seed 0, test 1,000; steps as many as fit `--pathstar-seconds` (40) per run at
                    the step time train-paper measured (at most the file's 5,000)
  study-countdown   retroplan/experiments/countdown.toml scaled: optimal and stream, 10,000 train problems,
                    100 test problems per split, context 2,048, 200 steps
The full studies (pathstar.toml: 30 runs of 5,000 steps; countdown.toml: 4 runs of 1,200 steps
with a context of 4,096) take 30+ and ~10 minutes by their own estimates, so they are not run
here; `retroplan run <name>` runs them.

Not measured yet on any GPU (written on a CPU-only machine): the sizes are estimates, and the
stage times in the JSON are there to correct them. Where one command may run 10 minutes at most,
split it: `--only train-paper,train-85m,generate`, then `--append --only
study-pathstar,study-countdown --pathstar-steps N`.

Refuses without a CUDA device, except with `--allow-cpu`: then every stage runs at toy sizes on
the CPU (a smoke test of this script; its numbers mean nothing).

    make gpu-check                          # = .venv/bin/python benchmarks/gpu_check.py
    .venv/bin/python benchmarks/gpu_check.py --allow-cpu --out /tmp/gc --json /tmp/gc.json --md /tmp/gc.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import tomllib
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import bench_train  # noqa: E402  (this folder's benchmark, imported as a module)

from retroplan.experiment import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train-paper", "train-85m", "generate", "study-pathstar", "study-countdown")
REFUSAL = ("gpu-check needs a CUDA GPU and torch sees none here; run it on a machine with one, "
           "or pass --allow-cpu for a toy-sized smoke test of this script.")

# bench_train arguments per stage: on a GPU, and the toy sizes of --allow-cpu
BENCH = {
    "train-paper": (["--preset", "paper", "--workload", "pathstar", "--compile", "--steps", "150",
                     "--warmup", "30", "--log-every", "10", "--repeats", "2", "--skip-generate"],
                    ["--preset", "tiny", "--workload", "quick", "--steps", "4", "--warmup", "2",
                     "--log-every", "2", "--repeats", "1", "--skip-generate", "--threads", "1"]),
    "train-85m": (["--preset", "gpt2-small", "--workload", "long", "--compile", "--steps", "40",
                   "--warmup", "20", "--log-every", "10", "--repeats", "2", "--skip-generate"],
                  ["--preset", "tiny", "--workload", "long", "--batch-size", "2", "--steps", "2",
                   "--warmup", "2", "--log-every", "2", "--repeats", "1", "--skip-generate",
                   "--threads", "1"]),
    "generate": (["--preset", "paper", "--skip-train", "--gen-tokens", "1024", "--gen-batch", "16",
                  "--gen-prompt", "64", "--mixed-prompts", "64", "--mixed-lengths", "4",
                  "--mixed-tokens", "256", "--repeats", "1"],
                 ["--preset", "tiny", "--skip-train", "--gen-tokens", "16", "--gen-batch", "2",
                  "--gen-prompt", "8", "--mixed-prompts", "4", "--mixed-lengths", "2", "--mixed-tokens", "4",
                  "--repeats", "1", "--threads", "1"]),
}

TOY_TRAIN = {"preset": "tiny", "steps": 6, "batch_size": 8, "checkpoint_every": 6, "log_every": 2,
             "keep_steps": [], "curve_every": 0, "compile": False, "threads": 1}


def scaled_pathstar(steps: int, toy: bool) -> dict:
    exp = tomllib.loads((ROOT / "retroplan" / "experiments" / "pathstar.toml").read_text())
    exp["name"] = "pathstar-gpu-check"
    exp["description"] = "The shipped pathstar experiment, scaled by benchmarks/gpu_check.py to fit."
    exp["conditions"] = [c for c in exp["conditions"] if c["label"] == "degree5"]
    exp["variants"] = ["optimal", "reverse"]
    exp["seeds"] = [0]
    exp["sizes"] = {"train": 200_000, "val": 1000, "test": 1000}
    exp["train"].update(steps=steps, checkpoint_every=steps, log_every=50,
                        keep_steps=[], curve_every=max(100, steps // 5))
    if toy:
        exp["sizes"] = {"train": 400, "val": 20, "test": 20}
        exp["train"].update(TOY_TRAIN)
    return exp


def scaled_countdown(toy: bool) -> dict:
    exp = tomllib.loads((ROOT / "retroplan" / "experiments" / "countdown.toml").read_text())
    exp["name"] = "countdown-gpu-check"
    exp["description"] = "The shipped countdown experiment, scaled by benchmarks/gpu_check.py to fit."
    exp["variants"] = ["optimal", "stream"]
    exp["sizes"] = {"train": 10_000, "val": 100, "test": 100, "val_target": 100, "test_target": 100}
    exp["train"].update(context=2048, steps=200, checkpoint_every=200, log_every=50)
    if toy:
        exp["sizes"] = {"train": 200, "val": 10, "test": 10, "val_target": 10, "test_target": 10}
        exp["train"].update(TOY_TRAIN, context=256)
    return exp


def toml_text(exp: dict) -> str:
    """A TOML file of `exp` (strings, numbers, booleans, lists of them, tables, arrays of tables:
    what experiment files hold)."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    def table(name: str, t: dict, lines: list[str], header: str) -> None:
        if header:
            lines.append(header)
        for k, v in t.items():
            if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict)):
                lines.append(f"{k} = {value(v)}")
        for k, v in t.items():
            path = f"{name}.{k}" if name else k
            if isinstance(v, dict):
                table(path, v, lines, f"\n[{path}]")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    table(path, item, lines, f"\n[[{path}]]")

    lines: list[str] = []
    table("", exp, lines, "")
    return "\n".join(lines) + "\n"


def run_study(exp: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.toml"
    path.write_text(toml_text(exp))
    run_experiment(path, out, progress=False)
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs = {}
    for final in sorted((out / "runs").glob("*/final.json")):
        summary = json.loads(final.read_text())
        runs[final.parent.name] = {k: summary.get(k) for k in (
            "steps", "train_seconds", "tokens_per_second", "final_loss", "val_loss", "compile", "device",
            "precision", "parameters")}
    keep = ("condition", "split", "variant", "seed", "n", "accuracy", "first_step_accuracy",
            "mean_generated_tokens", "steps", "train_seconds")
    return {"experiment": str(path), "out": str(out), "runs": runs,
            "results": [{k: r.get(k) for k in keep} for r in rows]}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check ({m.get('gpu') or 'no GPU: CPU smoke test, numbers meaningless'})", "",
             f"{report['started']} UTC; torch {m['torch']}; CPU {m['cpu']}. Command: `{report['command']}`. "
             f"Stage seconds: {', '.join(f'{k} {v}' for k, v in report['stage_seconds'].items())}.", ""]
    for name in ("train-paper", "train-85m"):
        t = report.get(name)
        if not t:
            continue
        mfu = t.get("mfu", {})
        lines += [f"## {name}: trainer vs bare loop", "",
                  f"{t['preset']} ({t['parameters'] / 1e6:.1f}M), workload {t['workload']} (batch "
                  f"{t['batch_size']}, widths {t['widths']}), {t['precision']}, compile {t['compile']}, "
                  f"{t['timed_steps']} timed steps after {t['warmup_steps']}; runs of each: bare "
                  f"{t['bare_runs_tokens_per_s']}, trainer {t['trainer_runs_tokens_per_s']} tokens/s.", "",
                  "| loop | tokens/s | ms/step | vs bare | MFU |", "|---|---|---|---|---|",
                  f"| bare | {t['bare_tokens_per_s']:,.0f} | {t['step_ms']['bare']} | 1.00x | "
                  f"{_pct(mfu.get('bare'))} |",
                  f"| trainer | {t['trainer_tokens_per_s']:,.0f} | {t['step_ms']['trainer']} | "
                  f"**{t['trainer_vs_bare']:.2f}x** | {_pct(mfu.get('trainer'))} |", "",
                  f"The trainer's data path alone (order, collate, mask, counters, copy): "
                  f"{t['step_ms']['trainer_data_path_alone']} ms/step.", ""]
        if t["compile"]:
            lines += [f"Compiled widths {t['compile_widths']}; the trainer compiled "
                      f"{t['trainer_compiled_graphs']} graph(s), {t['graphs_compiled_in_timed_window']} "
                      "inside the timed window.", ""]
    g = report.get("generate")
    if g:
        kv, mp = g["kv_cache"], g["mixed_prompts"]
        lines += ["## generate", "", f"{g['preset']} ({g['parameters'] / 1e6:.1f}M), fp32 (as eval).", "",
                  "| what | tokens/s | vs baseline |", "|---|---|---|",
                  f"| {kv['new_tokens']} tokens x {kv['batch']} rows, no cache (baseline) | "
                  f"{kv['no_cache_tokens_per_s']:,.0f} | 1.00x |",
                  f"| same, KV cache | {kv['cache_tokens_per_s']:,.0f} | "
                  f"**{kv['cache_vs_no_cache']:.2f}x** |",
                  f"| {mp['prompts']} prompts, one length, one batch (baseline) | "
                  f"{mp['one_length_tokens_per_s']:,.0f} | 1.00x |",
                  f"| {mp['prompts']} prompts of lengths {mp['lengths']}, a batch per length (eval) | "
                  f"{mp['grouped_tokens_per_s']:,.0f} | **{mp['grouped_vs_one_length']:.2f}x** |", ""]
    for name in ("study-pathstar", "study-countdown"):
        s = report.get(name)
        if not s:
            continue
        lines += [f"## {name}", "",
                  f"Scaled experiment file: `{s['experiment']}`; results in `{s['out']}`.", "",
                  "| condition | variant | split | n | accuracy | first step | steps | train s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in s["results"]:
            lines.append(f"| {r['condition']} | {r['variant']} | {r['split']} | {r['n']} | "
                         f"{_num(r['accuracy'])} | {_num(r['first_step_accuracy'])} | {r['steps']} | "
                         f"{r['train_seconds']} |")
        lines += ["", "| run | tokens/s (whole run) | compile |", "|---|---|---|"]
        for name_, run in s["runs"].items():
            lines.append(f"| {name_} | {run['tokens_per_second']} | {run.get('compile')} |")
        lines.append("")
    goals = report.get("goals")
    if goals:
        lines += ["## Goals", ""] + [f"- {g}" for g in goals] + [""]
    return "\n".join(lines)


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    try:
        return f"{float(x):.3f}"
    except (TypeError, ValueError):
        return str(x)


def goals(report: dict) -> list[str]:
    if report["toy_sizes"]:
        return ["toy sizes on a CPU: no goal is judged"]
    out = []
    t = report.get("train-paper")
    if t:
        ok = t["trainer_vs_bare"] >= 0.9
        out.append(f"trainer >= 0.9x the bare compiled loop at `paper`: {t['trainer_vs_bare']:.2f}x "
                   f"({'met' if ok else 'NOT met'})")
    t = report.get("train-85m")
    if t and "mfu" in t:
        ok = t["mfu"]["trainer"] >= 0.4
        out.append(f"~85M preset >= 40% MFU in bf16: trainer {_pct(t['mfu']['trainer'])}, bare "
                   f"{_pct(t['mfu']['bare'])} ({'met' if ok else 'NOT met'})")
    g = report.get("generate")
    if g:
        r = g["kv_cache"]["cache_vs_no_cache"]
        out.append(f"KV cache >= 10x no cache at {g['kv_cache']['new_tokens']} tokens: {r:.1f}x "
                   f"({'met' if r >= 10 else 'NOT met'})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-cpu", action="store_true", help="toy sizes on the CPU (a smoke test)")
    ap.add_argument("--only", default=",".join(STAGES), help=f"stages to run, of: {', '.join(STAGES)}")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check",
                    help="the studies go to a new folder OUT/<UTC time>/")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "gpu_check.json")
    ap.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "gpu_check.md")
    ap.add_argument("--pathstar-seconds", type=float, default=40.0,
                    help="training time per path-star run the steps are sized to")
    ap.add_argument("--pathstar-steps", type=int, default=0,
                    help="steps per path-star run (0: sized from train-paper's step time, else 5,000)")
    ap.add_argument("--append", action="store_true",
                    help="keep the stages an existing --json holds (a check run as several commands)")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    args = ap.parse_args(argv)
    stages = [s for s in args.only.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"unknown stage {bad[0]!r}; stages: {', '.join(STAGES)}.", file=sys.stderr)
        return 2
    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:
        print(REFUSAL, file=sys.stderr)
        return 2
    toy = not gpu
    studies = args.out / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    device = torch.device("cuda" if gpu else "cpu")
    command = " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "toy_sizes": toy, "machine": bench_train.machine(device), "stage_seconds": {}}
    if args.append and args.json.exists():
        earlier = json.loads(args.json.read_text())
        report.update({k: v for k, v in earlier.items() if k in STAGES and k not in stages})
        report["stage_seconds"] = {k: v for k, v in earlier.get("stage_seconds", {}).items()
                                   if k not in stages}
        report["command"] = f"{earlier.get('command')}; then {command}"

    def save() -> None:
        report["goals"] = goals(report)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        args.md.write_text(markdown(report))

    for stage in stages:
        print(f"== {stage}", flush=True)
        t0 = time.perf_counter()
        if stage in BENCH:
            extra = ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
            result = bench_train.main(BENCH[stage][1 if toy else 0] + extra)
            report[stage] = result.get("training") or result.get("generation")
        elif stage == "study-pathstar":
            step_ms = report.get("train-paper", {}).get("step_ms", {}).get("trainer")
            steps = args.pathstar_steps or 5000
            if step_ms and not toy and not args.pathstar_steps:  # as many as fit, in hundreds, >= 500
                steps = max(500, min(5000, int(args.pathstar_seconds * 1000 / step_ms) // 100 * 100))
            report[stage] = run_study(scaled_pathstar(steps, toy), studies / "pathstar")
        else:
            report[stage] = run_study(scaled_countdown(toy), studies / "countdown")
        report["stage_seconds"][stage] = round(time.perf_counter() - t0, 1)
        save()
    print(f"\nwrote {args.json} and {args.md}")
    print("\n".join(report["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
