"""One digest name per meaning, so exports join runs: `suite_digest` (the suite's own content
digest, meta.json's `meta_sha256`) is the same value in run.json, metrics.json and an export's
dataset card for the same suite; `suite_meta_sha256` is only ever the sha256 of meta.json's
bytes. run.json records the model that was built (no `small` preset for a 2 x 256 model), and a
run.json written before these fields still resumes."""

import json

import yaml

from retroplan.cli import main
from retroplan.fsutil import sha256_file
from retroplan.traces.export import export_suite

SIZES = {"train": 60, "val": 8, "test": 8}
TRAIN = ["--steps", "3", "--batch-size", "8", "--checkpoint-every", "3", "--log-every", "1",
         "--warmup-steps", "1", "--threads", "1"]


def card_provenance(folder):
    header = (folder / "README.md").read_text()[4:].split("\n---\n", 1)[0]
    return yaml.safe_load(header)["retroplan"]


def test_export_card_run_and_metrics_join_on_the_suite_digest(make_suite, tmp_path):
    suite = make_suite("pathstar", "stream", {"degree": 2, "path_len": 4, "num_nodes": 20}, sizes=SIZES)
    run = tmp_path / "run"
    assert main(["train", str(suite), "--out", str(run), "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "32", *TRAIN]) == 0
    assert main(["eval", str(run), "--limit", "4"]) == 0
    export_suite(suite, tmp_path / "ds", fmt="jsonl")
    run_json = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "eval-test-limit4" / "metrics.json").read_text())
    card = card_provenance(tmp_path / "ds")
    meta = json.loads((suite / "meta.json").read_text())
    assert card["suite_digest"] == run_json["suite_digest"] == metrics["suite_digest"] == meta["meta_sha256"]
    assert "suite_meta_sha256" not in card  # that name means the bytes of meta.json, and only that
    assert run_json["suite_meta_sha256"] == metrics["identity"]["suite_meta_sha256"] == sha256_file(
        suite / "meta.json")
    # the model that was built: 1 x 32 is no preset, so no preset is named
    assert "preset" not in run_json["train"]
    assert {k: run_json["train"][k] for k in ("n_layer", "n_head", "n_embd")} == {
        "n_layer": 1, "n_head": 2, "n_embd": 32}
    assert (run_json["model"]["n_layer"], run_json["model"]["n_embd"]) == (1, 32)


def test_a_preset_sized_model_names_its_preset_and_old_run_files_still_resume(make_suite, tmp_path):
    suite = make_suite("pathstar", "stream", {"degree": 2, "path_len": 4, "num_nodes": 20}, sizes=SIZES)
    run = tmp_path / "run"
    assert main(["train", str(suite), "--out", str(run), "--preset", "tiny", *TRAIN]) == 0
    run_json = json.loads((run / "run.json").read_text())
    assert {k: run_json["train"][k] for k in ("preset", "n_layer", "n_head", "n_embd")} == {
        "preset": "tiny", "n_layer": 2, "n_head": 2, "n_embd": 64}
    # a run.json of before: the preset as given, sizes 0, no suite_digest
    old = dict(run_json, train={**run_json["train"], "preset": "tiny", "n_layer": 0, "n_head": 0,
                                "n_embd": 0})
    old.pop("suite_digest")
    (run / "run.json").write_text(json.dumps(old))
    assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 0
    assert json.loads((run / "final.json").read_text())["steps"] == 4
