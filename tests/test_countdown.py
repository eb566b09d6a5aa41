"""Countdown: the SoS sampler and its held-out targets, the oracle, a verifier that cannot be
fooled, the searchers against their plain-Python twin, every trace variant parsed back, the
Gymnasium env, the SoS export, and the distribution of the SoS process.

(Byte-identical suites with 1 and 2 Numba threads, and shard merging: tests/test_determinism.py
runs them for every task, Countdown's stream, backward-stream and revthink included.)
"""

import csv
import itertools
import json
import math
import random
import re

import gymnasium as gym
import numpy as np
import pytest
from conftest import independent_replay
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from retroplan.cli import main
from retroplan.envs import countdown as cd
from retroplan.envs import make_config
from retroplan.errors import UserError
from retroplan.eval import judge
from retroplan.events import Event
from retroplan.reference import countdown as ref
from retroplan.searchers import countdown_search as cs
from retroplan.traces import common
from retroplan.traces import countdown as grammar
from retroplan.traces.export import export_suite
from retroplan.traces.suite import open_suite

CFG = cd.Config()
VOCAB = grammar.make_vocab(CFG)
SIZES = {"train": 150, "val": 20, "test": 30, "val_target": 20, "test_target": 20}


# --------------------------------------------------------------- an independent judge


