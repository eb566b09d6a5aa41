"""`retroplan run` end to end on a tiny study, its resumability, and the pictures of
behaviour (`show-trace`, `sweep-tip`)."""

import csv
import json
from pathlib import Path

import pytest

from retroplan.analysis import show_trace, sweep_tip
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import EvalConfig
from retroplan.experiment import run_experiment

TOML = """
name = "tiny"
task = "pathstar"
variants = ["optimal", "stream", "backward-stream"]
seeds = [0, 1]

[sizes]
train = 200
val = 20
test = 30

[[conditions]]
label = "d2"
degree = 2
path_len = 3
num_nodes = 10

[[conditions]]
label = "d3"
degree = 3
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 12
batch_size = 16
checkpoint_every = 6
log_every = 3
threads = 1

[eval]
batch_size = 64
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    toml = root / "tiny.toml"
    toml.write_text(TOML)
    report = run_experiment(toml, root / "out", progress=False)
    return toml, root / "out", report


def test_run_writes_results_figures_and_a_readable_report(study):
    toml, out, report = study
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 * 3 * 2
    assert {r["variant"] for r in rows} == {"optimal", "stream", "backward-stream"}
    assert all(r["n"] == "30" for r in rows)
    streams = [r for r in rows if r["variant"] != "optimal"]
    assert all(r["teacher_trace_validity"] == "1.0" for r in streams)  # the teacher never errs
    assert all(r["trace_validity"] == "" for r in rows if r["variant"] == "optimal")
    for name in ("accuracy", "first_step", "loss", "difficulty", "behaviour", "trajectories"):
        assert (out / f"{name}.png").stat().st_size > 5000
        assert (out / f"{name}.svg").exists()
    text = report.read_text()
    assert f"retroplan run {toml} --out {out}" in text
    assert "## Search behaviour" in text and "| d3 | stream | teacher |" in text
    assert "mean over seeds [95% t-interval, clipped to [0, 1]]" in text
    assert "![behaviour](behaviour.png)" in text and 'name = "tiny"' in text


def test_a_rerun_skips_everything_already_done(study):
    toml, out, _ = study
    final = out / "runs" / "d2-stream-s0" / "final.json"
    metrics = out / "runs" / "d2-stream-s0" / "eval-test" / "metrics.json"
    stamps = (final.stat().st_mtime_ns, metrics.stat().st_mtime_ns)
    before = json.loads((out / "timing.json").read_text())["invocations"]
    run_experiment(toml, out, progress=False)
    assert (final.stat().st_mtime_ns, metrics.stat().st_mtime_ns) == stamps
    # the reuse adds its wall time to the report's; it does not replace the study's with its own
    timing = json.loads((out / "timing.json").read_text())["invocations"]
    assert timing[:-1] == before and timing[-1]["reused"] == 12
    total = sum(t["seconds"] for t in timing)
    report = (out / "report.md").read_text()
    assert (f"wall time {total:.0f} s over {len(timing)} invocations of `retroplan run` (the last, "
            f"{timing[-1]['seconds']:.0f} s: 12 of 12 runs were already done") in report


def test_a_different_experiment_file_cannot_reuse_the_folder(study, tmp_path):
    _, out, _ = study
    other = tmp_path / "other.toml"
    other.write_text(TOML.replace("steps = 12", "steps = 13"))
    with pytest.raises(UserError, match="different experiment"):
        run_experiment(other, out, progress=False)


def test_show_trace_draws_teacher_and_model_side_by_side(study, tmp_path, capsys):
    import shutil

    _, out, _ = study
    run = out / "runs" / "d3-stream-s0"
    # the 12-step model writes no parseable stream: its panel shows the text it wrote
    written = show_trace(run / "eval-test", 0, out=tmp_path / "text.png")
    assert [p.suffix for p in written] == [".png", ".svg"] and written[0].stat().st_size > 10000
    # an eval whose model streams parse: copy it (beside the original, where its relative path to
    # the suite holds) and let the "model" write a detour stream
    ev = run / "eval-test-detour"
    shutil.copytree(run / "eval-test", ev)
    records = [json.loads(line) for line in (ev / "records.jsonl").read_text().splitlines()]
    ref = records[0]["reference"].split()
    centre = ref[1]
    records[0]["generated"] = f"at {centre} dead back {centre} " + " ".join(ref[2:])
    (ev / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = show_trace(ev, 0, out=tmp_path / "tree.png")
    shutil.rmtree(ev)
    assert written[0].stat().st_size > 10000
    assert main(["show-trace", str(out / "suites" / "d3-backward-stream-s0"), "--index", "2",
                 "--out", str(tmp_path / "suite-tree.png")]) == 0
    assert (tmp_path / "suite-tree.png").exists()
    assert main(["show-trace", str(out / "suites" / "d3-optimal-s0"), "--index", "0"]) == 2
    assert "no search stream" in capsys.readouterr().err


def test_sweep_tip_tabulates_every_setting(study, tmp_path):
    _, out, _ = study
    table = sweep_tip(out / "runs" / "d3-stream-s0", [0, 2, 1e6], [1, 4], oracle=True,
                      base=EvalConfig(limit=10), out=tmp_path / "sweep", progress=False)
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
    assert [r["setting"] for r in rows] == ["greedy", "a2-b1", "a2-b4", "a1e+06-b1", "a1e+06-b4",
                                            "a2-b1-oracle", "a2-b4-oracle", "a1e+06-b1-oracle",
                                            "a1e+06-b4-oracle"]
    assert "| greedy |" in table.read_text()
    m = json.loads((tmp_path / "sweep" / "a2-b4" / "metrics.json").read_text())
    assert m["decoding"]["tip_alpha"] == 2.0 and m["decoding"]["tip_beta"] == 4


def test_sweep_tip_says_where_it_wrote(study, tmp_path, capsys):
    _, out, _ = study
    sweep = tmp_path / "sweep"
    assert main(["sweep-tip", str(out / "runs" / "d2-stream-s0"), "--alphas", "1", "--betas", "2",
                 "--limit", "3", "--out", str(sweep)]) == 0
    assert f"wrote {sweep / 'table.md'} and {sweep / 'results.csv'}" in capsys.readouterr().out


def test_tip_on_a_variant_without_streams_is_refused(study):
    _, out, _ = study
    with pytest.raises(UserError, match="needs a stream variant"):
        sweep_tip(out / "runs" / "d2-optimal-s0", [1], [2], base=EvalConfig(limit=5), progress=False)


def test_sampling_reports_pass_at_k_and_best_of_n(study, tmp_path):
    from retroplan.eval import evaluate

    _, out, _ = study
    sampling = EvalConfig(limit=8, temperature=1.0, samples=4, seed=3)
    m = evaluate(out / "runs" / "d2-optimal-s0", cfg=sampling, out=tmp_path / "sampled", progress=False)
    assert m["n"] == 32 and set(m["sampling"]) == {"pass@1", "pass@2", "pass@4", "best_of_4"}
    assert m["sampling"]["pass@1"]["value"] <= m["sampling"]["pass@4"]["value"]
    again = evaluate(out / "runs" / "d2-optimal-s0", cfg=sampling, out=tmp_path / "sampled2", progress=False)
    assert again["sampling"] == m["sampling"]  # seeded sampling is reproducible


MATCHED = """
name = "matched"
task = "pathstar"
variants = ["optimal", "optimal+reverse", "reverse"]
seeds = [0, 1, 2]

