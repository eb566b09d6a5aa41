"""Every trace writer's bytes pinned: a fixed set of suites (each task, each variant, mixtures,
non-default writer options, held-out splits) generated and compared file by file against the
sha256 digests in `tests/data/suite_digests.json`.

A refactor of the generators, searchers or writers must leave every digest as it is. A change
that is meant to change the data regenerates the file on purpose, in the same commit:

    .venv/bin/python tests/test_suite_digests.py --write

meta.json is left out (it carries the retroplan version); every other file of the folder is
compared, so tokens, lengths, instances, kinds, offsets and the preview all count.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from retroplan.traces.suite import SuiteSpec, generate_suite

GOLDEN = Path(__file__).parent / "data" / "suite_digests.json"

SMALL = {"train": 24, "val": 6, "test": 6}
COUNTDOWN_SIZES = {"train": 16, "val": 4, "test": 4, "val_target": 4, "test_target": 4}
VARIANTS = ("optimal", "reverse", "revfwd", "stream", "backward-stream", "revthink", "lookahead",
            "corrupted")


def _cases() -> dict[str, SuiteSpec]:
    cases = {}
    for v in VARIANTS:
        cases[f"pathstar-{v}"] = SuiteSpec("pathstar", v, {"degree": 3, "path_len": 5}, {}, 7, SMALL)
        cases[f"graph-{v}"] = SuiteSpec("graph", v, {}, {}, 7, SMALL)
        cases[f"countdown-{v}"] = SuiteSpec("countdown", v, {}, {}, 7, COUNTDOWN_SIZES)
    for structure in ("strongly-connected", "balanced"):
        cases[f"graph-{structure}-stream"] = SuiteSpec("graph", "stream", {"structure": structure}, {},
                                                       3, SMALL)
    cases["graph-stream-bfs-distance"] = SuiteSpec(
        "graph", "stream", {}, {"stream_searcher": "bfs", "child_order": "distance"}, 5, SMALL)
    cases["pathstar-lookahead-p1"] = SuiteSpec("pathstar", "lookahead", {}, {"lookahead_p": 1.0}, 5, SMALL)
    for searcher in ("dfs-full", "dfs-mult", "bfs3-sum"):
        cases[f"countdown-stream-{searcher}"] = SuiteSpec("countdown", "stream", {},
                                                          {"searcher": searcher}, 5, COUNTDOWN_SIZES)
    cases["countdown-corrupted-dfs-full"] = SuiteSpec("countdown", "corrupted", {}, {"searcher": "dfs-full"},
                                                      5, COUNTDOWN_SIZES)
    cases["countdown-5-numbers"] = SuiteSpec("countdown", "stream", {"n_inputs": 5, "operations": "+-*"},
                                             {}, 2, {"train": 6, "val": 2, "test": 2})
    cases["pathstar-optimal+reverse"] = SuiteSpec("pathstar", "optimal+reverse", {}, {}, 9, SMALL)
    cases["graph-optimal+stream+lookahead"] = SuiteSpec("graph", "optimal+stream+lookahead", {}, {}, 9, SMALL)
    cases["countdown-stream+backward-stream"] = SuiteSpec("countdown", "stream+backward-stream", {}, {}, 9,
                                                          COUNTDOWN_SIZES)
    return cases


def suite_digests(spec: SuiteSpec, out: Path) -> dict[str, str]:
    folder = generate_suite(spec, out)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != "meta.json"}


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_suite_bytes_are_pinned(name, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"{name} has no pinned digests; run tests/test_suite_digests.py --write"
    got = suite_digests(CASES[name], tmp_path / name)
    changed = sorted(f for f in set(got) | set(golden[name]) if got.get(f) != golden[name].get(f))
    assert not changed, f"{name}: these files changed bytes: {', '.join(changed)}"


def test_golden_file_names_exactly_the_cases():
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(CASES)


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_suite_digests.py --write   (re-pins every digest)")
    with tempfile.TemporaryDirectory() as tmp:
        pinned = {name: suite_digests(spec, Path(tmp) / name) for name, spec in sorted(CASES.items())}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    print(f"pinned {len(pinned)} suites in {GOLDEN}")
