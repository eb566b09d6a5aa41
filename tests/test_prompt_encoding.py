"""The digraph tasks' prompt encodings (trace option `prompt`): `edges` (the default, the shuffled
edge list) and `adjacency` (each node, then its successors). Same instances, same plans; only
the prompt's graph part differs."""

from __future__ import annotations

import numpy as np
import pytest

from retroplan.envs import graph, pathstar
from retroplan.errors import UserError
from retroplan.tasks import check_grammar
from retroplan.traces import digraphs
from retroplan.traces.common import VARIANTS
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite

SIZES = {"train": 12, "val": 4, "test": 8}
CASES = [("graph", {"num_nodes": 10, "min_distance": 2, "max_distance": 4}),
         ("pathstar", {"degree": 3, "path_len": 4, "num_nodes": 20})]


def _suite(tmp_path, task, config, variant, prompt, seed=3, name=None):
    folder = tmp_path / (name or f"{task}-{variant}-{prompt}")
    return open_suite(generate_suite(SuiteSpec(task, variant, config, {"prompt": prompt}, seed, SIZES),
                                     folder, progress=False))


def _groups(prompt: list[int]) -> list[list[int]]:
    """The prompt's graph part as its `|`-separated groups of node labels."""
    body = prompt[1: prompt.index(digraphs.SLASH)]
    groups, group = [], []
    for t in body + [digraphs.BAR]:
        if t == digraphs.BAR:
            groups.append(group)
            group = []
        else:
            assert t >= digraphs.NODE0, "only nodes and `|` in the graph part"
            group.append(t - digraphs.NODE0)
    return groups


@pytest.mark.parametrize("task,config", CASES)
def test_adjacency_lists_exactly_each_nodes_successors_once(tmp_path, task, config):
    suite = _suite(tmp_path, task, config, "optimal", "adjacency")
    for split in ("train", "test"):
        data = suite.split(split)
        for r in range(len(data.lengths)):
            i = int(data.instance[r])
            edges = data.instances["edges"][i]
            groups = _groups(data.prompt(r).tolist())
            sources = [g[0] for g in groups]
            assert len(sources) == len(set(sources)), "each node heads at most one group"
            assert sorted(sources) == sorted(set(edges[:, 0].tolist())), "exactly the nodes with successors"
            for g in groups:
                assert len(g) >= 2
                assert sorted(g[1:]) == sorted(edges[edges[:, 0] == g[0], 1].tolist())
            # the question after the graph is the same as edges' `/ s g =`
            tail = data.prompt(r).tolist()[-4:]
            assert tail == [digraphs.SLASH, digraphs.NODE0 + int(data.instances["start"][i]),
                            digraphs.NODE0 + int(data.instances["goal"][i]), digraphs.EQ]


def test_adjacency_orders_are_drawn_per_instance(tmp_path):
    """The nodes' order and each node's successors are shuffled per instance, not sorted and not
    the edge list's order."""
    suite = _suite(tmp_path, "graph", {"num_nodes": 10, "min_distance": 2, "max_distance": 4,
                                       "out_degree": 3}, "optimal", "adjacency")
    data = suite.split("train")
    orders, unsorted_successors, not_edge_order = set(), 0, 0
    for r in range(len(data.lengths)):
        groups = _groups(data.prompt(r).tolist())
        edges = data.instances["edges"][int(data.instance[r])]
        orders.add(tuple(g[0] for g in groups))
        unsorted_successors += sum(g[1:] != sorted(g[1:]) for g in groups)
        not_edge_order += sum(g[1:] != edges[edges[:, 0] == g[0], 1].tolist() for g in groups)
    assert len(orders) == len(data.lengths), "every instance draws its own node order"
    assert unsorted_successors > 0 and not_edge_order > 0


