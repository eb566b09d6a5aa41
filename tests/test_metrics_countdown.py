"""Behaviour metrics and the thought-switch penalty on hand-built Countdown streams whose every
value is known. Instance: inputs 2 3 5, target 10 (2 + 3 = 5, 5 + 5 = 10)."""

import numpy as np
import pytest
import torch

from retroplan.decoding import TIPPenalty
from retroplan.envs import countdown as cd
from retroplan.metrics import analyse_stream, summarize_behaviour
from retroplan.traces import countdown as g

CFG = cd.Config(n_inputs=3)
VOCAB = g.make_vocab(CFG)
INST = {"numbers": np.array([[2, 3, 5]]), "target": np.array([10]),
        "plan": np.array([[[0, 0, 1, 5], [0, 0, 2, 10]]]), "draws": np.array([1])}
PLAN = "; 2 + 3 = 5 , 5 + 5 = 10 <eos>"


def run(text, variant="stream"):
    ids = VOCAB.encode(text)
    parsed = g.parse(variant, ids, VOCAB)
    assert parsed.error is None, parsed.error
    walk = cd.Walk(CFG, INST, 0, backward=parsed.backward)
    return parsed, analyse_stream(parsed.events, parsed.event_ends, walk, len(ids))


def test_necessary_backtracks():
    # (5 6) cannot make 10 with any move: every way out of it is a necessary backtrack
    _, st = run("at 2 3 5 try 2 * 3 = 6 : 5 6 go 5 6 try 6 - 5 = 1 : 1 dead try 5 + 6 = 11 : 11 dead "
                "try 5 * 6 = 30 : 30 dead back 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5 try 5 + 5 = 10 : 10 goal "
                + PLAN)
    assert (st.steps, st.moves, st.backtracks, st.invalid, st.redundant) == (9, 6, 3, 0, 0)
    assert (st.necessary, st.premature) == (3, 0)
    assert st.backtrack_depths["necessary"] == [1, 1, 2]
    assert st.expanded == 7 and st.root_distance == 2 and st.false_goal == 0


def test_a_premature_backtrack_and_underthinking():
    text = ("at 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5 try 5 * 5 = 25 : 25 dead back 2 3 5 "
            "try 2 * 3 = 6 : 5 6 go 5 6 try 6 - 5 = 1 : 1 dead ; none <eos>")
    parsed, st = run(text)
    assert parsed.plan == []  # `none`: a wrong answer, not a parse failure
    # leaving (5 5) abandons its untried live move 5 + 5 = 10
    assert (st.premature, st.necessary) == (1, 0)
    assert st.backtrack_depths["premature"] == [2]
    # the first thought began in the live state (5 5) and ended with `25 dead`
    first_thought_end = len(VOCAB.encode("at 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5 try 5 * 5 = 25 : 25 dead"))
    assert st.first_live_thought_end == first_thought_end
    block = summarize_behaviour([st], [False])
    assert block["failed_with_premature"] == {"value": 1.0, "n": 1}
    assert block["xi_ut"]["value"] == pytest.approx(1 - first_thought_end / st.tokens)


@pytest.mark.parametrize("step,kind", [
    ("2 * 7 = 14 : 3 5 14", "not_available"),     # 7 is not one of the numbers
    ("2 * 2 = 4 : 3 5 4", "not_available"),       # 2 used twice
    ("2 * 3 = 7 : 5 7", "wrong_arithmetic"),
    ("3 / 2 = 1 : 1 5", "wrong_arithmetic"),      # inexact division (and smaller first)
    ("2 * 3 = 6 : 5 7", "wrong_state"),           # the printed numbers are not the result
])
def test_each_kind_of_invalid_move(step, kind):
    _, st = run(f"at 2 3 5 try {step} go {step.split(': ')[1]} " + PLAN)
    assert st.invalid_kinds == {kind: 1} and st.invalid == 1 and st.steps == 1


def test_a_revisit_is_redundant():
    _, st = run("at 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5 try 5 * 5 = 25 : 25 dead back 2 3 5 "
                "try 3 + 2 = 5 : 5 5 go 5 5 try 5 + 5 = 10 : 10 goal " + PLAN)
    assert st.redundant == 1 and st.invalid == 0
    block = summarize_behaviour([st], [True])
    assert block["wandering"]["value"] == pytest.approx(1 / st.steps)


