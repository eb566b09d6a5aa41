"""Evaluation: generate, parse with the task's grammar, replay every plan in the task's
environment, judge every step of every stream, and count.

Reported (each with the count it is over): planning accuracy, first-step accuracy (the plan's
first move lies on a shortest path), optimality and SWC, faithful accuracy for stream
variants (the plan is the path the model's own stream reached), parse failures,
teacher-forced token / first-token / deciding-token / whole-sequence accuracy (right under
teacher forcing but wrong when generating is the Clever Hans signature), the behaviour metrics of
`metrics.py` for the model's streams and for the teacher's streams of the same instances,
and, with sampling, pass@k and best-of-n. Broken down by difficulty. Per-example records go
to `records.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint
from .batching import IGNORE, collate
from .decoding import TIPPenalty
from .device import DEVICE_HELP, resolve_device
from .errors import require, require_field_types, require_seed, setting
from .fsutil import atomic_path, json_line, path_for, refuse_foreign_output, sha256_file, write_json
from .metrics import analyse_stream, summarize_behaviour
from .models import generate_with_logprobs
from .models.gpt import row_generators
from .passk import pass_at_k, pass_at_k_curve
from .traces import chance_for, components, writes
from .traces.suite import Suite, open_suite
from .traces.vocab import EVAL_MODES
from .variants import VARIANT
from .version import __version__


@dataclass
class EvalConfig:
    split: str = setting("test", "the split to evaluate (`retroplan inspect SUITE` lists a suite's)")
    limit: int = setting(0, "evaluate the first N instances of the split (0: every instance)")
    batch_size: int = setting(256, "prompts generated side by side (changes no number)")
    device: str = setting("auto", DEVICE_HELP + " (changes no number)")
    temperature: float = setting(0.0, "sampling temperature (0: greedy)")
    top_k: int = setting(0, "sample among the k most likely tokens (0: all)")
    samples: int = setting(1, "completions per instance, for pass@k and best-of-n; more than 1 needs "
                              "temperature > 0")
    seed: int = setting(0, "the sampling generator's seed")
    tip_alpha: float = setting(0.0, "thought-switch penalty (TIP): subtracted from the logits of the "
                                    "tokens that switch thought (0: off)")
    tip_beta: int = setting(0, "... while the current thought has made fewer than N moves")
    tip_oracle: bool = setting(False, "... and only where the current state can still reach the goal "
                                      "(the oracle-gated upper bound)")
    lookahead: str = setting("plain", f"for lookahead models (TRELAWNEY): {', '.join(EVAL_MODES)}: "
                                      "generate freely, force `<T>`, or force `<T> goal </T>` after "
                                      "the prompt")

    def validate(self) -> None:
        require_field_types(self, "eval")
        require(self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                f"eval device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")

        def nonneg_int(name):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                    f"eval {name} must be a non-negative integer, got {v!r}.")

        require_seed(self.seed, "eval seed")
        for name in ("limit", "top_k", "seed", "tip_beta"):
            nonneg_int(name)
        require(isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"eval batch_size must be a positive integer, got {self.batch_size!r}.")
        require(isinstance(self.samples, int) and self.samples >= 1,
                f"eval samples must be a positive integer, got {self.samples!r}.")
        require(isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0,
                f"eval temperature must be a finite non-negative number, got {self.temperature!r}.")
        require(self.temperature == 0 or self.temperature >= MIN_TEMPERATURE,
                f"eval temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g} (logits "
                f"divided by less overflow to infinity), got {self.temperature!r}.")
        require(self.samples == 1 or self.temperature > 0,
                f"eval samples={self.samples} needs temperature > 0 (greedy decoding repeats itself).")
        require(isinstance(self.tip_alpha, (int, float)) and math.isfinite(self.tip_alpha)
                and self.tip_alpha >= 0,
                f"eval tip_alpha must be a finite non-negative number, got {self.tip_alpha!r}.")
        require(self.lookahead in EVAL_MODES,
                f"eval lookahead must be plain, model-goal or given-goal, got {self.lookahead!r}.")

    @property
    def uses_tip(self) -> bool:
        return self.tip_alpha > 0 and self.tip_beta > 0


# settings that decide where and how fast an evaluation runs, never its numbers
NO_RESULT_SETTINGS = ("device", "batch_size")


def identity(run_dir: str | os.PathLike, suite_path: str | os.PathLike, cfg: EvalConfig,
             step: int) -> dict:
    """Everything that determines an evaluation's numbers: the suite (its meta.json digest,
    which holds the digest of every file), the weights evaluated (the step and the digest of
    its model file), every decoding setting but those of `NO_RESULT_SETTINGS` (split and limit
    included) and the retroplan version. metrics.json records it; `retroplan run` reuses an
    evaluation only when it equals what it would compute now."""
    weights = Path(run_dir) / "checkpoints" / checkpoint.step_dir_name(step) / "model.safetensors"
    out = {"suite_meta_sha256": sha256_file(Path(suite_path) / "meta.json"),
           "step": int(step), "model_sha256": sha256_file(weights),
           "decoding": {k: v for k, v in asdict(cfg).items() if k not in NO_RESULT_SETTINGS},
           "retroplan_version": __version__}
    objective = checkpoint.read_run(Path(run_dir)).get("train", {}).get("objective", "next-token")
    if objective != "next-token":  # how it was decoded (teacherless: in parallel); absent before
        out["objective"] = objective
    return out


MIN_TEMPERATURE = 1e-6  # the smallest positive temperature: float32 logits / 1e-6 stay finite

EVALUATION_FILES = ("metrics.json", "records.jsonl")  # what write_evaluation puts in its folder


def refuse_another_evaluation(out: Path, expected: dict, command: str = "eval") -> None:
    """`out` may be new, empty, hold this very evaluation (its metrics.json records the
    identity `expected`) or what a killed one left (records.jsonl without metrics.json, our
    temporaries): never another evaluation, and never other files (eval --out, eval-hf)."""
    require(not out.exists() or out.is_dir(), f"--out {out} is a file; {command} writes a folder.")
    if not out.is_dir():
        return
    others = [p for p in out.iterdir() if p.name not in EVALUATION_FILES
              and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if not others and not (out / "metrics.json").exists():
        return
    try:
        previous = json.loads((out / "metrics.json").read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        previous = None
    require(not others and previous == expected,
            f"{out} already holds other files or another evaluation (another model, run, step, "
            "suite or setting); choose another --out or remove it.")


def _hand_eval_name(cfg: EvalConfig, chosen_step: int | None, suite: Suite, own_suite: bool) -> str:
    """`eval-SPLIT`, plus a part for every way this evaluation differs from the run's standard
    one (latest step, own suite, default decoding): `eval-test-step500`, `eval-test-limit7`,
    `eval-test-suite-NAME`, `eval-test-temperature1-samples4`. Only the standard evaluation
    goes where `retroplan run` reads."""
    parts = [f"eval-{cfg.split}"]
    if chosen_step is not None:
        parts.append(f"step{chosen_step}")
    if not own_suite:
        parts.append("suite-" + folder_word(suite.path.name))
    return "-".join(parts + setting_parts(cfg, EvalConfig()))


def folder_word(text: str) -> str:
    """`text` with every character a folder name should not hold replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def setting_parts(cfg, default) -> list[str]:
    """A name part for every setting of the dataclass `cfg` that differs from `default`'s, but
    the split and the `NO_RESULT_SETTINGS` (`limit7`, `temperature1`, `no-NAME`, `NAME-value`)."""
    parts, default = [], asdict(default)
    for key, value in asdict(cfg).items():
        if key == "split" or key in NO_RESULT_SETTINGS or value == default[key]:
            continue
        name = key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(name if value else f"no-{name}")
        elif isinstance(value, str):
            parts.append(f"{name}-{value}")
        else:
            parts.append(f"{name}{value:g}")
    return parts


