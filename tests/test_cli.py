"""The command line end to end, and its answers to mistakes: one sentence, exit code 2, no
traceback, nothing of the user's deleted."""

import json
import subprocess
import sys

import pytest

from retroplan.cli import main


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_inspect_export_train_eval(tmp_path, capsys):
    suite = tmp_path / "suite"
    code, out, err = run_cli(capsys, "generate", "pathstar", "--variant", "reverse", "--degree", 3,
                             "--path-len", 4, "--num-nodes", 20, "--train", 200, "--val", 20,
                             "--test", 30, "--seed", 5, "--out", suite)
    assert code == 0, err
    assert "train 200 rows" in out
    meta = json.loads((suite / "meta.json").read_text())
    assert meta["config"] == {"degree": 3, "path_len": 4, "num_nodes": 20} and meta["seed"] == 5

    code, out, _ = run_cli(capsys, "inspect", suite, "--rows", 2)
    assert code == 0 and "variant reverse" in out and out.count("completion") == 6

    code, out, _ = run_cli(capsys, "export", suite, "--out", tmp_path / "rows.jsonl", "--split", "test")
    assert code == 0 and "wrote 30 rows" in out

    code, out, err = run_cli(capsys, "train", suite, "--out", tmp_path / "run", "--preset", "tiny",
                             "--steps", 10, "--batch-size", 8, "--checkpoint-every", 5)
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", tmp_path / "run", "--limit", 10)
    assert code == 0, err
    assert "(n=10)" in out and "accuracy" in out
    assert (tmp_path / "run" / "eval-test" / "metrics.json").exists()

    code, out, _ = run_cli(capsys, "list")
    assert "retroplan/PathStar-v0" in out and "backward-stream" in out


@pytest.mark.parametrize("args,fragment", [
    (["generate", "pathstar", "--variant", "sideways", "--out", "{tmp}/x"], "unknown variant 'sideways'"),
    (["generate", "pathstar", "--variant", "optimal", "--degree", "9", "--path-len", "9", "--out", "{tmp}/x"],
     "raise num_nodes to at least 73"),
    (["generate", "pathstar", "--variant", "optimal", "--train", "-5", "--out", "{tmp}/x"],
     "train size must be a non-negative integer"),
    (["generate", "pathstar", "--variant", "optimal", "--degree", "two", "--out", "{tmp}/x"],
     "invalid int value: 'two'"),
    (["generate", "maze", "--variant", "optimal", "--out", "{tmp}/x"], "invalid choice: 'maze'"),
    (["generate", "pathstar", "--variant", "optimal", "--shard", "3/2", "--out", "{tmp}/x"], "0 <= i < N"),
    (["generate", "graph", "--variant", "stream", "--child-order", "psychic", "--out", "{tmp}/x"],
     "child_order must be one of"),
    (["inspect", "{tmp}/nowhere"], "does not exist"),
    (["train", "{tmp}/nowhere", "--out", "{tmp}/run"], "does not exist"),
    (["train", "{suite}", "--out", "{tmp}/run", "--preset", "huge"], "unknown model preset 'huge'"),
    (["train", "{suite}", "--out", "{tmp}/run", "--steps", "0"], "steps must be a positive integer"),
    (["eval", "{tmp}/nowhere"], "run folder"),
    (["run", "{tmp}/missing.toml", "--out", "{tmp}/exp"], "does not exist"),
    (["export", "{suite}", "--format", "csv", "--out", "{tmp}/x.csv"], "invalid choice: 'csv'"),
    (["export", "{suite}", "--split", "holdout", "--out", "{tmp}/x.jsonl"], "has no split 'holdout'"),
])
def test_mistakes_get_one_sentence_and_exit_2(tmp_path, make_suite, args, fragment):
    suite = make_suite("pathstar", "optimal", {"degree": 2, "path_len": 3, "num_nodes": 10})
    args = [a.format(tmp=tmp_path, suite=suite) for a in args]
    proc = subprocess.run([sys.executable, "-m", "retroplan.cli", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()


def test_generate_never_overwrites_what_is_there(tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "generate", "graph", "--variant", "optimal", "--out", target)
    assert code == 2 and "already exists" in err
    assert (target / "notes.txt").read_text() == "keep me"