[study]
baseline = "optimal"
budget = "forward_examples"

[sizes]
train = 200
val = 20
test = 30

[[conditions]]
label = "d2"
degree = 2
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 10
batch_size = 16
checkpoint_every = 10
log_every = 5
threads = 1
curve_every = 5
curve_examples = 10

[train.by_variant.reverse]
lr = 3e-3

[eval]
batch_size = 64
"""


def test_a_matched_budget_study_with_a_mixture_gives_verdicts_curves_and_counts(tmp_path):
    toml = tmp_path / "matched.toml"
    toml.write_text(MATCHED)
    report = run_experiment(toml, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    rows = {(r["variant"], r["seed"]): r for r in csv.DictReader((out / "results.csv").open())}
    for seed in ("0", "1", "2"):
        base, mix = rows[("optimal", seed)], rows[("optimal+reverse", seed)]
        # the mixture trains until it has seen the baseline's forward examples (half its rows
        # are reverse rows): at least as many, at most one batch more, in more steps (batches are
        # length-bucketed, so how many more depends on the draw: twice as many over an epoch)
        assert int(base["steps"]) == 10 and int(base["forward_examples"]) == 160
        assert 160 <= int(mix["forward_examples"]) < 160 + 16
        assert int(mix["steps"]) > 10
        assert int(mix["forward_examples"]) < int(mix["examples_seen"])
        assert int(rows[("reverse", seed)]["steps"]) == 10
    run = json.loads((out / "runs" / "d2-reverse-s0" / "run.json").read_text())
    assert run["train"]["lr"] == 3e-3                                  # the per-variant override
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert {v["variant"] for v in verdicts} == {"optimal+reverse", "reverse"}
    assert all(v["n"] == 90 and v["seeds"] == 3 and v["family"] == 2 and v["verdict"] in
               ("helps", "hurts", "equivalent within ±0.05", "inconclusive") or
               v["verdict"].startswith("not converged") for v in verdicts)
    text = report.read_text()
    assert text.index("## Verdicts") < text.index("## Results")
    assert "forward plan; trained with reverse rows too" in text and "**forward_examples**" in text
    for name in ("accuracy_curves", "clever_hans"):
        assert (out / f"{name}.png").stat().st_size > 5000
    # the mixture is evaluated on exactly the baseline's prompts
    for split in ("test",):
        a = (out / "suites" / "d2-optimal-s1" / f"{split}.tokens.npy").read_bytes()
        assert a == (out / "suites" / "d2-optimal+reverse-s1" / f"{split}.tokens.npy").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["answer", "answer_fwdex", "answer_control", "answer_graph"])
def test_the_answer_studies_run_end_to_end_at_smoke_size(tmp_path, name):
    """retroplan/experiments/answer*.toml with every variant, mixture and condition, shrunk to
    seconds and 3 seeds: the whole file passes `retroplan run`'s validation and runs to its verdicts."""
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parent.parent / "retroplan" / "experiments" / f"{name}.toml").read_text()
    exp = tomllib.loads(text)
    shrink = {"train": 150, "val": 12, "test": 16, "n_embd": 32, "steps": 6, "warmup_steps": 2,
              "checkpoint_every": 6, "curve_every": 3, "curve_examples": 8}
    for key, value in shrink.items():
        text, found = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
        assert found == 1, key
    text, found = re.subn(r"(?m)^seeds = \[.*\]$", "seeds = [0, 1, 2]", text)
    assert found == 1
    toml = tmp_path / f"{name}.toml"
    toml.write_text(text)
    report = run_experiment(toml, tmp_path / "out", progress=False, workers=2).read_text()
    verdicts = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    compared = [v for v in exp["variants"] if v != exp.get("study", {}).get("baseline", "optimal")]
    assert len(verdicts) == len(compared) * len(exp["conditions"])
    assert all(v["seeds"] == 3 and v["n"] == 48 for v in verdicts)
    assert all(v in report for v in compared)
    if name in ("answer", "answer_fwdex"):  # the mixtures and the data control, at both budgets
        assert {"optimal+reverse", "optimal+backward-stream", "optimal+stream",
                "optimal+optimal"} <= set(compared)
        assert exp["study"]["budget"] == {"answer": "steps", "answer_fwdex": "forward_examples"}[name]


