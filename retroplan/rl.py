"""`retroplan rl`: reinforcement learning of a trained run with the verifier's reward (GRPO).

GRPO (Shao et al. 2024, DeepSeekMath), one step:

1. draw `prompts_per_step` forward prompts of the suite's train split (seeded by (seed, step),
   without replacement) and sample `group_size` completions of each at `temperature` with the
   KV cache (`models.generate`);
2. reward every completion with the task's own verifier (`rewards.py`: the plan parsed by the
   grammar and replayed in the environment; 1 solved, 0 otherwise; or shaped, or plus RLP's
   information gain of the thought);
3. advantage of completion i of a group: A_i = (r_i - mean(r)) / (std(r) + 1e-4) (the sample
   std, as TRL computes it); every token of the completion gets A_i; a group whose rewards
   are all equal has A = 0 and teaches nothing;
4. `updates_per_step` AdamW steps on the loss, per completion token t,
       -( min(rho_t A, clip(rho_t, 1 - clip_eps, 1 + clip_eps) A) - kl_coef * KL_t ),
   rho_t = p(o_t) / p_old(o_t) against the policy that sampled (rho = 1 on the first update),
   KL_t = exp(q_t - l_t) - (q_t - l_t) - 1 with l_t, q_t the token's log-probabilities under
   the policy and the frozen parent model (the k3 estimator DeepSeekMath uses: unbiased,
   never negative); averaged over a completion's tokens, then over completions.

Every log-probability is of the distribution sampled from, softmax(logits / temperature) (as
TRL computes them). The RL run is a run folder like `train`'s: run.json (the parent's model,
suite and vocabulary, plus `parent`, `parent_step` and `rl`), checkpoints in the same format,
rl_log.jsonl (reward mean, pass rate, KL, completion length, clipped share per step) and
final.json; `--resume` continues it, on CPU to the same weights as an uninterrupted run (the
prompts and samples of a step depend only on (seed, step)). `eval`, `probe` and `show-trace`
read it as any run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import checkpoint
from .device import DEVICE_HELP, resolve_device
from .errors import UserError, require, require_field_types, setting
from .eval import judge
from .fsutil import atomic_path, json_line, open_append, path_for, path_from, refuse_symlink, write_json
from .models import GPT, generate
from .rewards import REWARDS, information_gain, reward_of
from .traces.suite import Suite, open_suite
from .train import decay_groups, resume_point, trim_log
from .variants import VARIANT, names
from .version import __version__

ADVANTAGE_EPS = 1e-4  # TRL's: a group with a tiny spread does not get huge advantages


@dataclass
class RLConfig:
    steps: int = setting(200, "GRPO steps: sample, reward, update (with --resume: continue to this many)")
    prompts_per_step: int = setting(8, "train-split prompts drawn per step (seeded by seed and step)")
    group_size: int = setting(8, "completions sampled per prompt (at least 2); advantages are relative "
                                 "to the group")
    temperature: float = setting(1.0, "sampling temperature (> 0); log-probabilities are of this "
                                      "distribution")
    max_new_tokens: int = setting(0, "longest completion sampled (0: the room the model's context leaves)")
    lr: float = setting(1e-4, "AdamW learning rate (constant)")
    weight_decay: float = setting(0.0, "AdamW weight decay of matrices (0: none)")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: no clipping)")
    clip_eps: float = setting(0.2, "PPO clip: the ratio to the sampling policy is kept in "
                                   "[1 - eps, 1 + eps]")
    kl_coef: float = setting(0.04, "weight of the per-token KL (k3 estimator) to the frozen parent "
                                   "model (0: no penalty)")
    updates_per_step: int = setting(1, "optimizer steps on each step's samples (1: on-policy, ratio 1)")
    reward: str = setting("verified", "verified (1 solved, 0 not), shaped (0.5 for an unsolved plan "
                                      "whose first move is on a shortest path) or verified+rlp (plus "
                                      "rlp_coef x RLP information gain of the thought; "
                                      f"{', '.join(names('thought'))} graph variants)")
    rlp_coef: float = setting(0.1, "weight of the RLP information gain in verified+rlp")
    ema_decay: float = setting(0.99, "decay of the EMA model that is RLP's no-thought baseline, in [0, 1)")
    seed: int = setting(0, "seeds the prompts and the samples of every step")
    checkpoint_every: int = setting(50, "write a checkpoint every N steps (and at the end)")
    device: str = setting("auto", DEVICE_HELP)
    threads: int = setting(0, "torch CPU threads (0: torch's default)")

    def validate(self) -> None:
        require_field_types(self, "rl")
        for name in ("steps", "prompts_per_step", "group_size", "checkpoint_every", "updates_per_step"):
            v = getattr(self, name)
            require(v >= 1, f"rl {name} must be a positive integer, got {v!r}.")
        require(self.group_size >= 2,
                f"rl group_size must be at least 2 (advantages compare a group), got {self.group_size!r}.")
        for name in ("max_new_tokens", "seed", "threads"):
            v = getattr(self, name)
            require(v >= 0, f"rl {name} must be a non-negative integer, got {v!r}.")
        for name in ("temperature", "lr", "weight_decay", "grad_clip", "clip_eps", "kl_coef", "rlp_coef"):
            v = getattr(self, name)
            require(math.isfinite(v) and v >= 0,
                    f"rl {name} must be a finite non-negative number, got {v!r}.")
        require(self.temperature > 0,
                f"rl temperature must be positive (RL samples), got {self.temperature!r}.")
        require(self.lr > 0, f"rl lr must be positive, got {self.lr!r}.")
        require(0 <= self.ema_decay < 1, f"rl ema_decay must be in [0, 1), got {self.ema_decay!r}.")
        require(self.reward in REWARDS,
                f"rl reward must be one of {', '.join(REWARDS)}, got {self.reward!r}.")
        require(self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                f"rl device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")

    @classmethod
    def from_dict(cls, values: dict) -> RLConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        require(not unknown, f"unknown rl setting {unknown[0] if unknown else ''!r}; allowed: "
                             f"{', '.join(sorted(known))}.")
        cfg = cls(**values)
        cfg.validate()
        return cfg


# settings that never change a number: they may differ when a run is resumed
MACHINE_SETTINGS = ("device", "threads", "checkpoint_every", "steps")


# --------------------------------------------------------------------------- the GRPO pieces


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO's advantages of a (groups, group_size) reward table: each reward minus its group's
    mean, over the group's sample standard deviation + ADVANTAGE_EPS (0 where a group is uniform)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from the sampled token's log-probabilities:
    exp(ref - logp) - (ref - logp) - 1 (Schulman's k3; DeepSeekMath's GRPO penalty), >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps: float, kl_coef: float):
    """GRPO's loss and its parts. `logp`, `old_logp`, `ref_logp`, `mask`: (N, T) per completion
    token (policy now, sampling policy, frozen reference; mask 1 on completion tokens);
    `advantages`: (N,). Per token -(min(rho A, clip(rho) A) - kl_coef KL), averaged over each
    completion's tokens, then over completions. Returns (loss, mean KL per token, clipped share)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = k3_kl(logp, ref_logp)
    per_token = -(surrogate - kl_coef * kl)
    tokens = mask.sum(dim=1).clamp(min=1)
    loss = ((per_token * mask).sum(dim=1) / tokens).mean()
    mean_kl = (kl * mask).sum() / mask.sum().clamp(min=1)
    outside = (ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)
    clipped = (outside.float() * mask).sum() / mask.sum().clamp(min=1)
    return loss, mean_kl.detach(), clipped.detach()