def judge(suite: Suite, instances: dict, i: int, completion_ids) -> dict:
    """Parse one completion and replay its plan; every verdict we report comes from here.

    Stream variants also get `behaviour`: every step of the stream judged by the oracle,
    for every completion, an unfinished or unparseable one included (analysed as far as it
    can be read, and a failed trace). Their `faithful` is False unless the plan is correct
    and is the path the stream itself reached, so its denominator is every instance."""
    ids = [int(t) for t in completion_ids]
    parsed = suite.grammar.parse(suite.variant, ids, suite.vocab)
    stream = VARIANT[suite.variant].stream
    out = {"plan": parsed.plan, "parse_error": parsed.error, "correct": False,
           "reason": parsed.error or "", "first_step": False, "optimal": False,
           "faithful": False if stream else None, "stream_first_step": None,
           "optimal_moves": None, "behaviour": None}
    if stream:
        walk = suite.task.Walk(suite.config, instances, i, backward=parsed.backward)
        behaviour = analyse_stream(parsed.events, parsed.event_ends, walk,
                                   finished=parsed.plan is not None)
        out["behaviour"] = behaviour
        out["stream_first_step"] = behaviour.first_move_optimal
    if parsed.plan is None:
        return out
    out.update(suite.task.assess(suite.config, instances, i, parsed.plan))
    if stream:
        out["faithful"] = bool(out["correct"] and suite.grammar.stream_plan(parsed) == parsed.plan)
    return out


