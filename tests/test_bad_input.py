"""Bad input, one table: every user mistake (CLI flags, TOML experiment files, task configs,
missing / corrupt / truncated suites and checkpoints, mismatched checkpoints, a full disk)
exits with code 2 and one sentence on stderr, prints no traceback, leaves no temporary
behind and deletes or changes nothing the user had.

Each row runs in a fresh folder holding copies of a small suite, a trained run (already
evaluated once), a suite with another vocabulary, a run with another model width and two
`--shard` pieces. Most rows call `retroplan.cli.main` in-process (an unexpected exception
would fail the test with its traceback); the full-disk rows and a few others run the real
`python -m retroplan.cli` in a subprocess.

A full disk is simulated with RLIMIT_FSIZE in the child process, with SIGXFSZ ignored: the
kernel then fails every write past N bytes with EFBIG ("File too large"), exactly where a
full disk fails with ENOSPC. It needs no privileges and covers every writer (Python, NumPy,
the Rust safetensors writer, matplotlib). Where the tests may mount a tmpfs (root), a real
ENOSPC is tested as well.
"""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from retroplan import compile_notice
from retroplan.cli import main
from retroplan.eval import evaluate
from retroplan.traces.suite import SuiteSpec, generate_suite
from retroplan.train import TrainConfig, train

PATHSTAR = {"degree": 2, "path_len": 3, "num_nodes": 10}
SIZES = {"train": 200, "val": 20, "test": 30}
TINY = dict(preset="tiny", batch_size=8, checkpoint_every=2, log_every=2, threads=1)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-files")
    spec = SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 0, SIZES)
    generate_suite(spec, root / "suite", progress=False)
    generate_suite(SuiteSpec("pathstar", "optimal", dict(PATHSTAR, num_nodes=12), {}, 0, SIZES),
                   root / "other-vocab", progress=False)
    for i in range(2):
        generate_suite(spec, root / f"piece{i}", shard=(i, 2), progress=False)
    generate_suite(SuiteSpec("pathstar", "optimal", PATHSTAR, {}, 1, SIZES), root / "piece0-seed1",
                   shard=(0, 2), progress=False)
    train(root / "suite", root / "run", TrainConfig(steps=4, **TINY), progress=False)
    train(root / "suite", root / "wide-run", TrainConfig(steps=2, n_embd=32, **TINY), progress=False)
    evaluate(root / "run", progress=False)  # the user's earlier results (and a warm Numba cache)
    return root


# ----------------------------------------------------------------- what a row may set up


