"""Training: one suite, one model, every knob in `TrainConfig`.

CPU (fp32, or bf16 autocast where the CPU has native BF16), one GPU (bf16 autocast, optional
torch.compile), or several under `torchrun` (DDP; each rank takes its slice of every batch).
Compiled, the model gets one static graph per batch width where the run's batches have few
widths (a batch is padded up to one of them), else one graph with a dynamic width
(`batching.compile_widths`); train_log.jsonl and final.json count the graphs compiled.
The loss is next-token cross-entropy on the completion tokens only; with `objective =
"teacherless"` the completion's inputs are a dummy token (`batching.collate`), so every answer
token is predicted from the prompt alone. A mixture's batch runs forward and backward in parts,
one per component, each padded to its own width (`BatchOrder.parts`: plans beside search
streams no longer pad to the streams' width), the parts' summed losses divided by the whole
batch's supervised targets: the whole batch's gradient, up to float rounding (an unmixed run's
bytes are unchanged). Checkpoints every
`checkpoint_every` steps, at every step of `keep_steps` (kept on disk) and at the end; a
resumed run continues from the latest checkpoint and, on CPU, ends with exactly the weights
of an uninterrupted run (same batches, same optimizer moments, same RNG state).

What a matched budget needs is counted exactly from the batches drawn (summed over DDP
ranks) and resumed with the run: optimizer steps, examples (rows), forward examples (rows of
suite kind 0) and supervised tokens (completion targets that carry loss); every
train_log.jsonl line and final.json carry them, and `plan_steps` predicts them without
training. With `curve_every`, greedy generation on the first `curve_examples` forward rows
of the val split is judged as eval judges it and logged to curve.jsonl (learning curves).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from . import device as devices
from .batching import IGNORE, BatchOrder, budget_steps, collate, compile_widths, pad_to_bucket
from .errors import UserError, require, require_field_types, require_seed, setting
from .eval import EvalConfig, generate_completions, judge, teacher_forced
from .fsutil import json_line, open_append, path_for, refuse_symlink, sha256_file, write_json, write_text
from .models import GPT, PRESETS, GPTConfig
from .models.gpt import training_memory_floor
from .traces import components
from .traces.suite import Suite, open_suite
from .version import __version__

PRECISIONS = ("auto", "fp32", "bf16")
OBJECTIVES = ("next-token", "teacherless")


@dataclass
class TrainConfig:
    preset: str = setting("small", f"model size: {', '.join(PRESETS)} (`retroplan list` shows each "
                                   "one's layers x width); n_layer, n_head and n_embd override it")
    n_layer: int = setting(0, "transformer blocks (0: the preset's)")
    n_head: int = setting(0, "attention heads per block (0: the preset's); n_embd / n_head must be even")
    n_embd: int = setting(0, "width of the residual stream (0: the preset's)")
    dropout: float = setting(0.0, "dropout probability in [0, 1) (0: none)")
    context: int = setting(0, "the model's context in tokens (0: the suite's longest row)")
    long_examples: str = setting("drop", "rows longer than the context: drop (not trained on) or cut "
                                         "(trained on their first context tokens)")
    steps: int = setting(1000, "optimizer steps (with --resume: continue to this many)")
    batch_size: int = setting(64, "rows per optimizer step (the whole batch, over all DDP ranks)")
    lr: float = setting(1e-3, "peak AdamW learning rate, reached after warmup_steps, then cosine decay")
    min_lr: float = setting(1e-4, "learning rate at the last step (the end of the cosine), at most lr")
    warmup_steps: int = setting(100, "steps of linear warm-up to lr (0: none)")
    weight_decay: float = setting(0.1, "AdamW weight decay of the weight matrices (0: none)")
    beta1: float = setting(0.9, "AdamW beta1, in [0, 1)")
    beta2: float = setting(0.95, "AdamW beta2, in [0, 1)")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: no clipping)")
    seed: int = setting(0, "seeds the weights, the batch order and dropout")
    checkpoint_every: int = setting(500, "write a checkpoint every N steps (and at the last step)")
    log_every: int = setting(10, "write the loss and counters to train_log.jsonl every N steps")
    eval_every: int = setting(0, "val loss every N steps (0: only at the end)")
    device: str = setting("auto", devices.DEVICE_HELP)
    compile: bool = setting(False, "torch.compile the model (one graph per batch width where there "
                                   "are few widths)")
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    precision: str = setting("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16")
    keep_steps: list[int] = setting([], "steps whose checkpoints are kept on disk (besides the latest)")
    curve_every: int = setting(0, "greedy val accuracy every N steps and at the end, for learning "
                                  "curves in curve.jsonl (0: off)")
    curve_examples: int = setting(200, "learning curves judge the first N forward rows of the val split")
    tensorboard: bool = setting(False, "also log to RUN/tensorboard (pip install 'retroplan[tensorboard]')")
    objective: str = setting("next-token", "next-token, or teacherless: completion inputs replaced by "
                                           "a dummy token (Bachmann & Nagarajan 2024); eval then "
                                           "decodes in parallel")

    def validate(self) -> None:
        require_field_types(self, "train")
        require(self.preset in PRESETS,
                f"unknown model preset {self.preset!r}; allowed: {', '.join(PRESETS)}.")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "curve_examples"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"train {name} must be a positive integer, got {v!r}.")
        require_seed(self.seed, "train seed")
        for name in ("n_layer", "n_head", "n_embd", "context", "warmup_steps", "eval_every",
                     "threads", "seed", "curve_every"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                    f"train {name} must be a non-negative integer, got {v!r}.")
        require(self.long_examples in ("drop", "cut"),
                f"long_examples must be drop or cut, got {self.long_examples!r}.")
        # the model's shape and dropout, checked now (a study checks its file before any suite is
        # written); the vocabulary and context are the suite's, known only when training starts
        self.model_config(vocab_size=1, block_size=1)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v),
                    f"train {name} must be a non-negative number, got {v!r}.")
        require(self.lr > 0, f"train lr must be positive, got {self.lr!r}.")
        require(self.min_lr <= self.lr,
                f"train min_lr must be at most lr ({self.lr!r}), got {self.min_lr!r}.")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train beta1 and beta2 must be in [0, 1).")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
        require(self.objective in OBJECTIVES,
                f"train objective must be {' or '.join(OBJECTIVES)}, got {self.objective!r}.")
        require(self.precision in PRECISIONS,
                f"train precision must be auto, fp32 or bf16, got {self.precision!r}.")
        keep = self.keep_steps
        require(isinstance(keep, (list, tuple)) and all(
                    isinstance(k, int) and not isinstance(k, bool) for k in keep),
                f"train keep_steps must be a list of step numbers, got {keep!r}.")
        bad = [k for k in keep if not 1 <= k <= self.steps]
        if bad:
            raise UserError(f"train keep_steps must be steps from 1 to steps ({self.steps}), "
                            f"got {bad[0]!r}.")
        self.keep_steps = sorted(set(keep))

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


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """The precision a run trains in on `device`: "bf16" (autocast) or "fp32"."""
    if device.type != "cuda":
        if cfg.precision == "bf16":
            require(devices.cpu_bf16_supported(),
                    "train precision bf16 needs a CPU with native BF16 instructions (avx512_bf16, "
                    "amx_bf16 or Arm bf16), and this one has none (torch would emulate bf16, "
                    "several times slower than fp32); use precision fp32 or auto.")
            return "bf16"
        return "fp32"
    return "fp32" if cfg.precision == "fp32" else "bf16"


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def peak_lr(cfg: TrainConfig) -> float:
    """The largest learning rate the schedule reaches in `cfg.steps` steps: `lr`, unless the run
    ends inside its warm-up (`steps <= warmup_steps`)."""
    return max(lr_at(cfg, s) for s in range(min(cfg.steps, cfg.warmup_steps + 1)))


def warmup_warning(cfg: TrainConfig) -> str | None:
    """One sentence when the run never leaves its warm-up (the cosine decay never starts), else None."""
    if cfg.steps > cfg.warmup_steps:
        return None
    return (f"retroplan: warning: warmup_steps ({cfg.warmup_steps}) >= steps ({cfg.steps}): the "
            f"learning rate only rises, to {peak_lr(cfg):.2e} of lr {cfg.lr:g}, and the cosine decay "
            f"never starts; set warmup_steps below steps (e.g. --warmup-steps {cfg.steps // 10}).")


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: the matrices decayed by `weight_decay`, the vectors (biases,
    norms) not decayed (train's and rl's optimizers)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def _ddp() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _ddp_device(cfg: TrainConfig, world: int) -> torch.device:
    """The device this rank trains on: `cfg.device`, and under torchrun on CUDA the rank's own
    GPU (LOCAL_RANK), made the current one."""
    device = devices.resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _ddp_wrap(model: GPT, device: torch.device, world: int):
    """The module the training step calls: `model` itself, or under torchrun `model` wrapped in
    DistributedDataParallel (which averages the gradients over the ranks)."""
    if world == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def compile_model(net, widths: list[int] | None):
    """`torch.compile(net)` for batches of the given widths (static shapes: one graph each) or,
    with None, of any width (a dynamic dimension: one graph). Dynamo's limit of graphs per
    function (8) is raised, since earlier runs in this process (a study) hold graphs of other
    widths; past the limit it would run the model uncompiled."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), 64))
    return torch.compile(net, dynamic=widths is None)


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (each recompile makes one)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def masked_loss(model, x, y, reduction: str = "mean"):
    """Cross-entropy over the targets that carry loss: their mean, or with reduction="sum" their
    sum (the trainer divides a batch's parts' sums by the whole batch's count)."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                           ignore_index=IGNORE, reduction=reduction)


@torch.no_grad()
def validation_loss(model, suite: Suite, device, rows: int = 512, batch_size: int = 64,
                    max_len: int | None = None, teacherless: bool = False) -> float | None:
    if "val" not in suite.splits or len(suite.split("val")) == 0:
        return None
    split = suite.split("val")
    chosen = np.arange(min(rows, len(split)))
    no_loss = suite.grammar.no_loss_tokens(suite.vocab)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for lo in range(0, len(chosen), batch_size):
        x, y = collate(split, chosen[lo: lo + batch_size], suite.vocab.pad_id, no_loss, max_len,
                       teacherless=teacherless)
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                 ignore_index=IGNORE, reduction="sum").item()
        count += int((y != IGNORE).sum())
    model.train(was_training)
    return total / max(1, count)


def check_memory(model_cfg: GPTConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, a model whose training cannot fit in the memory
    `device` has (a lower bound: `models.gpt.training_memory_floor`)."""
    need, available = training_memory_floor(model_cfg), devices.available_memory(device)
    gib = 2**30
    if available is not None and need > available:
        raise UserError(
            f"a model of n_embd {model_cfg.n_embd}, n_layer {model_cfg.n_layer} and a context of "
            f"{model_cfg.block_size} tokens needs at least {need / gib:.1f} GiB to train (weights, "
            f"gradients, AdamW moments, position tables), and {device} has {available / gib:.1f} GiB "
            "available; choose a smaller n_embd, n_layer or context.")


