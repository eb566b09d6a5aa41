"""Numbers are never silently replaced or misjudged (issue 10): a hand `eval` never writes
where `retroplan run` reads unless asked, `run` reuses an evaluation only when everything
its numbers depend on matches, `eval` refuses a suite its run cannot be judged on, and an
experiment file is checked whole before any work (and fixed in place where a setting changes
no result).

One tiny study (pathstar degree 2, three variants, one seed, 2 training steps, 6 test
instances) is run once; every test works on its own copy."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from retroplan import checkpoint
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, evaluate
from retroplan.experiment import run_experiment
from retroplan.traces.suite import SuiteSpec, generate_suite

CONFIG = {"degree": 2, "path_len": 3, "num_nodes": 10}
TOML = """name = "tiny"
task = "pathstar"
variants = ["optimal", "reverse", "optimal+reverse"]
seeds = [0]

[sizes]
train = 50
val = 4
test = 6

[[conditions]]
label = "d2"
degree = 2
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 2
batch_size = 8
checkpoint_every = 2
log_every = 1
threads = 1
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "exp.toml").write_text(TOML)
    run_experiment(root / "exp.toml", root / "out", progress=False)
    return root


@pytest.fixture
def q(study, tmp_path):
    """A copy of the study (`cp -r`), as a researcher would poke at it."""
    shutil.copytree(study / "out", tmp_path / "q")
    shutil.copyfile(study / "exp.toml", tmp_path / "exp.toml")
    return tmp_path / "q"


