"""The graph tasks' `lookahead`, `revthink` and `backward-stream` variants, against the papers
they name (docs/REFERENCES.md): TRELAWNEY's random cut and random future span with plain rows
mixed in and three inference modes; RevThink's forward rows identical to the baseline's, a
backward question that hides part of the question, and a reasoned backward answer the oracle
accepts; and the honest note that path-star's backward direction involves no search."""

import json
from collections import Counter, deque

import numpy as np
import pytest

from retroplan.batching import IGNORE, collate
from retroplan.envs import pathstar
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, evaluate, judge
from retroplan.traces import common, digraphs
from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite
from retroplan.train import TrainConfig, train

PS = pathstar.Config(degree=3, path_len=6, num_nodes=40)
PS_VOCAB = digraphs.make_vocab(PS)


def lookahead_rows(p: float, n: int = 4000, seed: int = 0, indices=None):
    """(plan, completion words) of `lookahead` rows for instances `indices` of path-star."""
    indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    batch = pathstar.sample_instances(PS, seed, "train", indices)
    ex = digraphs.write_examples(pathstar, PS, digraphs.Options(lookahead_p=p), "lookahead", seed,
                               "train", indices, batch)
    offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
    out = []
    for r, (a, b, q) in enumerate(zip(offsets[:-1], offsets[1:], ex["prompt_len"])):
        i = int(ex["instance"][r])
        plan = [str(v) for v in batch["plan"][i, : batch["plan_len"][i]]]
        out.append((plan, PS_VOCAB.decode(ex["tokens"][a + q: b]).split()))
    return out, ex


def read_span(plan, words):
    """(d, k, L) 1-based as TRELAWNEY writes y1..yd <T> yk..yL </T> y(d+1)..yT, or None for
    a plain row; asserts the row is exactly that shape."""
    assert words[-1] == "<eos>"
    words = words[:-1]
    if "<T>" not in words:
        assert words == plan
        return None
    d, close = words.index("<T>"), words.index("</T>")
    span, rest = words[d + 1: close], words[:d] + words[close + 1:]
    assert rest == plan and "<T>" not in rest and "</T>" not in rest
    starts = [k for k in range(d + 1, len(plan) + 1) if plan[k - 1: k - 1 + len(span)] == span]
    assert starts, (plan, words)  # the span is a contiguous piece of the future
    return d, starts[0], starts[0] + len(span) - 1


# --------------------------------------------------------------------------- lookahead


def test_lookahead_draws_cut_span_start_and_span_length_at_random():
    rows, _ = lookahead_rows(0.5)
    spans = [s for s in (read_span(plan, words) for plan, words in rows) if s is not None]
    t = PS.path_len
    assert all(0 <= d < k <= last <= t for d, k, last in spans)
    cuts = Counter(d for d, _, _ in spans)
    lengths = Counter(last - k + 1 for _, k, last in spans)
    ends = Counter(last for _, _, last in spans)
    assert set(cuts) == set(range(t))                 # every cut, d = 0 (right after the prompt) too
    assert set(lengths) == set(range(1, t + 1))       # spans of every length ...
    assert set(ends) == set(range(1, t + 1))          # ... ending anywhere, not only at the goal
    assert len({(d, k) for d, k, _ in spans}) == t * (t + 1) // 2
    # cut uniform over 0..T-1
    for d in range(t):
        assert abs(cuts[d] / len(spans) - 1 / t) < 0.04
    # the two eval modes are in distribution: spans right after the prompt, and `<T> goal </T>` there
    assert cuts[0] > 0
    assert any(d == 0 and k == last == t for d, k, last in spans)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_lookahead_mixes_plain_rows_in_the_asked_share(p):
    rows, _ = lookahead_rows(p)
    plain = np.mean([read_span(plan, words) is None for plan, words in rows])
    sigma = np.sqrt(p * (1 - p) / len(rows))
    assert abs(plain - (1 - p)) < 4 * sigma


def test_lookahead_rows_are_a_function_of_seed_and_index():
    _, a = lookahead_rows(0.5, n=300)
    _, b = lookahead_rows(0.5, n=300)
    assert np.array_equal(a["tokens"], b["tokens"])
    # instance 250 is written the same whether or not instances 0..199 are in the batch
    whole, _ = lookahead_rows(0.5, n=300)
    part, _ = lookahead_rows(0.5, indices=np.arange(200, 300))
    assert whole[200:] == part
    other, _ = lookahead_rows(0.5, n=300, seed=1)
    assert [w for _, w in other] != [w for _, w in whole]


