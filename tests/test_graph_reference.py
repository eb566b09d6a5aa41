"""The Numba path-star sampler, DFS and stream writer agree token for token with a plain-Python
re-derivation (retroplan/reference/digraph.py): the speed benchmark compares like with
like, and the kernels do what their docstrings say."""

import numpy as np
import pytest

from retroplan.reference.digraph import stream_row
from retroplan.traces.suite import open_suite


@pytest.mark.parametrize("config", [{"degree": 2, "path_len": 5, "num_nodes": 50},
                                    {"degree": 5, "path_len": 4, "num_nodes": 30}])
def test_numba_stream_rows_equal_the_plain_python_ones(make_suite, config):
    suite = open_suite(make_suite("pathstar", "stream", config, seed=3))
    for split in ("train", "test"):
        data = suite.split(split)
        for r in range(len(data)):
            row, prompt_len = stream_row(config["degree"], config["path_len"], config["num_nodes"],
                                         3, split, int(data.index[data.instance[r]]))
            assert row == data.row(r).tolist() and prompt_len == data.prompt_len[r]
    assert np.any(suite.split("train").lengths != suite.split("train").lengths[0])  # real variety