def retroplan(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retroplan: error: "), err
    return lines[0]


def results(out: Path) -> dict[str, dict]:
    return {r["variant"]: r for r in csv.DictReader((out / "results.csv").open())}


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


# ------------------------------------------------------------------ 1. eval folders


def test_a_hand_eval_with_other_settings_writes_to_a_folder_named_by_what_differs(q, capsys):
    run = q / "runs" / "d2-optimal-s0"
    standard = (run / "eval-test" / "metrics.json").read_bytes()
    code, out, _ = retroplan(["eval", run, "--limit", 3], capsys)
    assert code == 0 and f"wrote {run / 'eval-test-limit3'}" in out
    assert metrics(run / "eval-test-limit3")["n"] == 3
    code, out, _ = retroplan(["eval", run, "--temperature", 1, "--samples", 2, "--seed", 5,
                              "--batch-size", 4], capsys)  # the batch size changes no number: not named
    assert code == 0 and metrics(run / "eval-test-temperature1-samples2-seed5")["n"] == 12
    # one n throughout: the completions counted as instances x samples, pass@k per instance
    assert "(n=12 completions: 6 instances x 2 samples)" in out and "pass@2: " in out
    assert all(line.endswith("(n=6 instances)") for line in out.splitlines() if "pass@" in line)
    other = q / "suites" / "d2-optimal+reverse-s0"  # a mixture holds optimal's test rows
    assert retroplan(["eval", run, "--suite", other], capsys)[0] == 0
    assert metrics(run / "eval-test-suite-d2-optimal+reverse-s0")["n"] == 6
    assert (run / "eval-test" / "metrics.json").read_bytes() == standard  # run's numbers untouched
    # the standard evaluation (a byte-identical copy of the run's suite is its suite) goes where
    # run reads, with the same numbers run got
    assert retroplan(["eval", run, "--suite", q / "suites" / "d2-optimal-s0"], capsys)[0] == 0
    again = metrics(run / "eval-test")
    assert again["identity"] == json.loads(standard)["identity"]
    assert again["accuracy"] == json.loads(standard)["accuracy"]


def test_run_reuses_an_evaluation_only_when_everything_its_numbers_depend_on_matches(q, capsys):
    """The issue's repro: hand evaluations written into the folders run reads (now only by the
    Python API: `eval --out` refuses to replace another evaluation, tests/test_refusals.py) no
    longer replace the study's numbers."""
    before = results(q)
    opt, rev = q / "runs" / "d2-optimal-s0", q / "runs" / "d2-reverse-s0"
    evaluate(opt, cfg=EvalConfig(limit=1), out=opt / "eval-test", progress=False)
    evaluate(rev, cfg=EvalConfig(temperature=2.0), out=rev / "eval-test", progress=False)
    assert metrics(opt / "eval-test")["n"] == 1
    untouched = q / "runs" / "d2-optimal+reverse-s0" / "eval-test" / "metrics.json"
    stamp = untouched.stat().st_mtime_ns
    run_experiment(q.parent / "exp.toml", q, progress=False)
    after = results(q)
    assert metrics(opt / "eval-test")["n"] == 6 and metrics(rev / "eval-test")["decoding"]["temperature"] == 0
    for variant in before:  # evaluated again, to exactly the numbers of the first run
        for key in ("n", "accuracy", "first_step_accuracy", "tf_token_accuracy", "correct"):
            assert after[variant][key] == before[variant][key], (variant, key)
    assert untouched.stat().st_mtime_ns == stamp  # a matching evaluation is reused


@pytest.mark.parametrize("field", ["retroplan_version", "suite_meta_sha256", "model_sha256", "step"])
def test_run_evaluates_again_when_a_recorded_identity_field_differs(q, field):
    """An evaluation made by another retroplan version, on another suite, of other weights or
    another step is not reused (records.jsonl untouched, so only the identity differs)."""
    path = q / "runs" / "d2-reverse-s0" / "eval-test" / "metrics.json"
    m = json.loads(path.read_text())
    m["identity"][field] = 0 if field == "step" else "0.0.0-other"
    path.write_text(json.dumps(m))
    run_experiment(q.parent / "exp.toml", q, progress=False)
    assert json.loads(path.read_text())["identity"][field] != m["identity"][field]


# ------------------------------------------------------------------ 2. eval --suite


def test_eval_on_a_suite_of_another_variant_is_refused(q, capsys):
    """A reverse model judged by the optimal grammar scored 0.000, labelled optimal."""
    run = q / "runs" / "d2-reverse-s0"
    code, _, err = retroplan(["eval", run, "--suite", q / "suites" / "d2-optimal-s0", "--limit", 5],
                             capsys)
    assert code == 2
    line = one_sentence(err)
    assert "holds pathstar rows of variant optimal" in line and "writes variant reverse" in line
    assert not any(p.name.startswith("eval-test-") for p in run.iterdir())


def test_a_mixture_run_is_judged_on_its_first_components_suite_and_not_on_another(q, capsys):
    mix = q / "runs" / "d2-optimal+reverse-s0"
    assert retroplan(["eval", mix, "--suite", q / "suites" / "d2-optimal-s0"], capsys)[0] == 0
    code, _, err = retroplan(["eval", mix, "--suite", q / "suites" / "d2-reverse-s0"], capsys)
    assert code == 2 and "writes variant optimal" in one_sentence(err)


def test_eval_on_prompts_longer_than_the_models_context_is_refused(q, tmp_path, capsys):
    """Same vocabulary and variant, longer prompts: it used to generate 0 tokens and report
    teacher-forced sequence accuracy 1.000."""
    long = generate_suite(SuiteSpec("pathstar", "optimal", dict(CONFIG, degree=3, path_len=4), {}, 0,
                                    {"test": 3}), tmp_path / "long", progress=False)
    run = q / "runs" / "d2-optimal-s0"
    context = json.loads((run / "run.json").read_text())["model"]["block_size"]
    code, _, err = retroplan(["eval", run, "--suite", long], capsys)
    assert code == 2
    line = one_sentence(err)
    assert f"has a context of {context} tokens" in line and f"shorter than {context} tokens" in line


# ------------------------------------------------------------------ 3. the run's own suite


def test_eval_refuses_the_runs_suite_when_it_was_replaced(q, tmp_path, capsys):
    run = q / "runs" / "d2-optimal-s0"
    suite = checkpoint.run_suite(run, json.loads((run / "run.json").read_text()))
    own = tmp_path / "own-suite"
    shutil.copytree(suite, own)  # the suite the run names, replaced by a suite of another seed
    shutil.rmtree(suite)
    generate_suite(SuiteSpec("pathstar", "optimal", CONFIG, {}, 1, {"train": 50, "val": 4, "test": 6}),
                   suite, progress=False)
    try:
        code, _, err = retroplan(["eval", run, "--out", tmp_path / "ev"], capsys)
        assert code == 2 and "digest differs from the suite_meta_sha256 in run.json" in one_sentence(err)
        assert not (tmp_path / "ev").exists()
    finally:  # the module's study stays as it was
        shutil.rmtree(suite)
        shutil.copytree(own, suite)


# ------------------------------------------------------------------ 5. experiment files


@pytest.mark.parametrize("old, new, fragment", [
    ('name = "tiny"', 'name = "tiny"\ndescription = 7', "description must be a string, got 7"),
    ('task = "pathstar"', 'task = ["pathstar"]', "task must be a string, got ['pathstar']"),
    ('seeds = [0]', 'seeds = [0]\n[study]\nbudget = ["steps"]', "study budget must be a string"),
    ('seeds = [0]', 'seeds = [0]\n[study]\nmargin = 1.5', "study margin must be a number between 0 and 1"),
    ('variants = ["optimal", "reverse", "optimal+reverse"]', 'variants = ["optimal", "optimal"]',
     "variants name 'optimal' twice"),
    ('threads = 1', 'threads = 1\ndevice = "cuda"', "device cuda was asked for"),
    ('threads = 1', 'threads = 1\n[eval]\ndevice = "cuda"', "device cuda was asked for"),
], ids=["description-a-number", "task-a-list", "budget-a-list", "margin-too-big", "variant-twice",
        "train-on-cuda", "eval-on-cuda"])
def test_an_experiment_file_mistake_is_one_sentence_before_any_work(tmp_path, capsys, old, new, fragment):
    if "cuda" in new and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    toml = tmp_path / "exp.toml"
    toml.write_text(TOML.replace(old, new, 1))
    code, _, err = retroplan(["run", toml, "--out", tmp_path / "out"], capsys)
    assert code == 2 and fragment in one_sentence(err)
    assert not (tmp_path / "out").exists()  # nothing generated, trained or written


def test_a_setting_that_changes_no_result_is_fixed_in_place(q):
    toml = q.parent / "exp.toml"
    toml.write_text(TOML.replace('name = "tiny"', 'name = "tiny, renamed"\ndescription = "fixed"')
                    .replace("threads = 1", 'threads = 1\ndevice = "cpu"\ncompile = false')
                    + '\n[eval]\nbatch_size = 3\ndevice = "cpu"\n[study]\nmargin = 0.1\n')
    before = results(q)
    stamp = (q / "runs" / "d2-optimal-s0" / "eval-test" / "metrics.json").stat().st_mtime_ns
    report = run_experiment(toml, q, progress=False)
    assert (q / "experiment.toml").read_text() == toml.read_text()  # the corrected file is kept
    assert "# tiny, renamed" in report.read_text() and "fixed" in report.read_text()
    assert "equivalence within ±0.1" in report.read_text()  # the margin only changes the report
    assert (q / "runs" / "d2-optimal-s0" / "eval-test" / "metrics.json").stat().st_mtime_ns == stamp
    assert {v: r["accuracy"] for v, r in results(q).items()} == {v: r["accuracy"] for v, r in before.items()}
    # a setting that changes results still makes it another experiment
    toml.write_text(TOML.replace("steps = 2", "steps = 3"))
    with pytest.raises(UserError, match="holds results of a different experiment file"):
        run_experiment(toml, q, progress=False)


@pytest.mark.parametrize("setting", ["temperature", "tip_alpha"])
def test_an_infinite_temperature_or_penalty_is_refused(setting):
    from retroplan.eval import EvalConfig

    with pytest.raises(UserError, match=f"eval {setting} must be a finite non-negative number, got inf"):
        EvalConfig(**{setting: float("inf")}).validate()