def test_lookahead_masks_the_loss_on_the_open_token_only(make_suite):
    suite = open_suite(make_suite("pathstar", "lookahead", {"degree": 2, "path_len": 5}))
    data = suite.split("train")
    rows = np.array([r for r in range(len(data)) if digraphs.T_OPEN in data.completion(r)][:32])
    x, y = collate(data, rows, suite.vocab.pad_id, digraphs.no_loss_tokens(suite.vocab))
    targets = np.stack([np.pad(data.row(r)[1:], (0, y.shape[1] - len(data.row(r)) + 1),
                               constant_values=-7) for r in rows])
    y = y.numpy()
    assert np.all(y[targets == digraphs.T_OPEN] == IGNORE)
    assert np.all(y[targets == digraphs.T_CLOSE] == digraphs.T_CLOSE)  # </T> keeps its loss
    assert (targets == digraphs.T_CLOSE).sum() == len(rows)


def test_eval_prefix_per_mode():
    inst = {"goal": np.array([7, 2], dtype=np.int32)}
    goal = digraphs.NODE0 + 2
    assert digraphs.eval_prefix("lookahead", "plain", inst, 1, PS_VOCAB) == []
    assert digraphs.eval_prefix("lookahead", "model-goal", inst, 1, PS_VOCAB) == [digraphs.T_OPEN]
    assert digraphs.eval_prefix("lookahead", "given-goal", inst, 1, PS_VOCAB) == [
        digraphs.T_OPEN, goal, digraphs.T_CLOSE]
    assert PS_VOCAB.decode(digraphs.eval_prefix("lookahead", "given-goal", inst, 0, PS_VOCAB)) == "<T> 7 </T>"
    assert digraphs.eval_prefix("optimal", "plain", inst, 0, PS_VOCAB) == []
    with pytest.raises(UserError, match="needs a lookahead suite"):
        digraphs.eval_prefix("optimal", "given-goal", inst, 0, PS_VOCAB)


@pytest.mark.parametrize("mode,generated", [
    ("plain", "0 5 2 <eos>"),
    ("model-goal", "2 </T> 0 5 2 <eos>"),          # the model writes the goal, closes, plans
    ("model-goal", "5 2 </T> 0 5 2 <eos>"),        # ... or a longer span
    ("given-goal", "0 5 2 <eos>"),
])
def test_the_parser_recovers_the_plan_in_every_inference_mode(mode, generated):
    vocab = digraphs.make_vocab(pathstar.Config(degree=2, path_len=3, num_nodes=8))
    inst = {"goal": np.array([2], dtype=np.int32)}
    ids = digraphs.eval_prefix("lookahead", mode, inst, 0, vocab) + vocab.encode(generated)
    parsed = digraphs.parse("lookahead", ids, vocab)
    assert parsed.error is None and parsed.plan == [0, 5, 2]


@pytest.mark.parametrize("text,why", [
    ("<T> 2 </T> 0 <T> 5 </T> 5 2 <eos>", "a second <T> span"),
    ("<T> </T> 0 5 2 <eos>", "the <T> span is empty"),
    ("<T> go </T> 0 5 2 <eos>", "<T> span: token 0 is not a node"),
    ("<T> 2 0 5 2 <eos>", "<T> never closed"),
])
def test_the_lookahead_parser_takes_one_span_of_nodes(text, why):
    vocab = digraphs.make_vocab(pathstar.Config(degree=2, path_len=3, num_nodes=8))
    assert digraphs.parse("lookahead", vocab.encode(text), vocab).error == why


def test_a_bad_lookahead_mode_is_one_sentence():
    with pytest.raises(UserError) as err:
        EvalConfig(lookahead="sideways").validate()
    msg = str(err.value)
    assert msg == "eval lookahead must be plain, model-goal or given-goal, got 'sideways'."
    with pytest.raises(UserError, match="eval lookahead must be"):
        evaluate("no-such-run", cfg=EvalConfig(lookahead="goal"), progress=False)


TINY = dict(preset="tiny", batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=2, log_every=5,
            checkpoint_every=10, threads=1)