def built_size(cfg: TrainConfig, model_cfg: GPTConfig) -> dict:
    """The train settings that name the model's size, as built: n_layer, n_head, n_embd, and
    `preset` only when a preset has exactly that size (a 2 x 256 model is no `small`)."""
    size = {name: getattr(model_cfg, name) for name in ("n_layer", "n_head", "n_embd")}
    named = [name for name, preset in PRESETS.items()
             if all(preset[k] == v for k, v in size.items())]
    return {**({"preset": named[0]} if named else {}), **size}


def _run_description(suite: Suite, out: Path, cfg: TrainConfig, model_cfg: GPTConfig, dropped: int,
                     cut: int) -> dict:
    train_settings = {k: v for k, v in asdict(cfg).items() if k != "preset"}
    return {
        "retroplan_version": __version__,
        "suite": path_for(out, suite.path),  # relative: a study folder moved whole still finds it
        # two digests, one name each: the sha256 of meta.json's bytes (what resume and eval check)
        # and the suite's own content digest (meta.json's meta_sha256), the one export cards and
        # metrics.json carry as suite_digest, to join runs, evaluations and exported datasets
        "suite_meta_sha256": sha256_file(suite.path / "meta.json"),
        "suite_digest": suite.meta.get("meta_sha256"),
        "task": suite.meta["task"],
        "variant": suite.meta["variant"],
        "task_config": suite.meta["config"],
        "vocab": suite.meta["vocab"],
        "train": {**train_settings, **built_size(cfg, model_cfg)},
        "model": model_cfg.to_dict(),
        "long_examples": {"policy": cfg.long_examples, "dropped": dropped, "cut": cut},
    }


