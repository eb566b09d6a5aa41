"""Countdown answers written the usual way are read as the grammar reads its own tokens: a plain
integer of any size (`2494`, which suites spell `2 _ 494`) and `a op b=c` steps without spaces
(the exported `solution` strings), by the grammar's `parse_text` and by `eval-hf`'s judge.

Known answers: the teacher's own completions, rewritten with plain numbers, are judged exactly as
their token ids are (every plan right), including rows whose numbers reach 1,000 or more."""

import re

import pytest

from retroplan.eval import judge_completions
from retroplan.eval_hf import judge_text, record_fields, text_splitter
from retroplan.traces import countdown as grammar
from retroplan.traces.suite import open_suite

SIZES = {"train": 10, "val": 4, "test": 60, "val_target": 4, "test_target": 4}


def plain_numbers(text: str) -> str:
    """The suite's text with every base-1000 spelling (`2 _ 494`) written as one integer."""
    def join(match):
        head, *groups = match[0].split(" _ ")
        return str(int(head + "".join(f"{int(g):03d}" for g in groups)))
    return re.sub(r"\d+(?: _ \d+)+", join, text)


@pytest.fixture(scope="module")
def optimal(make_suite):
    return open_suite(make_suite("countdown", "optimal", {}, sizes=SIZES))


def test_plain_numbers_of_any_size_are_spelled_as_the_writer_spells_them():
    assert grammar.spell_number(7) == ["7"]
    assert grammar.spell_number(2494) == ["2", "_", "494"]
    assert grammar.spell_number(1000) == ["1", "_", "0"]
    assert grammar.spell_number(1_000_005) == ["1", "_", "0", "_", "5"]
    assert grammar.text_words("86*29=2494, 2494/58=43") == [
        "86", "*", "29", "=", "2", "_", "494", ",", "2", "_", "494", "/", "58", "=", "43"]
    # the suite's own spelling reads unchanged; brackets, arrows and <eos> stay whole
    assert grammar.text_words("86 * 29 = 2 _ 494 <eos>") == ["86", "*", "29", "=", "2", "_", "494", "<eos>"]
    assert grammar.text_words("12 63->33 </T> [bq]") == ["12", "63", "->", "33", "</T>", "[bq]"]
    assert grammar.text_words("007") == ["007"]  # a leading zero is no number of the grammar


def test_parse_text_reads_plans_with_numbers_of_1000_and_more(optimal):
    vocab = optimal.vocab
    for text in ("86*29=2494, 2494/58=43", "86 * 29 = 2494 , 2494 / 58 = 43", "86*29=2 _ 494,2 _ 494/58=43"):
        parsed = grammar.parse_text("optimal", text, vocab)
        assert parsed.error is None and parsed.plan == ["86*29=2494", "2494/58=43"], text
    assert grammar.parse_text("reverse", "43 = 2494 / 58 , 2494 = 86 * 29", vocab).plan == [
        "86*29=2494", "2494/58=43"]
    assert grammar.parse_text("optimal", "86*29=1234567", vocab).plan == ["86*29=1234567"]  # read, not judged
    bad = grammar.parse_text("optimal", "86 x 29 = 2494", vocab)
    assert bad.plan is None and "'x' is not in the suite's vocabulary" in bad.error
    assert grammar.parse_text("optimal", "86*029=2494", vocab).plan is None


@pytest.mark.parametrize("variant", ["optimal", "reverse", "stream"])
def test_eval_hf_judges_plain_numbers_exactly_as_the_suites_token_ids(make_suite, variant):
    suite = open_suite(make_suite("countdown", variant, {}, sizes=SIZES))
    split = suite.split("test")
    rows = [r for r in range(len(split)) if split.kind[r] == 0]
    texts = {(r, 0): plain_numbers(suite.vocab.decode(split.completion(r))) for r in rows}
    big = [r for (r, _), text in texts.items() if re.search(r"\d{4}", text)]
    assert big, "the test split has a plan through a number >= 1000 (seed 0: row 48 of optimal)"
    split_words = text_splitter(suite)
    completions = {key: (record_fields(text, split=split_words), text) for key, text in texts.items()}
    records, metrics = judge_completions(suite, split, rows, completions, judge_one=judge_text)
    _, from_ids = judge_completions(suite, split, rows, {
        key: (fields, split.completion(key[0])) for key, (fields, _) in completions.items()})
    assert metrics["parse_failures"]["value"] == 0.0
    assert metrics["accuracy"] == from_ids["accuracy"]
    if variant != "stream":  # (a stream may answer `none`: the oracle's plan is right every time)
        assert metrics["accuracy"]["value"] == 1.0
    assert all(r["parse_error"] is None for r in records if r["row"] in big)
    assert all("2 _ " not in r["generated"] or r["row"] in big for r in records)


def test_eval_hf_judges_the_exported_solution_strings(optimal):
    """The export's `solution` field (`"a op b=c"` strings), joined as a person would write
    them, is a right answer; a wrong result of 1,000 or more is a wrong answer, not a parse
    failure."""
    split = optimal.split("test")
    row = next(r for r in range(len(split)) if any(
        int(s.split("=")[1]) >= 1000 for s in optimal.describe_row("test", r)["solution"]))
    solution = optimal.describe_row("test", row)["solution"]
    i = int(split.instance[row])
    right = judge_text(optimal, split.instances, i, ", ".join(solution) + " <eos>")
    assert right["correct"] and right["parse_error"] is None
    step = next(s for s in solution if int(s.split("=")[1]) >= 1000)
    wrong_value = str(int(step.split("=")[1]) + 1000)
    wrong = judge_text(optimal, split.instances, i, ", ".join(solution).replace(
        step, step.split("=")[0] + "=" + wrong_value) + " <eos>")
    assert not wrong["correct"] and wrong["parse_error"] is None and "wrong" in wrong["reason"]
