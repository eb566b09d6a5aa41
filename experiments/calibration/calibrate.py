"""Calibration driver (issue 21): run the forward baseline of one calibration file with `--set`
overrides, one run at a time, and record each run's verified result next to its exact command.

    python experiments/calibration/calibrate.py queue experiments/calibration/queue.txt
    python experiments/calibration/calibrate.py table      # README.md's table + curves.png

`queue` reads the queue file again after every run and runs the first row that has no record
yet; a line is `ROW TASK KEY=VALUE ...` (TASK: experiments/calibration/TASK.toml), `#` starts a
comment, a line `STOP` ends the queue (without it the queue waits for new lines). A row's run
folder is runs/calib/ROW; an interrupted row is finished by running the queue again (`retroplan
run` resumes from the last checkpoint; the recorded wall time is then that of the last try, and
the record says so). Each finished row is written to rows/ROW.json.

A row may train several seeds (`seeds=[0,1,2]`): they run side by side (`--workers 2`) and the
record holds each seed's result (`per_seed`); the table prints one line per seed, because a
condition is only usable when every seed learns it (answer_graph: g05's seeds gave 0.49, 0.02,
0.71).
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = ROOT / "runs" / "calib"
ROWS = HERE / "rows"
# The console script installed beside the interpreter that runs this file (the venv's, when run
# as .venv/bin/python without activating the venv); RETROPLAN overrides it.
_BESIDE = Path(sys.executable).parent / "retroplan"
RETROPLAN = os.environ.get("RETROPLAN", str(_BESIDE) if _BESIDE.exists() else "retroplan")

# The curve has flattened when its last two points gain less than this over the two before
# them (validation accuracy on the run's curve_examples rows): a fixed rule, not a judgement.
# It is looser than the study's own gate (retroplan.study.still_rising, one binomial SE over
# the seeds pooled): answer_countdown's c02 passed this and then withheld every verdict as
# "not converged" (the baseline 0.51 -> 0.55). The table therefore prints both.
FLAT_GAIN = 0.05
# Seeds of one row run side by side; one run alone keeps one core busy (threads = 1).
WORKERS = 2


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def flattened(curve: list[dict]) -> bool | None:
    acc = [p["val_accuracy"] for p in curve]
    if len(acc) < 4:
        return None
    return (acc[-1] + acc[-2]) / 2 - (acc[-3] + acc[-4]) / 2 < FLAT_GAIN


def command_of(row: str, task: str, overrides: list[str]) -> str:
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    return (f"retroplan run experiments/calibration/{task}.toml --out runs/calib/{row} "
            f"--workers {WORKERS} {sets}").strip()


def run_row(row: str, task: str, overrides: list[str]) -> dict:
    out = RUNS / row
    resumed = out.exists()
    argv = [RETROPLAN, "run", str(HERE / f"{task}.toml"), "--out", str(out), "--workers", str(WORKERS)]
    for o in overrides:
        argv += ["--set", o]
    t0 = time.time()
    used0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"[calibrate] {row}: {command_of(row, task, overrides)}", flush=True)
    proc = subprocess.run(argv, cwd=ROOT)
    wall = time.time() - t0
    used1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (used1.ru_utime - used0.ru_utime) + (used1.ru_stime - used0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"[calibrate] {row} failed with exit code {proc.returncode}")
    with open(out / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test" and r["variant"] == "optimal"]
    results = sorted(rows, key=lambda r: int(r["seed"]))
    per_seed = []
    for result in results:
        run_dir = out / "runs" / f"{result['condition']}-optimal-s{result['seed']}"
        curve = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines() if line]
        final = json.loads((run_dir / "final.json").read_text())
        per_seed.append({
            "seed": int(result["seed"]), "train_seconds": final["train_seconds"],
            "curve_seconds": final.get("curve_seconds"), "tokens_per_second": final["tokens_per_second"],
            "parameters": final["parameters"], "steps": final["steps"], "n": int(result["n"]),
            "accuracy": float(result["accuracy"]),
            "first_step_accuracy": float(result["first_step_accuracy"]),
            "tf_token_accuracy": float(result["tf_token_accuracy"]), "final_loss": final.get("final_loss"),
            "curve": [{"step": p["step"], "val_accuracy": p["val_accuracy"], "val_n": p["val_n"],
                       "tf_token_accuracy": round(p["tf_token_accuracy"], 4)} for p in curve],
            "flattened": flattened(curve),
        })
    record = {
        "row": row, "task": task, "overrides": overrides, "command": command_of(row, task, overrides),
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu_seconds, 1), "resumed": resumed,
        "cpu": cpu_name(), "load_average": os.getloadavg(), "workers": WORKERS,
        **{k: v for k, v in per_seed[0].items() if k != "seed"},
    }
    if len(per_seed) > 1:
        record["per_seed"] = per_seed
    ROWS.mkdir(exist_ok=True)
    tmp = ROWS / f".{row}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.rename(ROWS / f"{row}.json")
    for seed in per_seed:
        print(f"[calibrate] {row} seed {seed['seed']}: test accuracy {seed['accuracy']:.3f} (n={seed['n']}), "
              f"first step {seed['first_step_accuracy']:.3f}, flattened {seed['flattened']}", flush=True)
    print(f"[calibrate] {row}: {wall:.0f} s wall", flush=True)
    return record


def read_queue(path: Path) -> tuple[list[tuple[str, str, list[str]]], bool]:
    rows, stop = [], False
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line == "STOP":
            stop = True
            break
        words = shlex.split(line)
        rows.append((words[0], words[1], words[2:]))
    return rows, stop


def queue(path: Path) -> None:
    while True:
        rows, stop = read_queue(path)
        todo = [r for r in rows if not (ROWS / f"{r[0]}.json").exists()]
        if todo:
            run_row(*todo[0])
        elif stop:
            print("[calibrate] queue done", flush=True)
            return
        else:
            time.sleep(15)


def records() -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in ROWS.glob("*.json")), key=lambda r: r["row"])


def table_lines(records: list[dict]) -> list[str]:
    """README.md's table: one line per row and seed."""
    from retroplan.study import still_rising

    lines = ["| row | `--set` overrides | steps | wall s | CPU s | test acc (n) | first step | val acc every "
             "`curve_every` steps | flattened | study gate (seeds pooled) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        sets = " ".join(f"`{o}`" for o in r["overrides"]) or "(none)"
        # one line per seed; the row's wall and CPU time (all its seeds) on its first line
        seeds = r.get("per_seed") or [dict(r, seed=None)]
        # what the study's verdict rule would say of these curves: "rising" withholds a verdict
        gate = still_rising([seed["curve"] for seed in seeds])
        gate_cell = (f"{gate['state']} ({gate['earlier']:.2f} → {gate['last']:.2f})"
                     if gate["state"] in ("rising", "flat") else gate["state"])
        for i, seed in enumerate(seeds):
            curve = " ".join(f"{p['val_accuracy']:.2f}" for p in seed["curve"])
            flat = {True: "yes", False: "no"}.get(seed["flattened"], "n/a")
            name = r["row"] if seed["seed"] is None else f"{r['row']} seed {seed['seed']}"
            # a resumed row's clocks cover only the invocation that finished it
            wall_note, cpu_note = ((" (resumed: last part only)", " (last part only)") if r.get("resumed")
                                   else ("", ""))
            times = (f"{r['wall_seconds']:.0f}{wall_note} | {r.get('cpu_seconds', 0):.0f}{cpu_note}"
                     if i == 0 else "″ | ″")
            lines.append(f"| {name} | {sets if i == 0 else '″'} | {seed['steps']} | {times} | "
                         f"{seed['accuracy']:.3f} ({seed['n']}) | {seed['first_step_accuracy']:.3f} | "
                         f"{curve} | {flat} | {gate_cell if i == 0 else '″'} |")
    return lines


def table() -> None:
    records_ = records()
    print("\n".join(table_lines(records_)))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for task in sorted({r["task"] for r in records_}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in (r for r in records_ if r["task"] == task):
            for seed in r.get("per_seed") or [dict(r, seed=None)]:
                name = r["row"] if seed["seed"] is None else f"{r['row']} s{seed['seed']}"
                ax.plot([p["step"] for p in seed["curve"]], [p["val_accuracy"] for p in seed["curve"]],
                        marker=".", label=f"{name} ({seed['accuracy']:.2f})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy (verified)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{task}: forward baseline (optimal)")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(HERE / f"curves_{task}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "queue":
        if not Path(sys.argv[2]).is_file():
            raise SystemExit(f"calibrate.py queue: {sys.argv[2]!r} is not a file; give a queue file such "
                             "as experiments/calibration/queue.txt")
        queue(Path(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "table":
        table()
    else:
        raise SystemExit(__doc__)
