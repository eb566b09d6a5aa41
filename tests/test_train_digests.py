"""The trainers' output pinned: a few tiny runs (one per path `train` takes: a plain run with
val loss, learning curves, kept steps and dropped long rows; a mixture with dropout and cut
rows; the teacherless objective; a run resumed to a longer length; and `rl` from a tiny SFT
run, with the shaped reward and several updates per step, and with RLP's reward and its EMA
model, each resumed) trained on CPU in fp32 with one thread, and every deterministic byte they
write compared against the sha256 digests in `tests/data/train_digests.json`: the weights and
optimizer state (moments and RNG state) of every checkpoint kept, the EMA models, state.json,
train_log.jsonl / rl_log.jsonl, curve.jsonl, final.json and run.json, less their wall-clock
fields and the fields that carry the library version.

A refactor of train.py or rl.py must leave every digest as it is. A change that is meant to change
training regenerates the file on purpose, in the same commit:

    .venv/bin/python tests/test_train_digests.py --write

The digests are of the torch version and CPU kernel level (`torch.backends.cpu.get_cpu_capability`:
AVX512, AVX2, ...) the file names: another version or another instruction set may sum in another
order (the last bits differ), so under another one the test is skipped, not failed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from retroplan.rl import RLConfig, rl
from retroplan.traces.suite import SuiteSpec, generate_suite
from retroplan.train import TrainConfig, train

GOLDEN = Path(__file__).parent / "data" / "train_digests.json"

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}
SIZES = {"train": 48, "val": 8, "test": 4}
TINY = dict(n_layer=1, n_head=2, n_embd=32, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=2,
            log_every=2, checkpoint_every=3, device="cpu", threads=1, precision="fp32", seed=3)

# (suite variant, suite options, train settings, steps of a first run resumed to `steps`)
CASES = {
    "plain": ("stream", {}, dict(TINY, steps=6, eval_every=2, curve_every=3, curve_examples=4,
                                 keep_steps=[2], context=36), None),
    "mixture": ("optimal+reverse", {}, dict(TINY, steps=6, dropout=0.1, long_examples="cut",
                                            context=27), None),
    "teacherless": ("optimal", {}, dict(TINY, steps=5, objective="teacherless", curve_every=5,
                                        curve_examples=4), None),
    "resumed": ("stream", {}, dict(TINY, steps=7, curve_every=2, curve_examples=4), 4),
}
# `rl` from an SFT run trained long enough to write some plans (so GRPO's groups differ):
# (rl settings, steps of a first run resumed to `steps`)
SFT = dict(TINY, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=5, steps=100, log_every=50,
           checkpoint_every=100)
RL = dict(steps=4, prompts_per_step=3, group_size=3, lr=1e-3, checkpoint_every=2, device="cpu", threads=1,
          seed=2)
RL_CASES = {
    "rl": (dict(RL, reward="shaped", updates_per_step=2, weight_decay=0.1, max_new_tokens=20), 2),
    "rl-rlp": (dict(RL, reward="verified+rlp", ema_decay=0.5), 2),
}

# wall-clock fields, and fields that change with the library's version (the suite's meta.json
# carries it, and with it its digests and the run identity)
UNPINNED = {"elapsed_s", "train_seconds", "curve_seconds", "rl_seconds", "tokens_per_second",
            "retroplan_version", "suite", "suite_meta_sha256", "suite_digest", "run_identity"}


def _pinned(record: dict) -> str:
    return json.dumps(_without_unpinned(record), sort_keys=True)


def _without_unpinned(value):
    if isinstance(value, dict):
        return {k: _without_unpinned(v) for k, v in value.items() if k not in UNPINNED}
    return value


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def run_digests(case: str, root: Path) -> dict[str, str]:
    """Train case `case` under `root`; the digest of each deterministic file it wrote (a JSON
    file or log by its records less `UNPINNED`, a tensor file by its bytes)."""
    variant, options, settings, first_steps = CASES[case] if case in CASES else ("stream", {}, SFT, None)
    suite = generate_suite(SuiteSpec("pathstar", variant, PATHSTAR, options, 5, SIZES), root / "suite",
                           progress=False)
    run = root / "run"
    threads = torch.get_num_threads()
    try:
        if first_steps:
            train(suite, run, TrainConfig(**dict(settings, steps=first_steps)), progress=False)
        summary = train(suite, run, TrainConfig(**settings), resume=bool(first_steps), progress=False)
        if case in RL_CASES:
            settings, first_steps = RL_CASES[case]
            parent, run = run, root / "rl"
            rl(parent, run, RLConfig(**dict(settings, steps=first_steps)), progress=False)
            summary = rl(None, run, RLConfig(**settings), resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    final = json.loads((run / "final.json").read_text())
    assert summary == final  # what train and rl return is what they wrote
    digests = {}
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        name = str(path.relative_to(run))
        if path.suffix == ".safetensors":
            digests[name] = _digest(path.read_bytes())
        elif path.suffix == ".json":
            digests[name] = _digest(_pinned(json.loads(path.read_text())))
        elif path.suffix == ".jsonl":
            digests[name] = _digest("\n".join(_pinned(json.loads(line))
                                              for line in path.read_text().splitlines()))
        else:
            raise AssertionError(f"{case}: train wrote {name}, which this test does not pin")
    return digests


def _machine() -> str:
    """What the bits of CPU training depend on besides the code: torch and its kernel level."""
    return f"torch {torch.__version__} on {torch.backends.cpu.get_cpu_capability()}"


@pytest.mark.parametrize("case", sorted(CASES) + sorted(RL_CASES))
def test_training_bytes_are_pinned(case, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    if golden["machine"] != _machine():
        pytest.skip(f"the digests are of {golden['machine']}, this is {_machine()}")
    assert case in golden["runs"], f"{case} has no pinned digests; run tests/test_train_digests.py --write"
    got = run_digests(case, tmp_path)
    want = golden["runs"][case]
    changed = sorted(f for f in set(got) | set(want) if got.get(f) != want.get(f))
    assert not changed, f"{case}: these files changed: {', '.join(changed)}"


def test_golden_file_names_exactly_the_cases():
    assert sorted(json.loads(GOLDEN.read_text())["runs"]) == sorted([*CASES, *RL_CASES])


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_train_digests.py --write")
    runs = {}
    for name in sorted([*CASES, *RL_CASES]):
        with tempfile.TemporaryDirectory() as tmp:
            runs[name] = run_digests(name, Path(tmp))
    GOLDEN.write_text(json.dumps({"machine": _machine(), "runs": runs}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(runs)} runs)")
