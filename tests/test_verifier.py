"""The verifier cannot be fooled and cannot be crashed.

Every verdict eval reports comes from `eval.judge` (parse the completion with the task's
grammar, replay the plan in the task's environment). Here it is checked against an
independent replay written in plain Python in this file, from the completion's *text*:

* property tests (hypothesis): on arbitrary and on mutated model outputs, judge never raises,
  and every plan it accepts is accepted by the independent replay;
* the known bad plans, each rejected.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retroplan.envs import digraph
from retroplan.eval import judge
from retroplan.traces import digraphs
from retroplan.traces.suite import open_suite

GRAPH_CONFIGS = {"pathstar": {"degree": 3, "path_len": 4, "num_nodes": 20},
                 "graph": {"num_nodes": 10, "out_degree": 2, "min_distance": 2, "max_distance": 5}}


# --------------------------------------------------------------- the independent replay


def plan_from_text(variant: str, words: list[str]) -> list[int] | None:
    """The forward plan a graph completion states, read from its words alone (None: it
    states none). Written from the grammar's description, not from its code."""
    if "<eos>" not in words:
        return None
    words = words[: words.index("<eos>")]
    if variant == "lookahead":  # drop every <T> ... </T> span
        kept, inside = [], False
        for w in words:
            if w == "<T>":
                if inside:
                    return None
                inside = True
            elif w == "</T>":
                if not inside:
                    return None
                inside = False
            elif not inside:
                kept.append(w)
        if inside:
            return None
        words = kept
    elif variant not in ("optimal", "reverse", "revthink"):  # the plan follows the first `;`
        if ";" not in words:
            return None
        words = words[words.index(";") + 1:]
    if not all(w.isdigit() for w in words):
        return None  # (an empty list is a plan: the empty one, which goes nowhere)
    plan = [int(w) for w in words]
    return plan[::-1] if variant == "reverse" else plan


def walks_from_start_to_goal(edges, start: int, goal: int, plan: list[int]) -> bool:
    if not plan or plan[0] != start or plan[-1] != goal:
        return False
    edge_set = {(int(u), int(v)) for u, v in edges}
    return all((a, b) in edge_set for a, b in zip(plan, plan[1:]))


# --------------------------------------------------------------- properties


@st.composite
def model_outputs(draw, suite, data):
    """(instance, completion ids): a test row's reference completion, mutated a few times
    with tokens that mean something here (its instance's node labels, grammar words), or
    arbitrary integers."""
    r = draw(st.integers(0, len(data) - 1))
    i = int(data.instance[r])
    if draw(st.booleans()):
        token = st.integers(-(2**40), 2**40) | st.integers(-3, len(suite.vocab) + 3)
        ids = draw(st.lists(token, max_size=40))
        return i, ids
    ids = [int(t) for t in data.completion(r)]
    nodes = sorted({int(u) for e in data.instances["edges"][i] for u in e})
    useful = [digraphs.NODE0 + n for n in nodes] + list(range(digraphs.NODE0))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "insert", "replace", "swap"]))
        pos = draw(st.integers(0, max(0, len(ids) - 1)))
        if op == "drop" and ids:
            del ids[pos]
        elif op == "insert":
            ids.insert(pos, draw(st.sampled_from(useful)))
        elif op == "replace" and ids:
            ids[pos] = draw(st.sampled_from(useful))
        elif op == "swap" and len(ids) > 1:
            other = draw(st.integers(0, len(ids) - 1))
            ids[pos], ids[other] = ids[other], ids[pos]
    return i, ids


@pytest.mark.parametrize("variant", digraphs.VARIANTS)
@pytest.mark.parametrize("task", sorted(GRAPH_CONFIGS))
def test_every_plan_judge_accepts_is_accepted_by_an_independent_replay(make_suite, task, variant):
    suite = open_suite(make_suite(task, variant, GRAPH_CONFIGS[task],
                                  sizes={"train": 20, "val": 5, "test": 40}))
    data = suite.split("test")
    accepted, seen = [], []

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(output=model_outputs(suite, data))
    def check(output):
        i, ids = output
        verdict = judge(suite, data.instances, i, ids)  # must not raise, whatever the ids
        seen.append(ids)
        assert isinstance(verdict["correct"], bool)
        assert (verdict["plan"] is None) == (verdict["parse_error"] is not None)
        words = [suite.vocab.tokens[t] if 0 <= t < len(suite.vocab) else "?" for t in ids]
        stated = plan_from_text(variant, words)
        if verdict["plan"] is not None:
            assert verdict["plan"] == stated  # the parser reads what the text says
        inst = suite.task.instance_at(data.instances, i)
        independent = walks_from_start_to_goal(inst["edges"], inst["start"], inst["goal"], stated or [])
        if verdict["correct"]:
            assert independent, (words, verdict)
            accepted.append(ids)
        if verdict["plan"] is not None:  # and, given a plan, they agree both ways
            assert verdict["correct"] == independent, (words, verdict)

    check()
    assert 0 < len(accepted) < len(seen)  # not vacuous: judge accepted some plans, rejected others