def test_a_self_loop():
    loop = "try 2 + 3 = 5 : 5 5 go 5 5 back 2 3 5 "
    _, st = run("at 2 3 5 " + loop * 3 + "try 2 + 3 = 5 : 5 5 go 5 5 try 5 + 5 = 10 : 10 goal " + PLAN)
    assert st.self_loop
    _, once = run("at 2 3 5 " + loop + "try 2 + 3 = 5 : 5 5 go 5 5 try 5 + 5 = 10 : 10 goal " + PLAN)
    assert not once.self_loop


def test_a_correct_plan_that_is_not_the_streams_path_is_not_faithful():
    from retroplan.eval import judge

    class Suite:
        task, grammar, vocab, variant, config = cd, g, VOCAB, "stream", CFG

    stream = "at 2 3 5 try 5 + 3 = 8 : 2 8 go 2 8 try 8 + 2 = 10 : 10 goal "
    faithful = judge(Suite, INST, 0, VOCAB.encode(stream + "; 5 + 3 = 8 , 8 + 2 = 10 <eos>"))
    other = judge(Suite, INST, 0, VOCAB.encode(stream + PLAN))
    assert faithful["correct"] and faithful["faithful"]
    assert other["correct"] and not other["faithful"]


def test_the_teacher_streams_of_every_searcher_are_valid():
    from retroplan.traces.countdown import Options

    batch = cd.sample_instances(cd.Config(), 0, "test", np.arange(30))
    for searcher in ("dfs-sum", "dfs-mult", "bfs1-sum", "bfs3-mult", "mix"):
        ex = g.write_examples(cd, cd.Config(), Options(searcher=searcher), "stream", 0, "test",
                              np.arange(30), batch)
        offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
        for r in range(30):
            completion = ex["tokens"][offsets[r] + ex["prompt_len"][r]: offsets[r + 1]]
            parsed = g.parse("stream", completion, VOCAB_FULL)
            walk = cd.Walk(cd.Config(), batch, r)
            st = analyse_stream(parsed.events, parsed.event_ends, walk, len(completion))
            assert st.invalid == 0 and st.false_goal == 0, (searcher, r, st.invalid_kinds)


VOCAB_FULL = g.make_vocab(cd.Config())


def tracker():
    return g.StreamTracker(cd.Walk(CFG, INST, 0))


def test_tip_penalises_back_early_in_a_thought_with_a_legal_move_left():
    tip = TIPPenalty([tracker()], g.StreamTracker.switch_tokens, alpha=4.0, beta=2)
    history: list[int] = []

    def back_logit_after(text):
        nonlocal history
        logits = torch.zeros(1, len(VOCAB))
        for token in VOCAB.encode(text):
            history.append(token)
            logits = tip(torch.zeros(1, len(VOCAB)), torch.tensor([history]))
        return float(logits[0, g.BACK])

    assert back_logit_after("at 2 3 5") == -4.0                    # root, no move yet
    assert back_logit_after("try 2 + 3 = 5 : 5 5 go 5 5") == -4.0  # one move: 5 + 5 is left
    assert back_logit_after("try 5 * 5 = 25 : 25 dead") == 0.0     # two moves (the try counts)
    assert back_logit_after("back 2 3 5") == -4.0                  # a new thought
    gated = TIPPenalty([tracker()], g.StreamTracker.switch_tokens, alpha=4.0, beta=5, oracle=True)
    seen: list[int] = []
    out = None
    for token in VOCAB.encode("at 2 3 5 try 2 * 3 = 6 : 5 6 go 5 6"):
        seen.append(token)
        out = gated(torch.zeros(1, len(VOCAB)), torch.tensor([seen]))
    assert float(out[0, g.BACK]) == 0.0  # (5 6) cannot make 10: the oracle gate lets it go


def test_a_broken_stream_is_never_penalised():
    tr = tracker()
    for token in VOCAB.encode("2 3 at 2 3 5"):
        tr.feed(token)
    assert not tr.should_penalise(8, False)


def test_show_trace_draws_a_countdown_stream(make_suite, tmp_path):
    from retroplan.analysis import show_trace

    suite = make_suite("countdown", "stream", {},
                       sizes={"train": 20, "val": 5, "test": 5, "val_target": 5, "test_target": 5})
    written = show_trace(suite, 1, out=tmp_path / "tree.png")
    assert written[0].suffix == ".png" and written[0].stat().st_size > 10000
