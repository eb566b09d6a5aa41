"""Behaviour metrics on hand-built graph traces whose every value is known."""

import numpy as np
import pytest
import torch

from retroplan.decoding import TIPPenalty, pass_at_k
from retroplan.envs import digraph, pathstar
from retroplan.events import Event
from retroplan.metrics import analyse_stream, has_self_loop, summarize_behaviour
from retroplan.models import GPT, PRESETS, GPTConfig, generate
from retroplan.traces import digraphs

START, GO, BACK, GOAL, JUMP = Event.START, Event.GO, Event.BACK, Event.GOAL, Event.JUMP

CFG = pathstar.Config(degree=2, path_len=3, num_nodes=8)
VOCAB = digraphs.make_vocab(CFG)


def instances(edges, start, goal):
    plan = np.full((1, 8), -1, dtype=np.int32)
    n = digraph.shortest_plan(np.array(edges, dtype=np.int32), start, goal, 8, plan[0])
    return {"edges": np.array([edges], dtype=np.int32), "start": np.array([start], dtype=np.int32),
            "goal": np.array([goal], dtype=np.int32), "plan": plan, "plan_len": np.array([n], np.int32)}


# a path-star: 0 -> 1 -> 2 (a dead arm) and 0 -> 3 -> 4 (the goal arm)
STAR = instances([[0, 1], [1, 2], [0, 3], [3, 4]], 0, 4)
# two routes to the goal: 0 -> 1 -> 4 and 0 -> 3 -> 4
DIAMOND = instances([[0, 1], [1, 4], [0, 3], [3, 4]], 0, 4)


def run(text, inst=STAR, variant="stream"):
    ids = VOCAB.encode(text)
    parsed = digraphs.parse(variant, ids, VOCAB)
    assert parsed.error is None, parsed.error
    walk = digraph.Walk(CFG, inst, 0, backward=parsed.backward)
    return parsed, analyse_stream(parsed.events, parsed.event_ends, walk)


def test_a_necessary_backtrack():
    _, st = run("at 0 1 2 dead back 0 3 4 goal ; 0 3 4 <eos>")
    assert (st.steps, st.moves, st.backtracks, st.invalid, st.redundant) == (5, 4, 1, 0, 0)
    assert (st.necessary, st.premature) == (1, 0)
    assert st.backtrack_depths["necessary"] == [2]
    assert st.entered == 5 and st.root_distance == 2 and st.thoughts == 2
    assert st.expanded == 3                 # moves left 0, 1 and 3; 2 is a dead end, 4 the goal
    assert st.first_live_thought_end == 10  # "... back 0 3 4 goal" ends after token 10
    assert st.tokens == 10                  # the stream's own tokens: "; 0 3 4" is not in T
    assert not st.self_loop and st.false_goal == 0


def test_a_premature_backtrack_and_the_underthinking_score():
    parsed, st = run("at 0 3 dead back 0 1 2 dead ; 0 1 2 <eos>")
    assert (st.premature, st.necessary) == (1, 0)       # 3 still had the live child 4
    assert st.backtrack_depths["premature"] == [1]
    assert st.first_live_thought_end == 4                # the thought "3 dead" was live
    assert st.tokens == 9                                # T: the stream, not "; 0 1 2"
    block = summarize_behaviour([st], [False])
    assert block["premature_backtracks"] == {"value": 1.0, "n": 1}
    assert block["failed_with_premature"] == {"value": 1.0, "n": 1}
    assert block["xi_ut"]["value"] == pytest.approx(1 - 4 / 9)


def test_an_invalid_move_and_an_invalid_backtrack():
    _, st = run("at 0 2 dead back 3 dead back 0 3 4 goal ; 0 3 4 <eos>")
    assert st.invalid_kinds == {"not_available": 1, "bad_backtrack": 1}  # 0->2; 3 never entered
    assert (st.steps, st.invalid, st.invalid_backtracks, st.necessary) == (5, 2, 1, 1)
    block = summarize_behaviour([st], [True])
    assert block["trace_validity"] == {"value": pytest.approx(3 / 5), "n": 5}
    # the stream is followed where it claims to be: after the illegal 0->2, 2->4 is judged from 2
    _, st2 = run("at 0 2 4 goal ; 0 3 4 <eos>")
    assert st2.invalid == 2


def test_a_revisit_is_redundant_and_counts_as_wandering():
    _, st = run("at 0 1 2 dead back 0 1 2 dead back 0 3 4 goal ; 0 3 4 <eos>")
    # re-entering 1, which a move had already left, is a re-expansion; stepping on to the dead
    # leaf 2 again is not (2 was never expanded): redundant = 1
    assert st.redundant == 1 and st.invalid == 0 and st.steps == 8
    block = summarize_behaviour([st], [True])
    assert block["wandering"] == {"value": pytest.approx(1 / 8), "n": 8}
    assert block["redundant_moves"]["value"] == pytest.approx(1 / 6)