@settings(max_examples=400, deadline=None)
@given(num_nodes=st.integers(2, 8), data=st.data())
def test_graph_replay_agrees_with_an_independent_replay_on_any_plan(num_nodes, data):
    nodes = st.integers(0, num_nodes - 1)
    edges = data.draw(st.lists(st.tuples(nodes, nodes), max_size=20))
    start, goal = data.draw(nodes), data.draw(nodes)
    plan = data.draw(st.lists(st.integers(-2, num_nodes + 2), max_size=8))
    ok, reason = digraph.replay_plan({"edges": edges, "start": start, "goal": goal}, plan)
    assert ok == walks_from_start_to_goal(edges, start, goal, plan), reason
    assert isinstance(reason, str) and reason


# --------------------------------------------------------------- known bad plans

# edges 0>3 3>7 0>5 5>2 (the design's example), start 0, goal 2
EXAMPLE = {"edges": [[0, 3], [3, 7], [0, 5], [5, 2]], "start": 0, "goal": 2}


@pytest.mark.parametrize("plan,why", [
    ([0, 5, 2], None),
    ([], "empty plan"),
    ([5, 2], "not at the start"),                     # does not begin at the start
    ([0, 2], "0->2 is not an edge"),                  # a jump: not an edge
    ([0, 3, 2], "3->2 is not an edge"),               # a non-edge in the middle
    ([0, 5, 0, 5, 2], "5->0 is not an edge"),         # an edge walked backwards
    ([0, 3, 7], "not at the goal"),                   # a path that does not end at the goal
    ([0, 5], "not at the goal"),                      # stops short
    ([0, 5, 2, 5], "2->5 is not an edge"),            # goes past the goal
    ([0, 5, 2, 9], "2->9 is not an edge"),            # to a node that does not exist
    ([2], "not at the start"),                        # the goal alone
])
def test_known_bad_graph_plans_are_rejected(plan, why):
    ok, reason = digraph.replay_plan(EXAMPLE, plan)
    assert ok == (why is None)
    if why:
        assert why in reason
    assert ok == walks_from_start_to_goal(EXAMPLE["edges"], 0, 2, plan)


@pytest.mark.parametrize("variant,text", [
    ("optimal", "0 2 <eos>"),                                        # non-edge
    ("optimal", "0 3 7 <eos>"),                                      # wrong end
    ("optimal", "0 5 2"),                                            # never finished (no <eos>)
    ("optimal", "0 go 5 2 <eos>"),                                   # not a node
    ("reverse", "0 5 2 <eos>"),                                      # forward where reverse is asked
    ("revfwd", "2 5 0 0 5 2 <eos>"),                                 # no `;`
    ("lookahead", "0 <T> 2 </T> <T> 5 2 <eos>"),                     # span never closed
    ("lookahead", "0 <T> 5 2 </T> <eos>"),                           # the plan is only in the span
    ("stream", "at 0 5 2 goal ; 0 3 7 <eos>"),                       # right stream, wrong plan
    ("stream", "5 2 goal ; 0 5 2 <eos>"),                            # stream without `at`
    ("backward-stream", "at 2 5 0 start ; 2 5 0 <eos>"),             # plan written backwards
    ("corrupted", "at 0 3 7 dead back 0 ; 0 2 <eos>"),               # non-edge after a stream
])
def test_known_bad_completions_are_rejected_by_judge(make_suite, variant, text):
    suite = open_suite(make_suite("pathstar", variant, {"degree": 2, "path_len": 3, "num_nodes": 8},
                                  sizes={"train": 4, "val": 1, "test": 1}))
    instances = {k: np.asarray(v, dtype=np.int32) for k, v in {
        "edges": [EXAMPLE["edges"]], "start": [0], "goal": [2], "plan": [[0, 5, 2]], "plan_len": [3]}.items()}
    verdict = judge(suite, instances, 0, suite.vocab.encode(text))
    assert not verdict["correct"], verdict
    good = {"optimal": "0 5 2 <eos>", "reverse": "2 5 0 <eos>", "revfwd": "2 5 0 ; 0 5 2 <eos>",
            "lookahead": "0 <T> 2 </T> 5 2 <eos>", "stream": "at 0 5 2 goal ; 0 5 2 <eos>",
            "backward-stream": "at 2 5 0 start ; 0 5 2 <eos>",
            "corrupted": "at 0 3 7 dead back 0 ; 0 5 2 <eos>"}[variant]
    assert judge(suite, instances, 0, suite.vocab.encode(good))["correct"]  # the check can pass