def write(rel: str, text: str):
    def setup(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return setup


def truncate(rel: str):
    def setup(tmp: Path) -> None:
        data = (tmp / rel).read_bytes()
        (tmp / rel).write_bytes(data[: len(data) // 2])
    return setup


def remove(rel: str):
    return lambda tmp: (tmp / rel).unlink()


def edit_json(rel: str, change):
    def setup(tmp: Path) -> None:
        data = json.loads((tmp / rel).read_text())
        change(data)
        (tmp / rel).write_text(json.dumps(data))
    return setup


def copy(src: str, dst: str):
    return lambda tmp: shutil.copyfile(tmp / src, tmp / dst)


def latest_step(tmp: Path, run: str = "run") -> str:
    return json.loads((tmp / run / "checkpoints" / "latest.json").read_text())["dir"]


def in_latest(run: str, name: str, action):
    """Apply `action(rel)` to a file of the run's current checkpoint."""
    def setup(tmp: Path) -> None:
        action(f"{run}/checkpoints/{latest_step(tmp, run)}/{name}")(tmp)
    return setup


EXPERIMENT = """name = "bad"
task = "pathstar"
variants = ["optimal"]
seeds = [0]

[sizes]
train = 20
val = 4
test = 4

[[conditions]]
label = "small"
degree = 2
path_len = 3
num_nodes = 10

[train]
preset = "tiny"
steps = 2
"""


def experiment(old: str = "", new: str = ""):
    assert old in EXPERIMENT
    return write("exp.toml", EXPERIMENT.replace(old, new, 1) if old else EXPERIMENT + new)


GEN = ["generate", "pathstar", "--variant", "optimal", "--out", "{tmp}/new"]
GRAPH = ["generate", "graph", "--variant", "optimal", "--out", "{tmp}/new"]
CD = ["generate", "countdown", "--variant", "optimal", "--train", "20", "--out", "{tmp}/new"]
TRAIN = ["train", "{tmp}/suite", "--out", "{tmp}/new-run", "--preset", "tiny", "--steps", "2"]
RUN = ["run", "{tmp}/exp.toml", "--out", "{tmp}/exp-out"]

# id, argv, what stderr must say, setup (or None), file-size limit in bytes (or None)
CASES = [
    # --- generate: flags and task configs
    ("unknown-variant", ["generate", "pathstar", "--variant", "sideways", "--out", "{tmp}/new"],
     "unknown variant 'sideways'", None, None),
    ("unknown-task", ["generate", "maze", "--variant", "optimal", "--out", "{tmp}/new"],
     "invalid choice: 'maze'", None, None),
    ("pathstar-too-big-for-its-labels", GEN + ["--degree", "9", "--path-len", "9"],
     "raise num_nodes to at least 73", None, None),
    ("pathstar-degree-one", GEN + ["--degree", "1"], "degree must be at least 2", None, None),
    ("pathstar-too-many-nodes", GEN + ["--num-nodes", "100000"], "between 2 and 4096", None, None),
    ("negative-count", GEN + ["--train", "-5"], "train size must be a non-negative integer", None, None),
    ("not-a-number", GEN + ["--degree", "two"], "invalid int value: 'two'", None, None),
    ("negative-seed", GEN + ["--seed", "-1"], "seed must be an integer in [0, 2**63)", None, None),
    ("shard-out-of-range", GEN + ["--shard", "3/2"], "0 <= i < N", None, None),
    ("shard-malformed", GEN + ["--shard", "a/b"], "--shard must look like i/N", None, None),
    ("graph-distances-upside-down", GRAPH + ["--min-distance", "4", "--max-distance", "3"],
     "min_distance <= max_distance", None, None),
    ("graph-distance-beyond-graph", GRAPH + ["--num-nodes", "5", "--max-distance", "9"],
     "max_distance must be at most", None, None),
    ("graph-no-goal-that-far", GRAPH + ["--num-nodes", "30", "--out-degree", "29", "--min-distance", "5",
                                        "--structure", "strongly-connected"],
     "lower min_distance or out_degree", None, None),
    ("graph-dead-region-too-big", GRAPH + ["--num-nodes", "30", "--out-degree", "29"],
     "dead region takes 30 of the 30", None, None),
    ("unknown-child-order", ["generate", "graph", "--variant", "stream", "--child-order", "psychic",
                             "--out", "{tmp}/new"], "child_order must be one of", None, None),
    ("lookahead-share-above-one", GEN + ["--lookahead-p", "2"], "lookahead_p must be a number in [0, 1]",
     None, None),
    ("generate-over-a-user-folder", ["generate", "graph", "--variant", "optimal", "--out", "{tmp}/mine"],
     "already exists", write("mine/notes.txt", "keep me"), None),
    ("countdown-too-many-inputs", CD + ["--n-inputs", "9"], "n_inputs must be between 3 and 6", None, None),
    ("countdown-empty-input-range", CD + ["--min-input", "50", "--max-input", "10"],
     "1 <= min_input <= max_input", None, None),
    ("countdown-unknown-operation", CD + ["--operations", "+^"], "operations may only contain", None, None),
    ("countdown-unreachable-targets", CD + ["--min-target", "500", "--max-target", "600", "--max-input", "3"],
     "widen the input range or narrow the target range", None, None),
    ("countdown-negative-held-out-count", CD + ["--test-target", "-1"],
     "test_target size must be a non-negative integer", None, None),
    ("countdown-unknown-variant", ["generate", "countdown", "--variant", "swapped", "--out",
                                   "{tmp}/new"], "unknown variant 'swapped' for task countdown",
     None, None),
    # --- inspect / export
    ("inspect-nothing", ["inspect", "{tmp}/nowhere"], "does not exist", None, None),
    ("inspect-negative-rows", ["inspect", "{tmp}/suite", "--rows", "-1"], "--rows must be a non-negative",
     None, None),
    ("inspect-unknown-split", ["inspect", "{tmp}/suite", "--split", "holdout"], "has no split 'holdout'",
     None, None),
    ("export-unknown-format", ["export", "{tmp}/suite", "--format", "csv", "--out", "{tmp}/x.csv"],
     "invalid choice: 'csv'", None, None),
    ("export-unknown-split", ["export", "{tmp}/suite", "--split", "holdout", "--out", "{tmp}/x.jsonl"],
     "has no split 'holdout'", None, None),
    ("export-over-a-user-file", ["export", "{tmp}/suite", "--out", "{tmp}/rows.jsonl"], "already exists",
     write("rows.jsonl", "mine\n"), None),
    ("export-into-a-user-folder", ["export", "{tmp}/suite", "--out", "{tmp}/mine"], "already exists",
     write("mine/notes.txt", "mine\n"), None),
    # --- train: flags
    ("train-no-suite", ["train", "{tmp}/nowhere", "--out", "{tmp}/new-run"], "does not exist", None, None),
    ("train-unknown-preset", TRAIN + ["--preset", "huge"], "unknown model preset 'huge'", None, None),
    ("train-zero-steps", TRAIN + ["--steps", "0"], "steps must be a positive integer", None, None),
    ("train-negative-lr", TRAIN + ["--lr", "-1"], "lr must be a non-negative number", None, None),
    ("train-unknown-device", TRAIN + ["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N",
     None, None),
    ("train-context-too-short", TRAIN + ["--context", "3"], "every training row is longer than the context",
     None, None),
    ("train-heads-do-not-divide", TRAIN + ["--n-head", "3", "--n-embd", "64"],
     "must be a multiple of n_head", None, None),
    ("train-over-a-run", ["train", "{tmp}/suite", "--out", "{tmp}/run", "--preset", "tiny"],
     "pass --resume", None, None),
    ("train-over-a-user-folder", TRAIN[:3] + ["{tmp}/mine"], "exists and is not empty",
     write("mine/notes.txt", "keep me"), None),
    ("resume-with-other-settings", ["train", "{tmp}/suite", "--out", "{tmp}/run", "--resume", "--preset",
                                    "tiny", "--steps", "4", "--batch-size", "8", "--lr", "0.5"],
     "train.lr differs", None, None),
    ("resume-with-another-suite", ["train", "{tmp}/other-vocab", "--out", "{tmp}/run", "--resume",
                                   "--preset", "tiny", "--steps", "4", "--batch-size", "8"],
     "differs from what was asked now", None, None),
    # --- eval
    ("eval-no-run", ["eval", "{tmp}/nowhere"], "run folder", None, None),
    ("eval-a-suite-as-a-run", ["eval", "{tmp}/suite"], "run.json is missing", None, None),
    ("eval-negative-limit", ["eval", "{tmp}/run", "--limit", "-3"], "limit must be a non-negative integer",
     None, None),
    ("eval-unknown-split", ["eval", "{tmp}/run", "--split", "holdout"], "has no split 'holdout'", None, None),
    ("eval-on-another-vocabulary", ["eval", "{tmp}/run", "--suite", "{tmp}/other-vocab"],
     "different vocabulary", None, None),
    # --- merge-shards
    ("merge-a-whole-suite", ["merge-shards", "{tmp}/suite", "--out", "{tmp}/new"], "is not a piece",
     None, None),
    ("merge-with-a-piece-missing", ["merge-shards", "{tmp}/piece1", "--out", "{tmp}/new"],
     "piece 0 of 2 is missing", None, None),
    ("merge-one-piece-twice", ["merge-shards", "{tmp}/piece0", "{tmp}/piece0", "--out", "{tmp}/new"],
     "are both piece 0 of 2", None, None),
    ("merge-pieces-of-two-suites", ["merge-shards", "{tmp}/piece0-seed1", "{tmp}/piece1", "--out",
                                    "{tmp}/new"], "its seed differs", None, None),
    # --- TOML experiment files
    ("toml-missing", RUN, "does not exist", None, None),
    ("toml-not-toml", RUN, "is not valid TOML", write("exp.toml", "name = \n"), None),
    ("toml-unknown-key", RUN, "unknown key 'colour'", write("exp.toml", 'colour = "red"\n' + EXPERIMENT),
     None),
    ("toml-unknown-task", RUN, "unknown task 'chess'", experiment('task = "pathstar"', 'task = "chess"'),
     None),
    ("toml-unknown-variant", RUN, "unknown variant 'sideways'",
     experiment('variants = ["optimal"]', 'variants = ["sideways"]'), None),
    ("toml-negative-size", RUN, "train size must be a non-negative integer",
     experiment("train = 20", "train = -20"), None),
    ("toml-impossible-condition", RUN, "raise num_nodes to at least 5",
     experiment("num_nodes = 10", "num_nodes = 3"), None),
    ("toml-unknown-setting", RUN, "unknown pathstar setting 'colour'",
     experiment("num_nodes = 10", 'num_nodes = 10\ncolour = "red"'), None),
    ("toml-wrongly-typed-setting", RUN, "train beta1 must be a number",
     experiment(new='beta1 = "high"\n'), None),
    ("toml-sizes-not-a-table", RUN, "sizes must be a table",
     experiment("[sizes]\ntrain = 20\nval = 4\ntest = 4\n", "sizes = 5\n"), None),
    ("toml-repeated-seeds", RUN, "seeds repeat a value", experiment("seeds = [0]", "seeds = [1, 1]"), None),
    ("toml-label-escapes-out", RUN, "must be a plain name",
     experiment('label = "small"', 'label = "../../outside"'), None),
    ("toml-unknown-eval-split", RUN, "unknown eval split 'holdout'",
     experiment(new='[eval]\nsplit = "holdout"\n'), None),
    ("toml-unknown-eval-setting", RUN, "unknown eval setting 'beam'", experiment(new="[eval]\nbeam = 4\n"),
     None),
    ("toml-out-holds-another-experiment", RUN, "holds results of a different experiment file",
     lambda tmp: (experiment()(tmp), write("exp-out/experiment.toml", "name = 'other'\n")(tmp)), None),
    # --- suites on disk
    ("suite-without-meta", ["inspect", "{tmp}/suite"], "has no meta.json", remove("suite/meta.json"), None),
    ("suite-meta-truncated", ["inspect", "{tmp}/suite"], "meta.json is not valid JSON",
     truncate("suite/meta.json"), None),
    ("suite-shard-truncated", ["inspect", "{tmp}/suite"], "train.tokens.npy does not match its checksum",
     truncate("suite/train.tokens.npy"), None),
    ("suite-file-missing", ["train", "{tmp}/suite", "--out", "{tmp}/new-run"], "val.lengths.npy is missing",
     remove("suite/val.lengths.npy"), None),
    ("suite-meta-names-outside-file", ["inspect", "{tmp}/suite"], "names a file outside the suite",
     edit_json("suite/meta.json", lambda m: m["files"].update({"../run/run.json": "0" * 64})), None),
    ("suite-meta-names-outside-split", ["inspect", "{tmp}/suite"], "names a split '../x'",
     edit_json("suite/meta.json", lambda m: m["splits"].update({"../x": m["splits"]["val"]})), None),
    ("suite-meta-wrong-types", ["inspect", "{tmp}/suite"], "lacks a valid 'config' field",
     edit_json("suite/meta.json", lambda m: m.update(config=5)), None),
    # --- checkpoints on disk
    ("checkpoint-weights-truncated", ["eval", "{tmp}/run", "--out", "{tmp}/new-eval"], "it is corrupt",
     in_latest("run", "model.safetensors", truncate), None),
    ("checkpoint-pointer-corrupt", ["eval", "{tmp}/run", "--out", "{tmp}/new-eval"], "is not valid JSON",
     write("run/checkpoints/latest.json", "{\"step\": 4, \"di"), None),
    ("checkpoint-pointer-to-nothing", ["eval", "{tmp}/run", "--out", "{tmp}/new-eval"], "is missing",
     write("run/checkpoints/latest.json", '{"step": 9, "dir": "step-0000009"}'), None),
    ("checkpoint-of-another-shape", ["eval", "{tmp}/run", "--out", "{tmp}/new-eval"],
     "does not fit the model in run.json: blocks.0.attn.proj.weight has shape (32, 32) there, (64, 64) here",
     lambda tmp: copy(f"wide-run/checkpoints/{latest_step(tmp, 'wide-run')}/model.safetensors",
                      f"run/checkpoints/{latest_step(tmp)}/model.safetensors")(tmp), None),
    ("checkpoint-state-corrupt", ["eval", "{tmp}/run", "--out", "{tmp}/new-eval"], "is not valid JSON",
     in_latest("run", "state.json", truncate), None),
    ("resume-from-truncated-optimizer", ["train", "{tmp}/suite", "--out", "{tmp}/run", "--resume",
                                         "--preset", "tiny", "--steps", "4", "--batch-size", "8",
                                         "--checkpoint-every", "2", "--log-every", "2", "--threads", "1"],
     "it is corrupt", in_latest("run", "optimizer.safetensors", truncate), None),
    ("run-description-missing", ["eval", "{tmp}/run"], "run.json is missing", remove("run/run.json"), None),
    # --- a full disk (subprocess with a file-size limit)
    ("disk-full-generate", GEN + ["--train", "5000"], "could not write", None, 20_000),
    ("disk-full-train", TRAIN + ["--checkpoint-every", "1"], "File too large", None, 50_000),
    ("disk-full-eval", ["eval", "{tmp}/run"], "File too large", None, 2_000),
    ("disk-full-run", RUN, "File too large", experiment(), 3_000),
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def limit_file_size(limit: int):
    def apply() -> None:  # runs in the child between fork and exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_retroplan(argv: list[str], capsys, file_size_limit: int | None = None,
                  subprocess_: bool = False) -> tuple[int, str]:
    if file_size_limit is None and not subprocess_:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        return code, capsys.readouterr().err
    limit = limit_file_size(file_size_limit) if file_size_limit else None
    proc = subprocess.run([sys.executable, "-m", "retroplan.cli", *argv], capture_output=True, text=True,
                          timeout=600, preexec_fn=limit)
    return proc.returncode, proc.stderr


def check_mistake(tmp: Path, argv, fragment, setup, file_size_limit, capsys, subprocess_=False) -> None:
    if setup is not None:
        setup(tmp)
    before = snapshot(tmp)
    argv = [a.format(tmp=tmp) for a in argv]
    code, err = run_retroplan(argv, capsys, file_size_limit, subprocess_)
    assert code == 2, err
    assert "Traceback" not in err
    # a cold Numba cache adds its one-line notice (compile_notice.py) before the error: not an error
    lines = [line for line in err.strip().splitlines() if not line.startswith(compile_notice.PREFIX)]
    assert len(lines) == 1, err
    assert lines[0].startswith("retroplan: error: ") and lines[0].endswith("."), err
    assert fragment in err, err
    after = snapshot(tmp)
    for name, digest in before.items():  # nothing the user had is gone or changed
        assert after.get(name) == digest, f"{name} was {'changed' if name in after else 'deleted'}"
    leftovers = [p for p in tmp.rglob(".*") if p.name.endswith((".tmp", ".part"))]
    assert leftovers == []


def test_every_row_has_its_own_name():
    # the rows' behaviour is checked by the tests below, one row each; a repeated name would
    # get a suffix from pytest and make `test_a_real_process_prints_no_traceback` pick the first
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,fragment,setup,file_size_limit",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_a_mistake_gets_one_sentence_and_exit_2(shared, tmp_path, capsys, argv, fragment, setup,
                                                file_size_limit):
    shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
    check_mistake(tmp_path, argv, fragment, setup, file_size_limit, capsys)


@pytest.mark.parametrize("case_id", ["unknown-variant", "train-unknown-preset", "suite-shard-truncated",
                                     "toml-not-toml"])
def test_a_real_process_prints_no_traceback(shared, tmp_path, capsys, case_id):
    _, argv, fragment, setup, _ = next(case for case in CASES if case[0] == case_id)
    shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
    check_mistake(tmp_path, argv, fragment, setup, None, capsys, subprocess_=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs (a disk that really fills up), where this user may mount one."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_really_full_disk(shared, tiny_tmpfs, capsys):
    (tiny_tmpfs / "notes.txt").write_text("keep me")
    check_mistake(tiny_tmpfs, GEN + ["--train", "20000"], "No space left on device", None, None, capsys)
    shutil.copytree(shared / "suite", tiny_tmpfs / "suite")
    check_mistake(tiny_tmpfs, TRAIN + ["--preset", "small"], "No space left on device", None, None, capsys)