def test_a_self_loop():
    _, st = run("at 0 1 back 0 1 back 0 1 back 0 3 4 goal ; 0 3 4 <eos>")
    assert st.self_loop
    assert has_self_loop(["a", "b", "c"] * 3) and not has_self_loop(["a", "b", "c"] * 2)
    assert not has_self_loop(list("abcdefghi") * 2)
    assert has_self_loop(list("abcdefgh") * 3) and not has_self_loop(list("abcdefghi") * 3)


def test_a_false_goal_claim():
    _, st = run("at 0 1 goal ; 0 1 <eos>")
    assert st.false_goal == 1


def test_a_plan_that_differs_from_the_streams_path_is_not_faithful():
    from retroplan.eval import judge

    class Suite:  # judge needs only these attributes
        task, grammar, vocab, variant, config = pathstar, digraphs, VOCAB, "stream", CFG

    faithful = judge(Suite, DIAMOND, 0, VOCAB.encode("at 0 1 4 goal ; 0 1 4 <eos>"))
    other = judge(Suite, DIAMOND, 0, VOCAB.encode("at 0 1 4 goal ; 0 3 4 <eos>"))
    assert faithful["correct"] and faithful["faithful"]
    assert other["correct"] and not other["faithful"]


def test_backward_streams_are_judged_along_reversed_edges():
    _, st = run("at 4 3 0 start ; 0 3 4 <eos>", variant="backward-stream")
    assert st.invalid == 0 and st.root_distance == 2 and st.false_goal == 0
    _, bad = run("at 4 1 0 start ; 0 1 2 <eos>", variant="backward-stream")
    assert bad.invalid_kinds == {"not_available": 1}


def test_efficiency_and_teacher_comparison():
    _, model = run("at 0 3 4 goal ; 0 3 4 <eos>")
    _, teacher = run("at 0 1 2 dead back 0 3 4 goal ; 0 3 4 <eos>")
    block = summarize_behaviour([model], [True], [teacher])
    # a perfect trace expands d* states (the root and the states before the goal): 1
    assert block["efficiency_dstar_over_expanded"]["value"] == pytest.approx(1.0)
    assert block["states_teacher_over_model"]["value"] == pytest.approx(3 / 2)
    # Searchformer's ILR: teacher tokens / model tokens, > 1 when the model's trace is shorter
    assert (teacher.tokens, model.tokens) == (10, 5)
    assert block["ilr"]["value"] == pytest.approx(2.0)


# --------------------------------------------------------------------------- TIP


def tracker_for(inst=STAR):
    return digraphs.StreamTracker(digraph.Walk(CFG, inst, 0))


def test_tip_penalises_switches_only_early_in_a_thought_with_a_legal_move_left():
    tip = TIPPenalty([tracker_for()], digraphs.StreamTracker.switch_tokens, alpha=5.0, beta=2)
    logits = torch.zeros(1, len(VOCAB))
    history = []

    def step(token=None):
        if token is not None:
            history.append(VOCAB[token])
        out = tip(logits.clone(), torch.tensor([history], dtype=torch.long).reshape(1, -1))
        return float(out[0, digraphs.DEAD_T]), float(out[0, digraphs.BACK_T])

    assert step() == (0.0, 0.0)             # before the stream
    step("at")
    assert step("0") == (-5.0, -5.0)        # at the root, no move yet, children left
    assert step("1") == (-5.0, -5.0)        # one move in (< beta), 1 -> 2 still untried
    assert step("2") == (0.0, 0.0)          # two moves: the thought is long enough
    step("dead")
    step("back")
    assert step("0") == (-5.0, -5.0)        # a new thought, 0 -> 3 untried

    def penalties(hook, words):
        """Feed `words` one decoding step at a time (the hook sees each new last token once,
        as in generate) and return the DEAD logit after each."""
        ids = [VOCAB[w] for w in words.split()]
        return [float(hook(logits.clone(), torch.tensor([ids[:t]], dtype=torch.long).reshape(1, -1))
                      [0, digraphs.DEAD_T]) for t in range(1, len(ids) + 1)]

    plain = TIPPenalty([tracker_for()], digraphs.StreamTracker.switch_tokens, 5.0, 2)
    oracle = TIPPenalty([tracker_for()], digraphs.StreamTracker.switch_tokens, 5.0, 2, oracle=True)
    # after `at`, `at 0`, `at 0 1`: the tracker stands on 0, then on 1 with 1 -> 2 untried
    assert penalties(plain, "at 0 1") == [0.0, -5.0, -5.0]
    # the oracle gate: 0 reaches the goal (penalised), 1 cannot (no penalty)
    assert penalties(oracle, "at 0 1") == [0.0, -5.0, 0.0]


