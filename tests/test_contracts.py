"""The task and grammar contracts (retroplan/contracts.py, checked by retroplan/tasks.py): every
registered task and its grammar keep them, and a module that breaks one is reported with a
sentence naming the member and the fault."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

from retroplan import ENV_ENTRY_POINTS
from retroplan.contracts import DigraphTask, Task
from retroplan.envs import TASKS, pathstar
from retroplan.errors import UserError
from retroplan.tasks import ContractError, check_grammar, check_task, task_contract
from retroplan.traces import GRAMMARS, digraphs
from retroplan.traces.common import Parsed


def fake(module, drop=(), **replace):
    """A copy of `module` (same name, so its registry entries still match) without the members
    `drop` and with `replace` put in."""
    copy = types.ModuleType(module.__name__, module.__doc__)
    copy.__dict__.update({k: v for k, v in vars(module).items() if k not in drop})
    copy.__dict__.update(replace)
    return copy


def broken(match: str):
    return pytest.raises(ContractError, match=re.escape(match))


def test_the_registries_name_the_same_tasks():
    assert set(TASKS) == set(GRAMMARS)
    assert all(task.NAME == name for name, task in TASKS.items())
    assert {task.ENV_ID for task in TASKS.values()} == set(ENV_ENTRY_POINTS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_keeps_the_task_contract(name):
    check_task(TASKS[name])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_grammar_keeps_the_grammar_contract_on_its_tasks(name):
    check_grammar(GRAMMARS[name], TASKS[name])


def test_the_digraph_grammar_asks_its_tasks_for_the_digraph_contract():
    assert task_contract(digraphs) is DigraphTask
    assert task_contract(GRAMMARS["countdown"]) is Task


# --------------------------------------------------------------------------- broken tasks


def test_a_task_missing_members_or_with_a_wrong_kind_is_named():
    task = fake(pathstar, drop=("state_label", "describe"), SPLITS=["train", "val", "test"])
    with pytest.raises(ContractError) as err:
        check_task(task)
    message = str(err.value)
    assert message.startswith("task module retroplan.envs.pathstar breaks the Task contract: ")
    assert "missing describe (Task.describe: Lines `retroplan inspect` prints" in message
    assert "missing state_label" in message
    assert "SPLITS must be a tuple, got list" in message


def test_a_function_that_cannot_take_the_contracts_arguments_is_named():
    task = fake(pathstar, split_summary=lambda cfg: None)
    with broken("split_summary cannot be called as split_summary(cfg, instances)"):
        check_task(task)


def test_a_task_without_what_its_grammar_needs_is_named():
    task = fake(pathstar, drop=("depth_limit",))
    with broken("(written by grammar retroplan.traces.digraphs) breaks the DigraphTask contract: "
                "missing depth_limit"):
        check_grammar(digraphs, task)
    with broken("breaks the DigraphTask contract: missing depth_limit"):
        check_task(task)


def test_a_config_whose_defaults_do_not_validate_is_caught():
    class Config(pathstar.Config):
        def validate(self):
            raise UserError("pathstar degree must be at least 2, got 2.")

    with broken("task pathstar: Config() does not validate its own defaults: pathstar degree must be"):
        check_task(fake(pathstar, Config=Config))


def test_an_instance_that_is_not_plain_python_is_caught():
    def instance_at(batch, i):
        return {k: v[i] for k, v in batch.items()}  # numpy values

    with broken("task pathstar (train): instance_at must return plain JSON-able values"):
        check_task(fake(pathstar, instance_at=instance_at))


def test_a_replay_that_accepts_a_wrong_plan_is_caught():
    task = fake(pathstar, replay_plan=lambda instance, plan: (True, "reaches the goal"))
    with broken("task pathstar (test): replay_plan accepts a corrupted plan (the empty plan of instance 0"):
        check_task(task)


def test_sampling_that_depends_on_the_batch_is_caught():
    def sample(cfg, seed, split, indices, salts=None, serial=False):  # numbers instances by batch position
        return pathstar.sample_instances(cfg, seed, split, np.arange(len(indices)), salts, serial)

    with broken("task pathstar (train): sample_instances depends on the batch: instances [3, 1]"):
        check_task(fake(pathstar, sample_instances=sample))


def test_a_serial_sampler_that_draws_other_instances_is_caught():
    def sample(cfg, seed, split, indices, salts=None, serial=False):  # the env's draws off by one seed
        return pathstar.sample_instances(cfg, seed + serial, split, indices, salts, serial)

    with broken("task pathstar (train): sample_instances(serial=True) (the env's draws) must equal"):
        check_task(fake(pathstar, sample_instances=sample))


def test_a_walk_that_disagrees_with_the_plan_is_caught():
    class Walk(pathstar.Walk):
        def distance(self, state):
            return super().distance(state) + 1

    with broken("Walk(instance 0, backward=False): distance(root) is"):
        check_task(fake(pathstar, Walk=Walk))


def test_a_walk_whose_successors_lead_nowhere_is_caught():
    class Walk(pathstar.Walk):
        def successors(self, state):
            return []

    with broken("no live successor is one move nearer the goal"):
        check_task(fake(pathstar, Walk=Walk))


# --------------------------------------------------------------------------- broken grammars


def test_a_grammar_missing_a_member_is_named():
    grammar = fake(digraphs, drop=("searcher_of",))
    with broken("grammar retroplan.traces.digraphs breaks the Grammar contract: missing searcher_of "
                "(Grammar.searcher_of: The search behind a row, for exports"):
        check_grammar(grammar, pathstar)


def test_a_grammar_that_parses_a_row_to_another_plan_is_caught():
    def parse(variant, ids, vocab):
        parsed = digraphs.parse(variant, ids, vocab)
        if variant == "revfwd" and parsed.plan:
            return Parsed(parsed.plan[::-1])
        return parsed

    with broken("variant revfwd: the row of instance 0 parses to"):
        check_grammar(fake(digraphs, parse=parse), pathstar)


def test_a_grammar_whose_parse_raises_is_caught():
    def parse(variant, ids, vocab):
        ids = [int(t) for t in ids]
        if ids and ids[-1] != digraphs.EOS:
            raise IndexError("fell off the end")
        return digraphs.parse(variant, ids, vocab)

    with broken("variant optimal: parse must never raise; on 5 tokens it raised IndexError('fell off"):
        check_grammar(fake(digraphs, parse=parse), pathstar)


def revthink_rewritten(bq_row):
    """A copy of the digraph grammar whose revthink [bq] rows are rewritten by
    bq_row(prompt, completion, plan) -> (prompt, completion) (token lists)."""
    from retroplan.traces.common import KIND_BQ

    def write_examples(task, cfg, options, variant, seed, split, indices, batch):
        ex = digraphs.write_examples(task, cfg, options, variant, seed, split, indices, batch)
        if variant != "revthink" or split != "train":
            return ex
        tokens, lengths, prompt_len, start = [], [], [], 0
        for r, (n, p) in enumerate(zip(ex["lengths"], ex["prompt_len"])):
            row = ex["tokens"][start:start + n].tolist()
            prompt, completion = row[:p], row[p:]
            start += n
            if ex["kind"][r] == KIND_BQ:
                i = int(ex["instance"][r])
                plan = [digraphs.NODE0 + int(v) for v in batch["plan"][i, :batch["plan_len"][i]]]
                prompt, completion = bq_row(prompt, completion, plan)
            tokens += prompt + completion
            lengths.append(len(prompt) + len(completion))
            prompt_len.append(len(prompt))
        return dict(ex, tokens=np.array(tokens, np.int32), lengths=np.array(lengths, np.int32),
                    prompt_len=np.array(prompt_len, np.int32))

    return fake(digraphs, write_examples=write_examples)


def test_a_revthink_backward_question_written_from_the_answer_is_caught():
    # the teacher's augmentation input (question + plan) is not what RevThink's student sees
    grammar = revthink_rewritten(lambda prompt, completion, plan:
                                 (prompt + plan + [digraphs.SEMI], completion))
    with broken("variant revthink (train): the [bq] row 1 must take the question alone"):
        check_grammar(grammar, pathstar)


def test_a_revthink_backward_question_that_copies_the_prompt_is_caught():
    grammar = revthink_rewritten(lambda prompt, completion, plan: (prompt, prompt[2:] + completion))
    with broken("variant revthink (train): the [bq] row 1's completion is as long as its question"):
        check_grammar(grammar, pathstar)
