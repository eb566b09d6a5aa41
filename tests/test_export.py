"""`export`: a dataset folder with one file per split, a dataset card and the provenance, that
Hugging Face `datasets` loads as a DatasetDict with the right split names; the SoS files keep
held-out targets out of the training file; the card's commands make the same suite again."""

import json
import shlex

import pytest

from retroplan.cli import main
from retroplan.envs import countdown as cd
from retroplan.errors import UserError
from retroplan.traces.export import export_suite
from retroplan.traces.suite import open_suite

datasets = pytest.importorskip("datasets")
yaml = pytest.importorskip("yaml")

PATHSTAR = ("pathstar", "revfwd", {"degree": 3, "path_len": 5})  # the conftest default sizes
COUNTDOWN_SIZES = {"train": 60, "val": 10, "test": 10, "val_target": 10, "test_target": 10}


def card_of(folder):
    """The dataset card's YAML header and its body."""
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def load(folder, builder, tmp_path):
    """The export as `datasets` loads it: with the builder and data_dir, and as a folder (which
    reads the card's `configs:`); both must agree."""
    by_builder = datasets.load_dataset(builder, data_dir=str(folder), cache_dir=str(tmp_path / "hf-1"))
    by_folder = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-2"))
    assert isinstance(by_builder, datasets.DatasetDict) and isinstance(by_folder, datasets.DatasetDict)
    assert set(by_builder) == set(by_folder)
    for name in by_builder:
        assert by_builder[name].to_list() == by_folder[name].to_list()
    return by_builder


@pytest.mark.parametrize("fmt,builder", [("parquet", "parquet"), ("jsonl", "json")])
def test_datasets_loads_the_splits_with_their_names_sizes_and_rows(make_suite, tmp_path, fmt, builder):
    suite_dir = make_suite(*PATHSTAR)
    suite = open_suite(suite_dir)
    out = tmp_path / "dataset"
    counts = export_suite(suite_dir, out, fmt)
    assert counts == {"train": 300, "val": 40, "test": 60}

    loaded = load(out, builder, tmp_path)
    assert {name: len(split) for name, split in loaded.items()} == {"train": 300, "validation": 40,
                                                                   "test": 60}
    for hf_name, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        split = loaded[hf_name]
        assert {"edges", "start", "goal", "plan", "prompt", "completion", "split", "row", "index",
                "kind", "degree", "path_len"} <= set(split.column_names)
        assert set(split["split"]) == {name}  # each file holds its own split's rows only
        for r in (0, 1, len(split) - 1):  # the rows are the suite's, in its order
            row = split[r]
            expected = suite.describe_row(name, r)
            assert {key: row[key] for key in expected} == expected

    card, body = card_of(out)
    prov = card["retroplan"]
    assert card["license"] == "mit" and prov["license"] == "MIT"
    assert (prov["task"], prov["variant"], prov["seed"]) == ("pathstar", "revfwd", 0)
    assert prov["config"] == suite.meta["config"] and prov["options"] == suite.meta["options"]
    assert prov["suite_digest"] == suite.meta["meta_sha256"] and "suite_meta_sha256" not in prov
    assert prov["retroplan_version"] == suite.meta["retroplan_version"]
    assert {s: (v["name"], v["rows"]) for s, v in prov["splits"].items()} == {
        "train": ("train", 300), "val": ("validation", 40), "test": ("test", 60)}
    assert [f["split"] for f in card["configs"][0]["data_files"]] == ["train", "validation", "test"]
    assert json.loads((out / "vocab.json").read_text()) == suite.meta["vocab"]
    assert prov["vocabulary"] == {"size": len(suite.meta["vocab"]), "file": "vocab.json"}
    assert "`val` is Hugging Face's `validation`" in body and "`completion`" in body

    if fmt == "parquet":  # the same provenance in every file's schema metadata
        import pyarrow.parquet as pq

        for info in prov["splits"].values():
            metadata = pq.read_schema(out / info["file"]).metadata
            assert json.loads(metadata[b"retroplan"]) == prov