def test_tip_with_large_alpha_never_switches_while_penalised_and_alpha_zero_is_greedy():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(VOCAB), block_size=48, **PRESETS["tiny"]))
    prompt = torch.tensor([VOCAB.encode("<bos> 0 1 | 1 2 | 0 3 | 3 4 / 0 4 =")] * 4)
    script = ["at", "0"]  # make the model start a stream, then love switching thoughts

    def eager_switcher(logits, generated):
        t = generated.shape[1]
        logits = logits.clone()
        if t < len(script):
            logits[:, VOCAB[script[t]]] += 1e4
        elif t == len(script):
            logits[:, VOCAB["1"]] += 1e4
        else:
            logits[:, digraphs.DEAD_T] += 50
        return logits

    trackers = [tracker_for() for _ in range(4)]
    tip = TIPPenalty(trackers, digraphs.StreamTracker.switch_tokens, alpha=1e6, beta=3)
    out = generate(model, prompt, 20, VOCAB.eos_id, logits_hook=lambda lg, g: tip(eager_switcher(lg, g), g))
    checker = [tracker_for() for _ in range(4)]
    penalised_somewhere = False
    for row, tr in zip(out.tolist(), checker):
        for token in row:
            if tr.should_penalise(3, False):
                penalised_somewhere = True
                assert token not in digraphs.StreamTracker.switch_tokens
            tr.feed(token)
    assert penalised_somewhere
    plain = generate(model, prompt, 20, VOCAB.eos_id, logits_hook=eager_switcher)
    zero = TIPPenalty([tracker_for() for _ in range(4)], digraphs.StreamTracker.switch_tokens, 0.0, 3)
    same = generate(model, prompt, 20, VOCAB.eos_id, logits_hook=lambda lg, g: zero(eager_switcher(lg, g), g))
    assert torch.equal(plain, same)
    assert not torch.equal(plain, out)


def test_pass_at_k():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(5, 2, 4) == 1.0


# --------------------------------------------------------------------------- reviewer fixes


class StreamSuite:  # judge needs only these attributes
    task, grammar, vocab, variant, config = pathstar, digraphs, VOCAB, "stream", CFG


def test_faithful_accuracy_counts_unparseable_outputs_in_its_denominator():
    from retroplan.eval import judge, summarize

    good = "at 0 3 4 goal ; 0 3 4 <eos>"
    unfinished = "at 0 1 2 dead back 0 1 2"                      # no <eos>
    records = []
    for text in [good] * 4 + [unfinished] * 6:
        verdict = judge(StreamSuite, STAR, 0, VOCAB.encode(text))
        verdict.pop("behaviour")
        verdict.update(tf_token_acc=1.0, tf_first_token=True, tf_exact=True, generated_tokens=1)
        records.append(verdict)
    block = summarize(records, [])
    assert block["accuracy"] == {"value": pytest.approx(0.4), "n": 10}
    assert block["faithful_accuracy"] == {"value": pytest.approx(0.4), "n": 10}   # was 1.0 over n = 4
    assert block["faithful_accuracy"]["value"] <= block["accuracy"]["value"]


def test_an_unfinished_stream_is_judged_as_far_as_it_goes_and_counts_as_failed():
    from retroplan.eval import judge

    verdict = judge(StreamSuite, STAR, 0, VOCAB.encode("at 0 3 dead back 0 1 1 1 back"))
    st = verdict["behaviour"]
    assert verdict["plan"] is None and not verdict["correct"] and not verdict["faithful"]
    assert st is not None and not st.finished
    # at 0 | 3 | dead | back 0 (premature: 3 -> 4 untried) | 1 | 1 | 1 (two invalid
    # self-moves) | a cut-off "back" (no node after it) is dropped
    assert (st.moves, st.backtracks, st.premature, st.invalid) == (4, 1, 1, 2)
    assert st.tokens == 9
    block = summarize_behaviour([st], [verdict["correct"]])
    assert block["unfinished_streams"] == {"value": 1.0, "n": 1}
    assert block["failed_with_premature"] == {"value": 1.0, "n": 1}
    assert block["xi_ut"] == {"value": pytest.approx(1 - 4 / 9), "n": 1}
    # garbage mid-stream: the events before it are kept, the plan is a failure
    garbage = judge(StreamSuite, STAR, 0, VOCAB.encode("at 0 3 | 4 goal ; 0 3 4 <eos>"))
    assert garbage["plan"] is None and garbage["behaviour"].moves == 1