# settings that decide where and how the run is watched or computed: they may differ when a run
# is resumed (another machine, another thread count). device, compile and threads change the
# weights' last bits (kernels that sum in another order), not what the run is
MACHINE_SETTINGS = ("device", "compile", "threads", "tensorboard")


def changed_train_setting(old: dict, new: dict) -> str | None:
    """The first train setting of `new` (run.json's "train") that `old` records otherwise, among
    those that decide what is trained: not the machine's (`MACHINE_SETTINGS`), not the steps (a
    run may grow), not the model size (compared as the built model). A setting `old` lacks was
    its default (the run was made before it existed)."""
    defaults = asdict(TrainConfig())
    for key, value in new.items():
        if key in MACHINE_SETTINGS or key in ("steps", "preset", "n_layer", "n_head", "n_embd"):
            continue
        if old.get(key, defaults.get(key)) != value:
            return f"train.{key}"
    return None


def _same_run(old: dict, new: dict) -> str | None:
    """The first setting a resumed run would change, if any."""
    for key in ("task", "variant", "task_config", "vocab", "model", "long_examples"):
        if old.get(key) != new.get(key):
            return key
    return changed_train_setting(old.get("train", {}), new["train"])


def training_rows(split, cfg: TrainConfig, max_len: int) -> tuple[np.ndarray, int, int, int]:
    """(rows the trainer draws from, context, rows dropped, rows cut) under `cfg.context`
    (0: `max_len`, the suite's longest row) and `cfg.long_examples`."""
    context = cfg.context or max_len
    too_long = split.lengths > context
    dropped = int(too_long.sum()) if cfg.long_examples == "drop" else 0
    cut = int(too_long.sum()) if cfg.long_examples == "cut" else 0
    rows = np.flatnonzero(~too_long) if cfg.long_examples == "drop" else np.arange(len(split))
    return rows, context, dropped, cut


def plan_steps(suite_path, cfg: TrainConfig, what: str, amount: int, exact: bool | None = None) -> int:
    """The optimizer steps at which a run of `cfg` on `suite_path`'s train split has seen
    `amount` of `what` ("steps", "examples", "forward_examples" or "tokens": supervised
    tokens), without training: `batching.budget_steps` with this trainer's rows, context,
    loss mask and batch order (see there for when tokens are exact or expected)."""
    suite = suite_path if isinstance(suite_path, Suite) else open_suite(suite_path)
    split = suite.split("train")
    rows, context, _, _ = training_rows(split, cfg, suite.max_len())
    return budget_steps(split, cfg.batch_size, what, amount, seed=cfg.seed, rows=rows,
                        no_loss=suite.grammar.no_loss_tokens(suite.vocab), max_len=context + 1,
                        exact=exact, mixed=is_mixture(suite))