def token_logprobs(model, seqs: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(seqs[:, t+1] | seqs[:, :t+1]) under softmax(logits / temperature), (N, T - 1)."""
    logits = model(seqs[:, :-1]).float() / temperature
    return F.log_softmax(logits, dim=-1).gather(2, seqs[:, 1:, None]).squeeze(2)


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """Sequences prompt + completion right-padded to one width, and the mask (N, width - 1) of
    the targets that are completion tokens."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    x = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1))
    for j, (p, c) in enumerate(zip(prompts, completions)):
        x[j, : len(p) + len(c)] = torch.tensor(p + c)
        mask[j, len(p) - 1: len(p) - 1 + len(c)] = 1.0
    return x, mask


# --------------------------------------------------------------------------- sampling


def step_prompts(rows: np.ndarray, cfg: RLConfig, step: int) -> np.ndarray:
    """The train rows of step `step`: a pure function of (seed, step), so a resumed run draws
    what an uninterrupted one would."""
    rng = np.random.default_rng([cfg.seed, step])
    return rng.choice(rows, size=min(cfg.prompts_per_step, len(rows)), replace=False)


def sample_groups(model: GPT, suite: Suite, split, rows: np.ndarray, cfg: RLConfig, step: int,
                  device) -> list[list[int]]:
    """`group_size` completions (token ids up to and including `<eos>`, or cut at the context)
    of each row, in order row by row; seeded by (seed, step). Rows of one prompt length are
    sampled together (the KV cache needs no padding)."""
    eos = suite.vocab.eos_id
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.default_rng([cfg.seed, step, 1]).integers(2 ** 62)))
    out: list[list[int] | None] = [None] * (len(rows) * cfg.group_size)
    by_len: dict[int, list[int]] = {}
    for j, r in enumerate(rows):
        by_len.setdefault(int(split.prompt_len[r]), []).append(j)
    for plen in sorted(by_len):
        jobs = [(j, g) for j in by_len[plen] for g in range(cfg.group_size)]
        prompts = torch.from_numpy(np.stack([split.prompt(int(rows[j])) for j, _ in jobs])).to(device)
        room = model.cfg.block_size - plen
        new = generate(model, prompts, min(cfg.max_new_tokens or room, room), eos,
                       temperature=cfg.temperature, generator=gen)
        for (j, g), ids in zip(jobs, new.cpu().tolist()):
            out[j * cfg.group_size + g] = ids[: ids.index(eos) + 1] if eos in ids else ids
    return out


