"""`retroplan.score(task_or_suite, entry, text)`: one answer judged exactly as `eval` judges it,
from a suite, an export folder or a task name; and Countdown's `expression` column, which
reasoning-gym's Countdown scorer accepts as is (and which an independent reader of arithmetic,
written here from the rules alone, evaluates to the target using each input once)."""

import ast
import json
from collections import Counter
from fractions import Fraction

import pytest
from conftest import independent_replay

import retroplan
from retroplan.envs import countdown as cd
from retroplan.errors import UserError
from retroplan.eval import judge
from retroplan.traces.export import export_suite
from retroplan.traces.suite import open_suite

COUNTDOWN_SIZES = {"train": 20, "val": 5, "test": 30, "val_target": 5, "test_target": 20}
PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}


def broken_versions(words: list[str]) -> list[list[str]]:
    """Right and wrong answers: the teacher's, cut short, without <eos>, with a word swapped,
    with two words exchanged."""
    out = [words, words[: len(words) // 2] + ["<eos>"], words[:-1]]
    for k in (0, len(words) // 2, len(words) - 3):
        if 0 <= k < len(words) - 1:
            swapped = list(words)
            swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
            out.append(swapped)
    return out


@pytest.mark.parametrize("task,variant,config,sizes", [
    ("countdown", "stream", {}, COUNTDOWN_SIZES),
    ("countdown", "optimal", {}, COUNTDOWN_SIZES),
    ("pathstar", "stream", PATHSTAR, None),
    ("graph", "reverse", {"num_nodes": 10, "max_distance": 4}, None),
])
def test_score_gives_evals_verdict_for_right_and_wrong_answers(make_suite, task, variant, config, sizes):
    suite = open_suite(make_suite(task, variant, config, sizes=sizes))
    split = suite.split("test")
    seen = Counter()
    for r in range(min(15, len(split))):
        row = suite.describe_row("test", r)
        for words in broken_versions(row["completion"].split()):
            verdict = retroplan.score(suite, row, " ".join(words))
            ids = suite.vocab.encode(" ".join(words))
            by_eval = judge(suite, split.instances, int(split.instance[r]), ids)
            assert verdict == {k: by_eval[k] for k in verdict}
            seen[verdict["correct"]] += 1
    assert seen[True] >= 5 and seen[False] >= 15  # both kinds of answer were judged


def test_score_reads_an_export_folder_and_its_rows_as_datasets_loads_them(make_suite, tmp_path):
    datasets = pytest.importorskip("datasets")
    suite_dir = make_suite("countdown", "stream", {}, sizes=COUNTDOWN_SIZES)
    out = tmp_path / "export"
    export_suite(suite_dir, out, "jsonl")
    rows = datasets.load_dataset("json", data_dir=str(out / "held_out"), cache_dir=str(tmp_path / "hf"))
    rows = list(rows["test_target"])
    assert len(rows) == 20
    right = 0
    for row in rows:
        wrong = row["completion"].replace(str(row["target"]), str(row["target"] + 1))
        for text in (row["completion"], wrong):
            verdict = retroplan.score(out, row, text)
            assert verdict == retroplan.score("countdown", row, text, variant="stream")  # default config
            plan = verdict["plan"] or []
            assert verdict["correct"] == independent_replay(row["numbers"], row["target"], plan)
            right += verdict["correct"]
    assert right >= 5


def arithmetic(text: str):
    """(value, the integer literals used) of an expression of + - * / and parentheses over
    non-negative integers, read with Python's parser and evaluated with exact fractions (no
    `eval`); None for anything else."""
    literals = []

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, ast.Div) and b == 0:
                raise ZeroDivisionError
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not \
                isinstance(node.op, ast.Div) else a / b
        raise ValueError(ast.dump(node))

    try:
        return value(ast.parse(text, mode="eval").body), literals
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None


def test_the_expression_column_reaches_the_target_using_each_input_once(make_suite, tmp_path):
    suite_dir = make_suite("countdown", "optimal", {}, sizes=COUNTDOWN_SIZES)
    out = tmp_path / "export"
    export_suite(suite_dir, out, "jsonl")
    rows = [json.loads(line) for path in sorted(out.rglob("*.jsonl"))
            for line in path.read_text().splitlines()]
    assert len(rows) == sum(COUNTDOWN_SIZES.values())
    for row in rows:
        value, literals = arithmetic(row["expression"])
        assert value == row["target"] and sorted(literals) == sorted(row["numbers"]), row
    assert cd.expression([3, 5, 7, 8], ["8-7=1", "3+5=8", "8*1=8"]) == "(3 + 5) * (8 - 7)"
    assert cd.expression([6, 2, 9, 9], ["6/2=3", "9+9=18", "18*3=54"]) == "(9 + 9) * (6 / 2)"
    with pytest.raises(UserError, match="uses 4, which is not left over"):
        cd.expression([3, 5], ["4+5=9"])
    # reasoning-gym's own scorer, when installed (the dev extra installs it: CI runs this)
    rg = pytest.importorskip("reasoning_gym.games.countdown")
    scorer = rg.CountdownDataset(rg.CountdownConfig(size=1, seed=0))
    for row in rows:
        entry = {"metadata": {"numbers": row["numbers"], "target": row["target"]}}
        assert scorer.score_answer(row["expression"], entry) == 1.0, row
    steps_text = rows[0]["completion"].replace(" <eos>", "")
    assert scorer.score_answer(steps_text, {"metadata": {"numbers": rows[0]["numbers"],
                                                          "target": rows[0]["target"]}}) < 1.0


def test_bad_input_gets_one_sentence(make_suite, tmp_path):
    suite = make_suite("pathstar", "optimal", PATHSTAR)
    row = open_suite(suite).describe_row("test", 0)
    with pytest.raises(UserError, match="neither a task .* nor a suite folder"):
        retroplan.score(tmp_path, row, "1 2 <eos>")
    with pytest.raises(UserError, match="has no 'edges' field; a graph row needs edges, start and goal"):
        retroplan.score(suite, {"start": 1}, "1 2 <eos>")
    with pytest.raises(UserError, match="names a node outside 0..19"):
        retroplan.score(suite, dict(row, goal=99), "1 2 <eos>")
    with pytest.raises(UserError, match="has 2 numbers, and this countdown config 4 inputs"):
        retroplan.score("countdown", {"numbers": [1, 2], "target": 3}, "1 + 2 = 3 <eos>")
    with pytest.raises(UserError, match="unknown countdown variant 'sideways'"):
        retroplan.score("countdown", {"numbers": [1, 2, 3, 4], "target": 10}, "", variant="sideways")