def is_mixture(suite: Suite) -> bool:
    """Whether the suite is a mixture (`a+b`): its batches then mix the components
    (`batching.BatchOrder` with the row kinds)."""
    return len(components(suite.name)) > 1


def curve_rows(suite: Suite, n: int) -> np.ndarray:
    """The val rows a learning curve is measured on: the first `n` forward rows (kind 0)."""
    if "val" not in suite.splits:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(suite.split("val").kind == 0)[:n]


def curve_point(model: GPT, suite: Suite, rows: np.ndarray, device, batch_size: int = 256,
                teacherless: bool = False) -> dict:
    """Greedy generation on val `rows` (a teacherless model: its parallel decoding), parsed and
    replayed by `eval.judge` exactly as eval does, and teacher-forced token accuracy (eval's
    mean over rows); leaves `model` in eval mode."""
    split = suite.split("val")
    model.eval()
    tf = teacher_forced(model, suite, split, rows, min(batch_size, 128), device, teacherless=teacherless)
    generated = generate_completions(model, suite, split, rows, EvalConfig(batch_size=batch_size),
                                     device, progress=False, teacherless=teacherless)
    correct = [judge(suite, split.instances, int(split.instance[r]), generated[(int(r), 0)][0])["correct"]
               for r in rows]
    return {"val_accuracy": float(np.mean(correct)), "val_n": len(rows),
            "tf_token_accuracy": float(np.mean(tf[:, 0] / np.maximum(1, tf[:, 1])))}