# --------------------------------------------------------------------------- the run folder


RL_FILES = ("run.json", "final.json", "rl_log.jsonl", "checkpoints", "checkpoints/latest.json", "ema")


def _describe(parent: Path, out: Path, parent_run: dict, parent_step: int, suite: Suite,
              cfg: RLConfig) -> dict:
    """run.json of the RL run: the parent's description (model, suite, vocabulary, task; what
    `eval`, `probe` and `show-trace` read), its suite path relative to the new folder, and the
    parent (relative path, step) and the RL settings."""
    run = {k: v for k, v in parent_run.items() if k not in ("length_changes",)}
    run.update({"retroplan_version": __version__, "suite": path_for(out, suite.path),
                "parent": path_for(out, parent), "parent_step": parent_step, "rl": asdict(cfg)})
    return run


def _same_rl(old: dict, cfg: RLConfig) -> str | None:
    for key, value in asdict(cfg).items():
        if key not in MACHINE_SETTINGS and old.get("rl", {}).get(key) != value:
            return f"rl.{key}"
    return None


def _ema_path(out: Path, step: int) -> Path:
    return out / "ema" / f"{checkpoint.step_dir_name(step)}.safetensors"


def rl(run: str | os.PathLike | None, out: str | os.PathLike, cfg: RLConfig, resume: bool = False,
       progress: bool = True) -> dict:
    """GRPO fine-tuning of the run `run` (its latest checkpoint) into the new run folder `out`;
    with `resume`, continue `out` (its parent from its run.json). Returns the summary.

    The steps: the run folder (checked; a resumed run's parent read from it); the frozen parent
    model (the reference) and the prompts; the policy, its optimizer and RLP's EMA model, new or
    resumed from the latest checkpoint; the loop (`_grpo_step` at a time, a log line each,
    checkpoints at their steps); the summary (final.json)."""
    cfg.validate()
    out = Path(out)
    for name in RL_FILES:
        refuse_symlink(out / name)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    parent, parent_step, description = _open_rl_folder(run, out, cfg, resume)
    reference, parent_run, parent_step = checkpoint.load_model(parent, device, step=parent_step)
    for p in reference.parameters():
        p.requires_grad_(False)
    suite, rows = _rl_prompts(parent, parent_run, reference, cfg)
    if description is None:
        description = _describe(parent, out, parent_run, parent_step, suite, cfg)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run.json", description)

    policy = GPT(reference.cfg).to(device)
    policy.load_state_dict(reference.state_dict())
    optimizer = torch.optim.AdamW(decay_groups(policy, cfg.weight_decay), lr=cfg.lr)
    step, state = resume_point(checkpoint.latest_dir(out), policy, optimizer)
    trim_log(out / "rl_log.jsonl", step)  # the lines a killed run wrote after its checkpoint
    # RLP's no-thought baseline: an exponential moving average of the policy
    ema = _ema_model(out, policy, step, device) if cfg.reward == "verified+rlp" else None
    if (out / "final.json").is_file() and step >= cfg.steps:
        return checkpoint._read_json(out / "final.json", "run summary")
    (out / "final.json").unlink(missing_ok=True)

    log = open_append(out / "rl_log.jsonl")
    bar = tqdm(total=cfg.steps, initial=step, desc=f"rl {suite.variant}", unit="step",
               disable=None if progress else True, leave=False)
    t0 = time.perf_counter() - float(state.get("rl_seconds", 0.0))
    record = {}
    try:
        while step < cfg.steps:
            numbers, gain = _grpo_step(policy, reference, ema, optimizer, suite, rows, cfg, step, device)
            step += 1
            record = {"step": step, **numbers, "elapsed_s": round(time.perf_counter() - t0, 3)}
            if gain is not None:
                record["information_gain"] = round(float(gain.mean()), 6)
            log.write(json_line(record))
            log.flush()
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save(out, step, policy, optimizer, ema, cfg, t0)
    finally:
        bar.close()
        log.close()
    summary = {"steps": step, "rl_seconds": round(time.perf_counter() - t0, 2), "device": str(device),
               "parameters": policy.num_params(), "last": record}
    write_json(out / "final.json", summary)
    return summary


