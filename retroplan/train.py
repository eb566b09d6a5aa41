"""Training: one suite, one model, every knob in `TrainConfig`.

CPU, one GPU (bf16 autocast, optional torch.compile), or several under `torchrun` (DDP;
each rank takes its slice of every batch). The loss is next-token cross-entropy on the
completion tokens only. Checkpoints every `checkpoint_every` steps and at the end; a resumed
run continues from the latest checkpoint and, on CPU, ends with exactly the weights of an
uninterrupted run (same batches, same optimizer moments, same RNG state).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, checkpoint
from .batching import BatchOrder, collate
from .errors import UserError, require, require_field_types
from .fsutil import sha256_file, write_json, write_text
from .models import GPT, PRESETS, GPTConfig
from .traces.suite import Suite, open_suite


@dataclass
class TrainConfig:
    preset: str = "small"           # a models.PRESETS size; n_layer/n_head/n_embd override it
    n_layer: int = 0
    n_head: int = 0
    n_embd: int = 0
    dropout: float = 0.0
    context: int = 0                # model context; 0 = the suite's longest row
    long_examples: str = "drop"     # rows longer than the context: drop | cut
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    eval_every: int = 0             # val loss every N steps (0: only at the end)
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    compile: bool = False
    threads: int = 0                # torch CPU threads; 0 = torch's default

    def validate(self) -> None:
        require_field_types(self, "train")
        require(self.preset in PRESETS,
                f"unknown model preset {self.preset!r}; allowed: {', '.join(PRESETS)}.")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"train {name} must be a positive integer, got {v!r}.")
        for name in ("n_layer", "n_head", "n_embd", "context", "warmup_steps", "eval_every",
                     "threads", "seed"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                    f"train {name} must be a non-negative integer, got {v!r}.")
        require(self.long_examples in ("drop", "cut"),
                f"long_examples must be drop or cut, got {self.long_examples!r}.")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v),
                    f"train {name} must be a non-negative number, got {v!r}.")
        require(self.lr > 0, f"train lr must be positive, got {self.lr!r}.")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train beta1 and beta2 must be in [0, 1).")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown train setting {unknown[0]!r}; allowed: {', '.join(sorted(known))}.")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def model_config(self, vocab_size: int, block_size: int) -> GPTConfig:
        size = dict(PRESETS[self.preset])
        for name in ("n_layer", "n_head", "n_embd"):
            if getattr(self, name):
                size[name] = getattr(self, name)
        cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, dropout=self.dropout, **size)
        cfg.validate()
        return cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name} was asked for, but this torch build sees no CUDA GPU.")
    return torch.device(name)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def _ddp() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def masked_loss(model, x, y) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                           ignore_index=-100)


@torch.no_grad()
def validation_loss(model, suite: Suite, device, rows: int = 512, batch_size: int = 64,
                    max_len: int | None = None) -> float | None:
    if "val" not in suite.splits or len(suite.split("val")) == 0:
        return None
    split = suite.split("val")
    chosen = np.arange(min(rows, len(split)))
    no_loss = suite.grammar.no_loss_tokens(suite.vocab)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for lo in range(0, len(chosen), batch_size):
        x, y = collate(split, chosen[lo: lo + batch_size], suite.vocab.pad_id, no_loss, max_len)
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                 ignore_index=-100, reduction="sum").item()
        count += int((y != -100).sum())
    model.train(was_training)
    return total / max(1, count)


def _run_description(suite: Suite, cfg: TrainConfig, model_cfg: GPTConfig, dropped: int,
                     cut: int) -> dict:
    return {
        "retroplan_version": __version__,
        "suite": str(suite.path.resolve()),
        "suite_meta_sha256": sha256_file(suite.path / "meta.json"),
        "task": suite.meta["task"],
        "variant": suite.meta["variant"],
        "task_config": suite.meta["config"],
        "vocab": suite.meta["vocab"],
        "train": asdict(cfg),
        "model": model_cfg.to_dict(),
        "long_examples": {"policy": cfg.long_examples, "dropped": dropped, "cut": cut},
    }


def _same_run(old: dict, new: dict) -> str | None:
    """The first setting a resumed run would change, if any."""
    for key in ("task", "variant", "task_config", "vocab", "model", "long_examples"):
        if old.get(key) != new.get(key):
            return key
    for key, value in new["train"].items():
        if key in ("device", "compile", "threads"):  # may differ between machines
            continue
        if old.get("train", {}).get(key) != value:
            return f"train.{key}"
    return None


def train(suite_path: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig,
          resume: bool = False, progress: bool = True) -> dict:
    """Train on `suite_path`'s train split into the run folder `out`; returns the summary."""
    cfg.validate()
    out = Path(out)
    rank, world = _ddp()
    main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)

    suite = open_suite(suite_path)
    require("train" in suite.splits and len(suite.split("train")) > 0,
            f"suite {suite.path} has no training rows.")
    split = suite.split("train")
    context = cfg.context or suite.max_len()
    too_long = split.lengths > context
    dropped = int(too_long.sum()) if cfg.long_examples == "drop" else 0
    cut = int(too_long.sum()) if cfg.long_examples == "cut" else 0
    rows = np.flatnonzero(~too_long) if cfg.long_examples == "drop" else np.arange(len(split))
    require(len(rows) > 0, f"every training row is longer than the context of {context} tokens.")
    model_cfg = cfg.model_config(len(suite.vocab), context)
    description = _run_description(suite, cfg, model_cfg, dropped, cut)

    if main:  # only rank 0 checks and creates the run folder; the others wait for it
        if out.exists() and (out / "run.json").exists():
            if not resume:
                raise UserError(f"run folder {out} already exists; pass --resume to continue it or "
                                "choose another --out.")
            changed = _same_run(checkpoint.read_run(out), description)
            if changed:
                raise UserError(f"cannot resume {out}: its {changed} differs from what was asked now.")
        elif out.exists() and any(out.iterdir()) and not resume:
            raise UserError(f"output folder {out} exists and is not empty; choose another --out.")
        if not (out / "run.json").exists():
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "run.json", description)
    if world > 1:
        torch.distributed.barrier()
    ckpt = checkpoint.latest_dir(out)

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = _make_optimizer(model, cfg, device)
    step = 0
    state: dict = {}  # a resumed run carries on its counters from the checkpoint
    if ckpt is not None:
        state = checkpoint.load_training_state(ckpt, model, optimizer)
        step = int(state["step"])
    if main:
        _trim_log(out / "train_log.jsonl", step)
    if (out / "final.json").exists() and step >= cfg.steps:
        return json.loads((out / "final.json").read_text())

    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    order = BatchOrder(split.lengths, rows, cfg.batch_size, cfg.seed)
    no_loss = suite.grammar.no_loss_tokens(suite.vocab)
    log = open(out / "train_log.jsonl", "a") if main else None
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {suite.meta['variant']}", unit="step",
               disable=None if (progress and main) else True, leave=False)
    t0 = time.perf_counter() - float(state.get("train_seconds", 0.0))
    tokens_seen = int(state.get("tokens", 0))
    loss_value = float(state.get("loss", float("nan")))
    model.train()
    try:
        while step < cfg.steps:
            batch_rows = order.batch(step)[rank::world]
            x, y = collate(split, batch_rows, suite.vocab.pad_id, no_loss, context + 1)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            with autocast:
                loss = masked_loss(net, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            tokens_seen += int(x.numel())
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                loss_value = loss.item()
                record = {"step": step, "loss": round(loss_value, 6), "lr": lr_at(cfg, step - 1),
                          "tokens": tokens_seen * world,
                          "elapsed_s": round(time.perf_counter() - t0, 3)}
                if cfg.eval_every and step % cfg.eval_every == 0 and main:
                    record["val_loss"] = validation_loss(model, suite, device, max_len=context + 1)
                if main:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{loss_value:.3f}")
            if main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                checkpoint.save(out, step, model, optimizer,
                                {"train": asdict(cfg), "tokens": tokens_seen, "loss": loss_value,
                                 "train_seconds": time.perf_counter() - t0})
    finally:
        bar.close()
        if log:
            log.close()
    elapsed = time.perf_counter() - t0
    summary = {"steps": step, "final_loss": loss_value, "train_seconds": round(elapsed, 2),
               "tokens_per_second": round(tokens_seen * world / max(elapsed, 1e-9), 1),
               "parameters": model.num_params(), "device": str(device),
               "val_loss": validation_loss(model, suite, device, max_len=context + 1) if main else None,
               "dropped_long_rows": dropped, "cut_long_rows": cut}
    if main:
        write_json(out / "final.json", summary)
    if world > 1:
        torch.distributed.barrier()  # nobody leaves before rank 0 has written the results
        torch.distributed.destroy_process_group()
    return summary


def _trim_log(path: Path, step: int) -> None:
    """Keep only complete log lines up to the checkpoint we resume from."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            kept.append(line)
    write_text(path, "".join(k + "\n" for k in kept))


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
