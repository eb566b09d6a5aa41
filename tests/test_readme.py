"""The README's tour runs as written: every command of its command-line block, in order, from
the README text itself (so the two cannot drift apart), then its Python example. Lines marked
`GPU-sized` are studies sized for a GPU: their experiment files are checked, not run. The
tour's training sizes are a reader's (a model that learns something in minutes); the test
shrinks those few numbers (`SMALLER`), each of which must be in the README as written."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from retroplan.cli import main
from retroplan.experiment_file import SHIPPED_DIR, load_experiment, shipped_experiments

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str, fence: str = "```") -> str:
    start = README.index(marker)
    open_at = README.index(fence, start)
    body_at = README.index("\n", open_at) + 1
    return README[body_at: README.index("```", body_at)]


# (as written, as tested): training examples and optimizer steps only, so every command, flag,
# file and order of the tour is the reader's, and the suite spends seconds where the reader's
# models spend minutes (the two 300-step trainings were ~80% of the tour's CPU time). Each pair
# must occur in the README (test_the_tours_sizes_are_shrunk_where_they_are_written).
SMALLER = [("--train 20000", "--train 400"),
           ("--steps 300", "--steps 20"), ("--resume --steps 400", "--resume --steps 30"),
           ("train.steps=100", "train.steps=10"), ("sizes.train=5000", "sizes.train=400"),
           ('"train": 5000', '"train": 400'), ("steps=200)", "steps=20)")]


def shrunk(text: str) -> str:
    for written, tested in SMALLER:
        text = text.replace(written, tested)
    return text


def tour_commands() -> list[tuple[str, bool]]:
    """(command, gpu_sized) for each command of the tour: continuation lines joined, comments
    dropped (a comment that says `GPU-sized` marks its command)."""
    commands, current = [], ""
    for line in _block_after("**Command line.**").splitlines():
        current += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        if shlex.split(current, comments=True):
            commands.append((current.strip(), "GPU-sized" in current))
        elif commands and "GPU-sized" in current:  # a comment line under its command
            commands[-1] = (commands[-1][0], True)
        current = ""
    return commands


def test_the_tour_is_parsed_into_commands():
    commands = tour_commands()
    assert len(commands) >= 15
    assert all(shlex.split(c, comments=True)[0] == "retroplan" for c, _ in commands)
    names = [shlex.split(c, comments=True)[1] for c, _ in commands]
    # pieces before they are merged, runs before they are evaluated
    assert names.index("generate") < names.index("merge-shards") < names.index("eval-hf")
    assert names.index("train") < names.index("eval") < names.index("show-trace")
    assert [c for c, gpu in commands if gpu] and not all(gpu for _, gpu in commands)


def test_the_tours_experiments_ship_with_the_package(tmp_path, monkeypatch, capsys):
    """`retroplan run quick` works from any folder: every experiment the README names is a file of
    the package (declared as package data, so a wheel carries it), and `example` prints it."""
    import tomllib

    named = {shlex.split(c, comments=True)[2] for c, _ in tour_commands()
             if shlex.split(c, comments=True)[1] == "run"}
    assert named and named <= set(shipped_experiments())
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "experiments/*.toml" in package_data["retroplan"]
    assert SHIPPED_DIR == ROOT / "retroplan" / "experiments"
    assert not (ROOT / "experiments" / "quick.toml").exists()  # one copy of each file, no drift
    monkeypatch.chdir(tmp_path)
    assert main(["example", "quick"]) == 0
    (tmp_path / "mine.toml").write_text(capsys.readouterr().out)
    assert (tmp_path / "mine.toml").read_bytes() == (SHIPPED_DIR / "quick.toml").read_bytes()
    assert load_experiment("mine.toml") == load_experiment("quick")
    assert main(["run", "quik", "--out", "o"]) == 2
    assert "experiment file quik does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_tours_sizes_are_shrunk_where_they_are_written():
    tour = " ".join(c for c, _ in tour_commands()) + _block_after("**Python**", "```python")
    for written, tested in SMALLER:
        assert written in tour, f"the README no longer says {written!r}: update SMALLER"
        assert written not in shrunk(tour) and tested in shrunk(tour)
    assert shrunk(tour) != tour


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # it starts a local Ray cluster: one at a time (conftest)
def test_the_readme_tour_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("ray")
    assert not any(tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)  # an empty folder, nothing linked: the package brings its experiments
    for command, gpu_sized in tour_commands():
        argv = shlex.split(shrunk(command), comments=True)[1:]
        if gpu_sized:  # sized for a GPU: its file must load (every entry checked), not run here
            assert argv[0] == "run"
            load_experiment(argv[1])
            continue
        if argv == ["--version"]:
            with pytest.raises(SystemExit) as exit_info:
                main(argv)
            assert exit_info.value.code == 0, command
            continue
        assert main(argv) == 0, f"{command}\n{capsys.readouterr().err}"
    assert (tmp_path / "ds-reverse" / "README.md").exists()
    assert (tmp_path / "models" / "ps-stream" / "config.json").exists()
    assert (tmp_path / "runs" / "quick-short" / "report.md").exists()
    # the Python example, as a reader would paste it
    code = shrunk(_block_after("**Python**", "```python"))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ), timeout=900)
    assert done.returncode == 0, done.stderr
    assert "'n': 200" in done.stdout