def _open_rl_folder(run: str | os.PathLike | None, out: Path, cfg: RLConfig,
                    resume: bool) -> tuple[Path, int | None, dict | None]:
    """(parent run, its step, run.json) of the RL run `out`: those `out` records, when it is
    resumed (a changed step count recorded in its run.json); else (`run`, None: its latest
    checkpoint, None: a new run.json), once `out` is checked to be new or empty."""
    if (out / "run.json").is_file():
        require(resume, f"run folder {out} already exists; pass --resume to continue it or choose "
                        "another --out.")
        description = checkpoint.read_run(out)
        require("rl" in description, f"cannot resume {out} with rl: it is not an RL run (its run.json "
                                     "has no rl settings).")
        changed = _same_rl(description, cfg)
        require(changed is None, f"cannot resume {out}: its {changed} differs from what was asked now.")
        parent = path_from(out, description["parent"])
        require(run is None or Path(run).resolve() == parent.resolve(),
                f"cannot resume {out} from {run}: it was started from {parent}.")
        if description["rl"].get("steps") != cfg.steps:  # continued to another length: say so
            description = dict(description, rl=dict(description["rl"], steps=cfg.steps))
            write_json(out / "run.json", description)
        return parent, int(description["parent_step"]), description
    require(not resume, f"cannot resume {out}: it is not a run (it has no run.json).")
    require(run is not None, "rl needs the run to start from (retroplan rl RUN --out RL_RUN).")
    require(not out.exists() or not any(out.iterdir()),
            f"output folder {out} exists and is not empty; choose another --out.")
    return Path(run), None, None


def _rl_prompts(parent: Path, parent_run: dict, reference: GPT, cfg: RLConfig) -> tuple[Suite, np.ndarray]:
    """The parent's suite and the rows RL draws its prompts from (the train split's forward
    rows), checked: the model has room to write after each, and RLP's reward has a thought to
    reward."""
    suite = open_suite(checkpoint.run_suite(parent, parent_run))
    checkpoint.check_suite(parent, parent_run, suite, "train the run's RL stage on")
    require("train" in suite.splits, f"suite {suite.path} has no train split to draw RL prompts from.")
    split = suite.split("train")
    rows = np.flatnonzero(split.kind == 0)
    require(len(rows) > 0, f"the train split of {suite.path} has no forward rows to draw RL prompts from.")
    longest = int(max(split.prompt_len[rows]))
    require(longest < reference.cfg.block_size,
            f"the train split of {suite.path} has prompts of {longest} tokens, and the model's context "
            f"is {reference.cfg.block_size}: it has no room to write.")
    rlp = cfg.reward == "verified+rlp"
    require(not rlp or (VARIANT[suite.variant].thought and suite.meta["task"] in ("pathstar", "graph")),
            f"rl reward verified+rlp rewards a thought written before `;`; {suite.meta['task']} "
            f"{suite.variant} writes none (allowed: pathstar or graph, variants "
            f"{', '.join(names('thought'))}).")
    return suite, rows