def _sum_over_ranks(counts: np.ndarray, world: int, device: torch.device) -> np.ndarray:
    if world == 1:
        return counts
    t = torch.tensor(counts, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return t.cpu().numpy()


def train(suite_path: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig,
          resume: bool = False, progress: bool = True) -> dict:
    """Train on `suite_path`'s train split into the run folder `out`; returns the summary.

    The steps: the machine (DDP rank, device, precision); the data; the run folder, checked
    whole before anything is written (a refusal changes nothing), with the model and optimizer
    built or resumed from its latest checkpoint; the loop (`_TrainingLoop`: a batch and an
    optimizer step at a time, logs, learning-curve points and checkpoints at their steps); the
    summary (final.json)."""
    cfg.validate()
    out = Path(out)
    machine = _open_machine(cfg)
    board_writer = _tensorboard_writer() if cfg.tensorboard and machine.main else None
    data = _open_data(suite_path, cfg)
    model_cfg = cfg.model_config(len(data.suite.vocab), data.context)
    check_memory(model_cfg, machine.device)
    model, optimizer, step, state = _open_run(out, data, cfg, model_cfg, machine, resume)
    if (out / "final.json").exists() and step >= cfg.steps:  # finished already
        return checkpoint._read_json(out / "final.json", "run summary")

    loop = _TrainingLoop(out, cfg, machine, data, model, optimizer, step, state, progress, board_writer)
    try:
        loop.run()
        elapsed = loop.clock()  # (the final validation loss is not training time)
        final_val_loss = loop.final_validation_loss()
    finally:
        loop.close()
    summary = loop.summary(elapsed, final_val_loss)
    _finish(out, cfg, machine, summary)
    return summary


@dataclass
class _Machine:
    """Where this process trains: its rank among `world` DDP ranks, its device and precision."""
    rank: int
    world: int
    device: torch.device
    precision: str

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder, the logs, the curves and the checkpoints."""
        return self.rank == 0


def _open_machine(cfg: TrainConfig) -> _Machine:
    rank, world = _ddp()
    # more threads than cores only slows training down (and 10^5 of them crash torch's pool)
    require(cfg.threads <= (os.cpu_count() or 1),
            f"train threads must be at most this machine's {os.cpu_count() or 1} CPU cores, got "
            f"{cfg.threads}.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _ddp_device(cfg, world)
    return _Machine(rank, world, device, resolve_precision(cfg, device))


@dataclass
class _TrainingData:
    """The suite, and what the trainer draws from it."""
    suite: Suite
    split: object               # the train split
    rows: np.ndarray            # the train rows batches are drawn from (`training_rows`)
    context: int                # the model's context
    dropped: int                # rows longer than the context, left out (long_examples drop)
    cut: int                    # ... or cut to it (long_examples cut)
    curve: np.ndarray | None    # the val rows of the learning curve; None without one


def _open_data(suite_path: str | os.PathLike, cfg: TrainConfig) -> _TrainingData:
    suite = open_suite(suite_path)
    require("train" in suite.splits and len(suite.split("train")) > 0,
            f"suite {suite.path} has no training rows.")
    split = suite.split("train")
    rows, context, dropped, cut = training_rows(split, cfg, suite.max_len())
    require(len(rows) > 0, f"every training row is longer than the context of {context} tokens.")
    require(not cfg.eval_every or ("val" in suite.splits and len(suite.split("val")) > 0),
            f"train eval_every needs rows in a val split, and suite {suite.path} has none; set "
            "eval_every to 0 (the final val loss is then null) or generate the suite with --val > 0.")
    curve = curve_rows(suite, cfg.curve_examples) if cfg.curve_every else None
    require(curve is None or len(curve) > 0,
            f"train curve_every needs forward rows in a val split, and suite {suite.path} has none.")
    return _TrainingData(suite, split, rows, context, dropped, cut, curve)


def _open_run(out: Path, data: _TrainingData, cfg: TrainConfig, model_cfg: GPTConfig,
              machine: _Machine, resume: bool) -> tuple[GPT, torch.optim.AdamW, int, dict]:
    """(model, optimizer, step, state) the run starts from (`resume_point`). Everything is checked
    (the folder, and a resumed run's checkpoint loaded whole) before rank 0 writes anything."""
    description = _run_description(data.suite, out, cfg, model_cfg, data.dropped, data.cut)
    old = _check_run_folder(out, description, data.suite, cfg, resume) if machine.main else None
    if machine.world > 1:
        torch.distributed.barrier()
    ckpt = checkpoint.latest_dir(out)
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(machine.device)
    optimizer = _make_optimizer(model, cfg, machine.device)
    step, state = resume_point(ckpt, model, optimizer)
    if machine.main:
        _write_run_folder(out, description, old, cfg, step)
    return model, optimizer, step, state


class _TrainingLoop:
    """The training loop and its state between steps. A step draws this rank's slice of the
    step's batch and takes one optimizer step on it; at the steps that log, measure a curve
    point or save, the counters are summed over the ranks first (and a non-finite loss stops
    the run), then each of those is done, in that order."""

    def __init__(self, out: Path, cfg: TrainConfig, machine: _Machine, data: _TrainingData, model: GPT,
                 optimizer: torch.optim.Optimizer, step: int, state: dict, progress: bool, board_writer):
        suite, split, main = data.suite, data.split, machine.main
        self.out, self.cfg, self.machine, self.data = out, cfg, machine, data
        self.model, self.optimizer, self.step = model, optimizer, step
        self.net = _ddp_wrap(model, machine.device, machine.world)
        self.mixture = is_mixture(suite)
        # the log's name of each row kind: the first component, then each other one by its tag
        self.component_names = [f"[{c}]" if k else c for k, c in enumerate(components(suite.name))]
        self.kind = np.asarray(split.kind)
        self.order = BatchOrder(split.lengths, data.rows, cfg.batch_size, cfg.seed,
                                kinds=self.kind if self.mixture else None)
        self.widths = None  # with compile: the batch widths compiled for (None: any width, dynamic)
        if cfg.compile:
            self.widths = compile_widths(split.lengths, self.order, data.context + 1)
            self.net = compile_model(self.net, self.widths)
            self.graphs_before = compiled_graphs()
        self.autocast = _autocast(machine.precision, machine.device)
        self.no_loss = suite.grammar.no_loss_tokens(suite.vocab)
        self.teacherless = cfg.objective == "teacherless"
        self.log = open_append(out / "train_log.jsonl") if main else None
        self.bar = tqdm(total=cfg.steps, initial=step, desc=f"train {suite.meta['variant']}", unit="step",
                        disable=None if (progress and main) else True, leave=False)
        # where the bar cannot draw (a SLURM or nohup log), a plain line at about 20 logged steps
        self.plain_every = (cfg.log_every * max(1, math.ceil(cfg.steps / cfg.log_every / 20))
                            if progress and main and self.bar.disable else 0)
        self.board = board_writer(log_dir=str(out / "tensorboard")) if board_writer else None
        self.t0 = time.perf_counter() - float(state.get("train_seconds", 0.0))
        self.curve_seconds = float(state.get("curve_seconds", 0.0))
        # counters of the whole batch (every rank's slice), exact, carried on by a resumed run;
        # each rank adds its slice to `pending`, summed over ranks at the steps they are written
        self.seen = {key: int(state.get(key, 0)) for key in COUNTERS}
        self.pending = np.zeros(len(COUNTERS), dtype=np.int64)
        self.loss_value = state.get("loss")  # None until a step is logged (null in JSON)
        # the first step (1-based) whose loss was not finite, 0 while none; kept on the device
        # (no synchronisation per step) and checked where the counters are summed
        self.bad_step = torch.zeros((), dtype=torch.int64, device=machine.device)
        self.kind_loss = state.get("loss_by_component")  # a mixture: the last logged batch's, per component

    def run(self) -> None:
        cfg, keep = self.cfg, set(self.cfg.keep_steps)
        self.model.train()
        while self.step < cfg.steps:
            loss = self._optimizer_step(*self._batch())
            self.step += 1
            self.bar.update(1)
            step, last = self.step, self.step == cfg.steps
            logs = step % cfg.log_every == 0 or last
            saves = step % cfg.checkpoint_every == 0 or step in keep or last
            curves = bool(cfg.curve_every) and (step % cfg.curve_every == 0 or last)
            if logs or saves or curves:  # the same steps on every rank
                self._sum_counters()
            if logs:
                self._log(loss, last)
            if self.machine.main and curves:  # before the checkpoint: a resumed run never misses a point
                self._curve_point()
            if self.machine.main and saves:
                self._save()

    def _batch(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor, np.ndarray, int]], int]:
        """This rank's slice of the current step's batch, in parts (`BatchOrder.parts`: one per
        component of a mixture), each as (inputs, targets) on the device, its rows and its
        supervised targets; and the slice's supervised targets. Counted in `pending`."""
        data, machine, device = self.data, self.machine, self.machine.device
        pad = data.suite.vocab.pad_id
        batch_rows = self.order.batch(self.step)[machine.rank::machine.world]
        parts, supervised, tokens = [], 0, 0
        for rows in self.order.parts(batch_rows):
            x, y = collate(data.split, rows, pad, self.no_loss, data.context + 1, self.teacherless)
            count = int((y != IGNORE).sum())
            supervised, tokens = supervised + count, tokens + x.numel()
            if self.widths:  # compiled for these widths only: pad up to one (counted above unpadded)
                x, y = pad_to_bucket(x, y, self.widths, pad)
            if device.type == "cuda":  # from pinned memory the copy need not wait for the GPU
                x, y = x.pin_memory(), y.pin_memory()
            parts.append((x.to(device, non_blocking=True), y.to(device, non_blocking=True), rows, count))
        self.pending += (len(batch_rows), int((self.kind[batch_rows] == 0).sum()), supervised, tokens)
        return parts, supervised

    def _optimizer_step(self, parts: list[tuple[torch.Tensor, torch.Tensor, np.ndarray, int]],
                        supervised: int) -> torch.Tensor:
        """One optimizer step on the batch; its loss (on the device, not synchronised): the mean
        cross-entropy over the batch's supervised targets. Each part runs forward and backward
        on its own, its summed loss divided by the whole batch's count, so the gradient is the
        one padded batch would give (up to float rounding) at the cost of each part's own width."""
        cfg, step, optimizer = self.cfg, self.step, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        logs_next = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        optimizer.zero_grad(set_to_none=True)
        loss, kind_loss = torch.zeros((), device=self.machine.device), {}
        for i, (x, y, rows, count) in enumerate(parts):
            # under DDP the gradients are averaged over the ranks once, at the last part's backward
            last = i == len(parts) - 1
            with (nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync()):
                with self.autocast:
                    part_loss = masked_loss(self.net, x, y, reduction="sum")
                (part_loss / max(supervised, 1)).backward()
            loss = loss + part_loss.detach()
            if self.mixture and logs_next and count:  # the batch's loss per component, for the log
                kind_loss[self.component_names[int(self.kind[rows[0]])]] = round(
                    float(part_loss.detach()) / count, 6)
        if self.mixture and logs_next:
            self.kind_loss = kind_loss
        loss = loss / max(supervised, 1)
        self.bad_step = torch.where((self.bad_step == 0) & ~torch.isfinite(loss), step + 1, self.bad_step)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        optimizer.step()
        return loss

    def _sum_counters(self) -> None:
        """Add every rank's counts since the last sum to `seen`; stop on a loss that was not
        finite, before anything is logged or saved (no NaN reaches a file)."""
        world, device = self.machine.world, self.machine.device
        for key, value in zip(COUNTERS, _sum_over_ranks(self.pending, world, device)):
            self.seen[key] += int(value)
        self.pending[:] = 0
        diverged = _first_bad_step(self.bad_step, world)
        if diverged:
            raise UserError(
                f"training diverged: the loss was not finite (NaN or infinite) at step "
                f"{diverged}; lower lr (now {self.cfg.lr:g}) or raise warmup_steps, and train anew "
                f"(the last checkpoint, if any, is from before step {diverged}).")

    def _log(self, loss: torch.Tensor, last: bool) -> None:
        """A train_log.jsonl line (rank 0), the bar's loss, a plain progress line, TensorBoard."""
        cfg, step, main = self.cfg, self.step, self.machine.main
        self.loss_value = loss.item()
        record = {"step": step, "loss": round(self.loss_value, 6), "lr": lr_at(cfg, step - 1),
                  **self.seen, "elapsed_s": round(self.clock(), 3)}
        if self.mixture:  # the loss of each component's rows in this batch (rank 0's slice)
            record["loss_by_component"] = self.kind_loss
        if cfg.compile:  # grows only when a batch of a new shape was compiled for
            record["compiled_graphs"] = compiled_graphs() - self.graphs_before
        if cfg.eval_every and step % cfg.eval_every == 0 and main:
            record["val_loss"] = self._validation_loss()
        if main:
            self.log.write(json_line(record))
            self.log.flush()
        self.bar.set_postfix(loss=f"{self.loss_value:.3f}")
        if self.plain_every and (step % self.plain_every == 0 or last):
            print(f"train {self.data.suite.meta['variant']} {self.out.name}: step {step}/{cfg.steps}, "
                  f"loss {self.loss_value:.4f}, lr {record['lr']:.2e}, {record['elapsed_s']:.0f} s"
                  + (f", val loss {record['val_loss']:.4f}" if "val_loss" in record else ""),
                  flush=True)
        if self.board is not None:
            for key in ("loss", "lr", "val_loss"):
                if key in record:
                    self.board.add_scalar(f"train/{key}", record[key], step)

    def _curve_point(self) -> None:
        """A curve.jsonl line (`curve_point`); its time is left out of the training clock."""
        c0 = time.perf_counter()
        point = curve_point(self.model, self.data.suite, self.data.curve, self.machine.device,
                            teacherless=self.teacherless)
        self.model.train()
        seen = self.seen
        with open_append(self.out / "curve.jsonl") as fh:
            fh.write(json_line({"step": self.step, "examples_seen": seen["examples_seen"],
                                "supervised_tokens": seen["supervised_tokens"],
                                "forward_examples": seen["forward_examples"], **point}))
        if self.board is not None:
            for key, value in point.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.board.add_scalar(f"curve/{key}", value, self.step)
        spent = time.perf_counter() - c0
        self.curve_seconds += spent
        self.t0 += spent  # the training clock leaves the curves out

    def _save(self) -> None:
        checkpoint.save(self.out, self.step, self.model, self.optimizer,
                        {"train": asdict(self.cfg), **self.seen, "loss": self.loss_value,
                         **({"loss_by_component": self.kind_loss} if self.mixture else {}),
                         "train_seconds": self.clock(),
                         "curve_seconds": self.curve_seconds}, keep=set(self.cfg.keep_steps))

    def clock(self) -> float:
        """Seconds of training so far (a resumed run's earlier ones included, curves left out)."""
        return time.perf_counter() - self.t0

    def _validation_loss(self) -> float | None:
        return validation_loss(self.model, self.data.suite, self.machine.device,
                               max_len=self.data.context + 1, teacherless=self.teacherless)

    def final_validation_loss(self) -> float | None:
        """The validation loss at the end (rank 0; None on the others), also for TensorBoard."""
        value = self._validation_loss() if self.machine.main else None
        if self.board is not None:  # TensorBoard gets the validation loss too, at the last step
            self.board.add_scalar("train/val_loss", value, self.step)
        return value

    def close(self) -> None:
        self.bar.close()
        if self.log:
            self.log.close()
        if self.board is not None:
            self.board.close()

    def summary(self, elapsed: float, final_val_loss: float | None) -> dict:
        """final.json: the counters, the last loss, the clock, the model and the rows left out."""
        cfg, seen, data = self.cfg, self.seen, self.data
        summary = {"steps": self.step, **seen, "final_loss": self.loss_value,
                   "train_seconds": round(elapsed, 2),
                   "tokens_per_second": round(seen["tokens"] / max(elapsed, 1e-9), 1),
                   "peak_lr": peak_lr(cfg),
                   "parameters": self.model.num_params(), "device": str(self.machine.device),
                   "precision": self.machine.precision, "val_loss": final_val_loss,
                   "dropped_long_rows": data.dropped, "cut_long_rows": data.cut}
        if self.mixture:  # "final_loss" is the last batch's, whose rows mix the components: each one's
            summary["final_loss_by_component"] = self.kind_loss
        if cfg.curve_every:
            summary["curve_seconds"] = round(self.curve_seconds, 2)
        if cfg.compile:
            summary["compile"] = {"widths": self.widths or "dynamic",
                                  "graphs": compiled_graphs() - self.graphs_before}
        return summary