@torch.no_grad()
def teacher_forced(model, suite: Suite, split, rows: np.ndarray, batch_size: int, device,
                   teacherless: bool = False):
    """Per row: (completion tokens right, completion tokens, first token right, all right,
    deciding token right: 1/0, or -1 where the row has none within the context; see
    `deciding_positions`). A `teacherless` model is fed what it was trained on, the dummy token
    at every completion position: its "teacher-forced" accuracy is that of its parallel answer."""
    no_loss = suite.grammar.no_loss_tokens(suite.vocab)
    deciding = deciding_positions(suite, split, rows)
    out = np.zeros((len(rows), 5), dtype=np.int64)
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo: lo + batch_size]
        x, y = collate(split, chunk, suite.vocab.pad_id, no_loss, model.cfg.block_size + 1, teacherless)
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
        at = torch.from_numpy(deciding[lo: lo + len(chunk)]).to(device)
        inside = (at >= 0) & (at < x.shape[1])
        hit = right[idx, at.clamp(0, x.shape[1] - 1)] & valid[idx, at.clamp(0, x.shape[1] - 1)]
        out[lo: lo + len(chunk), 4] = torch.where(inside, hit.long(), -1).cpu().numpy()
    return out


def deciding_positions(suite: Suite, split, rows: np.ndarray) -> np.ndarray:
    """Per row, the input position whose next-token prediction is the row's deciding token
    (the grammar's `deciding_index` into the suite's own completion, + prompt length - 1), or
    -1 where the row has none. On graph tasks' forward plans: the position of p0, the start
    node written after `=`, where the model predicts its first move."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for k, r in enumerate(rows):
        j = suite.grammar.deciding_index(suite.variant, split.completion(int(r)), suite.vocab)
        if j is not None:
            out[k] = int(split.prompt_len[int(r)]) + j - 1
    return out


def eval_prefixes(suite: Suite, split, rows, cfg: EvalConfig) -> dict[int, list[int]]:
    """Per row, the tokens forced after the prompt before generation (`cfg.lookahead`: the
    grammar's `eval_prefix`; none in plain mode). The judged completion is prefix + generated."""
    if cfg.lookahead == "plain":
        return {int(r): [] for r in rows}
    return {int(r): [int(t) for t in suite.grammar.eval_prefix(
                suite.variant, cfg.lookahead, split.instances, int(split.instance[r]), suite.vocab)]
            for r in rows}


def generate_completions(model, suite: Suite, split, rows, cfg: EvalConfig, device, progress: bool,
                         prefixes: dict[int, list[int]] | None = None, teacherless: bool = False):
    """{(row, sample): (token ids up to <eos>, summed log-prob)} for every row and sample;
    the model continues each prompt after its forced `prefixes[row]` (not in the ids). A
    `teacherless` model decodes as it was trained (`_generate_teacherless`).

    Batches hold rows of one prompt length, so prompts need no padding. A sampled completion
    draws from its own generator, seeded by (seed, row, sample): it is the same whatever the
    batch size or limit (`models.gpt.row_generators`)."""
    if teacherless:
        return _generate_teacherless(model, suite, split, rows, cfg, device)
    eos = suite.vocab.eos_id
    prefixes = prefixes or {}
    by_prompt_len = defaultdict(list)
    for r in rows:
        by_prompt_len[int(split.prompt_len[r]) + len(prefixes.get(int(r), ()))].append(int(r))
    backward = VARIANT[suite.variant].backward_search
    bar = tqdm(total=len(rows) * cfg.samples, desc=f"eval {suite.variant}", unit="ex",
               disable=None if progress else True, leave=False)
    out = {}
    for plen in sorted(by_prompt_len):
        jobs = [(r, s) for r in by_prompt_len[plen] for s in range(cfg.samples)]
        for lo in range(0, len(jobs), cfg.batch_size):
            chunk = jobs[lo: lo + cfg.batch_size]
            prompts = torch.from_numpy(np.stack([np.concatenate([split.prompt(r), np.asarray(
                prefixes.get(r, ()), dtype=np.int64)]) for r, _ in chunk])).to(device)
            hook = None
            if cfg.uses_tip:
                walks = [suite.task.Walk(suite.config, split.instances, int(split.instance[r]), backward)
                         for r, _ in chunk]
                hook = TIPPenalty([suite.grammar.StreamTracker(w) for w in walks],
                                  suite.grammar.StreamTracker.switch_tokens, cfg.tip_alpha,
                                  cfg.tip_beta, cfg.tip_oracle)
            new, logprob = generate_with_logprobs(
                model, prompts, model.cfg.block_size - plen, eos, logits_hook=hook,
                temperature=cfg.temperature, top_k=cfg.top_k,
                generator=row_generators(cfg.seed, chunk) if cfg.temperature > 0 else None)
            for (r, s), ids, lp in zip(chunk, new.cpu().tolist(), logprob.cpu().tolist()):
                out[(r, s)] = (ids[: ids.index(eos) + 1] if eos in ids else ids, lp)
            bar.update(len(chunk))
    bar.close()
    return out


@torch.no_grad()
def _generate_teacherless(model, suite: Suite, split, rows, cfg: EvalConfig, device):
    """Teacherless decoding (Bachmann & Nagarajan 2024), the way such a model was trained: the
    prompt followed by the dummy token (`<pad>`, every completion position's input in training)
    up to the context, one forward pass, and the argmax at every position from the last prompt
    token on, all answer tokens predicted in parallel; cut after the first `<eos>`. The summed
    log-probability is that of the tokens kept. Greedy only (the caller refuses sampling)."""
    eos, pad = suite.vocab.eos_id, suite.vocab.pad_id
    model.eval()
    by_prompt_len = defaultdict(list)
    for r in rows:
        by_prompt_len[int(split.prompt_len[r])].append(int(r))
    out = {}
    for plen in sorted(by_prompt_len):
        new_tokens = model.cfg.block_size - plen   # as many as autoregressive decoding may write
        for lo in range(0, len(by_prompt_len[plen]), cfg.batch_size):
            chunk = by_prompt_len[plen][lo: lo + cfg.batch_size]
            prompts = torch.from_numpy(np.stack([split.prompt(r) for r in chunk])).to(device)
            dummies = torch.full((len(chunk), new_tokens - 1), pad, dtype=prompts.dtype, device=device)
            logits = model(torch.cat([prompts, dummies], dim=1))[:, plen - 1:].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            tokens = logits.argmax(dim=-1)
            picked = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            for b, r in enumerate(chunk):
                ids = tokens[b].tolist()
                keep = ids.index(eos) + 1 if eos in ids else len(ids)
                out[(r, 0)] = (ids[:keep], float(picked[b, :keep].sum()))
    return out


def evaluate(run_dir: str | os.PathLike, suite_path: str | os.PathLike | None = None,
             cfg: EvalConfig | None = None, out: str | os.PathLike | None = None,
             progress: bool = True, step: int | None = None, name_by_settings: bool = False) -> dict:
    """Evaluate the run's latest checkpoint (or its kept checkpoint at `step`) on a split;
    writes metrics.json + records.jsonl into `out` and returns the metrics; metrics.json
    records the step evaluated and `identity`, everything its numbers depend on.

    Default `out`: RUN/eval-SPLIT, or RUN/eval-SPLIT-stepN for a chosen step (so the final
    evaluation is never overwritten). With `name_by_settings` (the `eval` command) the
    default folder names every way the evaluation differs from the standard one (another
    suite, a limit, non-default decoding: see `_hand_eval_name`), so only the standard
    evaluation lands in RUN/eval-SPLIT, where `retroplan run` reads.

    Refused: a suite with another vocabulary, another task or another evaluated variant than
    the run was trained for (its grammar would judge the model by the wrong format); the run's
    own suite when its meta.json is no longer the one the run recorded; prompts that leave the
    model no room to write within its context; with `name_by_settings`, an `out` that holds
    another evaluation or other files (`refuse_another_evaluation`)."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    chosen = step
    model, run, step = checkpoint.load_model(run_dir, device, step=chosen)
    trained_on = checkpoint.run_suite(run_dir, run)
    same_path = suite_path is None or Path(suite_path).resolve() == trained_on.resolve()
    suite = open_suite(suite_path or trained_on)
    if same_path:
        checkpoint.check_suite(run_dir, run, suite, "evaluate the run on")
    # a byte-identical copy of the run's suite is the same suite
    own_suite = same_path or sha256_file(suite.path / "meta.json") == run.get("suite_meta_sha256")
    require(suite.vocab.to_json() == run["vocab"],
            f"the checkpoint in {run_dir} was trained with a different vocabulary than suite "
            f"{suite.path} uses ({len(run['vocab'])} vs {len(suite.vocab)} tokens).")
    trained_variant = components(str(run.get("variant", suite.name)))[0]
    task = run.get("task", suite.meta["task"])
    require(suite.meta["task"] == task and suite.variant == trained_variant,
            f"suite {suite.path} holds {suite.meta['task']} rows of variant {suite.variant}, but run "
            f"{run_dir} (trained on {task} {run.get('variant')}) writes variant {trained_variant} "
            f"and is judged by its grammar; evaluate it on a {task} suite of variant "
            f"{trained_variant} or of a mixture that starts with it.")
    require(not cfg.uses_tip or VARIANT[suite.variant].stream,
            f"the thought-switch penalty needs a stream variant; {suite.variant} has no thoughts to switch.")
    require(cfg.lookahead == "plain" or VARIANT[suite.variant].lookahead_spans,
            f"eval lookahead {cfg.lookahead} needs a lookahead suite; {suite.variant} is trained "
            "without <T> spans.")
    objective = run.get("train", {}).get("objective", "next-token")
    teacherless = objective == "teacherless"
    require(not teacherless or (cfg.temperature == 0 and cfg.samples == 1 and not cfg.uses_tip
                                and cfg.lookahead == "plain"),
            f"run {run_dir} was trained teacherless, so eval decodes all its answer tokens at once "
            "(greedy, from dummy inputs); sampling, the thought-switch penalty and lookahead modes "
            "do not apply to it.")
    split = suite.split(cfg.split)
    rows = np.flatnonzero(split.kind == 0)  # revthink: forward questions only
    if cfg.limit:
        rows = rows[: cfg.limit]
    require(len(rows) > 0, f"split {cfg.split} of {suite.path} has no rows to evaluate.")
    prefixes = eval_prefixes(suite, split, rows, cfg)
    longest = max(int(split.prompt_len[r]) + len(prefixes[int(r)]) for r in rows)
    context = model.cfg.block_size
    require(longest < context,
            f"split {cfg.split} of {suite.path} has prompts of up to {longest} tokens"
            f"{' (forced prefix included)' if cfg.lookahead != 'plain' else ''}, and run {run_dir}'s "
            f"model has a context of {context} tokens; it can evaluate only prompts shorter than "
            f"{context} tokens, which leave it room to write its answer.")
    if out:
        out = Path(out)
        refuse_foreign_output(out, run_dir, "eval")  # a suite, the run itself, its checkpoints, another run
        if name_by_settings:  # the eval command's --out: never replaces another evaluation
            refuse_another_evaluation(out, identity(run_dir, suite.path, cfg, step))
    elif name_by_settings:
        out = run_dir / _hand_eval_name(cfg, chosen, suite, own_suite)
    else:
        out = run_dir / (f"eval-{cfg.split}" if chosen is None else f"eval-{cfg.split}-step{step}")

    tf = teacher_forced(model, suite, split, rows, min(cfg.batch_size, 128), device, teacherless)
    generated = generate_completions(model, suite, split, rows, cfg, device, progress, prefixes, teacherless)
    completions = {}
    for k, r in enumerate(rows):
        for s in range(cfg.samples):
            ids, logprob = generated[(int(r), s)]
            fields = {"generated": suite.vocab.decode(ids),
                      "lookahead": cfg.lookahead, "forced": suite.vocab.decode(prefixes[int(r)]),
                      "generated_tokens": len(ids), "logprob": logprob,
                      "tf_token_acc": float(tf[k, 0] / max(1, tf[k, 1])),
                      "tf_first_token": bool(tf[k, 2]), "tf_exact": bool(tf[k, 3]),
                      "tf_deciding_token": None if tf[k, 4] < 0 else bool(tf[k, 4])}
            completions[(int(r), s)] = (fields, prefixes[int(r)] + ids)  # forced + generated
    records, metrics = judge_completions(suite, split, rows, completions, cfg.samples)
    # paths relative to the evaluation's folder: a study folder moved whole still finds them
    metrics.update({"split": cfg.split, "step": step, "suite": path_for(out, suite.path),
                    "run": path_for(out, run_dir), "task": suite.meta["task"], "variant": suite.name,
                    "task_config": suite.meta["config"], "decoding": asdict(cfg),
                    "identity": identity(run_dir, suite.path, cfg, step), "objective": objective,
                    "generation": "parallel from dummy inputs (teacherless)" if teacherless else
                                  "autoregressive"})
    metrics["suite_digest"] = suite.meta.get("meta_sha256")  # the join key of run.json and export cards
    metrics["writes"] = writes(suite.name)
    metrics["chance"] = chance_for(suite.task, suite.config, suite.variant)
    write_evaluation(out, records, metrics)
    return dict(metrics, eval_dir=str(out))  # where it went (not in metrics.json: folders move)


def judge_completions(suite: Suite, split, rows, completions: dict, samples: int = 1,
                      judge_one=judge) -> tuple[list[dict], dict]:
    """Records and metrics for the completions of `rows` (kind-0 rows of `split`):
    `completions[(row, sample)] = (fields, completion)`, where `fields` are the record's fields
    that say how the completion was made (they follow row, sample, index, prompt and reference)
    and `completion` is what `judge_one(suite, instances, i, completion)` judges (`judge`: the
    suite token ids). The suite's own completion of every row is judged by `judge` too (the
    teacher's behaviour). Metrics: `summarize`, the behaviour blocks and, for several samples,
    pass@k and best-of-n; `eval` and `eval-hf` both count through here."""
    difficulty = suite.task.difficulty(suite.config, split.instances)
    records, stats, teacher_stats, teachers = [], [], [], []
    for r in rows:
        i = int(split.instance[r])
        reference = split.completion(r)
        teacher = judge(suite, split.instances, i, reference)  # the suite's own trace
        teachers.append(teacher)
        for s in range(samples):
            fields, completion = completions[(int(r), s)]
            verdict = judge_one(suite, split.instances, i, completion)
            rec = {"row": int(r), "sample": s, "index": int(split.index[i]),
                   "prompt": suite.vocab.decode(split.prompt(r)),
                   "reference": suite.vocab.decode(reference), **fields}
            rec.update({key: int(v[i]) for key, v in difficulty.items()})
            behaviour = verdict.pop("behaviour")
            rec.update(verdict)
            if teacher["behaviour"] is not None:
                rec["teacher_tokens"] = teacher["behaviour"].tokens   # the stream's own tokens
                rec["teacher_expanded"] = teacher["behaviour"].expanded
                rec["teacher_correct"] = teacher["correct"]  # the teacher's own outcome
            if behaviour is not None:
                rec["behaviour"] = behaviour.to_dict()
                stats.append(behaviour)
                teacher_stats.append(teacher["behaviour"])
            records.append(rec)

    metrics = summarize(records, list(difficulty))
    if stats:
        metrics["behaviour"] = summarize_behaviour(
            stats, [r["correct"] for r in records if "behaviour" in r], teacher_stats)
    streams = [t for t in teachers if t["behaviour"] is not None]
    if streams:  # the teacher's streams, judged by the same code: the model's yardstick
        metrics["teacher_behaviour"] = summarize_behaviour([t["behaviour"] for t in streams],
                                                           [t["correct"] for t in streams])
    if samples > 1:
        metrics["sampling"] = _sampling_block(records, samples)
        metrics["pass_at_k"] = pass_at_k_curve(records)  # every k = 1..samples (passk.py)
    return records, metrics


def write_evaluation(out: Path, records: list[dict], metrics: dict) -> None:
    """records.jsonl, then metrics.json (with `records_sha256` added), into the folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    # records first, then metrics.json, which names the records it summarises: a kill between
    # the two leaves an old metrics.json whose checksum no longer matches (see metrics_current)
    text = "".join(json_line(r) for r in records)
    metrics["records_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    with atomic_path(out / "records.jsonl") as tmp:
        tmp.write_text(text)
    write_json(out / "metrics.json", metrics)


def metrics_current(eval_dir: Path, expected: dict | None = None,
                    recorded_sha256: str | None = None) -> dict | None:
    """The metrics of a finished evaluation in `eval_dir`, or None when there is none, when its
    records.jsonl is not the one it summarises (an evaluation killed between the two files),
    when `expected` is given and is not the `identity` it recorded (another suite, step,
    weights, decoding, limit or retroplan version: made by hand, or by an older version), when
    metrics.json is not shaped as `evaluate` writes it (corrupt), or when `recorded_sha256` is
    given and is not metrics.json's digest (the study recorded another file: it was edited)."""
    metrics_path, records_path = eval_dir / "metrics.json", eval_dir / "records.jsonl"
    if not (metrics_path.is_file() and records_path.is_file()):
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not _well_formed(metrics) or metrics.get("records_sha256") != sha256_file(records_path):
        return None
    if recorded_sha256 is not None and sha256_file(metrics_path) != recorded_sha256:
        return None
    if expected is not None and metrics.get("identity") != expected:
        return None
    return metrics


def _is_rate(block) -> bool:
    return (isinstance(block, dict) and isinstance(block.get("n"), int)
            and (block.get("value") is None or isinstance(block.get("value"), (int, float))))


def _well_formed(metrics) -> bool:
    """`metrics` has the shape `summarize` gives (what a study reads): a count, a rate block
    ({"value", "n"}) for every rate, and per-difficulty blocks of the same shape."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("n"), int):
        return False
    rates = ("accuracy", "first_step_accuracy", "optimal_rate", "swc", "faithful_accuracy",
             "parse_failures", "tf_token_accuracy", "tf_first_token_accuracy", "tf_sequence_accuracy")
    if not all(_is_rate(metrics.get(key)) for key in rates):
        return False
    by_difficulty = metrics.get("by_difficulty")
    return isinstance(by_difficulty, dict) and all(
        isinstance(values, dict) and all(isinstance(b, dict) and _is_rate(b.get("accuracy"))
                                         for b in values.values())
        for values in by_difficulty.values())


def _sampling_block(records: list[dict], n: int) -> dict:
    """pass@k for k = 1, 2, 4, ... <= n, and best-of-n by the model's own log-probability."""
    by_row = defaultdict(list)
    for r in records:
        by_row[r["row"]].append(r)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    out = {f"pass@{k}": {"value": sum(pass_at_k(n, sum(x["correct"] for x in rs), k)
                                      for rs in by_row.values()) / len(by_row), "n": len(by_row)}
           for k in ks}
    best = [max(rs, key=lambda x: x["logprob"] / max(1, x["generated_tokens"]))["correct"]
            for rs in by_row.values()]
    out[f"best_of_{n}"] = {"value": sum(best) / len(best), "n": len(best)}
    return out


def summarize(records: list[dict], difficulty_keys: list[str]) -> dict:
    """Rates with their counts, overall and per difficulty value."""
    def rate(values):
        # None marks a metric that does not apply to the variant (faithful accuracy of a
        # plan-only model); where it applies, every evaluated instance is in the denominator
        values = [bool(v) for v in values if v is not None]
        return {"value": (sum(values) / len(values)) if values else None, "n": len(values)}

    def block(recs):
        swc = [r["correct"] * r["optimal_moves"] / max(len(r["plan"]) - 1, r["optimal_moves"])
               if r["correct"] and r["optimal_moves"] else 0.0 for r in recs]
        # None where no teacher forcing was run (eval-hf): that metric is then null with n = 0
        tf_token = [r["tf_token_acc"] for r in recs if r["tf_token_acc"] is not None]
        return {
            "accuracy": rate(r["correct"] for r in recs),
            "first_step_accuracy": rate(r["first_step"] for r in recs),
            "optimal_rate": rate(r["optimal"] for r in recs),
            "swc": {"value": sum(swc) / len(swc) if swc else None, "n": len(swc)},
            "faithful_accuracy": rate(r["faithful"] for r in recs),
            "stream_first_step_accuracy": rate(r["stream_first_step"] for r in recs),
            "parse_failures": rate(r["parse_error"] is not None for r in recs),
            "tf_token_accuracy": {"value": sum(tf_token) / len(tf_token) if tf_token else None,
                                  "n": len(tf_token)},
            "tf_first_token_accuracy": rate(r["tf_first_token"] for r in recs),
            # the first token the prompt does not fix (grammar `deciding_index`); n counts rows with one
            "tf_deciding_token_accuracy": rate(r.get("tf_deciding_token") for r in recs),
            "tf_sequence_accuracy": rate(r["tf_exact"] for r in recs),
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
