"""Evaluation: generate, parse with the task's grammar, replay every plan in the task's
environment, and count.

Reported (with the count each number is over): planning accuracy, first-step accuracy (the
plan's first move lies on a shortest path to the goal), optimality, faithful accuracy for
stream variants (the plan is the path the model's own stream found), parse failures,
teacher-forced token / first-token / whole-sequence accuracy (a model that is right under
teacher forcing but wrong when it generates shows the Clever Hans signature), and the same
broken down by difficulty. Per-example records go to `records.jsonl`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint
from .batching import IGNORE, collate
from .errors import require
from .fsutil import atomic_path, write_json
from .models import generate
from .traces.suite import Suite, open_suite
from .train import resolve_device


@dataclass
class EvalConfig:
    split: str = "test"
    limit: int = 0            # evaluate the first N instances (0: all)
    batch_size: int = 256
    device: str = "auto"

    def validate(self) -> None:
        require(isinstance(self.limit, int) and self.limit >= 0,
                f"eval limit must be a non-negative integer, got {self.limit!r}.")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"eval batch_size must be a positive integer, got {self.batch_size!r}.")


def judge(suite: Suite, instances: dict, i: int, completion_ids) -> dict:
    """Parse one completion and replay its plan; every verdict we report comes from here."""
    parsed = suite.grammar.parse(suite.variant, completion_ids, suite.vocab)
    out = {"plan": parsed.plan, "parse_error": parsed.error, "correct": False,
           "reason": parsed.error or "", "first_step": False, "optimal": False, "faithful": None}
    if parsed.plan is None:
        return out
    out.update(suite.task.assess(suite.config, instances, i, parsed.plan))
    if parsed.events:  # stream variants: is the plan the path the stream itself reached?
        out["faithful"] = bool(out["correct"] and suite.grammar.stream_plan(parsed) == parsed.plan)
    return out


@torch.no_grad()
def teacher_forced(model, suite: Suite, split, rows: np.ndarray, batch_size: int, device):
    """Per row: (completion tokens right, completion tokens, first token right, all right)."""
    no_loss = suite.grammar.no_loss_tokens(suite.vocab)
    out = np.zeros((len(rows), 4), dtype=np.int64)
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo: lo + batch_size]
        x, y = collate(split, chunk, suite.vocab.pad_id, no_loss, model.cfg.block_size + 1)
        x, y = x.to(device), y.to(device)
        pred = model(x).argmax(-1)
        valid = y != IGNORE
        right = (pred == y) & valid
        first = valid.float().argmax(dim=1)
        idx = torch.arange(len(chunk), device=device)
        out[lo: lo + len(chunk), 0] = right.sum(1).cpu().numpy()
        out[lo: lo + len(chunk), 1] = valid.sum(1).cpu().numpy()
        out[lo: lo + len(chunk), 2] = right[idx, first].cpu().numpy()
        out[lo: lo + len(chunk), 3] = (right.sum(1) == valid.sum(1)).cpu().numpy()
    return out


def _rate(values) -> dict:
    values = [bool(v) for v in values if v is not None]
    return {"value": (sum(values) / len(values)) if values else None, "n": len(values)}


def evaluate(run_dir: str | os.PathLike, suite_path: str | os.PathLike | None = None,
             cfg: EvalConfig | None = None, out: str | os.PathLike | None = None,
             progress: bool = True) -> dict:
    """Evaluate the run's latest checkpoint on a split; writes metrics.json + records.jsonl
    into `out` (default RUN/eval-SPLIT) and returns the metrics."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    model, run, step = checkpoint.load_model(run_dir, device)
    suite = open_suite(suite_path or run["suite"])
    require(suite.vocab.to_json() == run["vocab"],
            f"the checkpoint in {run_dir} was trained with a different vocabulary than suite "
            f"{suite.path} uses ({len(run['vocab'])} vs {len(suite.vocab)} tokens).")
    split = suite.split(cfg.split)
    rows = np.flatnonzero(split.kind == 0)  # revthink: forward questions only
    if cfg.limit:
        rows = rows[: cfg.limit]
    require(len(rows) > 0, f"split {cfg.split} of {suite.path} has no rows to evaluate.")
    out = Path(out) if out else run_dir / f"eval-{cfg.split}"

    tf = teacher_forced(model, suite, split, rows, min(cfg.batch_size, 128), device)
    records = []
    by_prompt_len = defaultdict(list)
    for r in rows:
        by_prompt_len[int(split.prompt_len[r])].append(int(r))
    bar = tqdm(total=len(rows), desc=f"eval {suite.variant}", unit="ex",
               disable=None if progress else True, leave=False)
    generated: dict[int, list[int]] = {}
    for plen, group in sorted(by_prompt_len.items()):
        for lo in range(0, len(group), cfg.batch_size):
            chunk = group[lo: lo + cfg.batch_size]
            prompts = torch.from_numpy(np.stack([split.prompt(r) for r in chunk])).to(device)
            new = generate(model, prompts, model.cfg.block_size - plen, suite.vocab.eos_id).cpu().numpy()
            for r, ids in zip(chunk, new):
                ids = ids.tolist()
                generated[r] = ids[: ids.index(suite.vocab.eos_id) + 1] if suite.vocab.eos_id in ids else ids
            bar.update(len(chunk))
    bar.close()

    difficulty = suite.task.difficulty(suite.config, split.instances)
    for k, r in enumerate(rows):
        i = int(split.instance[r])
        verdict = judge(suite, split.instances, i, generated[int(r)])
        rec = {"row": int(r), "index": int(split.index[i]),
               "prompt": suite.vocab.decode(split.prompt(r)),
               "reference": suite.vocab.decode(split.completion(r)),
               "generated": suite.vocab.decode(generated[int(r)]),
               "generated_tokens": len(generated[int(r)]),
               "tf_token_acc": float(tf[k, 0] / max(1, tf[k, 1])),
               "tf_first_token": bool(tf[k, 2]), "tf_exact": bool(tf[k, 3])}
        rec.update({key: int(v[i]) for key, v in difficulty.items()})
        rec.update(verdict)
        records.append(rec)

    metrics = summarize(records, list(difficulty))
    metrics.update({"split": cfg.split, "step": step, "suite": str(suite.path),
                    "run": str(run_dir), "task": suite.meta["task"], "variant": suite.variant,
                    "task_config": suite.meta["config"]})
    metrics["chance"] = suite.task.chance(suite.config)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "records.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_json(out / "metrics.json", metrics)
    return metrics