def test_every_json_file_a_study_writes_is_strict_json(study):
    """No NaN or Infinity anywhere (strict parsers reject them): every .json and .jsonl file of a
    study with stream variants (the demo's kinds of files: suites, runs, evaluations, records,
    curves, results), read by a parser that refuses non-finite constants."""
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a JSON file"))

    files = [p for p in study[1].rglob("*") if p.suffix in (".json", ".jsonl")]
    assert len(files) > 20 and any(p.name == "records.jsonl" for p in files)
    for path in files:
        text = path.read_text()
        for line in (text.splitlines() if path.suffix == ".jsonl" else [text]):
            strict(line)


def test_set_overrides_dotted_keys_with_toml_values():
    from retroplan.experiment_file import apply_overrides

    raw = {"seeds": [0], "train": {"steps": 12}, "conditions": [{"degree": 2}, {"degree": 3}]}
    got = apply_overrides(raw, ["train.steps=3000", "seeds=[0, 1, 2]", "conditions.1.degree=4",
                                "study.budget=examples", "train.lr=1e-3", 'eval.split="val"'])
    assert got == {"seeds": [0, 1, 2], "train": {"steps": 3000, "lr": 1e-3},
                   "conditions": [{"degree": 2}, {"degree": 4}],
                   "study": {"budget": "examples"}, "eval": {"split": "val"}}
    assert raw["train"] == {"steps": 12}  # the parsed file itself is left alone
    for bad, message in [("train.steps", "must be KEY=VALUE"), ("conditions.5.degree=3", "not an index"),
                         ("seeds.x=1", "not an index"), ("train.steps.x=1", "is not a table"),
                         ("name=two words", "neither a TOML value")]:
        with pytest.raises(UserError, match=message):
            apply_overrides(raw, [bad])


