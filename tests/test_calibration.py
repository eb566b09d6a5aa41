"""experiments/calibration/: the README's table is what calibrate.py computes from the committed
row records, and its "study gate" column is the study's own still-rising test."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments" / "calibration"


def _calibrate():
    spec = importlib.util.spec_from_file_location("calibrate", HERE / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_calibration_table_in_the_readme_is_computed_from_the_row_records():
    calibrate = _calibrate()
    printed = calibrate.table_lines(calibrate.records())
    committed = [line for line in (HERE / "README.md").read_text().splitlines() if line.startswith("|")]
    assert len(printed) > 2 and committed == printed


def test_the_study_gate_column_pools_a_rows_seeds_and_flags_a_rising_curve():
    calibrate = _calibrate()

    def curve(*acc):
        return [{"step": 100 * i, "val_accuracy": a, "val_n": 100, "tf_token_accuracy": 0.5}
                for i, a in enumerate(acc)]

    base = {"overrides": [], "wall_seconds": 1, "cpu_seconds": 1, "task": "graph"}
    seed = {"steps": 300, "accuracy": 0.5, "n": 500, "first_step_accuracy": 0.6, "flattened": True}
    rising = dict(base, row="r1",
                  per_seed=[dict(seed, seed=s, curve=curve(0.0, 0.4, 0.4, 0.6)) for s in (0, 1)])
    flat = dict(base, row="r2", per_seed=[dict(seed, seed=0, curve=curve(0.0, 0.5, 0.5, 0.5)),
                                          dict(seed, seed=1, curve=curve(0.0, 0.6, 0.6, 0.6))])
    lines = calibrate.table_lines([rising, flat])
    assert lines[2].endswith("| rising (0.40 → 0.60) |") and lines[3].endswith("| ″ |")
    assert lines[4].endswith("| flat (0.55 → 0.55) |")
    assert "| 300 | 1 | 1 |" in lines[2]


def test_a_resumed_rows_clocks_say_they_cover_only_the_last_invocation():
    calibrate = _calibrate()
    curve = [{"step": 100 * i, "val_accuracy": 0.5, "val_n": 100, "tf_token_accuracy": 0.5} for i in range(4)]
    seed = {"seed": 0, "steps": 300, "accuracy": 0.5, "n": 500, "first_step_accuracy": 0.6,
            "flattened": True, "curve": curve}
    row = {"row": "r", "overrides": [], "wall_seconds": 431, "cpu_seconds": 841, "task": "graph",
           "resumed": True, "per_seed": [seed, dict(seed, seed=1)]}
    lines = calibrate.table_lines([row, dict(row, row="s", resumed=False)])
    assert "| 431 (resumed: last part only) | 841 (last part only) |" in lines[2]
    assert lines[3].split(" | ")[3:5] == ["″", "″"]
    assert "| 431 | 841 |" in lines[4]


def test_the_queue_runs_the_retroplan_beside_its_interpreter_and_refuses_a_missing_queue_file(tmp_path):
    import os
    import subprocess
    import sys

    beside = Path(sys.executable).parent / "retroplan"
    env = {k: v for k, v in os.environ.items() if k != "RETROPLAN"}
    probe = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('c', sys.argv[1]); "
             "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m.RETROPLAN)")
    # without the venv on PATH (e.g. `.venv/bin/python calibrate.py queue ...`), the venv's script
    found = subprocess.run([sys.executable, "-c", probe, str(HERE / "calibrate.py")],
                           env=dict(env, PATH="/usr/bin:/bin"), capture_output=True, text=True,
                           check=True).stdout.strip()
    assert found == (str(beside) if beside.exists() else "retroplan")
    missing = tmp_path / "queue.txt"
    proc = subprocess.run([sys.executable, str(HERE / "calibrate.py"), "queue", str(missing)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"calibrate.py queue: {str(missing)!r} is not a file; give a queue file "
                                   "such as experiments/calibration/queue.txt")
