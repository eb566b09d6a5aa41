"""Reliability, round three (issue 25): sampled evaluation that does not depend on the batch
size, a run without validation rows, split values range-checked even under recomputed
checksums, absurd values and corrupt bookkeeping as one sentence, reused numbers
cross-checked, `--out` folders that must not be written into, locks, signals.

Every test uses a pathstar suite of a few dozen instances and a `tiny` model trained for a
few steps, so each takes seconds."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from retroplan.cli import main
from retroplan.eval import EvalConfig, evaluate
from retroplan.traces.suite import SuiteSpec, generate_suite
from retroplan.train import TrainConfig, train

PATHSTAR = {"degree": 2, "path_len": 3, "num_nodes": 10}
SIZES = {"train": 50, "val": 8, "test": 12}
TINY = dict(preset="tiny", batch_size=8, checkpoint_every=1, log_every=1, threads=1)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("round3")
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, SIZES), root / "suite", progress=False)
    train(root / "suite", root / "run", TrainConfig(steps=2, **TINY), progress=False)
    return root


@pytest.fixture
def tmp(shared, tmp_path):
    shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
    return tmp_path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(argv, capsys, fragment: str) -> str:
    """`retroplan ARGV` exits with 2 and prints one line `retroplan: error: ...` naming `fragment`."""
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retroplan: error: ") and lines[0].endswith("."), err
    assert fragment in err, err
    return lines[0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def records(eval_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (eval_dir / "records.jsonl").read_text().splitlines()]


# ------------------------------------------------------------ 1. sampling ignores the batch size


def test_sampled_evaluation_does_not_depend_on_the_batch_size(tmp):
    texts, logprobs = {}, {}
    for batch_size in (1, 7, 256):
        cfg = EvalConfig(temperature=1.0, samples=2, seed=5, batch_size=batch_size, device="cpu")
        evaluate(tmp / "run", cfg=cfg, out=tmp / f"e{batch_size}", progress=False)
        texts[batch_size] = [(r["row"], r["sample"], r["generated"])
                             for r in records(tmp / f"e{batch_size}")]
        logprobs[batch_size] = [r["logprob"] for r in records(tmp / f"e{batch_size}")]
    assert texts[1] == texts[7] == texts[256]
    # CPU matrix kernels round the last bit differently for another batch shape
    assert logprobs[1] == pytest.approx(logprobs[7], rel=1e-5)
    assert logprobs[1] == pytest.approx(logprobs[256], rel=1e-5)
    # the two samples of a row are drawn from different streams, and the seed matters
    assert len({t[2] for t in texts[1]}) > 1
    cfg = EvalConfig(temperature=1.0, samples=2, seed=6, batch_size=7, device="cpu")
    evaluate(tmp / "run", cfg=cfg, out=tmp / "e-seed6", progress=False)
    assert [r["generated"] for r in records(tmp / "e-seed6")] != [t[2] for t in texts[7]]


def test_a_limit_keeps_the_samples_of_the_rows_it_keeps(tmp):
    base = dict(temperature=1.0, samples=2, seed=5, device="cpu")
    evaluate(tmp / "run", cfg=EvalConfig(**base), out=tmp / "all", progress=False)
    evaluate(tmp / "run", cfg=EvalConfig(limit=3, batch_size=2, **base), out=tmp / "three", progress=False)
    rows = {r["row"] for r in records(tmp / "three")}
    kept = [r["generated"] for r in records(tmp / "all") if r["row"] in rows]
    assert [r["generated"] for r in records(tmp / "three")] == kept


# ------------------------------------------------------------ 2. validation without val rows


@pytest.fixture(scope="module")
def no_val_suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("noval") / "suite"
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, {"train": 20, "val": 0, "test": 5}),
                   path, progress=False)
    return path


def test_eval_every_on_a_suite_without_val_rows_is_refused_before_the_run_folder(no_val_suite, tmp_path,
                                                                                   capsys):
    one_sentence(["train", no_val_suite, "--out", tmp_path / "r", "--preset", "tiny", "--batch-size", "4",
                  "--steps", "4", "--eval-every", "2", "--threads", "1"], capsys,
                 "train eval_every needs rows in a val split")
    assert not (tmp_path / "r").exists()
    # without eval_every the same suite trains (its final val loss is null: there is nothing to measure)
    code, _, err = run_cli(["train", no_val_suite, "--out", tmp_path / "r", "--preset", "tiny",
                            "--batch-size", "4", "--steps", "2", "--threads", "1"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "final.json").read_text())["val_loss"] is None


STUDY = """name = "tiny"
task = "pathstar"
variants = ["optimal"]
seeds = [0]

[sizes]
train = 20
val = {val}
test = {test}

[[conditions]]
label = "d2"
degree = 2
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 2
batch_size = 4
threads = 1
{extra}
"""


@pytest.mark.parametrize("val,test,extra,fragment", [
    (0, 5, "eval_every = 1", "train eval_every needs rows in a val split, and [sizes] val is 0"),
    (0, 5, "curve_every = 1", "train curve_every needs rows in a val split, and [sizes] val is 0"),
    (4, 0, "", "[eval] evaluates split test, and [sizes] test is 0"),
], ids=["eval_every", "curve_every", "test-0"])
def test_an_empty_split_a_study_needs_is_refused_before_any_work(tmp_path, capsys, val, test, extra,
                                                                 fragment):
    (tmp_path / "exp.toml").write_text(STUDY.format(val=val, test=test, extra=extra))
    one_sentence(["run", tmp_path / "exp.toml", "--out", tmp_path / "out"], capsys, fragment)
    assert not (tmp_path / "out").exists()
