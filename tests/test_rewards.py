"""rewards.py: the verified reward with TRL's `reward_funcs` signature judges text exactly as
`eval-hf` does (and is used by a real `trl.GRPOTrainer`), and RLP's information gain has the
sign it must on hand-built models."""

import math

import pytest
import torch
from conftest import save_tiny_gpt2

from retroplan.errors import UserError
from retroplan.rewards import information_gain, thought_and_plan, verified_reward
from retroplan.traces.suite import open_suite

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}
SIZES = {"train": 30, "val": 4, "test": 10}


@pytest.fixture(scope="module")
def suite(make_suite):
    return open_suite(make_suite("pathstar", "stream", PATHSTAR, sizes=SIZES))


def texts(suite, name="test"):
    split = suite.split(name)
    return ([suite.vocab.decode(split.prompt(r)) for r in range(len(split))],
            [suite.vocab.decode(split.completion(r)) for r in range(len(split))])


def test_the_teachers_completions_earn_1_and_broken_ones_0(suite):
    reward = verified_reward(suite)
    prompts, completions = texts(suite)
    assert reward(prompts, completions) == [1.0] * len(prompts)
    assert reward(prompts, [c.replace(" <eos>", "") for c in completions]) == [0.0] * len(prompts)
    # another instance's answer is judged against this instance's graph
    swapped = completions[1:] + completions[:1]
    assert reward(prompts, swapped) == [0.0] * len(prompts)
    # few-shot prompts: the instance is the prompt's last line; conversational messages work too
    shot = f"{prompts[1]} {completions[1]}\n{prompts[0]}"
    assert reward([shot], [completions[0]]) == [1.0]
    assert reward([[{"role": "user", "content": prompts[0]}]],
                  [[{"role": "assistant", "content": completions[0]}]]) == [1.0]
    train_prompts, train_completions = texts(suite, "train")
    assert reward(train_prompts[:3], train_completions[:3]) == [1.0] * 3


def test_the_shaped_reward_credits_a_right_first_move(suite):
    reward = verified_reward(suite, shaped=True)
    prompts, completions = texts(suite)
    plan = completions[0].split(";")[1].split()  # "s a b g <eos>"
    wrong_end = " ".join(plan[:2] + [plan[1]] * (len(plan) - 3) + ["<eos>"])  # right first move only
    stream = completions[0].split(";")[0]
    assert reward([prompts[0]], [f"{stream}; {wrong_end}"]) == [0.5]
    wrong_first = " ".join([plan[0]] + [plan[0]] * (len(plan) - 2) + ["<eos>"])  # stays at the start
    assert reward([prompts[0]], [f"{stream}; {wrong_first}"]) == [0.0]
    assert reward([prompts[0]], [completions[0]]) == [1.0]


def test_with_the_tokenizer_the_completion_ids_are_judged_with_their_eos(suite, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_gpt2(suite.path, tmp_path / "gpt2"))
    prompts, completions = texts(suite)
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    as_trl_decodes = tokenizer.batch_decode(ids, skip_special_tokens=True)  # `<eos>` is special: gone
    assert verified_reward(suite)(prompts, as_trl_decodes) == [0.0] * len(prompts)
    assert verified_reward(suite, tokenizer=tokenizer)(prompts, as_trl_decodes, completion_ids=ids) == \
        [1.0] * len(prompts)


def test_a_prompt_outside_the_suite_is_one_sentence(suite):
    with pytest.raises(UserError, match="is no prompt of suite"):
        verified_reward(suite)(["<bos> 1 2 / 3 4 ="], ["1 2 <eos>"])


def test_trl_grpo_trainer_trains_with_the_verified_reward(suite, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoTokenizer

    model_dir = save_tiny_gpt2(suite.path, tmp_path / "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reward = verified_reward(suite, tokenizer=tokenizer)
    calls = []

    def judged(prompts, completions, **kwargs):
        values = reward(prompts, completions, **kwargs)
        calls.append((list(prompts), kwargs.get("completion_ids"), values))
        return values

    judged.__name__ = "retroplan_verified"
    prompts, _ = texts(suite, "train")
    args = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=24, max_steps=2, learning_rate=1e-3, logging_steps=1,
                          save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0)
    trainer = trl.GRPOTrainer(model=str(model_dir), reward_funcs=[judged], args=args,
                              train_dataset=Dataset.from_dict({"prompt": prompts}),
                              processing_class=tokenizer)
    trainer.train()
    assert len(calls) >= 2  # one call per generation batch, two optimizer steps
    for called_prompts, ids, values in calls:
        assert len(values) == len(called_prompts) == len(ids) and set(values) <= {0.0, 1.0}
    logged = [h for h in trainer.state.log_history if "rewards/retroplan_verified/mean" in h]
    assert len(logged) == 2


# --------------------------------------------------------------------------- RLP


class Lookup(torch.nn.Module):
    """A hand-built 'model' over a 6-token vocabulary: the next token after `;` (4) is the plan
    token 5 with probability `p_with` when the clue token 3 came before, else `p_without`;
    every other position is uniform. log p(plan) is then known exactly."""

    def __init__(self, p_with: float, p_without: float):
        super().__init__()
        self.p_with, self.p_without = p_with, p_without
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, 6)
        for b in range(B):
            for t in range(T):
                if idx[b, t] == 4:
                    p = self.p_with if (idx[b, : t] == 3).any() else self.p_without
                    row = torch.full((6,), (1 - p) / 5)
                    row[5] = p
                    logits[b, t] = row.log()
        return logits


def test_information_gain_has_the_sign_of_what_the_thought_adds():
    # completion: thought, `;` (4), plan token 5, <eos> (2); prompt [1]
    prompts = [[1], [1], [1], [1]]
    completions = [[3, 4, 5, 2], [0, 4, 5, 2], [3, 3, 5], [4, 5, 2]]
    helpful = Lookup(p_with=0.9, p_without=0.3)
    gain = information_gain(helpful, helpful, prompts, completions, separator=4, eos=2, pad_id=0)
    # the clue raises log p(5) from ln 0.3 to ln 0.9; <eos> after 5 is uniform in both (cancels)
    assert gain[0].item() == pytest.approx(math.log(0.9) - math.log(0.3), abs=1e-5)
    assert gain[1].item() == pytest.approx(0.0, abs=1e-6)  # a thought without the clue adds nothing
    assert gain[2].item() == 0.0 and gain[3].item() == pytest.approx(0.0, abs=1e-6)  # no `;`; empty thought
    misleading = Lookup(p_with=0.1, p_without=0.3)
    assert information_gain(misleading, misleading, prompts[:1], completions[:1], 4, 2, 0)[0] < 0
    # RLP's baseline is another model (the EMA): a baseline that already knows the plan leaves the
    # thought nothing to add
    knowing = Lookup(p_with=0.9, p_without=0.9)
    assert information_gain(helpful, knowing, prompts[:1], completions[:1], 4, 2, 0)[0].item() == \
        pytest.approx(0.0, abs=1e-5)


def test_thought_and_plan_split_at_the_first_separator():
    assert thought_and_plan([7, 8, 4, 5, 6, 2, 9], 4, 2) == ([7, 8], [5, 6, 2])
    assert thought_and_plan([7, 8, 5, 2], 4, 2) is None and thought_and_plan([7, 4, 5], 4, 2) is None
