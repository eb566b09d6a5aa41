"""Rewards for reinforcement learning, all computed by the task's own verifier.

* `verified`: 1 when the completion, parsed by the suite's grammar, gives a plan that replays
  legally in the task's environment and reaches the goal; 0 otherwise (`eval.judge`, the
  judge of `retroplan eval`).
* `shaped`: 1 when solved, else `SHAPED_FIRST_STEP` (0.5) when the plan's first move lies on a
  shortest path (`first_step`, eval's first-step accuracy), else 0: partial credit for the
  decision path-star makes hard, never more than a solved instance.
* `information_gain` (RLP, Hatamizadeh et al. 2025): how much a thought raises the
  log-likelihood of the plan that follows it; see `information_gain` and docs/METRICS.md.

`verified_reward(suite)` is the verified reward for libraries that sample text (TRL's
`GRPOTrainer(reward_funcs=...)`): prompts and completions as text, judged as `eval-hf`
judges them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .errors import require
from .traces.suite import Suite, open_suite

REWARDS = ("verified", "shaped", "verified+rlp")
SHAPED_FIRST_STEP = 0.5  # reward of an unsolved completion whose first move is on a shortest path


def reward_of(verdict: dict, kind: str) -> float:
    """The reward of one `eval.judge` verdict under `kind` (verified or shaped)."""
    if verdict["correct"]:
        return 1.0
    if kind == "shaped" and verdict["first_step"]:
        return SHAPED_FIRST_STEP
    return 0.0


# --------------------------------------------------------------------------- TRL's signature


def prompt_index(suite: Suite) -> dict[str, tuple[str, int]]:
    """{prompt text: (split, instance)} over every forward row of every split of the suite.
    Two instances with the same prompt text are the same problem (same graph or numbers, same
    start and goal), so either judges a completion alike."""
    index = {}
    for name in suite.splits:
        split = suite.split(name)
        for r in range(len(split)):
            if split.kind[r] == 0:
                index.setdefault(suite.vocab.decode(split.prompt(r)), (name, int(split.instance[r])))
    return index


def verified_reward(suite: str | os.PathLike | Suite, tokenizer=None, shaped: bool = False):
    """A reward function with TRL's `reward_funcs` signature, `(prompts, completions, **kwargs)
    -> list[float]`: each completion (text) judged for the instance whose prompt is the last
    line of its prompt (few-shot examples may come before), exactly as `retroplan eval-hf`
    judges text (`eval_hf.judge_text`: words up to the first newline and `<eos>`, mapped
    through the suite's vocabulary, parsed by the grammar, replayed in the environment).
    A prompt that is no prompt of the suite is an error naming it. `shaped`: the shaped reward.

    TRL decodes completions with `skip_special_tokens=True`: where `<eos>` is a special token
    of the model's tokenizer it is gone from the text, and a finished plan would read as
    unfinished. Given that `tokenizer`, the reward decodes the `completion_ids` TRL passes
    with the special tokens kept instead."""
    from .eval_hf import judge_text  # text judging lives with eval-hf (no transformers import)

    suite = suite if isinstance(suite, Suite) else open_suite(suite)
    index = prompt_index(suite)
    kind = "shaped" if shaped else "verified"
    splits = {}

    def reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if tokenizer is not None and completion_ids is not None:
            completions = tokenizer.batch_decode([list(ids) for ids in completion_ids],
                                                 skip_special_tokens=False,
                                                 clean_up_tokenization_spaces=False)
        out = []
        for prompt, completion in zip(prompts, completions):
            prompt, completion = _text(prompt), _text(completion)
            key = prompt.strip().split("\n")[-1].strip()
            require(key in index, f"the prompt {key[:80]!r} is no prompt of suite {suite.path}; the "
                                  "reward judges only the suite's own instances.")
            name, i = index[key]
            split = splits.setdefault(name, suite.split(name))
            out.append(reward_of(judge_text(suite, split.instances, i, completion), kind))
        return out

    reward.__name__ = f"retroplan_{kind}_reward"  # TRL logs a reward function by its name
    return reward


def _text(value) -> str:
    """A prompt or completion as text: plain text, or a conversation (TRL's conversational
    format: a list of {"role", "content"} messages) whose last message's content is taken."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return str(value)


# --------------------------------------------------------------------------- RLP


def plan_log_likelihood(model, contexts: list[list[int]], plans: list[list[int]],
                        pad_id: int) -> torch.Tensor:
    """log p(plan | context) under `model` (summed over the plan's tokens), one per row: the
    model reads context + plan, right-padded to one width (causal: padding after a row never
    changes it)."""
    seqs = [c + p for c, p in zip(contexts, plans)]
    width = max(len(s) for s in seqs)
    x = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for j, s in enumerate(seqs):
        x[j, : len(s)] = torch.tensor(s)
    device = next(model.parameters()).device
    logits = model(x[:, :-1].to(device)).float()
    logp = F.log_softmax(logits, dim=-1).gather(2, x[:, 1:, None].to(device)).squeeze(2)
    out = torch.zeros(len(seqs), device=device)
    for j, (c, p) in enumerate(zip(contexts, plans)):
        out[j] = logp[j, len(c) - 1: len(c) - 1 + len(p)].sum()  # targets: the plan's tokens
    return out


def thought_and_plan(completion: list[int], separator: int, eos: int) -> tuple[list[int], list[int]] | None:
    """(thought, plan) of a completion written `thought ; plan <eos>`: the thought is what comes
    before the first `;`, the plan what follows it up to and including `<eos>`; None when the
    completion has no `;` or no `<eos>` after it (nothing to reward)."""
    if separator not in completion:
        return None
    cut = completion.index(separator)
    rest = completion[cut + 1:]
    if eos not in rest:
        return None
    return completion[:cut], rest[: rest.index(eos) + 1]


@torch.no_grad()
def information_gain(think_model, base_model, prompts: list[list[int]], completions: list[list[int]],
                     separator: int, eos: int, pad_id: int) -> torch.Tensor:
    """RLP's reward of each completion's thought (Hatamizadeh et al. 2025): log p(plan | prompt,
    thought ;) under `think_model` minus log p(plan | prompt ;) under `base_model` (the no-think
    baseline: the same plan written straight after the prompt, with an empty thought). RLP uses
    the current policy for the first and an exponential moving average (EMA) of it for the
    second. Positive: the thought made the plan more likely than no thought; 0 for a completion
    with no `thought ; plan <eos>` shape."""
    gains = torch.zeros(len(completions))
    split = [thought_and_plan(c, separator, eos) for c in completions]
    rows = [j for j, tp in enumerate(split) if tp is not None]
    if not rows:
        return gains
    plans = [split[j][1] for j in rows]
    with_thought = plan_log_likelihood(
        think_model, [prompts[j] + split[j][0] + [separator] for j in rows], plans, pad_id)
    without = plan_log_likelihood(base_model, [prompts[j] + [separator] for j in rows], plans, pad_id)
    gains[rows] = (with_thought - without).cpu()
    return gains
