"""Trace variants: the grammar writes what the design says and parses its own output back;
the parser never raises; suites are reproducible, checked and split apart."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retroplan.envs import digraph, pathstar
from retroplan.errors import UserError
from retroplan.events import Event
from retroplan.traces import common, digraphs
from retroplan.traces.export import export_suite
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite

START, GO, DEAD, BACK, GOAL = Event.START, Event.GO, Event.DEAD, Event.BACK, Event.GOAL

VOCAB = digraphs.make_vocab(pathstar.Config(num_nodes=50))


def rows_of(suite, split):
    data = suite.split(split)
    return [(data.prompt(r), data.completion(r), int(data.instance[r]), int(data.kind[r]))
            for r in range(len(data))]


@pytest.mark.parametrize("variant", digraphs.VARIANTS)
@pytest.mark.parametrize("task,config", [("pathstar", {"degree": 3, "path_len": 4, "num_nodes": 30}),
                                         ("graph", {"num_nodes": 12, "out_degree": 2})])
def test_every_variant_parses_back_to_a_correct_plan(make_suite, task, config, variant):
    suite = open_suite(make_suite(task, variant, config))
    for split in suite.splits:
        data = suite.split(split)
        for prompt, completion, i, kind in rows_of(suite, split):
            assert prompt[0] == suite.vocab.bos_id and completion[-1] == suite.vocab.eos_id
            if kind != common.KIND_FWD:
                continue
            parsed = digraphs.parse(variant, completion, suite.vocab)
            assert parsed.error is None, parsed.error
            inst = suite.task.instance_at(data.instances, i)
            ok, why = digraph.replay_plan(inst, parsed.plan)
            assert ok, why
            if variant in ("stream", "backward-stream"):
                assert digraphs.stream_plan(parsed) == parsed.plan  # faithful
            if variant in ("optimal", "reverse", "revfwd", "revthink", "lookahead", "corrupted"):
                assert parsed.plan == inst["plan"]


def test_the_design_example_spelling():
    # edges 0>3 3>7 0>5 5>2, start 0, goal 2 (docs/DESIGN.md)
    batch = {"edges": np.array([[[0, 3], [3, 7], [0, 5], [5, 2]]], dtype=np.int32),
             "start": np.array([0], dtype=np.int32), "goal": np.array([2], dtype=np.int32),
             "plan": np.array([[0, 5, 2]], dtype=np.int32), "plan_len": np.array([3], dtype=np.int32)}
    cfg = pathstar.Config(degree=2, path_len=3, num_nodes=8)
    vocab = digraphs.make_vocab(cfg)

    def text(variant):
        ex = digraphs.write_examples(pathstar, cfg, digraphs.Options(lookahead_p=1.0), variant, 0,
                                   "train", np.arange(1), batch)
        toks = ex["tokens"]
        offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
        return [(vocab.decode(toks[a:a + p]), vocab.decode(toks[a + p:b]))
                for a, b, p in zip(offsets[:-1], offsets[1:], ex["prompt_len"])]

    prompt = "<bos> 0 3 | 3 7 | 0 5 | 5 2 / 0 2 ="
    assert text("optimal") == [(prompt, "0 5 2 <eos>")]
    assert text("reverse") == [(prompt, "2 5 0 <eos>")]
    assert text("revfwd") == [(prompt, "2 5 0 ; 0 5 2 <eos>")]
    assert text("backward-stream") == [(prompt, "at 2 5 0 start ; 0 5 2 <eos>")]
    stream = text("stream")[0][1]
    assert stream in ("at 0 3 7 dead back 0 5 2 goal ; 0 5 2 <eos>",
                      "at 0 5 2 goal ; 0 5 2 <eos>")
    assert text("revthink") == [
        (prompt, "0 5 2 <eos>"),  # exactly optimal's row
        ("<bos> [bq] 0 3 | 3 7 | 0 5 | 5 2 / 0 2 =", "start go go 2 = <eos>"),  # the question alone
        ("<bos> [br] 0 3 | 3 7 | 0 5 | 5 2 / start go go 2 =", "at 2 from 5 from 0 ; 0 <eos>")]
    plan = ["0", "5", "2"]  # y1..yd <T> yk..yL </T> y(d+1)..yT with d < k <= L <= T (1-based)
    spans = {" ".join(plan[:d] + ["<T>"] + plan[k - 1:last] + ["</T>"] + plan[d:] + ["<eos>"])
             for d in range(3) for k in range(d + 1, 4) for last in range(k, 4)}
    assert text("lookahead")[0][1] in spans


def test_lookahead_marks_about_the_asked_share_and_carries_no_loss_on_the_open_token(make_suite):
    suite = open_suite(make_suite("pathstar", "lookahead", {"degree": 2, "path_len": 5},
                                  sizes={"train": 2000, "val": 10, "test": 10}))
    data = suite.split("train")
    opened = np.mean([digraphs.T_OPEN in data.completion(r) for r in range(len(data))])
    assert abs(opened - 0.5) < 0.05
    assert digraphs.no_loss_tokens(suite.vocab) == [digraphs.T_OPEN]


def test_corrupted_streams_belong_to_other_instances(make_suite):
    suite = open_suite(make_suite("pathstar", "corrupted", {"degree": 2, "path_len": 4, "num_nodes": 40}))
    data = suite.split("train")
    mismatched = 0
    for r in range(len(data)):
        parsed = digraphs.parse("corrupted", data.completion(r), suite.vocab)
        inst = suite.task.instance_at(data.instances, int(data.instance[r]))
        mismatched += parsed.events[0][1] != inst["start"]
        assert digraph.replay_plan(inst, parsed.plan)[0]
    assert mismatched / len(data) > 0.9


def test_revthink_trains_on_three_kinds_and_tests_forward_only(make_suite):
    suite = open_suite(make_suite("pathstar", "revthink", {"degree": 2}))
    assert np.array_equal(np.bincount(suite.split("train").kind), [300, 300, 300])
    assert np.all(suite.split("test").kind == common.KIND_FWD)


@settings(max_examples=300, deadline=None)
@given(variant=st.sampled_from(digraphs.VARIANTS),
       ids=st.lists(st.integers(min_value=-5, max_value=len(VOCAB) + 5), max_size=40))
def test_parser_never_raises_on_arbitrary_tokens(variant, ids):
    parsed = digraphs.parse(variant, ids, VOCAB)
    assert (parsed.plan is None) == (parsed.error is not None)
    if parsed.plan is not None:
        assert all(0 <= n < 50 for n in parsed.plan)


@settings(max_examples=200, deadline=None)
@given(variant=st.sampled_from(digraphs.VARIANTS),
       words=st.lists(st.sampled_from(digraphs.STRUCTURE[3:] + ["0", "1", "2", "7"]), max_size=25))
def test_parser_never_raises_on_grammar_like_tokens(variant, words):
    ids = [VOCAB[w] for w in words] + [VOCAB.eos_id]
    parsed = digraphs.parse(variant, ids, VOCAB)
    assert (parsed.plan is None) == (parsed.error is not None)


def test_parser_reports_why_it_failed():
    enc = VOCAB.encode
    assert digraphs.parse("optimal", enc("0 5 2"), VOCAB).error.startswith("no <eos>")
    assert "not a node" in digraphs.parse("optimal", enc("0 go 2 <eos>"), VOCAB).error
    assert "no `;`" in digraphs.parse("stream", enc("at 0 5 2 goal 0 5 2 <eos>"), VOCAB).error
    assert "begin with" in digraphs.parse("stream", enc("5 2 goal ; 0 5 2 <eos>"), VOCAB).error
    assert "never closed" in digraphs.parse("lookahead", enc("0 <T> 2 5 2 <eos>"), VOCAB).error
    ok = digraphs.parse("stream", enc("at 0 3 dead back 0 5 2 goal ; 0 5 2 <eos>"), VOCAB)
    assert ok.plan == [0, 5, 2]
    assert ok.events == [(START, 0), (GO, 3), (DEAD, -1), (BACK, 0), (GO, 5), (GO, 2),
                         (GOAL, -1)]


def test_a_stream_move_is_the_bare_node_it_enters():
    # edges 0>3 3>7 0>5 5>2, start 0, goal 2 (the design example): a move is written as the
    # node it enters, no word before it, so the token before a move is the node it leaves
    batch = {"edges": np.array([[[0, 3], [3, 7], [0, 5], [5, 2]]], dtype=np.int32),
             "start": np.array([0], dtype=np.int32), "goal": np.array([2], dtype=np.int32),
             "plan": np.array([[0, 5, 2]], dtype=np.int32), "plan_len": np.array([3], dtype=np.int32)}
    cfg = pathstar.Config(degree=2, path_len=3, num_nodes=8)
    vocab = digraphs.make_vocab(cfg)

    def completion(variant, seed):
        ex = digraphs.write_examples(pathstar, cfg, digraphs.Options(), variant, seed, "train",
                                   np.arange(1), batch)
        ids = ex["tokens"][ex["prompt_len"][0]: ex["lengths"][0]].tolist()
        assert digraphs.GO_T not in ids and digraphs.FROM not in ids
        return vocab.decode(ids)

    # the depth-first stream tries 0's two children in a random order: both spellings occur
    assert {completion("stream", seed) for seed in range(20)} == {
        "at 0 3 7 dead back 0 5 2 goal ; 0 5 2 <eos>", "at 0 5 2 goal ; 0 5 2 <eos>"}
    assert completion("backward-stream", 0) == "at 2 5 0 start ; 0 5 2 <eos>"

    # the parser reads a bare node (after the opening `at <node>`) as a move to it
    enc = VOCAB.encode
    fwd = digraphs.parse("stream", enc("at 0 3 7 dead back 0 5 2 goal ; 0 5 2 <eos>"), VOCAB)
    assert fwd.error is None and fwd.plan == [0, 5, 2] and digraphs.stream_plan(fwd) == [0, 5, 2]
    assert fwd.events == [(START, 0), (GO, 3), (GO, 7), (DEAD, -1), (BACK, 0), (GO, 5),
                          (GO, 2), (GOAL, -1)]
    assert fwd.event_ends == [2, 3, 4, 5, 7, 8, 9, 10]  # a move is one token, `back 0` two
    bwd = digraphs.parse("backward-stream", enc("at 2 5 0 start ; 0 5 2 <eos>"), VOCAB)
    assert bwd.error is None and bwd.events == [(START, 2), (GO, 5), (GO, 0), (GOAL, -1)]
    assert digraphs.stream_plan(bwd) == [0, 5, 2]
    # `at` and `back` must be followed by a node: cut off or followed by a word, they are refused
    # (the events before them are kept)
    for text in ("at 0 3 back ; 0 3 <eos>", "at 0 3 at ; 0 3 <eos>",
                 "at 0 3 back dead ; 0 3 <eos>", "at 0 3 at goal ; 0 3 <eos>"):
        parsed = digraphs.parse("stream", enc(text), VOCAB)
        assert parsed.plan is None and parsed.error == "stream token 3 must be followed by a node", text
        assert parsed.events == [(START, 0), (GO, 3)]
    unfinished = digraphs.parse("stream", enc("at 0 3 back"), VOCAB)  # no <eos>: read as far as it goes
    assert unfinished.plan is None and unfinished.events == [(START, 0), (GO, 3)]
    # the old spelling with a `go` word is no stream any more
    assert "not a stream word" in digraphs.parse("stream", enc("at 0 go 3 goal ; 0 3 <eos>"), VOCAB).error
    # the decoding-time tracker reads the same spelling
    tracker = digraphs.StreamTracker(walk=None)
    for token in enc("at 0 3 7 dead back 0 5"):
        tracker.feed(token)
    assert (tracker.current, tracker.thought_moves, tracker.entered) == (5, 1, {0, 3, 7, 5})


def test_same_spec_gives_byte_identical_suites(tmp_path):
    spec = SuiteSpec("graph", "stream", {"num_nodes": 15}, {}, 7, {"train": 500, "val": 50, "test": 50})
    a = generate_suite(spec, tmp_path / "a", progress=False)
    b = generate_suite(spec, tmp_path / "b", progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = generate_suite(SuiteSpec("graph", "stream", {"num_nodes": 15}, {}, 8,
                                 {"train": 500, "val": 50, "test": 50}), tmp_path / "c", progress=False)
    assert (a / "train.tokens.npy").read_bytes() != (c / "train.tokens.npy").read_bytes()


def test_no_test_instance_is_in_train_even_when_collisions_are_likely(tmp_path):
    # 2 arms of 1 node (degree 2, path_len 2) among 6 labels: only 6 * C(5, 2) * 2 = 120
    # distinct instances (centre, leaf pair, goal), so 200 train draws clash with val and test
    spec = SuiteSpec("pathstar", "optimal", {"degree": 2, "path_len": 2, "num_nodes": 6}, {}, 0,
                     {"train": 200, "val": 5, "test": 5})
    suite = open_suite(generate_suite(spec, tmp_path / "s", progress=False))

    def keys(split):
        inst = suite.split(split).instances
        return {(tuple(sorted(map(tuple, inst["edges"][i].tolist()))), int(inst["start"][i]),
                 int(inst["goal"][i])) for i in range(len(inst["start"]))}

    assert not keys("train") & keys("test")
    assert not keys("train") & keys("val")
    assert not keys("val") & keys("test")
    assert suite.meta["splits"]["train"]["redrawn"] > 0


def test_a_changed_suite_file_is_named_when_loaded(make_suite, tmp_path):
    import shutil

    src = make_suite("pathstar", "reverse")
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    original = (copy / "test.tokens.npy").read_bytes()
    raw = bytearray(original)
    raw[-1] ^= 1
    (copy / "test.tokens.npy").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="test.tokens.npy does not match its checksum"):
        open_suite(copy)
    (copy / "test.tokens.npy").write_bytes(original)
    open_suite(copy)  # intact again
    # a stray file meta.json does not list is never read as instance data
    np.save(copy / "test.inst.plan.extra.npy", np.zeros(3))
    assert "plan.extra" not in open_suite(copy).split("test").instances
    (copy / "val.lengths.npy").unlink()
    with pytest.raises(UserError, match="missing"):
        open_suite(copy)


def independent_replay(row):
    """An exported path-star row checked with nothing but the row itself."""
    edges = {(u, v) for u, v in row["edges"]}
    plan = row["plan"]
    sources = {u for u, _ in edges}
    targets = {v for _, v in edges}
    centre = (sources - targets).pop()  # the only node nothing points to
    return (plan[0] == row["start"] == centre and plan[-1] == row["goal"]
            and all((u, v) in edges for u, v in zip(plan, plan[1:]))
            and row["goal"] not in sources)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_exported_pathstar_rows_replay_in_an_independent_checker(make_suite, tmp_path, fmt):
    suite_dir = make_suite("pathstar", "revfwd", {"degree": 3, "path_len": 5})
    out = tmp_path / f"rows-{fmt}"
    counts = export_suite(suite_dir, out, fmt)
    rows = []
    for split in ("train", "validation", "test"):  # one file per split
        path = out / "data" / f"{split}-00000-of-00001.{fmt}"
        if fmt == "jsonl":
            rows += [json.loads(line) for line in path.read_text().splitlines()]
        else:
            import pyarrow.parquet as pq

            rows += pq.read_table(path).to_pylist()
    assert counts == {"train": 300, "val": 40, "test": 60}
    assert len(rows) == 300 + 40 + 60
    for row in rows:
        assert independent_replay(row), row
        # the completion text is the variant's: the reversed plan, then the plan
        back, fwd = row["completion"].removesuffix(" <eos>").split(" ; ")
        assert [int(x) for x in fwd.split()] == row["plan"] == [int(x) for x in back.split()][::-1]
        assert row["prompt"].endswith(f"/ {row['start']} {row['goal']} =")
        assert {"split", "index", "degree", "path_len"} <= set(row)
    with pytest.raises(UserError, match="already exists"):
        export_suite(suite_dir, out, fmt)