def test_set_overrides_are_part_of_the_study_identity(tmp_path, capsys):
    toml = tmp_path / "one.toml"
    toml.write_text(TOML.replace('["optimal", "stream", "backward-stream"]', '["optimal"]')
                    .replace("seeds = [0, 1]", "seeds = [0]"))
    out = tmp_path / "out"
    assert main(["run", str(toml), "--out", str(out), "--set", "train.steps=6",
                 "--set", "conditions=[{label='d2', degree=2, path_len=3, num_nodes=10}]"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["condition"], r["steps"]) for r in rows] == [("d2", "6")]
    assert "--set train.steps=6" in (out / "report.md").read_text()
    final = out / "runs" / "d2-optimal-s0" / "final.json"
    stamp = final.stat().st_mtime_ns
    # the same overrides reuse the folder; other ones (or none) are another experiment
    run_experiment(toml, out, progress=False, overrides=[
        "train.steps=6", "conditions=[{label='d2', degree=2, path_len=3, num_nodes=10}]"])
    assert final.stat().st_mtime_ns == stamp
    for overrides in ([], ["train.steps=7"]):
        with pytest.raises(UserError, match="different experiment"):
            run_experiment(toml, out, progress=False, overrides=overrides)


def test_run_under_torchrun_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    toml = tmp_path / "tiny.toml"
    toml.write_text(TOML)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="WORLD_SIZE=2"):
        run_experiment(toml, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_version_flag_prints_the_package_version(capsys):
    from retroplan import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"retroplan {__version__}"


def test_a_study_folder_moved_elsewhere_still_finds_its_suites(study, tmp_path, monkeypatch):
    import shutil

    _, out, _ = study
    run = json.loads((out / "runs" / "d3-stream-s0" / "run.json").read_text())
    metrics = json.loads((out / "runs" / "d3-stream-s0" / "eval-test" / "metrics.json").read_text())
    # stored relative to the folder that holds them, never to where `run` was started
    assert run["suite"] == "../../suites/d3-stream-s0"
    assert (metrics["suite"], metrics["run"]) == ("../../../suites/d3-stream-s0", "..")
    moved = tmp_path / "elsewhere" / "study"
    shutil.copytree(out, moved)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # neither the old folder nor the new one
    pngs = show_trace(moved / "runs" / "d3-stream-s0", index=0, out=tmp_path / "t.png")
    assert pngs[0].stat().st_size > 5000
    assert main(["eval", str(moved / "runs" / "d3-stream-s0"), "--limit", "3"]) == 0
    assert (moved / "runs" / "d3-stream-s0" / "eval-test-limit3" / "metrics.json").exists()


def test_paths_stored_before_they_were_relative_are_still_read(tmp_path, monkeypatch):
    from retroplan.fsutil import path_for, path_from

    (tmp_path / "study" / "suites" / "s").mkdir(parents=True)
    (tmp_path / "study" / "runs" / "r").mkdir(parents=True)
    run = tmp_path / "study" / "runs" / "r"
    assert path_for(run, tmp_path / "study" / "suites" / "s") == "../../suites/s"
    assert path_from(run, "../../suites/s").resolve() == (tmp_path / "study" / "suites" / "s")
    assert path_from(run, str(tmp_path / "study" / "suites" / "s")) == tmp_path / "study" / "suites" / "s"
    monkeypatch.chdir(tmp_path)  # an old file's path, relative to where its command ran
    assert path_from(run, "study/suites/s") == Path("study/suites/s")


def test_a_forward_examples_twin_reuses_its_equal_steps_siblings_baselines(tmp_path, capsys):
    toml = tmp_path / "matched.toml"
    toml.write_text(MATCHED.replace('["optimal", "optimal+reverse", "reverse"]',
                                    '["optimal", "optimal+reverse"]')
                    .replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
                    .replace("[train.by_variant.reverse]\nlr = 3e-3\n", ""))
    steps = tmp_path / "steps"
    run_experiment(toml, steps, progress=False, overrides=['study.budget="steps"'])
    twin = tmp_path / "twin"
    assert main(["run", str(toml), "--out", str(twin), "--reuse-from", str(steps)]) == 0
    printed = capsys.readouterr().out
    # the baselines are the same runs in both studies and are copied, not trained again; the
    # mixture's length follows from the baseline's counters, so it is trained in the twin
    adopted = json.loads((twin / "adopted.json").read_text())
    assert adopted == {"d2-optimal-s0": str(steps), "d2-optimal-s1": str(steps)}
    assert "reused d2-optimal-s0 from" in printed and "reused d2-optimal+reverse" not in printed
    for seed in (0, 1):
        base = f"d2-optimal-s{seed}"
        for name in ("final.json", "train_log.jsonl", "eval-test/metrics.json"):
            assert (twin / "runs" / base / name).read_bytes() == (steps / "runs" / base / name).read_bytes()
    rows = {(r["variant"], r["seed"]): r for r in csv.DictReader((twin / "results.csv").open())}
    assert int(rows[("optimal+reverse", "0")]["steps"]) > 10  # matched to the copied baseline
    timing = json.loads((twin / "timing.json").read_text())["invocations"]
    assert timing[-1]["reused"] == 2
    assert f"d2-optimal-s0, d2-optimal-s1 from `{steps}`" in (twin / "report.md").read_text()
    # a study that would train its baseline otherwise copies nothing and trains it itself
    other = tmp_path / "other"
    run_experiment(toml, other, progress=False, reuse_from=steps, overrides=["train.lr=2e-3"])
    assert not (other / "adopted.json").exists()
    assert json.loads((other / "runs" / "d2-optimal-s0" / "run.json").read_text())["train"]["lr"] == 2e-3


def test_reuse_from_a_folder_that_is_no_study_is_refused_before_anything_is_written(tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(TOML)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty is not a study folder"):
        run_experiment(toml, tmp_path / "new", progress=False, reuse_from=tmp_path / "empty")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "experiment.toml").write_text(TOML)
    with pytest.raises(UserError, match="is this study's own --out"):
        run_experiment(toml, tmp_path / "old", progress=False, reuse_from=tmp_path / "old")