def summarize(records: list[dict], difficulty_keys: list[str]) -> dict:
    """Rates with their counts, overall and per difficulty value."""
    def block(recs):
        tok_right = sum(r["tf_token_acc"] for r in recs)
        return {
            "accuracy": _rate(r["correct"] for r in recs),
            "first_step_accuracy": _rate(r["first_step"] for r in recs),
            "optimal_rate": _rate(r["optimal"] for r in recs),
            "faithful_accuracy": _rate(r["faithful"] for r in recs),
            "parse_failures": _rate(r["parse_error"] is not None for r in recs),
            "tf_token_accuracy": {"value": tok_right / len(recs) if recs else None, "n": len(recs)},
            "tf_first_token_accuracy": _rate(r["tf_first_token"] for r in recs),
            "tf_sequence_accuracy": _rate(r["tf_exact"] for r in recs),
            "mean_generated_tokens": (sum(r["generated_tokens"] for r in recs) / len(recs)) if recs else None,
        }

    metrics = block(records)
    metrics["n"] = len(records)
    metrics["by_difficulty"] = {}
    for key in difficulty_keys:
        values = sorted({r[key] for r in records})
        metrics["by_difficulty"][key] = {str(v): block([r for r in records if r[key] == v])
                                        for v in values}
    return metrics
