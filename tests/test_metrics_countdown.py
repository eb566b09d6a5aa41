"""Behaviour metrics and the thought-switch penalty on hand-built Countdown streams whose every
value is known. Instance: inputs 2 3 5, target 10 (2 + 3 = 5, 5 + 5 = 10)."""

import numpy as np
import pytest
import torch

from retroplan.decoding import TIPPenalty
from retroplan.envs import countdown as cd
from retroplan.events import Event
from retroplan.metrics import analyse_stream, summarize_behaviour
from retroplan.searchers import countdown_search as cs
from retroplan.traces import countdown as g

START, GO, DEAD, BACK, GOAL, JUMP = Event.START, Event.GO, Event.DEAD, Event.BACK, Event.GOAL, Event.JUMP

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
    # one `back` word; the two returns to (5 6) after `1 dead` and `11 dead` are implied
    assert st.written_backtracks == 1 and st.jumps == 0
    assert st.entered == 7 and st.expanded == 3 and st.root_distance == 2 and st.false_goal == 0


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


def test_a_bfs_frontier_switch_is_a_jump_not_a_backtrack():
    # a beam search generates (5 5) and (5 6), expands (5 6), then switches to (5 5)
    text = ("at 2 3 5 try 2 + 3 = 5 : 5 5 try 2 * 3 = 6 : 5 6 go 5 6 try 6 - 5 = 1 : 1 dead "
            "go 5 5 try 5 + 5 = 10 : 10 goal " + PLAN)
    parsed, st = run(text)
    assert [e[0] for e in parsed.events] == [START, GO, GO, DEAD, JUMP, GO, GO, GOAL]
    assert parsed.events[4] == (JUMP, (2, 3, 5), True)   # written: the `go 5 5` word makes it
    assert (st.jumps, st.backtracks, st.invalid, st.redundant) == (1, 0, 0, 0)
    assert st.thoughts == 2 and st.expanded == 3
    assert g.stream_plan(parsed) == parsed.plan == ["2+3=5", "5+5=10"]
    assert parsed.event_ends[-1] == len(VOCAB.encode(text.split(" ;")[0]))


def test_after_a_dead_number_the_return_to_its_parent_is_implied():
    text = ("at 2 3 5 try 2 * 3 = 6 : 5 6 go 5 6 try 6 - 5 = 1 : 1 dead try 5 + 6 = 11 : 11 dead "
            "back 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5 try 5 + 5 = 10 : 10 goal " + PLAN)
    parsed, st = run(text)
    backs = [e for e in parsed.events if e[0] == BACK]
    assert backs == [(BACK, (5, 6), False), (BACK, (2, 3, 5), True)]
    assert (st.backtracks, st.written_backtracks) == (2, 1)


def test_an_unfinished_stream_keeps_the_events_it_can_read():
    stream = "at 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5"
    read = len(VOCAB.encode(stream))
    for cut_off in (" try 5 * 5 = 2", " try 5 * 5", " try"):   # the cut last word is dropped
        parsed = g.parse("stream", VOCAB.encode(stream + cut_off), VOCAB)
        assert parsed.plan is None and parsed.error.startswith("no <eos>")
        assert [e[0] for e in parsed.events] == [START, GO] and parsed.event_ends[-1] == read
    # cut right after `go 5 5`: that word may still grow (`go 5 5 7`), so it is dropped too
    assert [e[0] for e in g.parse("stream", VOCAB.encode(stream), VOCAB).events] == [START]
    # a `try` closed by `goal` is whole even at the cut; so is a word a non-word token ends
    parsed = g.parse("stream", VOCAB.encode(stream + " try 5 + 5 = 10 : 10 goal"), VOCAB)
    assert [e[0] for e in parsed.events][-2:] == [GO, GOAL] and parsed.plan is None
    assert g.stream_plan(parsed) == ["2+3=5", "5+5=10"]
    garbage = g.parse("stream", VOCAB.encode(stream + " , , try 5 + 5 = 10 : 10 goal " + PLAN), VOCAB)
    assert garbage.plan is None and "not a stream word" in garbage.error
    assert [e[0] for e in garbage.events] == [START, GO] and garbage.event_ends[-1] == read
    no_semi = g.parse("stream", VOCAB.encode(stream + " try 5 + 5 = 10 : 10 goal <eos>"), VOCAB)
    assert no_semi.plan is None and "no `;`" in no_semi.error and no_semi.events[-1][0] == GOAL
    bad_plan = g.parse("stream", VOCAB.encode(stream + " ; 2 + <eos>"), VOCAB)
    assert bad_plan.plan is None and len(bad_plan.events) == 2
    back = g.parse("backward-stream", VOCAB.encode("at 2 3 5 -> 10 try 10 = 5 + 5 : 2 3 -> 5 go 2 3 -> 5 try 5 = 2"),  # noqa: E501
                   VOCAB)
    assert back.backward and [e[0] for e in back.events] == [START, GO]


