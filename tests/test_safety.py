"""Safety: nothing retroplan reads can run code, and nothing it writes lands outside the
folder it was told to write.

* No `eval` / `exec` / `compile` of text, no pickle, no `torch.load`, no `np.load` that may
  unpickle anywhere in the package (a scan of its syntax tree).
* A checkpoint or suite file replaced by a pickle that would run code when unpickled is
  refused as corrupt, and the code does not run.
* File names inside a suite's meta.json, a checkpoint pointer and an experiment's condition
  labels cannot lead outside their folder.
"""

import ast
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import retroplan
from retroplan import checkpoint
from retroplan.errors import UserError
from retroplan.eval import evaluate
from retroplan.experiment_file import load_experiment
from retroplan.traces.suite import SuiteSpec, generate_suite, merge_shards, open_suite
from retroplan.train import TrainConfig, train

PACKAGE = Path(retroplan.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNPICKLING_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle", "yaml"}


def calls(tree):
    """(call, owner, name): `torch.load(...)` -> ("torch", "load"); `eval(...)` -> (None, "eval")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield node, None, func.id
            elif isinstance(func, ast.Attribute):
                yield node, ast.unparse(func.value), func.attr


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_package_never_evaluates_text_or_unpickles(source):
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not {n.split(".")[0] for n in names} & UNPICKLING_MODULES, ast.unparse(node)
    for node, owner, name in calls(tree):
        where = f"{source.name}:{node.lineno}: {ast.unparse(node)[:80]}"
        assert not (owner is None and name in ("eval", "exec", "compile", "__import__")), where
        assert not (owner == "torch" and name == "load"), where  # checkpoints are safetensors
        pickle_off = [isinstance(k.value, ast.Constant) and k.value.value is False
                      for k in node.keywords if k.arg == "allow_pickle"]
        assert all(pickle_off), where
        if owner in ("np", "numpy") and name == "load":
            assert pickle_off == [True], where  # said explicitly, whatever NumPy's default


class _RunsCode:
    """Unpickling this creates the file `marker`: a stand-in for any code an attacker chose."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    spec = SuiteSpec("pathstar", "optimal", {"degree": 2, "path_len": 3, "num_nodes": 10}, {}, 0,
                     {"train": 100, "val": 10, "test": 10})
    generate_suite(spec, root / "suite", progress=False)
    train(root / "suite", root / "run", TrainConfig(preset="tiny", steps=2, batch_size=8, threads=1),
          progress=False)
    return root


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_a_pickled_checkpoint_file_is_refused_without_running_it(a_run, tmp_path, name):
    shutil.copytree(a_run, tmp_path, dirs_exist_ok=True)
    marker = tmp_path / "code-ran"
    ckpt = checkpoint.latest_dir(tmp_path / "run")
    (ckpt / name).write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UserError, match="corrupt"):
        if name == "optimizer.safetensors":  # only resuming reads the optimizer state
            train(tmp_path / "suite", tmp_path / "run",
                  TrainConfig(preset="tiny", steps=2, batch_size=8, threads=1), resume=True, progress=False)
        else:
            evaluate(tmp_path / "run", tmp_path / "suite", progress=False)
    assert not marker.exists()


def test_a_pickled_suite_array_is_refused_without_running_it(a_run, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(a_run / "suite", suite)
    marker = tmp_path / "code-ran"
    target = suite / "test.inst.start.npy"
    np.save(target, np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    meta = json.loads((suite / "meta.json").read_text())  # even with its checksum made to match
    meta["files"][target.name] = hashlib.sha256(target.read_bytes()).hexdigest()
    (suite / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="test.inst.start.npy is not a readable array"):
        open_suite(suite).split("test")
    assert not marker.exists()


def test_generate_and_merge_write_only_their_output_folder(tmp_path):
    spec = SuiteSpec("pathstar", "optimal", {"degree": 2, "path_len": 3, "num_nodes": 10}, {}, 0,
                     {"train": 50, "val": 5, "test": 5})
    (tmp_path / "pieces").mkdir()
    pieces = [generate_suite(spec, tmp_path / "pieces" / f"p{i}", shard=(i, 2), progress=False)
              for i in range(2)]
    merge_shards(pieces, tmp_path / "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pieces", "whole"]
    assert sorted(p.name for p in (tmp_path / "pieces").iterdir()) == ["p0", "p1"]


@pytest.mark.parametrize("field,value,message", [
    ("files", {"../outside.npy": "0" * 64}, "names a file outside the suite"),
    ("files", {".hidden": "0" * 64}, "names a file outside the suite"),
    ("splits", {"../../outside": {"instances": 0, "examples": 0, "tokens": 0, "max_len": 0,
                                  "redrawn": 0}}, "names a split '../../outside'"),
])
def test_a_suite_cannot_name_files_outside_itself(a_run, tmp_path, field, value, message):
    suite = tmp_path / "suite"
    shutil.copytree(a_run / "suite", suite)
    meta = json.loads((suite / "meta.json").read_text())
    meta[field].update(value)
    (suite / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=message):
        open_suite(suite)
    meta["shard"] = [0, 1]  # nor can it make merge-shards write outside its output folder
    (suite / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=message):
        merge_shards([suite], tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite"]


@pytest.mark.parametrize("pointer", ["../../elsewhere", "step-1/../../../elsewhere", "/etc", 7])
def test_a_checkpoint_pointer_cannot_lead_outside_the_run(a_run, tmp_path, pointer):
    shutil.copytree(a_run / "run", tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "latest.json").write_text(json.dumps({"step": 2, "dir": pointer}))
    with pytest.raises(UserError, match="checkpoint pointer .* is corrupt"):
        checkpoint.latest_dir(tmp_path / "run")


@pytest.mark.parametrize("label", ["../escape", "a/b", "/abs", ".hidden", "", "x\\y", "two words"])
def test_an_experiment_label_cannot_name_a_folder_outside_out(tmp_path, label):
    toml = tmp_path / "exp.toml"
    toml.write_text(f'name = "x"\ntask = "pathstar"\nvariants = ["optimal"]\n'
                    f'[[conditions]]\nlabel = {json.dumps(label)}\ndegree = 2\n')
    if label == "":  # an empty label falls back to the config's own name, which is safe
        assert load_experiment(toml).labels == ("degree2",)
        return
    with pytest.raises(UserError, match="must be a plain name"):
        load_experiment(toml)