def _ema_model(out: Path, policy: GPT, step: int, device) -> GPT:
    """RLP's EMA model (frozen, eval mode): the policy's copy at step 0, else the one saved
    with the checkpoint of `step`."""
    ema = GPT(policy.cfg).to(device)
    if step:
        path = _ema_path(out, step)
        require(path.is_file(), f"cannot resume {out}: its EMA model of step {step} ({path}) is missing.")
        weights = load_file(str(path))
        weights["head.weight"] = weights["tok_emb.weight"]
        ema.load_state_dict(weights)
    else:
        ema.load_state_dict(policy.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    ema.eval()
    return ema


def _grpo_step(policy: GPT, reference: GPT, ema: GPT | None, optimizer: torch.optim.Optimizer, suite: Suite,
               rows: np.ndarray, cfg: RLConfig, step: int, device) -> tuple[dict, torch.Tensor | None]:
    """GRPO step `step` (the module's 1-4; then the EMA model follows the policy): what the log
    records of it, and RLP's information gain of each completion (None without `ema`)."""
    split = suite.split("train")
    pad, eos = suite.vocab.pad_id, suite.vocab.eos_id
    chosen = step_prompts(rows, cfg, step)
    policy.eval()  # no dropout: the ratio compares the same function
    completions = sample_groups(policy, suite, split, chosen, cfg, step, device)
    prompts = [split.prompt(int(r)).tolist() for r in chosen for _ in range(cfg.group_size)]
    instances = [int(split.instance[r]) for r in chosen for _ in range(cfg.group_size)]
    verdicts = [judge(suite, split.instances, i, c) for i, c in zip(instances, completions)]
    kind = "shaped" if cfg.reward == "shaped" else "verified"
    rewards = torch.tensor([reward_of(v, kind) for v in verdicts])
    gain = None
    if ema is not None:
        gain = information_gain(policy, ema, prompts, completions, suite.vocab.ids.get(";"), eos, pad)
        rewards = rewards + cfg.rlp_coef * gain
    advantages = group_advantages(rewards.view(-1, cfg.group_size)).view(-1).to(device)
    x, mask = pack(prompts, completions, pad)
    x, mask = x.to(device), mask.to(device)
    with torch.no_grad():
        old_logp = token_logprobs(policy, x, cfg.temperature)
        ref_logp = token_logprobs(reference, x, cfg.temperature)
    for _ in range(cfg.updates_per_step):
        logp = token_logprobs(policy, x, cfg.temperature)
        loss, kl, clipped = grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg.clip_eps, cfg.kl_coef)
        require(bool(torch.isfinite(loss)),
                f"rl diverged: the loss was not finite at step {step + 1}; lower lr (now {cfg.lr:g}).")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()
    if ema is not None:
        with torch.no_grad():
            for e, p in zip(ema.parameters(), policy.parameters()):
                e.mul_(cfg.ema_decay).add_(p.detach(), alpha=1 - cfg.ema_decay)
    uniform = (rewards.view(-1, cfg.group_size).std(dim=1) == 0).float().mean()
    return {"reward_mean": round(float(rewards.mean()), 6),
            "pass_rate": round(float(np.mean([v["correct"] for v in verdicts])), 6),
            "kl": round(kl.item(), 6), "loss": round(loss.item(), 6),
            "clipped": round(float(clipped), 6), "uniform_groups": round(float(uniform), 6),
            "completion_tokens": round(float(np.mean([len(c) for c in completions])), 3)}, gain


def _save(out: Path, step: int, policy: GPT, optimizer: torch.optim.Optimizer, ema: GPT | None,
          cfg: RLConfig, t0: float) -> None:
    """The checkpoint of `step` (the RL clock started at `t0`), after the EMA model's file of
    the same step (a checkpoint never names a step whose EMA model is missing)."""
    if ema is not None:
        (out / "ema").mkdir(exist_ok=True)
        with atomic_path(_ema_path(out, step)) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()
                       if k != "head.weight"}, str(tmp))
    checkpoint.save(out, step, policy, optimizer, {"rl": asdict(cfg), "rl_seconds": time.perf_counter() - t0})


def rl_settings_from(out: Path) -> dict:
    """The RL settings an RL run was started with (for `rl --resume` without flags)."""
    run = checkpoint.read_run(out)
    if "rl" not in run:
        raise UserError(f"{out} is not an RL run (its run.json has no rl settings).")
    known = {f.name for f in fields(RLConfig)}
    return {k: v for k, v in run["rl"].items() if k in known}