def test_an_unfinished_stream_is_judged_as_a_failed_trace():
    from retroplan.eval import judge

    class Suite:
        task, grammar, vocab, variant, config = cd, g, VOCAB, "stream", CFG

    verdict = judge(Suite, INST, 0, VOCAB.encode("at 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5 try 5 * 5 = 25 : 25 dead"))  # noqa: E501
    assert not verdict["correct"] and verdict["parse_error"].startswith("no <eos>")
    st = verdict["behaviour"]
    assert st is not None and not st.finished and (st.moves, st.invalid) == (2, 0)
    assert st.tokens == len(VOCAB.encode("at 2 3 5 try 2 + 3 = 5 : 5 5 go 5 5 try 5 * 5 = 25 : 25 dead"))


def _tape_records(tape):
    p = 0
    while p < len(tape):
        kind = tape[p]
        if kind == Event.TRY:
            m = tape[p + 6]
            yield kind, tape[p + 5], tuple(tape[p + 7: p + 7 + m])
            p += 7 + m
        else:
            m = tape[p + 1]
            yield kind, None, tuple(tape[p + 2: p + 2 + m])
            p += 2 + m


def search_counts(tape, backward):
    """From the search's own event tape, without the parser or the metrics: (`back` records,
    re-expansions). A re-expansion is a GO into a state the search had already made a try
    from (a state is a number multiset; backward: unused inputs and subgoal)."""
    def key(state):
        return (tuple(sorted(state[:-1])), state[-1]) if backward else tuple(sorted(state))

    current, tried_from, backs, again = None, set(), 0, 0
    for kind, _outcome, state in _tape_records(tape):
        if kind == Event.TRY:
            tried_from.add(current)
        elif kind == GO:
            again += key(state) in tried_from
            current = key(state)
        else:
            backs += kind == BACK
            current = key(state)
    return backs, again


@pytest.mark.parametrize("searcher", cs.SEARCHERS)
def test_every_teacher_stream_is_valid_faithful_and_wanders_as_its_search_does(searcher):
    cfg = cd.Config()
    indices = np.arange(40)
    batch = cd.sample_instances(cfg, 3, "test", indices)
    variant = "backward-stream" if searcher == "backward" else "stream"
    options = g.Options() if searcher == "backward" else g.Options(searcher=searcher)
    ex = g.write_examples(cd, cfg, options, variant, 3, "test", indices, batch)
    search = cs.run_search(cfg, batch, searcher, 3, "test", indices)
    offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
    backward = searcher == "backward"
    for r in range(len(indices)):
        completion = ex["tokens"][offsets[r] + ex["prompt_len"][r]: offsets[r + 1]].tolist()
        parsed = g.parse(variant, completion, VOCAB_FULL)
        assert parsed.error is None
        st = analyse_stream(parsed.events, parsed.event_ends, cd.Walk(cfg, batch, r, backward=backward))
        assert st.steps > 0 or len(parsed.words) == 1
        assert st.invalid == 0 and st.false_goal == 0, (searcher, r, st.invalid_kinds)   # validity 1
        assert st.tokens == completion.index(g.SEMI)       # every stream token is in the last event
        tape = search["tape"][search["offsets"][r]: search["offsets"][r + 1]].tolist()
        backs, again = search_counts(tape, backward)
        assert st.written_backtracks == backs == sum(w[0] == BACK for w in parsed.words)
        assert st.redundant == again, (searcher, r)      # wandering = the search's re-expansions
        if searcher.startswith("bfs") or searcher == "dfs-full":
            assert again == 0   # these never expand a state twice
        if search["found"][r]:
            assert parsed.plan == cd.plan_strings(search["plan"][r])
            assert g.stream_plan(parsed) == parsed.plan   # faithful
        else:
            assert parsed.plan == [] and g.stream_plan(parsed) is None
    if searcher == "dfs-full":
        assert search["found"].all()   # complete


def test_a_corrupted_stream_is_another_instances_valid_stream():
    cfg = cd.Config()
    indices = np.arange(20)
    batch = cd.sample_instances(cfg, 1, "test", indices)
    ex = g.write_examples(cd, cfg, g.Options(), "corrupted", 1, "test", indices, batch)
    donors = cd.sample_instances(cfg, 1, "test", indices, salts=np.full(20, g.DONOR_SALT))
    offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
    for r in range(20):
        completion = ex["tokens"][offsets[r] + ex["prompt_len"][r]: offsets[r + 1]]
        parsed = g.parse("corrupted", completion, VOCAB_FULL)
        assert parsed.plan == cd.instance_at(batch, r)["solution"]   # the right plan
        own = analyse_stream(parsed.events, parsed.event_ends, cd.Walk(cfg, batch, r))
        donor = analyse_stream(parsed.events, parsed.event_ends, cd.Walk(cfg, donors, r))
        assert own.invalid_kinds.get("wrong_start") == 1 and donor.invalid == 0


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