def test_eval_forces_the_prefix_judges_it_and_records_the_mode(make_suite, tmp_path):
    config = {"degree": 2, "path_len": 4, "num_nodes": 20}
    suite = make_suite("pathstar", "lookahead", config)
    train(suite, tmp_path / "run", TrainConfig(steps=10, **TINY), progress=False)
    m = evaluate(tmp_path / "run", cfg=EvalConfig(batch_size=32, limit=12, lookahead="given-goal"),
                 progress=False)
    assert m["decoding"]["lookahead"] == "given-goal"
    s = open_suite(suite)
    data = s.split("test")
    lines = (tmp_path / "run" / "eval-test" / "records.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert len(records) == 12
    for rec in records:
        i = int(data.instance[rec["row"]])
        assert rec["lookahead"] == "given-goal"
        assert rec["forced"] == f"<T> {int(data.instances['goal'][i])} </T>"
        ids = s.vocab.encode(rec["forced"] + " " + rec["generated"])
        assert judge(s, data.instances, i, ids)["correct"] == rec["correct"]
    m = evaluate(tmp_path / "run", cfg=EvalConfig(batch_size=32, limit=12, lookahead="model-goal"),
                 out=tmp_path / "model-goal", progress=False)
    first = json.loads((tmp_path / "model-goal" / "records.jsonl").read_text().splitlines()[0])
    assert m["n"] == 12 and first["lookahead"] == "model-goal" and first["forced"] == "<T>"
    # a model trained without <T> spans is refused a non-plain mode, in one sentence
    plain = make_suite("pathstar", "optimal", config)
    train(plain, tmp_path / "plain", TrainConfig(steps=2, **TINY), progress=False)
    with pytest.raises(UserError, match=r"^eval lookahead model-goal needs a lookahead suite; "
                                        r"optimal is trained without <T> spans\.$"):
        evaluate(tmp_path / "plain", cfg=EvalConfig(lookahead="model-goal"), progress=False)


# --------------------------------------------------------------------------- revthink


def bfs_layers(edges, goal):
    """Independent oracle: {node: moves on its shortest way to goal}, by BFS on reversed edges."""
    preds = {}
    for u, v in edges:
        preds.setdefault(v, []).append(u)
    dist, queue = {goal: 0}, deque([goal])
    while queue:
        v = queue.popleft()
        for u in preds.get(v, []):
            if u not in dist:
                dist[u] = dist[v] + 1
                queue.append(u)
    return dist


SMALL = {"pathstar": {"degree": 3, "path_len": 5, "num_nodes": 30},
         "graph": {"num_nodes": 12, "out_degree": 2, "min_distance": 2, "max_distance": 5}}


@pytest.mark.parametrize("task", ["pathstar", "graph"])
def test_revthink_forward_rows_are_byte_identical_to_optimal_rows(task, tmp_path):
    sizes = {"train": 120, "val": 20, "test": 30}
    made = {v: open_suite(generate_suite(SuiteSpec(task, v, SMALL[task], {}, 3, sizes),
                                         tmp_path / v, progress=False))
            for v in ("optimal", "revthink")}
    for split in sizes:
        opt, rev = made["optimal"].split(split), made["revthink"].split(split)
        fwd = np.flatnonzero(rev.kind == common.KIND_FWD)
        assert len(fwd) == len(opt)
        for r_opt, r_rev in enumerate(fwd):
            assert rev.row(r_rev).tobytes() == opt.row(r_opt).tobytes()
            assert rev.prompt_len[r_rev] == opt.prompt_len[r_opt]
            assert rev.instance[r_rev] == opt.instance[r_opt]
        if split != "train":  # held-out splits: the very same files
            assert np.array_equal(np.asarray(rev.tokens), np.asarray(opt.tokens))
    assert made["revthink"].vocab == made["optimal"].vocab


@pytest.mark.parametrize("task", ["pathstar", "graph"])
def test_revthink_backward_rows_read_as_documented_and_the_oracle_accepts_them(make_suite, task):
    suite = open_suite(make_suite(task, "revthink", SMALL[task]))
    data = suite.split("train")
    dec = suite.vocab.decode
    assert np.array_equal(np.bincount(data.kind), [len(data.index)] * 3)
    widths = []
    for r in range(len(data)):
        kind = int(data.kind[r])
        if kind == common.KIND_FWD:
            continue
        i = int(data.instance[r])
        inst = suite.task.instance_at(data.instances, i)
        edges, s, g, plan = inst["edges"], inst["start"], inst["goal"], inst["plan"]
        question = " | ".join(f"{u} {v}" for u, v in edges)
        dist = bfs_layers(edges, g)
        k = len(plan) - 1
        assert dist[s] == k  # the forward answer is as short as the oracle says
        tail = f"start {' '.join(['go'] * k)} {g} ="
        backward_q = f"{question} / {tail}"
        prompt, completion = dec(data.prompt(r)), dec(data.completion(r))
        if kind == common.KIND_BQ:  # the question alone -> what the backward question adds to it
            assert prompt == f"<bos> [bq] {question} / {s} {g} ="
            assert completion == f"{tail} <eos>"
            assert question not in completion  # not a copy of the prompt's edges
            continue
        # backward question -> BFS layers from the goal, then the answer
        assert prompt == f"<bos> [br] {backward_q}"
        words = completion.split()
        assert words[:2] == ["at", str(g)] and words[-1] == "<eos>"
        search, answer = " ".join(words[2:-1]).split(" ; ")
        layers = [[int(x) for x in layer.split()] for layer in search.split("from ")[1:]]
        assert len(layers) == k
        for j, layer in enumerate(layers, start=1):
            assert layer == sorted(u for u, dj in dist.items() if dj == j)
        answer = [int(x) for x in answer.split()]
        assert answer == layers[-1] and s in answer  # consistent: the hidden start is an answer
        widths.extend(len(layer) for layer in layers)
    if task == "pathstar":  # a chain: one node per layer, no search
        assert set(widths) == {1}
    else:  # the backward question must be searched: layers branch
        assert max(widths) >= 3


def test_revthink_drops_backward_rows_of_inconsistent_instances():
    cfg = pathstar.Config(degree=2, path_len=3, num_nodes=8)
    batch = {"edges": np.array([[[0, 3], [3, 7], [0, 5], [5, 2]]] * 2, dtype=np.int32),
             "start": np.array([0, 0], dtype=np.int32), "goal": np.array([2, 7], dtype=np.int32),
             "plan": np.array([[0, 5, 2], [0, 5, 7]], dtype=np.int32),  # the second is no path
             "plan_len": np.array([3, 3], dtype=np.int32)}
    assert digraphs.revthink_consistent(batch, cfg.num_nodes).tolist() == [True, False]
    ex = digraphs.write_examples(pathstar, cfg, digraphs.Options(), "revthink", 0, "train",
                               np.arange(2), batch)
    assert ex["instance"].tolist() == [0, 0, 0, 1]
    assert ex["kind"].tolist() == [common.KIND_FWD, common.KIND_BQ, common.KIND_BR, common.KIND_FWD]


# --------------------------------------------------------------------------- backward-stream


def test_backward_stream_searches_on_graph_but_not_on_pathstar(make_suite):
    for task, searches in (("pathstar", False), ("graph", True)):
        suite = open_suite(make_suite(task, "backward-stream", SMALL[task]))
        data = suite.split("train")
        backtracks = sum(int(np.isin(data.completion(r), [digraphs.BACK_T, digraphs.DEAD_T]).sum())
                         for r in range(len(data)))
        assert (backtracks > 0) == searches, task
    assert digraphs.variant_note("pathstar", "backward-stream") == (
        "no search on path-star: the backward direction is a chain")
    assert digraphs.variant_note("graph", "backward-stream") is None
    assert digraphs.variant_note("pathstar", "stream") is None
    assert "chain" in digraphs.variant_note("pathstar", "revthink")


def test_an_experiment_sets_the_lookahead_mode_in_its_eval_table(tmp_path):
    from retroplan.experiment_file import load_experiment

    toml = tmp_path / "e.toml"
    body = 'name = "la"\ntask = "pathstar"\nvariants = ["lookahead"]\n[eval]\nlookahead = "{}"\n'
    toml.write_text(body.format("given-goal"))
    assert load_experiment(toml).eval.lookahead == "given-goal"
    toml.write_text(body.format("goal-first"))
    with pytest.raises(UserError, match="eval lookahead must be plain, model-goal or given-goal"):
        load_experiment(toml)
