"""Mixtures: one model trained on several variants of the same instances, evaluated on
exactly the first component's prompts (traces/suite.py: write_rows)."""

import numpy as np
import pytest

from retroplan.errors import UserError
from retroplan.traces import check_variant, writes
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite

SIZES = {"train": 60, "val": 10, "test": 20}


@pytest.mark.parametrize("task,config,mixture", [
    ("pathstar", {"degree": 2, "path_len": 4, "num_nodes": 20}, "optimal+reverse"),
    ("graph", {}, "optimal+stream"),
    ("countdown", {}, "optimal+backward-stream"),
])
def test_a_mixture_is_the_baseline_plus_tagged_rows_of_the_same_instances(tmp_path, task, config, mixture):
    first, second = mixture.split("+")
    def make(variant, name):
        return open_suite(generate_suite(SuiteSpec(task, variant, config, {}, 5, SIZES), tmp_path / name,
                                         progress=False))

    base, other, mix = make(first, "b"), make(second, "o"), make(mixture, "m")
    assert mix.vocab == base.vocab and mix.variant == first and mix.name == mixture
    # held-out splits: exactly the baseline's rows, so the eval prompts are byte-identical
    for split in ("val", "test"):
        assert (tmp_path / "m" / f"{split}.tokens.npy").read_bytes() == \
               (tmp_path / "b" / f"{split}.tokens.npy").read_bytes()
        assert np.array_equal(mix.split(split).prompt_len, base.split(split).prompt_len)
    train, btrain, otrain = mix.split("train"), base.split("train"), other.split("train")
    n = len(btrain.lengths)
    assert len(train.lengths) == 2 * n
    assert np.array_equal(train.kind, np.repeat(np.array([0, 1], dtype=np.int8), n))
    tag = mix.vocab[f"[{second}]"]
    for r in range(n):
        # the first n rows are the baseline's own; row n + r is the other variant's row r with
        # [second] after <bos>, about the same instance
        assert train.prompt(r).tolist() == btrain.prompt(r).tolist()
        assert train.completion(r).tolist() == btrain.completion(r).tolist()
        p, q = train.prompt(n + r).tolist(), otrain.prompt(r).tolist()
        assert p == [q[0], tag] + q[1:]
        assert train.completion(n + r).tolist() == otrain.completion(r).tolist()
        assert train.instance[n + r] == train.instance[r]


def test_mixture_names_are_checked_and_say_what_the_model_writes():
    check_variant("pathstar", "optimal+reverse+stream")
    with pytest.raises(UserError, match="'revthink' cannot be mixed"):
        check_variant("pathstar", "optimal+revthink")
    with pytest.raises(UserError, match="names a component twice"):
        check_variant("graph", "optimal+reverse+reverse")
    check_variant("graph", "optimal+optimal")   # the first component once more: the data control
    with pytest.raises(UserError, match="unknown variant 'sideways'"):
        check_variant("graph", "sideways")
    assert writes("optimal+reverse") == "forward plan; trained with reverse rows too"