def _finish(out: Path, cfg: TrainConfig, machine: _Machine, summary: dict) -> None:
    """Rank 0 writes final.json (and the warm-up warning); every rank leaves the process group."""
    if machine.main:
        write_json(out / "final.json", summary)
        if warmup_warning(cfg):  # at the end, beside the summary: never in front of an error line
            print(warmup_warning(cfg), file=sys.stderr, flush=True)
    if machine.world > 1:
        torch.distributed.barrier()  # nobody leaves before rank 0 has written the results
        torch.distributed.destroy_process_group()


COUNTERS = ("examples_seen", "forward_examples", "supervised_tokens", "tokens")
# rows drawn; rows of suite kind 0; targets carrying loss; positions processed (padding included)
RUN_FILES = ("run.json", "final.json", "train_log.jsonl", "curve.jsonl", "checkpoints",
             "checkpoints/latest.json", "tensorboard")  # what train writes in a run folder


def _tensorboard_writer():
    """TensorBoard's writer class (it logs into RUN/tensorboard; the JSONL logs stay the record
    of truth), looked up before the run folder is touched."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("train tensorboard needs the optional extra: pip install "
                        "'retroplan[tensorboard]'.") from None
    return SummaryWriter


LOG_FILES = ("train_log.jsonl", "curve.jsonl")  # appended; cut back to the step resumed from


def _check_run_folder(out: Path, description: dict, suite: Suite, cfg: TrainConfig,
                      resume: bool) -> dict | None:
    """Rank 0's checks of the run folder `out` before training; writes nothing. Returns the
    run.json of the run resumed (None for a new run). A folder with a run.json is resumed only
    with `resume`, only when it was the same run (`_same_run`) on the same suite, and only from
    its checkpoint pointer when it has step folders; any other non-empty folder is refused. No
    file of the run may be a symlink, and what train appends to or replaces must be a file."""
    for name in RUN_FILES:  # never write through a link to somewhere outside the run
        refuse_symlink(out / name)
    for name in ("run.json", "final.json", "checkpoints/latest.json", *LOG_FILES):
        require(not (out / name).exists() or (out / name).is_file(),
                f"cannot train into {out}: its {name} is not a file; move it away or choose "
                "another --out.")
    require(not (out / "checkpoints").exists() or (out / "checkpoints").is_dir(),
            f"cannot train into {out}: its checkpoints is not a folder; move it away or choose "
            "another --out.")
    if out.exists() and (out / "run.json").exists():
        if not resume:
            raise UserError(f"run folder {out} already exists; pass --resume to continue it or "
                            "choose another --out.")
        old = checkpoint.read_run(out)
        require("rl" not in old, f"cannot resume {out} with train: it is an RL run; continue it with "
                                 f"retroplan rl --out {out} --resume.")
        changed = _same_run(old, description)
        if changed:
            raise UserError(f"cannot resume {out}: its {changed} differs from what was asked now.")
        checkpoint.check_suite(out, old, suite, "resume with")
        found = sorted(p.name for p in (out / "checkpoints").glob("step-*")) \
            if (out / "checkpoints").is_dir() else []
        # without its pointer a run would start again from step 0 over its own checkpoints
        newest = max(checkpoint.available_steps(out), default=0)
        require((out / "checkpoints" / "latest.json").is_file() or not found,
                f"cannot resume {out}: checkpoints/latest.json is missing but it has the step "
                f"folders {', '.join(found)}; restore the pointer to the step to resume from "
                f'(e.g. {{"step": {newest}, "dir": "{checkpoint.step_dir_name(newest)}"}}) or '
                "choose another --out.")
        return old
    if out.exists() and any(not _our_temporary(p) for p in out.iterdir()):
        if resume:
            raise UserError(f"cannot resume {out}: it is not a run (it has no run.json); choose "
                            "a run folder or a new --out.")
        raise UserError(f"output folder {out} exists and is not empty; choose another --out.")
    return None


def _write_run_folder(out: Path, description: dict, old: dict | None, cfg: TrainConfig,
                      step: int) -> None:
    """Rank 0's writes before training, once every check has passed and the checkpoint resumed
    from (at `step`) has loaded: run.json for a new run (`old` None), a changed step count
    recorded for a resumed one (`_change_length`), and the logs cut back to `step` (lines a
    killed run wrote after it)."""
    if old is None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run.json", description)
    else:
        _change_length(out, old, cfg, step)
    for name in LOG_FILES:
        trim_log(out / name, step)


def resume_point(ckpt: Path | None, model: GPT, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """(step, state) a run starts from: those of the checkpoint `ckpt`, whose weights and
    optimizer moments are loaded into `model` and `optimizer` (state carries the counters, the
    clocks and the last loss on), or (0, {}) for a new run (`ckpt` None). Writes nothing."""
    step = 0
    state: dict = {}
    if ckpt is not None:
        state = checkpoint.load_training_state(ckpt, model, optimizer)
        step = int(state["step"])
    return step, state


def _change_length(out: Path, old: dict, cfg: TrainConfig, done: int) -> None:
    """A resumed run (trained `done` steps) asked for another number of steps (`train --resume
    --steps N`): continue it to N. The first steps stay what they were; the cosine schedule is
    the one of an N-step run from here on (so after a finished run's end the rate rises from
    min_lr to where an N-step run would be, then decays to min_lr at N): an extended run is not
    a fresh N-step run, and run.json says so in `length_changes`."""
    before = old.get("train", {}).get("steps")
    if before == cfg.steps:
        return
    require(cfg.steps >= done, f"cannot resume {out} to {cfg.steps} steps: it has trained {done} "
            f"already; --steps must be at least {done}.")
    changed = dict(old, train=dict(old.get("train", {}), steps=cfg.steps))
    changed["length_changes"] = old.get("length_changes", []) + [
        {"at_step": done, "from_steps": before, "to_steps": cfg.steps}]
    write_json(out / "run.json", changed)
    if done < cfg.steps:  # no longer finished: its summary is written again at the new end
        (out / "final.json").unlink(missing_ok=True)


def _our_temporary(path: Path) -> bool:
    """A temporary a killed writer of ours left (`.NAME.XXXX.tmp`), not the user's file."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _first_bad_step(bad_step: torch.Tensor, world: int) -> int:
    """The first step whose loss was not finite on any rank (0: none)."""
    if world > 1:
        t = torch.where(bad_step == 0, torch.iinfo(torch.int64).max, bad_step)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return 0 if int(t) == torch.iinfo(torch.int64).max else int(t)
    return int(bad_step)


def trim_log(path: Path, step: int) -> None:
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