def test_xi_ut_counts_the_stream_only_and_a_single_thought_scores_zero():
    # one live thought that fails: T-hat = T, and the plan after `;` is not part of T
    _, st = run("at 0 3 dead ; 0 3 <eos>")
    assert st.thoughts == 1 and st.tokens == 4
    block = summarize_behaviour([st], [False])
    assert block["xi_ut"] == {"value": 0.0, "n": 1}


def test_breadth_first_jumps_are_valid_and_not_redundant_or_backtracks():
    from retroplan.eval import judge

    text = "at 0 1 at 0 3 at 1 4 goal ; 0 1 4 <eos>"
    parsed, st = run(text, inst=DIAMOND)
    assert [e[0] for e in parsed.events] == [START, GO, JUMP, GO, JUMP, GO, GOAL]
    assert (st.steps, st.jumps, st.backtracks, st.invalid, st.redundant) == (5, 2, 0, 0, 0)
    assert st.thoughts == 3 and st.expanded == 2    # moves left 0 and 1
    verdict = judge(StreamSuite, DIAMOND, 0, VOCAB.encode(text))
    assert verdict["correct"] and verdict["faithful"]
    # a jump to a node never entered is invalid
    _, bad = run("at 0 1 at 3 4 goal ; 0 3 4 <eos>", inst=DIAMOND)
    assert bad.invalid_kinds == {"bad_jump": 1}


def test_stream_first_step_judges_the_streams_first_move():
    from retroplan.eval import judge

    wrong_first = judge(StreamSuite, STAR, 0, VOCAB.encode("at 0 1 2 dead back 0 3 4 goal ; 0 3 4 <eos>"))
    right_first = judge(StreamSuite, STAR, 0, VOCAB.encode("at 0 3 4 goal ; 0 3 4 <eos>"))
    assert wrong_first["first_step"] and not wrong_first["stream_first_step"]
    assert right_first["first_step"] and right_first["stream_first_step"]


def _re_expansions(events: np.ndarray, n_events: int) -> int:
    """Straight from a searcher's raw event log: GO events into a node that some earlier GO
    already left (the searcher expanding a node a second time)."""

    left, current, count = set(), None, 0
    for kind, node in events[:n_events].tolist():
        if kind in (START, BACK, JUMP):
            current = node
        elif kind == GO:
            count += node in left
            left.add(current)
            current = node
    return count


@pytest.mark.parametrize("task_name,searcher,order", [
    (t, s, o) for t in ("pathstar", "graph") for s in ("dfs", "bfs", "backward")
    for o in ("random", "distance")])
def test_teacher_streams_are_valid_faithful_and_wander_as_the_searcher_does(task_name, searcher, order):
    from retroplan.envs import get_task
    from retroplan.eval import judge
    from retroplan.searchers import digraph_search

    task = get_task(task_name)
    cfg = task.Config()
    options = digraphs.Options(stream_searcher="dfs" if searcher == "backward" else searcher,
                               child_order=order)
    variant = "backward-stream" if searcher == "backward" else "stream"
    indices = np.arange(150)
    batch = task.sample_instances(cfg, 3, "test", indices)
    rows = digraphs.write_examples(task, cfg, options, variant, 3, "test", indices, batch)
    vocab = digraphs.make_vocab(cfg)
    raw = digraph_search.run_search(batch, cfg.num_nodes, task.depth_limit(cfg), searcher, order, 3,
                                    indices, split="test")

    class Suite:
        grammar = digraphs
    Suite.task, Suite.config, Suite.vocab, Suite.variant = task, cfg, vocab, variant
    offsets = np.concatenate([[0], np.cumsum(rows["lengths"])])
    steps = invalid = redundant = expected_redundant = 0
    for r in range(len(indices)):
        row = rows["tokens"][offsets[r]: offsets[r + 1]]
        verdict = judge(Suite, batch, r, row[rows["prompt_len"][r]:])
        st = verdict["behaviour"]
        assert verdict["correct"] and verdict["faithful"], (r, verdict["reason"])
        assert st.finished and st.false_goal == 0
        steps, invalid, redundant = steps + st.steps, invalid + st.invalid, redundant + st.redundant
        expected_redundant += _re_expansions(raw["events"][r], raw["n_events"][r])
        assert st.redundant == _re_expansions(raw["events"][r], raw["n_events"][r])
        if searcher == "bfs":
            assert st.redundant == 0 and st.backtracks == 0
    assert invalid == 0 and steps > 0     # validity 1.0
    assert redundant == expected_redundant