def brute_force_values(nums):
    """Every value an expression over the multiset `nums` (each used once) can take, by plain
    recursion over splits into two groups; written from the rules, not from the code."""
    nums = tuple(sorted(nums))
    if len(nums) == 1:
        return {nums[0]}
    out = set()
    idx = range(len(nums))
    for k in range(1, len(nums)):
        for left in itertools.combinations(idx, k):
            if 0 not in left:  # each split once
                continue
            a_vals = brute_force_values([nums[i] for i in left])
            b_vals = brute_force_values([nums[i] for i in idx if i not in left])
            for a in a_vals:
                for b in b_vals:
                    hi, lo = max(a, b), min(a, b)
                    out |= {a + b, a * b, hi - lo}
                    if lo and hi % lo == 0:
                        out.add(hi // lo)
    return out


# --------------------------------------------------------------- config and sampler


@pytest.mark.parametrize("values,fragment", [
    ({"n_inputs": 7}, "n_inputs must be between 3 and 6, got 7"),
    ({"n_inputs": 2}, "n_inputs must be between 3 and 6, got 2"),
    ({"min_target": 50, "max_target": 20}, "target range is empty: min_target=50 is above max_target=20"),
    ({"operations": "+%"}, "operations may only contain the characters + - * /, got '+%'"),
    ({"operations": ""}, "operations may only contain"),
    ({"operations": "++"}, "must not repeat an operation"),
    ({"min_input": 0}, "1 <= min_input <= max_input <= 999"),
    ({"max_input": 1000}, "1 <= min_input <= max_input <= 999"),
    ({"n_inputs": "4"}, "n_inputs must be an integer"),
])
def test_bad_configs_are_refused_with_a_sentence(values, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        make_config("countdown", values)


def test_an_unreachable_target_is_reported_not_looped_forever():
    cfg = cd.Config(n_inputs=3, min_input=1, max_input=1, min_target=10, max_target=19, operations="+")
    with pytest.raises(UserError, match="reached the countdown target"):
        cd.sample_instances(cfg, 0, "train", np.arange(3))


def test_held_out_targets_are_a_fixed_tenth_and_splits_keep_to_their_targets():
    held = cd.held_out_targets(CFG)
    assert len(held) == 9 and len(set(held.tolist())) == 9  # floor(91 / 10), as SoS
    assert np.array_equal(held, cd.held_out_targets(cd.Config()))          # a function of the config
    assert not np.array_equal(held, cd.held_out_targets(cd.Config(held_out_seed=1)))
    seen = set(cd.split_targets(CFG, "train").tolist())
    assert seen | set(held.tolist()) == set(range(10, 101)) and not seen & set(held.tolist())
    for split in ("train", "val", "test"):
        targets = cd.sample_instances(CFG, 3, split, np.arange(600))["target"]
        assert not set(targets.tolist()) & set(held.tolist())
    for split in ("val_target", "test_target"):
        targets = cd.sample_instances(CFG, 3, split, np.arange(300))["target"]
        assert set(targets.tolist()) == set(held.tolist())


def test_instance_depends_only_on_seed_split_index():
    whole = cd.sample_instances(CFG, 11, "train", np.arange(120))
    parts = [cd.sample_instances(CFG, 11, "train", np.arange(lo, lo + 37)) for lo in range(0, 120, 37)]
    for key in whole:
        assert np.array_equal(whole[key], np.concatenate([p[key] for p in parts])[:120])
    other = cd.sample_instances(CFG, 12, "train", np.arange(120))
    assert not np.array_equal(whole["numbers"], other["numbers"])


def test_kernels_match_the_plain_python_twin_byte_for_byte():
    indices = np.arange(150)
    batch = cd.sample_instances(CFG, 5, "train", indices)
    targets = cd.split_targets(CFG, "train").tolist()
    for i in indices:
        nums, target, solution, draws = ref.sample(CFG, 5, "train", int(i), targets=targets)
        assert batch["numbers"][i].tolist() == nums and batch["target"][i] == target
        assert batch["draws"][i] == draws
        assert batch["plan"][i].tolist() == [list(s) for s in solution]
    for searcher in ("mix", "dfs-full"):
        ex = grammar.write_examples(cd, CFG, grammar.Options(searcher=searcher), "stream", 5, "train",
                                    indices, batch)
        offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
        rows = ref.generate_stream_rows(CFG, 5, "train", indices, searcher=searcher)
        for i in indices:
            assert ex["tokens"][offsets[i]: offsets[i + 1]].tolist() == rows[i], (searcher, i)


# --------------------------------------------------------------- oracle


def test_oracle_solves_the_issue_example_and_matches_brute_force():
    assert cd.solve([12, 63, 96, 99], 33) == ["99-96=3", "63/3=21", "12+21=33"]
    rs = np.random.default_rng(1)
    for _ in range(150):
        nums = rs.integers(1, 30, 4).tolist()
        values = brute_force_values(nums)
        for target in rs.integers(0, 60, 5).tolist():
            plan = cd.solve(nums, target)
            assert (plan is not None) == (target in values), (nums, target)
            if plan is not None:
                assert independent_replay(nums, target, plan)


def test_fast_solvability_check_agrees_with_the_full_search():
    rs = np.random.default_rng(2)
    vals, kid = np.empty((6, 6), np.int64), np.empty(6, np.int64)
    path, steps, need = np.empty((6, 4), np.int64), np.empty((6, 4), np.int64), np.empty(8, np.int64)
    for trial in range(3000):
        n = 3 + trial % 3
        nums = rs.integers(0 if trial % 4 == 0 else 1, 25 if trial % 2 else 100, n).astype(np.int64)
        target, mask = int(rs.integers(0, 120)), int(rs.integers(1, 16))
        full = cd.solutions(nums, target, mask, True, steps, vals, kid, path) > 0
        assert cd.solvable(nums, target, mask, vals, kid, need) == full


def test_number_of_solutions_counts_every_move_sequence():
    batch = {"numbers": np.array([[1, 2, 3], [2, 2, 4]], np.int64), "target": np.array([6, 8], np.int64)}

    def by_hand(nums, target):  # every ordered sequence of (pair, op) moves, as the searches enumerate
        if len(nums) == 1:
            return int(nums[0] == target)
        total = 0
        for i, j in itertools.combinations(range(len(nums)), 2):
            rest = [v for k, v in enumerate(nums) if k not in (i, j)]
            for op in range(4):
                move = ref.combine(nums[i], nums[j], op)
                if move is not None:
                    total += by_hand(rest + [move[0]], target)
        return total

    assert cd.count_solutions(CFG, batch).tolist() == [by_hand([1, 2, 3], 6), by_hand([2, 2, 4], 8)]
    assert cd.count_solutions(CFG, batch)[0] > 1


# --------------------------------------------------------------- verifier


@pytest.mark.parametrize("numbers,target,plan,fragment", [
    ([2, 3, 50, 7], 9, ["3+3=6", "6+3=9"], "uses 3, which is not available"),       # SoS's accepted reuse
    ([2, 3, 50, 7], 9, ["2+7=9"], "left over"),                                        # not every input used
    ([12, 63, 96, 99], 33, ["99-96=3", "63/3=21", "12+22=34"], "uses 22, which is not available"),
    ([12, 63, 96, 99], 33, ["99-96=3", "63/5=12"], "uses 5"),                           # a number not given
    ([12, 63, 96, 99], 33, ["96/12=8", "99/8=12"], "divides inexactly"),
    ([12, 63, 96, 99], 33, ["99-96=3", "63/3=21", "12+21=32"], "is wrong: 12+21 is 33"),
    ([12, 63, 96, 99], 33, ["99-96=3", "63/3=21", "21-12=9"], "not at the target 33"),
    ([12, 63, 96, 99], 33, ["96-99=3"], "subtracts the larger number from the smaller"),
    ([12, 63, 96, 99], 33, ["99 - 96"], "is not of the form a op b=c"),
    ([12, 63, 96, 99], 33, [], "empty plan"),
])
def test_the_verifier_rejects_each_kind_of_bad_plan(numbers, target, plan, fragment):
    ok, reason = cd.replay_plan({"numbers": numbers, "target": target}, plan)
    assert not ok and fragment in reason, reason


def test_the_verifier_accepts_good_plans_and_refuses_forbidden_operations():
    inst = {"numbers": [12, 63, 96, 99], "target": 33}
    assert cd.replay_plan(inst, ["99-96=3", "63/3=21", "12+21=33"]) == (True, "reaches the target")
    ok, reason = cd.replay_plan(inst, ["99-96=3", "63/3=21", "12+21=33"], operations="+-*")
    assert not ok and "uses /, which this task does not allow" in reason


# --------------------------------------------------------------- searchers


def test_mix_draws_the_twelve_strategies_with_sos_weights():
    batch = cd.sample_instances(CFG, 0, "train", np.arange(8000))
    out = cs.run_search(CFG, batch, "mix", 0, "train", np.arange(8000))
    share = np.bincount(out["strategy"], minlength=12) / 8000
    for code, name in enumerate(cs.STRATEGIES):
        assert abs(share[code] - cs.MIX_WEIGHTS[name]) < 0.02, (name, share[code])
    assert abs(out["found"].mean() - 0.56) < 0.03  # SoS: about 56% of streams reach the goal
    names = [cs.strategy_name(c) for c in out["strategy"][:50]]
    assert [cs.mix_choice(0, "train", i) for i in range(50)] == names


@pytest.mark.parametrize("searcher", ["dfs-sum", "dfs-mult", "bfs1-sum", "bfs3-mult", "bfs5-sum",
                                      "backward", "dfs-full"])
def test_every_found_plan_replays_and_dfs_respects_the_sos_prune(searcher):
    batch = cd.sample_instances(CFG, 4, "train", np.arange(300))
    out = cs.run_search(CFG, batch, searcher, 4, "train", np.arange(300))
    assert out["found"].mean() >= {"backward": 0.9, "dfs-full": 1.0}.get(searcher, 0.05)
    for i in np.flatnonzero(out["found"]):
        assert independent_replay(batch["numbers"][i].tolist(), int(batch["target"][i]),
                                  cd.plan_strings(out["plan"][i]))
    if searcher in ("dfs-sum", "dfs-mult"):  # no child the stream enters has a heuristic above the target
        heur = cs.HEURISTICS.index(searcher.split("-")[1])
        for i in range(300):
            target = int(batch["target"][i])
            factors = [f for f in range(2, target + 1) if target % f == 0]
            tape = out["tape"][out["offsets"][i]: out["offsets"][i + 1]].tolist()
            p = 0
            while p < len(tape):
                if tape[p] == Event.TRY:
                    m = tape[p + 6]
                    state = tape[p + 7: p + 7 + m]
                    if heur == cs.HEUR_SUM:
                        assert sum(abs(v - target) for v in state) / m <= target
                    else:
                        assert sum(min(abs(v - f) for f in factors) for v in state) <= target
                    p += 7 + m
                else:
                    p += 2 + tape[p + 1]


def tape_kinds(tape):
    kinds, p = [], 0
    while p < len(tape):
        kinds.append(tape[p])
        p += 7 + tape[p + 6] if tape[p] == Event.TRY else 2 + tape[p + 1]
    return kinds


def test_a_search_stops_at_its_try_budget():
    batch = cd.sample_instances(CFG, 0, "train", np.arange(200))
    full = cs.run_search(CFG, batch, "dfs-sum", 0, "train", np.arange(200))
    out = cs.run_search(CFG, batch, "dfs-sum", 0, "train", np.arange(200), max_tries=3)
    for i in range(200):
        tries = tape_kinds(out["tape"][out["offsets"][i]: out["offsets"][i + 1]].tolist()).count(Event.TRY)
        assert tries <= 3
    assert out["found"].mean() < full["found"].mean()


# --------------------------------------------------------------- trace variants


def text(variant, numbers=(12, 63, 96, 99), target=33):
    batch = {"numbers": np.array([numbers], np.int64), "target": np.array([target], np.int64),
             "plan": np.zeros((1, 3, 4), np.int64), "draws": np.ones(1, np.int64)}
    steps = cd.solve(list(numbers), target)
    for k, s in enumerate(steps):
        a, op, b, c = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", s).groups()
        batch["plan"][0, k] = [int(a), cd.OP_SYMBOLS.index(op), int(b), int(c)]
    ex = grammar.write_examples(cd, CFG, grammar.Options(), variant, 0, "train", np.arange(1), batch)
    offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
    return [(VOCAB.decode(ex["tokens"][a: a + p]), VOCAB.decode(ex["tokens"][a + p: b]))
            for a, b, p in zip(offsets[:-1], offsets[1:], ex["prompt_len"])]


def test_the_spelling_of_each_variant():
    prompt = "<bos> 12 63 96 99 -> 33 ?"
    fwd = "99 - 96 = 3 , 63 / 3 = 21 , 12 + 21 = 33"
    back = "33 = 12 + 21 , 21 = 63 / 3 , 3 = 99 - 96"
    assert text("optimal") == [(prompt, fwd + " <eos>")]
    assert text("reverse") == [(prompt, back + " <eos>")]
    assert text("revfwd") == [(prompt, f"{back} ; {fwd} <eos>")]
    (p, c), = text("stream")
    assert p == prompt and c.startswith("at 12 63 96 99 try ") and c.endswith(" <eos>")
    (_, c), = text("backward-stream")
    assert c.startswith("at 12 63 96 99 -> 33 try 33 = ")
    rows = text("revthink")
    assert rows[0] == (prompt, fwd + " <eos>")   # exactly optimal's row
    # objective (b) from the question alone: the [bq] row writes what the backward question
    # changes (the target becomes an input, the first input unlike the target the new target)
    assert rows[1] == ("<bos> [bq] 12 63 96 99 -> 33 ?", "33 -> 12 ? <eos>")
    assert rows[2][0] == "<bos> [br] 33 63 96 99 -> 12 ?"
    nums, asked = [33, 63, 96, 99], 12
    plan = [s.replace(" ", "") for s in rows[2][1].removesuffix(" <eos>").split(" , ")]
    assert independent_replay(nums, int(asked), plan)


def rows_of(variant, batch, indices, split="train", seed=0, **options):
    ex = grammar.write_examples(cd, CFG, grammar.Options(**options), variant, seed, split, indices, batch)
    offsets = np.concatenate([[0], np.cumsum(ex["lengths"])])
    return [(ex["tokens"][a: a + p].tolist(), ex["tokens"][a + p: b].tolist(), int(k))
            for a, b, p, k in zip(offsets[:-1], offsets[1:], ex["prompt_len"], ex["kind"])]


def test_revthink_forward_rows_are_optimal_rows_and_its_backward_rows_are_real_tasks():
    indices = np.arange(200)
    batch = cd.sample_instances(CFG, 2, "train", indices)
    optimal = rows_of("optimal", batch, indices, seed=2)
    rows = rows_of("revthink", batch, indices, seed=2)
    assert [(p, c) for p, c, k in rows if k == common.KIND_FWD] == [(p, c) for p, c, _ in optimal]
    instance = grammar.write_examples(cd, CFG, grammar.Options(), "revthink", 2, "train", indices,
                                      batch)["instance"]
    asked_an_input = asked_the_first = 0
    for i in range(200):
        inst = cd.instance_at(batch, i)
        mine = [rows[r] for r in np.flatnonzero(instance == i)]
        if [k for _, _, k in mine] == [common.KIND_FWD]:  # no input can be asked for: forward row only
            continue
        assert [k for _, _, k in mine] == [common.KIND_FWD, common.KIND_BQ, common.KIND_BR]
        (bq_prompt, bq_completion, _), (br_prompt, br_completion, _) = mine[1:]
        question = " ".join(map(str, inst["numbers"])) + f" -> {inst['target']} ?"
        assert VOCAB.decode(bq_prompt) == f"<bos> [bq] {question}"  # no answer in it
        bq_question = VOCAB.decode(bq_completion).removesuffix(" ? <eos>")
        new_input, asked = (int(x) for x in bq_question.split(" -> "))
        assert new_input == inst["target"]
        # the input asked for: the first, in prompt order, unlike the target whose inversion replays
        unlike = [j for j, v in enumerate(inst["numbers"]) if v != inst["target"]]
        k = next(j for j in unlike if inst["numbers"][j] == asked)
        asked_an_input += 1
        asked_the_first += k == unlike[0]
        nums = inst["numbers"][:k] + [inst["target"]] + inst["numbers"][k + 1:]
        assert VOCAB.decode(br_prompt) == "<bos> [br] " + " ".join(map(str, nums)) + f" -> {asked} ?"
        plan = grammar.parse("optimal", br_completion, VOCAB).plan
        assert independent_replay(nums, asked, plan)   # its reasoning solves it
    assert asked_the_first >= 190
    assert asked_an_input >= 195


def test_lookahead_rows_copy_a_future_span_and_parse_back_to_the_plan():
    indices = np.arange(600)
    batch = cd.sample_instances(CFG, 0, "train", indices)
    optimal = rows_of("optimal", batch, indices)
    rows = rows_of("lookahead", batch, indices)
    shapes = set()
    for (p, c, _), (op, oc, _) in zip(rows, optimal):
        assert p == op
        assert grammar.parse("lookahead", c, VOCAB).plan == grammar.parse("optimal", oc, VOCAB).plan
        if grammar.T_OPEN not in c:
            assert c == oc
            continue
        a, b = c.index(grammar.T_OPEN), c.index(grammar.T_CLOSE)
        before, span, after = VOCAB.decode(c[:a]), VOCAB.decode(c[a + 1: b]), VOCAB.decode(c[b + 1:])
        steps = VOCAB.decode(oc).removesuffix(" <eos>").split(" , ")
        cut = len([x for x in before.split(" , ") if x])
        assert c[:a] + c[b + 1:] == oc  # removing the span leaves the optimal row
        assert after.removesuffix(" <eos>") == " , ".join(steps[cut:])
        spanned = span.split(" , ")
        first = steps.index(spanned[0])
        assert first >= cut and steps[first: first + len(spanned)] == spanned  # a future span
        shapes.add((cut, first, first + len(spanned) - 1))
    share = sum(grammar.T_OPEN in c for _, c, _ in rows) / len(rows)
    assert abs(share - 0.5) < 0.07
    # every (cut, first, last) with cut <= first <= last < 3 steps occurs: cut 0 included, and
    # (0, 2, 2), the span that eval's given-goal mode presents
    assert shapes == {(d, k, e) for d in range(3) for k in range(d, 3) for e in range(k, 3)}
    assert grammar.no_loss_tokens(VOCAB) == [grammar.T_OPEN]
    assert all(grammar.T_OPEN not in c for _, c, _ in rows_of("lookahead", batch, indices, lookahead_p=0.0))


def spelled(step):
    """`95-14=81` as the grammar writes it: `95 - 14 = 81`."""
    return " ".join(re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", step).groups()[:3]) + " = " + step.split("=")[1]


def test_eval_prefixes_of_the_lookahead_modes_are_in_the_training_distribution():
    batch = cd.sample_instances(CFG, 0, "test", np.arange(5))
    for i in range(5):
        inst = cd.instance_at(batch, i)
        plain = grammar.eval_prefix("lookahead", "plain", batch, i, VOCAB)
        model = grammar.eval_prefix("lookahead", "model-goal", batch, i, VOCAB)
        given = grammar.eval_prefix("lookahead", "given-goal", batch, i, VOCAB)
        assert plain == [] and model == [grammar.T_OPEN]
        # the given goal: the oracle plan's last step, the one that writes `= target`
        assert VOCAB.decode(given) == f"<T> {spelled(inst['solution'][-1])} </T>"
        assert VOCAB.decode(given).endswith(f"= {inst['target']} </T>")
        plan_ids = VOCAB.encode(" , ".join(spelled(x) for x in inst["solution"]) + " <eos>")
        for prefix in (plain, given):   # the judged completion is the prefix + what the model writes
            assert grammar.parse("lookahead", prefix + plan_ids, VOCAB).plan == inst["solution"]
        written = model + given[1:] + plan_ids   # model-goal: the model wrote the span itself
        assert grammar.parse("lookahead", written, VOCAB).plan == inst["solution"]
    assert grammar.eval_prefix("optimal", "plain", batch, 0, VOCAB) == []
    with pytest.raises(UserError, match="needs a lookahead suite"):
        grammar.eval_prefix("optimal", "given-goal", batch, 0, VOCAB)
    with pytest.raises(UserError, match="plain, model-goal or given-goal"):
        grammar.eval_prefix("lookahead", "oracle", batch, 0, VOCAB)


def test_corrupted_rows_show_a_fresh_instances_stream_whatever_the_shard():
    indices = np.arange(30)
    batch = cd.sample_instances(CFG, 0, "val", indices)
    whole = rows_of("corrupted", batch, indices, split="val")
    part = rows_of("corrupted", {k: v[10:20] for k, v in batch.items()}, indices[10:20], split="val")
    assert part == whole[10:20]
    donors = cd.sample_instances(CFG, 0, "val", indices, salts=np.full(30, grammar.DONOR_SALT))
    streams = rows_of("stream", donors, indices, split="val")
    optimal = rows_of("optimal", batch, indices, split="val")
    for (p, c, _), (_, sc, _), (op, oc, _) in zip(whole, streams, optimal):
        semi = c.index(grammar.SEMI)
        assert p == op and c[:semi] == sc[: sc.index(grammar.SEMI)] and c[semi + 1:] == oc
        assert VOCAB.decode(c).startswith("at ") and not VOCAB.decode(c).startswith(
            "at " + VOCAB.decode(p[1:]).split(" ->")[0] + " ")


def test_big_numbers_are_written_in_groups_of_three_digits_and_read_back():
    (_, c), = text("optimal", numbers=(99, 98, 97, 2), target=98)
    steps = grammar.parse("optimal", VOCAB.encode(c), VOCAB).plan
    assert independent_replay([99, 98, 97, 2], 98, steps)
    ids = VOCAB.encode("99 * 96 = 9 _ 504 , 9 _ 504 / 96 = 99 <eos>")
    assert grammar.parse("optimal", ids, VOCAB).plan == ["99*96=9504", "9504/96=99"]
    assert "cannot start with 0" in grammar.parse("optimal", VOCAB.encode("0 _ 5 + 1 = 6 <eos>"), VOCAB).error


@pytest.mark.parametrize("variant", grammar.VARIANTS)
def test_every_variant_parses_back_to_a_correct_faithful_plan(make_suite, variant):
    suite = open_suite(make_suite("countdown", variant, {}, sizes=SIZES))
    for split in suite.splits:
        data = suite.split(split)
        for r in range(len(data)):
            if data.kind[r] != common.KIND_FWD:
                continue
            i = int(data.instance[r])
            inst = cd.instance_at(data.instances, i)
            verdict = judge(suite, data.instances, i, data.completion(r))
            assert verdict["parse_error"] is None, verdict
            if variant == "corrupted":  # the right plan after another instance's stream
                assert verdict["correct"] and not verdict["faithful"], verdict
                assert verdict["plan"] == inst["solution"]
            elif variant in grammar.STREAM_VARIANTS:
                if verdict["plan"]:  # the search found a plan: faithful, and valid step by step
                    assert verdict["correct"] and verdict["faithful"], verdict
                else:
                    assert not verdict["correct"] and verdict["reason"] == "empty plan"
                assert verdict["behaviour"].invalid == 0, verdict["behaviour"].invalid_kinds
            else:
                assert verdict["correct"] and verdict["plan"] == inst["solution"], verdict
            if verdict["plan"]:
                assert independent_replay(inst["numbers"], inst["target"], verdict["plan"])


def test_a_broken_stream_is_judged_invalid_step_by_step(make_suite):
    suite = open_suite(make_suite("countdown", "stream", {}, sizes=SIZES))
    data = suite.split("test")
    words = VOCAB.decode(data.completion(0)).split()
    k = words.index("try") + 5   # the result of the first try: make it wrong arithmetic
    words[k] = str(int(words[k]) + 1) if words[k] != "_" else words[k]
    verdict = judge(suite, data.instances, int(data.instance[0]), VOCAB.encode(" ".join(words)))
    assert verdict["behaviour"] is not None and verdict["behaviour"].invalid >= 1


@settings(max_examples=300, deadline=None)
@given(variant=st.sampled_from(grammar.VARIANTS),
       ids=st.lists(st.integers(min_value=-5, max_value=len(VOCAB) + 5), max_size=60))
def test_parser_never_raises_on_arbitrary_tokens(variant, ids):
    parsed = grammar.parse(variant, ids, VOCAB)
    assert (parsed.plan is None) == (parsed.error is not None)
    grammar.stream_plan(parsed)


@settings(max_examples=300, deadline=None)
@given(variant=st.sampled_from(grammar.VARIANTS),
       words=st.lists(st.sampled_from(grammar.STRUCTURE[3:] + ["0", "3", "12", "21", "33"]), max_size=40))
def test_parser_never_raises_on_grammar_like_tokens(variant, words):
    parsed = grammar.parse(variant, [VOCAB[w] for w in words] + [VOCAB.eos_id], VOCAB)
    assert (parsed.plan is None) == (parsed.error is not None)
    grammar.stream_plan(parsed)
    if parsed.events:
        walk = cd.Walk(CFG, {"numbers": np.array([[12, 63, 96, 99]]), "target": np.array([33]),
                             "plan": np.zeros((1, 3, 4), np.int64)}, 0, backward=parsed.backward)
        from retroplan.metrics import analyse_stream

        analyse_stream(parsed.events, parsed.event_ends, walk, len(words) + 1)


# --------------------------------------------------------------- env, export, inspect


def test_gymnasium_env_passes_check_env_and_plays_by_the_rules():
    env = gym.make("retroplan/Countdown-v0")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=3)
    assert info["reachable"]
    obs, _ = env.reset(options={"instance": {"numbers": [12, 63, 96, 99], "target": 33}})
    # 99-96=3 (slots 2, 3), then 63/3 (slots 1, 2), then 12+21 (slots 0, 1)
    for action, reward, done in (((2, 3, 2), 0.0, False), ((1, 2, 3), 0.0, False), ((0, 1, 0), 1.0, True)):
        obs, r, terminated, truncated, info = env.step(np.array(action))
        assert (r, terminated, info["illegal"]) == (reward, done, False) and info["reachable"]
    assert obs["numbers"].tolist() == [33, -1, -1, -1]
    env.reset(options={"instance": {"numbers": [12, 63, 96, 99], "target": 33}})
    _, r, terminated, _, info = env.step(np.array((0, 3, 3)))   # 99 / 12 is inexact
    assert r == 0.0 and terminated and info["illegal"]
    env.reset(options={"instance": {"numbers": [12, 63, 96, 99], "target": 33}})
    _, _, _, _, info = env.step(np.array((0, 1, 0)))             # 12 + 63: 33 is now out of reach?
    assert info["reachable"] == cd.reachable([96, 99, 75], 33)


def test_sos_export_has_their_fields_and_a_search_path_their_way(make_suite, tmp_path):
    suite_dir = make_suite("countdown", "optimal", {}, sizes=SIZES)
    counts = export_suite(suite_dir, tmp_path / "sos", "sos", split="test")
    rows = json.loads((tmp_path / "sos" / "test.json").read_text())
    assert counts == {"test": 30} and len(rows) == 30
    reached = 0
    for row in rows:
        assert set(row) == {"nums", "target", "solution", "search_path", "optimal_path", "rating",
                            "search_type", "heuristic"}
        assert row["search_type"] in ["dfs"] + [f"bfs_{b}" for b in range(1, 6)]
        assert row["heuristic"] in ("sum_heuristic", "mult_heuristic")
        assert independent_replay(row["nums"], row["target"], row["solution"])
        lines = row["search_path"].splitlines()
        assert lines[0] == f"Current State: {row['target']}:{row['nums']}, Operations: []"
        if "Goal Reached" in row["search_path"]:
            reached += 1
            assert 0 < row["rating"] <= 1
            # SoS reads the plan as the last `Current State`'s operations + the last operation
            goal = next(k for k, line in enumerate(lines) if line.endswith("Goal Reached"))
            state = next(line for line in reversed(lines[:goal]) if line.startswith("Current State"))
            ops = re.findall(r"'([^']*)'", state.split("Operations: ")[1])
            last = re.match(r"Exploring Operation: (\S+),", lines[goal - 1])[1]
            assert independent_replay(row["nums"], row["target"], ops + [last])
        else:
            assert row["rating"] == 0.0
        assert row["optimal_path"].splitlines()[-1].endswith("equal: Goal Reached")
    assert reached > 0


def test_jsonl_rows_carry_numbers_target_solution_and_the_searcher(make_suite, tmp_path):
    suite_dir = make_suite("countdown", "stream", {}, sizes=SIZES)
    export_suite(suite_dir, tmp_path / "rows", "jsonl", split="val")
    rows = (tmp_path / "rows" / "data" / "validation-00000-of-00001.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in rows]
    assert len(rows) == SIZES["val"]
    for row in rows:
        assert {"numbers", "target", "solution", "prompt", "completion", "searcher", "found"} <= set(row)
        assert row["searcher"] in cs.STRATEGIES
        assert independent_replay(row["numbers"], row["target"], row["solution"])
        assert row["found"] == [] or independent_replay(row["numbers"], row["target"], row["found"])


def test_inspect_reports_lengths_truncation_and_held_out_targets(make_suite, capsys):
    suite_dir = make_suite("countdown", "stream", {}, sizes=SIZES)
    assert main(["inspect", str(suite_dir), "--rows", "0", "--context", "256"]) == 0
    out = capsys.readouterr().out
    assert "held-out targets (only in val_target, test_target): [23, 28, 29, 38, 52, 54, 91, 95, 99]" in out
    lengths = open_suite(suite_dir).split("train").lengths
    over = int((lengths > 256).sum())
    assert f"median {np.median(lengths):.0f}" in out
    assert f"{over} rows ({over / len(lengths):.2%}) longer" in out
    assert "solvable share of input draws" in out


# --------------------------------------------------------------- the SoS distribution


def _chi2_p(stat: float, dof: int) -> float:
    """Upper tail of chi-square (Wilson-Hilferty normal approximation)."""
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_solvable_share_and_per_target_counts_match_the_sos_process():
    """Numba sampler vs SoS's process written in plain Python with Python's own `random`."""
    n = 1500
    batch = cd.sample_instances(CFG, 21, "train", np.arange(n))
    rand = random.Random(21)
    targets = cd.split_targets(CFG, "train").tolist()
    py = [ref.sample(CFG, 0, "train", 0, rand=rand, targets=targets) for _ in range(n)]
    # solvable share (instances / draws): two-proportion z-test
    k1, d1 = n, int(batch["draws"].sum())
    k2, d2 = n, sum(p[3] for p in py)
    p1, p2, pooled = k1 / d1, k2 / d2, (k1 + k2) / (d1 + d2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / d1 + 1 / d2))
    assert abs(z) < 3.3, (p1, p2)
    assert 0.10 < p1 < 0.17  # SoS: about 14% of random draws are solvable
    # per-target counts: homogeneity between the two samplers, and uniform over the split's targets
    a = np.array([np.sum(batch["target"] == t) for t in targets])
    b = np.array([sum(1 for p in py if p[1] == t) for t in targets])
    expected = (a + b) / 2
    stat = float(np.sum((a - expected) ** 2 / expected + (b - expected) ** 2 / expected))
    assert _chi2_p(stat, len(targets) - 1) > 1e-3
    uniform = n / len(targets)
    assert _chi2_p(float(np.sum((a - uniform) ** 2 / uniform)), len(targets) - 1) > 1e-3
    # the inputs: same distribution of values (10 bins)
    ha = np.histogram(batch["numbers"], bins=10, range=(1, 100))[0]
    hb = np.histogram([v for p in py for v in p[0]], bins=10, range=(1, 100))[0]
    e = (ha + hb) / 2
    assert _chi2_p(float(np.sum((ha - e) ** 2 / e + (hb - e) ** 2 / e)), 9) > 1e-3


# --------------------------------------------------------------- at scale (slow)


@pytest.mark.slow
def test_no_invalid_plan_among_100000_generated():
    n = 100_000
    batch = cd.sample_instances(CFG, 99, "train", np.arange(n))
    found = cs.run_search(CFG, batch, "mix", 99, "train", np.arange(n))
    bad = 0
    for i in range(n):
        inst = cd.instance_at(batch, i)
        bad += not cd.replay_plan(inst, inst["solution"])[0]
        if found["found"][i]:
            bad += not cd.replay_plan(inst, cd.plan_strings(found["plan"][i]))[0]
    assert bad == 0
    assert abs(found["found"].mean() - 0.56) < 0.02  # SoS: "about 56%" of streams reach the goal


def _toml(exp: dict) -> str:
    """A small TOML writer for the experiment tables used here."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in exp.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and v and not isinstance(v[0], dict))]
    for k, v in exp.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{a} = {value(b)}" for a, b in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for table in v:
                lines += [f"[[{k}]]"] + [f"{a} = {value(b)}" for a, b in table.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_the_countdown_experiment_runs_end_to_end_at_cpu_size(tmp_path):
    """retroplan/experiments/countdown.toml with CPU-sized counts, model and steps: every variant is
    generated, trained, evaluated and reported, and the held-out targets evaluate too."""
    import tomllib

    from retroplan.experiment import run_experiment

    exp = tomllib.loads(open("retroplan/experiments/countdown.toml").read())
    exp["sizes"] = {"train": 300, "val": 20, "test": 24, "val_target": 10, "test_target": 16}
    exp["train"].update(preset="tiny", context=512, steps=30, batch_size=8, warmup_steps=5,
                        checkpoint_every=30, log_every=10, compile=False, threads=1)
    exp["eval"]["batch_size"] = 24
    path = tmp_path / "countdown.toml"
    path.write_text(_toml(exp))
    report = run_experiment(path, tmp_path / "out", progress=False)
    text = report.read_text()
    for variant in exp["variants"]:
        assert f"| {variant} |" in text
        metrics = json.loads((tmp_path / "out" / "runs" / f"cd4-{variant}-s0" / "eval-test" /
                              "metrics.json").read_text())
        assert metrics["n"] == 24 and metrics["accuracy"]["n"] == 24
        run = json.loads((tmp_path / "out" / "runs" / f"cd4-{variant}-s0" / "run.json").read_text())
        assert run["long_examples"]["policy"] == "drop" and run["long_examples"]["dropped"] >= 0
        held = json.loads((tmp_path / "out" / "runs" / f"cd4-{variant}-s0" / "eval-test_target" /
                           "metrics.json").read_text())  # the held-out targets, from [eval] splits
        assert held["n"] == 16 and held["split"] == "test_target"
        assert f"| cd4 / test_target | {variant} |" in text
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert sorted({r["split"] for r in rows}) == ["test", "test_target"]


def test_difficulty_records_inputs_target_and_how_many_solutions():
    cfg = cd.Config()
    batch = cd.sample_instances(cfg, 0, "test", np.arange(40))
    diff = cd.difficulty(cfg, batch)
    assert set(diff) == {"inputs", "target", "solutions_log2"}
    assert np.all(diff["inputs"] == 4) and np.array_equal(diff["target"], batch["target"])
    counts = cd.count_solutions(cfg, batch)
    assert np.all(counts >= 1)  # every sampled instance is solvable
    assert np.array_equal(diff["solutions_log2"], np.floor(np.log2(counts)).astype(np.int64))