def test_held_out_splits_keep_their_names_and_an_empty_split_has_no_file(make_suite, tmp_path):
    sizes = dict(COUNTDOWN_SIZES, test_target=0)
    suite_dir = make_suite("countdown", "stream", {}, sizes=sizes)
    out = tmp_path / "dataset"
    counts = export_suite(suite_dir, out, "parquet")
    assert counts == sizes
    held_out = datasets.load_dataset("parquet", data_dir=str(out / "held_out"),
                                     cache_dir=str(tmp_path / "hf"))
    assert {name: len(split) for name, split in held_out.items()} == {"val_target": 10}
    assert {"numbers", "target", "solution", "searcher", "found"} <= set(held_out["val_target"].column_names)
    held = set(cd.held_out_targets(cd.Config()).tolist())
    assert set(held_out["val_target"]["target"]) <= held
    loaded = load(out, "parquet", tmp_path)
    assert not set(loaded["train"]["target"]) & held
    card, _ = card_of(out)
    assert card["retroplan"]["splits"]["test_target"] == {
        "name": "test_target", "file": None, "rows": 0, "suite_rows": 0, "suite_instances": 0}
    assert not (out / "held_out" / "data" / "test_target-00000-of-00001.parquet").exists()


@pytest.mark.parametrize("fmt,builder", [("parquet", "parquet"), ("jsonl", "json")])
def test_every_way_of_loading_keeps_held_out_targets_out_of_validation_and_test(make_suite, tmp_path,
                                                                                 fmt, builder):
    """`datasets` reads `val_target-...` in a plain folder as a `validation` file (keyword `val`):
    the export folder, its `data/` folder, the `held_out` folder and configuration must each give
    exactly the suite's splits with their row counts, and the card's dataset_info must say so."""
    suite_dir = make_suite("countdown", "stream", {}, sizes=COUNTDOWN_SIZES)
    out = tmp_path / "dataset"
    assert export_suite(suite_dir, out, fmt) == COUNTDOWN_SIZES
    cache = str(tmp_path / "hf")

    def sizes_of(loaded):
        return {name: len(split) for name, split in loaded.items()}

    def splits_of(loaded):
        return {name: set(split["split"]) for name, split in loaded.items()}

    in_distribution = {"train": 60, "validation": 10, "test": 10}
    for folder in (out, out / "data"):
        loaded = datasets.load_dataset(builder, data_dir=str(folder), cache_dir=cache)
        assert sizes_of(loaded) == in_distribution, folder
        assert splits_of(loaded) == {"train": {"train"}, "validation": {"val"}, "test": {"test"}}
    assert sizes_of(datasets.load_dataset(str(out), cache_dir=cache)) == in_distribution

    held_out = datasets.load_dataset(builder, data_dir=str(out / "held_out"), cache_dir=cache)
    assert sizes_of(held_out) == {"val_target": 10, "test_target": 10}
    assert splits_of(held_out) == {"val_target": {"val_target"}, "test_target": {"test_target"}}
    by_config = datasets.load_dataset(str(out), "held_out", cache_dir=cache)
    assert splits_of(by_config) == splits_of(held_out) and sizes_of(by_config) == sizes_of(held_out)
    # its own data/ folder read by keyword: the held-out rows alone, under the keyword names
    by_keyword = datasets.load_dataset(builder, data_dir=str(out / "held_out" / "data"), cache_dir=cache)
    assert splits_of(by_keyword) == {"validation": {"val_target"}, "test": {"test_target"}}

    card, _ = card_of(out)
    info = {c["config_name"]: c for c in card["dataset_info"]}
    assert {name: {s["name"]: s["num_examples"] for s in c["splits"]} for name, c in info.items()} == {
        "default": in_distribution, "held_out": {"val_target": 10, "test_target": 10}}
    default = datasets.load_dataset(str(out), cache_dir=cache)
    for name, loaded in (("default", default), ("held_out", held_out)):
        features = datasets.Features._from_yaml_list(info[name]["features"])
        for split in loaded.values():
            assert split.features == features, name
    assert [c["config_name"] for c in card["configs"]] == ["default", "held_out"]


