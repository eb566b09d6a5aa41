import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))
# One torch thread per test process, child processes included (they inherit the variable). The
# suite's models are tiny, so a second thread buys little, and on a loaded 2-core machine threads
# beyond the free cores only wait for each other: a KV-cache test took 98 s with 2 threads and
# 5.1 s with 1. Tests that are about thread counts set their own (`threads = 1` in a study file,
# NUMBA_NUM_THREADS in test_determinism.py).
os.environ["OMP_NUM_THREADS"] = "1"


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)  # in case torch was imported before this file set the variable


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite in two processes (pytest-xdist, `--dist loadgroup`). Each test
    file is one group, so a file's module fixtures are built once, in one process; a test marked
    `xdist_group("ray")` keeps its own mark, so the tests that start a local Ray cluster run
    one after the other in one process, never two clusters side by side."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.name))


@pytest.fixture(scope="session")
def make_suite(tmp_path_factory):
    """Generate (once per session) a small suite for a task/variant/config."""
    from retroplan.traces.suite import SuiteSpec, generate_suite

    made = {}

    def make(task="pathstar", variant="optimal", config=None, sizes=None, seed=0, options=None):
        config = config or {}
        sizes = sizes or {"train": 300, "val": 40, "test": 60}
        key = (task, variant, tuple(sorted(config.items())), tuple(sorted(sizes.items())), seed,
               tuple(sorted((options or {}).items())))
        if key not in made:
            out = tmp_path_factory.mktemp("suite") / f"{task}-{variant}"
            spec = SuiteSpec(task=task, variant=variant, config=config, sizes=sizes, seed=seed,
                             options=options or {})
            made[key] = generate_suite(spec, out, progress=False)
        return made[key]

    return make


def save_tiny_gpt2(suite_path, folder):
    """A random 1-layer GPT-2 and a word-level tokenizer over the suite's words (plus <unk>),
    saved with save_pretrained into `folder` (for `eval-hf`; needs the `hf` extra)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from retroplan.traces.suite import open_suite

    torch.set_num_threads(1)
    vocab = open_suite(suite_path).vocab
    words = vocab.tokens + ["<unk>"]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(words), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                        initializer_range=0.5,  # varied outputs, not one repeated token
                        bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def assert_same_files(a: Path, b: Path) -> None:
    """The folders `a` and `b` hold files of the same names with the same bytes (not recursive)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"


# ------------------------------------------------ an independent replay of a Countdown plan
# Written in plain Python from the task's rules alone (docs/DESIGN.md), sharing no code with
# retroplan: inputs form a multiset; a step `a op b=c` takes two numbers that are still there
# (each input used once, intermediate results usable once), with op one of + * - (larger minus
# smaller) and / (exact, larger by smaller), and puts c back, where c must be the true result;
# the plan is right when exactly one number is left and it is the target.

OPERATIONS = {"+": lambda a, b: a + b, "*": lambda a, b: a * b,
              "-": lambda a, b: a - b if a >= b else None,
              "/": lambda a, b: a // b if b and a >= b and a % b == 0 else None}


def read_step(step: str):
    """`a op b=c` -> (a, op, b, c) with ASCII digits only, or None."""
    if not isinstance(step, str) or step.count("=") != 1:
        return None
    left, result = (part.strip() for part in step.split("="))
    for symbol in OPERATIONS:
        if symbol in left:
            a, _, b = left.partition(symbol)
            a, b = a.strip(), b.strip()
            parts = (a, b, result)
            if all(p and p.isascii() and p.isdigit() for p in parts):
                return int(a), symbol, int(b), int(result)
    return None


def independent_replay(numbers, target: int, plan, operations: str = "+-*/") -> bool:
    """Whether the Countdown `plan` (a list of `a op b=c` steps) turns `numbers` into `target`."""
    if not plan:
        return False
    pool = Counter(int(n) for n in numbers)
    for step in plan:
        parsed = read_step(step)
        if parsed is None:
            return False
        a, symbol, b, c = parsed
        if symbol not in operations:
            return False
        pool[a] -= 1
        pool[b] -= 1
        if pool[a] < 0 or pool[b] < 0:  # not there (any more): reused or never available
            return False
        if OPERATIONS[symbol](a, b) != c:  # wrong, inexact, or larger from smaller
            return False
        pool[c] += 1
    left = [n for n, k in pool.items() for _ in range(k)]
    return left == [target]


def folder_bytes(root: Path) -> dict[str, str]:
    """Every entry under `root` (recursive): a file by the sha256 of its bytes, a folder as
    "dir", a link by its target. Equal before and after a refused command: it changed nothing."""
    import hashlib

    entries = {}
    for p in sorted(Path(root).rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            entries[key] = "link:" + os.readlink(p)
        elif p.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return entries