@pytest.mark.parametrize("task,config", CASES)
def test_adjacency_is_deterministic_and_changes_only_the_graph_part(tmp_path, task, config):
    for variant in VARIANTS:
        adj = _suite(tmp_path, task, config, variant, "adjacency")
        edges = _suite(tmp_path, task, config, variant, "edges")
        again = _suite(tmp_path, task, config, variant, "adjacency", name=f"{task}-{variant}-again") \
            if variant in ("optimal", "revthink", "stream") else adj
        for split in ("train", "val", "test"):
            a, b, e = adj.split(split), again.split(split), edges.split(split)
            assert np.array_equal(a.tokens, b.tokens), f"{variant} {split}: same seed, same bytes"
            # same instances, same rows, same completions: only the prompt's graph is written
            # differently (and never longer)
            for key in e.instances:
                assert np.array_equal(a.instances[key], e.instances[key])
            assert np.array_equal(a.instance, e.instance) and np.array_equal(a.kind, e.kind)
            assert np.all(a.prompt_len <= e.prompt_len)
            for r in range(len(a.lengths)):
                assert a.completion(r).tolist() == e.completion(r).tolist() or \
                    (variant == "revthink" and a.kind[r] == 1), f"{variant} {split} row {r}"
                pa, pe = a.prompt(r).tolist(), e.prompt(r).tolist()
                assert pa[pa.index(digraphs.SLASH):] == pe[pe.index(digraphs.SLASH):]
                assert digraphs.prompt_successors(pa, len(adj.vocab)).keys() == \
                    digraphs.prompt_successors(pe, len(adj.vocab)).keys()


def test_every_row_of_an_instance_writes_the_same_graph(tmp_path):
    """A mixture's rows and RevThink's three rows of one instance list its graph identically (the
    order is drawn from (seed, split, index), never from the variant)."""
    config = {"num_nodes": 10, "min_distance": 2, "max_distance": 4}
    mix = _suite(tmp_path, "graph", config, "optimal+stream", "adjacency")
    rev = _suite(tmp_path, "graph", config, "revthink", "adjacency")
    for suite in (mix, rev):
        data = suite.split("train")
        seen: dict[int, list[list[int]]] = {}
        for r in range(len(data.lengths)):
            prompt = data.prompt(r).tolist()
            start = next(k for k, t in enumerate(prompt) if t >= digraphs.NODE0)  # past tags
            graph_part = prompt[start: prompt.index(digraphs.SLASH)]
            seen.setdefault(int(data.instance[r]), []).append(graph_part)
        assert all(len(v) >= 2 and all(g == v[0] for g in v) for v in seen.values())


@pytest.mark.parametrize("task", [graph, pathstar])
def test_every_variant_writes_and_parses_with_adjacency(task):
    check_grammar(digraphs, task, options=digraphs.Options(prompt="adjacency"))


def test_prompt_successors_reads_both_encodings_alike(tmp_path):
    config = {"num_nodes": 10, "min_distance": 2, "max_distance": 4}
    for prompt in ("edges", "adjacency"):
        data = _suite(tmp_path, "graph", config, "optimal", prompt).split("test")
        for r in range(len(data.lengths)):
            edges = data.instances["edges"][int(data.instance[r])]
            got = digraphs.prompt_successors(data.prompt(r), 64)
            want = {int(u): sorted(edges[edges[:, 0] == u, 1].tolist()) for u in set(edges[:, 0].tolist())}
            assert {u: sorted(v) for u, v in got.items()} == want
            if prompt == "edges":  # the edge list's order, which the arm probe used before
                assert got == {u: edges[edges[:, 0] == u, 1].tolist() for u in want}


def test_a_bad_prompt_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="prompt must be one of edges, adjacency, got 'adjacent'"):
        generate_suite(SuiteSpec("graph", "optimal", {}, {"prompt": "adjacent"}, 0, SIZES), tmp_path / "x",
                       progress=False)


def test_the_arm_probe_label_is_the_first_moves_place_in_the_prompt(tmp_path):
    from retroplan.probe import target_positions

    config = {"degree": 3, "path_len": 4, "num_nodes": 20}
    moved = 0
    for prompt in ("edges", "adjacency"):
        suite = _suite(tmp_path, "pathstar", config, "optimal", prompt)
        split = suite.split("test")
        rows = np.arange(len(split.lengths))
        arm = target_positions(suite, split, rows, "arm")
        for r, label in zip(arm.rows, arm.labels):
            i = int(split.instance[r])
            start, first_move = int(split.instances["start"][i]), int(split.instances["plan"][i, 1])
            # the start's successors as the prompt lists them: its groups' tails, in order
            in_prompt = [v for g in _groups(split.prompt(r).tolist()) if g[0] == start for v in g[1:]]
            assert label == in_prompt.index(first_move)
            edges = split.instances["edges"][i]
            moved += label != edges[edges[:, 0] == start, 1].tolist().index(first_move)
    assert moved > 0, "adjacency reorders the start's successors, and the label follows the prompt"