def test_sos_writes_one_file_per_split_and_no_held_out_target_in_train(make_suite, tmp_path):
    suite_dir = make_suite("countdown", "stream", {}, sizes=COUNTDOWN_SIZES)
    out = tmp_path / "sos"
    counts = export_suite(suite_dir, out, "sos")
    assert counts == COUNTDOWN_SIZES
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "test.json", "test_target.json",
                                                      "train.json", "val.json", "val_target.json",
                                                      "vocab.json"]
    rows = {name: json.loads((out / f"{name}.json").read_text()) for name in COUNTDOWN_SIZES}
    assert {name: len(r) for name, r in rows.items()} == COUNTDOWN_SIZES
    held = set(cd.held_out_targets(cd.Config()).tolist())
    assert not {row["target"] for row in rows["train"]} & held
    assert {row["target"] for row in rows["val_target"] + rows["test_target"]} <= held
    train = {(tuple(row["nums"]), row["target"]) for row in rows["train"]}
    for name in ("val", "test", "val_target", "test_target"):
        assert not train & {(tuple(row["nums"]), row["target"]) for row in rows[name]}
    # SoS's train.py reads its data files exactly so
    loaded = datasets.load_dataset("json", data_files={name: str(out / f"{name}.json")
                                                       for name in ("train", "val", "val_target")},
                                   cache_dir=str(tmp_path / "hf"))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 60, "val": 10, "val_target": 10}
    assert loaded["train"][0]["search_path"] == rows["train"][0]["search_path"]
    card, _ = card_of(out)
    assert card["retroplan"]["splits"]["val"]["file"] == "val.json"


def test_split_and_limit_keep_the_layout(make_suite, tmp_path):
    suite_dir = make_suite(*PATHSTAR)
    out = tmp_path / "val-only"
    assert export_suite(suite_dir, out, "jsonl", split="val", limit=7) == {"val": 7}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md", "data/validation-00000-of-00001.jsonl", "vocab.json"]
    loaded = load(out, "json", tmp_path)
    assert list(loaded) == ["validation"] and len(loaded["validation"]) == 7
    card, _ = card_of(out)
    assert card["retroplan"]["limit"] == 7
    assert card["retroplan"]["regenerate"][1].endswith("--split val --limit 7 --out val-only")
    out = tmp_path / "limited"
    assert export_suite(suite_dir, out, "parquet", limit=5) == {"train": 5, "val": 5, "test": 5}


def test_the_card_commands_make_the_same_suite_again(make_suite, tmp_path, monkeypatch, capsys):
    suite_dir = make_suite("pathstar", "optimal", {"degree": 2, "path_len": 3, "num_nodes": 10},
                           sizes={"train": 20, "val": 5, "test": 5}, seed=3)
    export_suite(suite_dir, tmp_path / "dataset", "jsonl")
    card, _ = card_of(tmp_path / "dataset")
    generate, export = card["retroplan"]["regenerate"]
    work = tmp_path / "again"
    work.mkdir()
    monkeypatch.chdir(work)
    for command in (generate, export):
        argv = shlex.split(command)
        assert argv[0] == "retroplan"
        assert main(argv[1:]) == 0, capsys.readouterr().err
    again = open_suite(work / suite_dir.name)
    assert again.meta["meta_sha256"] == open_suite(suite_dir).meta["meta_sha256"]
    for path in (tmp_path / "dataset" / "data").iterdir():
        assert (work / "dataset" / "data" / path.name).read_bytes() == path.read_bytes()


def test_out_must_be_new_or_an_empty_folder(make_suite, tmp_path):
    suite_dir = make_suite(*PATHSTAR)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists; export writes a new folder"):
        export_suite(suite_dir, mine, "jsonl", split="test")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="the sos format is Countdown's"):
        export_suite(suite_dir, empty, "sos")
    assert empty.is_dir() and not any(empty.iterdir())  # a failed export leaves the folder as it was
    assert export_suite(suite_dir, empty, "jsonl", split="test") == {"test": 60}
    assert (empty / "data" / "test-00000-of-00001.jsonl").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
