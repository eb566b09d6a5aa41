"""The command line end to end. Its answers to mistakes (one sentence, exit code 2, no
traceback, nothing of the user's deleted) are the table in tests/test_bad_input.py."""

import json

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
    # 2 rows of each of the 3 splits, plus one example of the only kind of training row, and
    # what the variant writes after which paper
    assert code == 0 and "variant reverse" in out and out.count("completion") == 7
    assert "[example: train row 0, kind 0]" in out
    assert "reverse: writes the backward plan (goal to start); after the reversed target of Bachmann" in out

    code, out, _ = run_cli(capsys, "export", suite, "--out", tmp_path / "rows", "--split", "test")
    assert code == 0 and "wrote 30 rows" in out
    assert (tmp_path / "rows" / "data" / "test-00000-of-00001.jsonl").is_file()

    code, out, err = run_cli(capsys, "train", suite, "--out", tmp_path / "run", "--preset", "tiny",
                             "--steps", 10, "--batch-size", 8, "--checkpoint-every", 5)
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", tmp_path / "run", "--limit", 10)
    assert code == 0, err
    assert "(n=10)" in out and "accuracy" in out
    assert (tmp_path / "run" / "eval-test-limit10" / "metrics.json").exists()  # not where run reads

    code, out, _ = run_cli(capsys, "list")
    assert "retroplan/PathStar-v0" in out and "backward-stream" in out
