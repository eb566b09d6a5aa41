"""An RL stage for every run of a study: `[rl]` in an experiment file.

`retroplan run` trains and evaluates every run as usual; with `[rl]` it then gives each SFT run
RUN a GRPO stage (`rl.rl`, the table's RLConfig settings) into the sibling folder RUN-rl
(resumed, or reused when finished), evaluates both with sampling (`samples` completions per
instance at `temperature`, on `split`, first `limit` instances) into RUN/eval-rl-sampled and
RUN-rl/eval-rl-sampled, and adds to the report, per variant: pass@1 and pass@K before and after
(mean over seeds), Δpass@1 and Δpass@K paired over (seed, instance) with the paired bootstrap
(stats.paired_bootstrap, within seeds), the stream behaviour before and after (wandering,
ξ_UT, thought switches as backtracks per trace), and the verdict on "does this variant's SFT
leave more for RL to elicit than the baseline's?": Δpass@1 of the variant minus Δpass@1 of
the baseline, paired over (seed, instance). A pass@k-vs-k figure overlays every variant before
and after. Per instance, pass@1 is the share of its samples that are correct and pass@K
whether any is (the unbiased estimator at k = n).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from . import plots
from .errors import require
from .eval import EvalConfig, evaluate, identity, metrics_current
from .passk import pass_at_k_curve
from .rl import RLConfig, rl
from .stats import holm, paired_bootstrap, paired_t, rate_ci, tost, verdict
from .study import MARGIN, MIN_SEEDS

EVAL_KEYS = {"samples": 8, "temperature": 1.0, "split": "test", "limit": 0}
EVAL_DIR = "eval-rl-sampled"


@dataclass(frozen=True)
class RLStage:
    """An experiment's `[rl]` table, checked."""

    config: RLConfig     # the GRPO stage of every run
    sampled: EvalConfig  # the sampled evaluation before and after it (pass@k)


def check_rl_section(section: dict) -> RLStage:
    """Validate an experiment's `[rl]` table: RLConfig settings plus the sampled evaluation's
    samples (default 8, at least 2), temperature (1.0), split (test) and limit (0: all)."""
    require(isinstance(section, dict), f"[rl] must be a table, got {section!r}.")
    known = {f.name for f in fields(RLConfig)} | set(EVAL_KEYS)
    unknown = sorted(set(section) - known)
    require(not unknown, f"unknown rl setting {unknown[0] if unknown else ''!r}; allowed: "
                         f"{', '.join(sorted(known))}.")
    cfg = RLConfig.from_dict({k: v for k, v in section.items() if k not in EVAL_KEYS})
    ev = {k: section.get(k, default) for k, default in EVAL_KEYS.items()}
    require(isinstance(ev["samples"], int) and ev["samples"] >= 2,
            f"[rl] samples must be an integer of at least 2 (pass@k needs several), got {ev['samples']!r}.")
    sampled = EvalConfig(split=ev["split"], limit=ev["limit"], temperature=float(ev["temperature"]),
                         samples=ev["samples"], seed=0)
    sampled.validate()
    require(sampled.temperature > 0, "[rl] temperature must be positive (pass@k samples).")
    return RLStage(config=cfg, sampled=sampled)


def _sampled_eval(run_dir: Path, cfg: EvalConfig, progress: bool) -> dict:
    """The sampled evaluation of a run's latest checkpoint, reused when current."""
    from .checkpoint import latest_dir, read_run, read_state, run_suite

    suite = run_suite(run_dir, read_run(run_dir))
    step = read_state(latest_dir(run_dir))["step"]
    metrics = metrics_current(run_dir / EVAL_DIR, identity(run_dir, suite, cfg, step))
    return metrics or evaluate(run_dir, None, cfg, out=run_dir / EVAL_DIR, progress=progress)


def _per_instance(eval_dir: Path) -> dict[int, tuple[float, float]]:
    """Instance index -> (share of its samples correct, any sample correct)."""
    by_index: dict[int, list[bool]] = {}
    for line in (eval_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_index.setdefault(int(rec["index"]), []).append(bool(rec["correct"]))
    return {i: (sum(v) / len(v), float(any(v))) for i, v in by_index.items()}


def _fmt(values: list[float]) -> str:
    """A rate over seeds: its mean [95% t-interval, clipped to [0, 1]]."""
    m, lo, hi = rate_ci(values)
    return f"{m:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if hi - lo > 1e-9 else "")


def _delta(pairs: list[tuple[float, float, int]]) -> dict:
    """Paired bootstrap of after − before over (seed, instance) items, within seeds."""
    after, before, seeds = (np.array(x, dtype=float) for x in zip(*pairs))
    return paired_bootstrap(after, before, strata=seeds)


def rl_study(stage: RLStage, run_dirs: dict[str, dict[int, Path]], baseline: str, out: Path, title: str,
             progress: bool, name: str = "rl_passk") -> tuple[list[Path], list[str]]:
    """RL for every run (variant -> seed -> SFT run folder), sampled evaluations before and
    after, the pass@k figure OUT/NAME.png and the report's `## RL` section."""
    cfg, sampled = stage.config, stage.sampled
    k = sampled.samples
    per_variant: dict[str, dict] = {}
    curves = {}
    for variant, by_seed in run_dirs.items():
        per_variant[variant], curves[f"{variant} SFT"], curves[f"{variant} SFT+RL"] = _rl_variant(
            stage, by_seed, progress)
    title_part = f" ({title})" if name != "rl_passk" else ""
    figures = plots.pass_at_k_curves(curves, out / name, title=f"{title}: pass@k before and after RL",
                                     paired=True)
    lines = [f"## RL: what GRPO with the verified reward elicits{title_part}", "",
             f"Every SFT run got a GRPO stage (`retroplan rl`: {cfg.steps} steps, {cfg.prompts_per_step} "
             f"prompts x {cfg.group_size} samples, reward {cfg.reward}, lr {cfg.lr:g}, "
             f"kl_coef {cfg.kl_coef:g}); "
             f"both were evaluated with {k} samples per instance at temperature {sampled.temperature:g} "
             f"on {sampled.split}{f' (first {sampled.limit})' if sampled.limit else ''}. pass@1: share of "
             f"samples correct; pass@{k}: any of the {k} correct (docs/METRICS.md). Means over seeds "
             "[95% t-interval]; Δ: after − before, paired over (seed, instance), percentile bootstrap "
             "within seeds. RL that sharpens lifts pass@1 and leaves pass@K flat or lower; RL that adds "
             f"capability lifts pass@K (Yue et al. 2025). Figure: {name}.png.", "",
             f"| variant | seeds | pass@1 SFT | pass@1 SFT+RL | Δpass@1 [95% CI], p | pass@{k} SFT | "
             f"pass@{k} SFT+RL | Δpass@{k} [95% CI], p |", "|---|---|---|---|---|---|---|---|"]
    for variant, s in per_variant.items():
        d1, dk = _delta(s["pairs1"]), _delta(s["pairsk"])
        lines.append(f"| {variant} | {len(s['before'])} | {_fmt(s['before'])} | {_fmt(s['after'])} | "
                     f"{d1['delta']:+.3f} [{d1['ci'][0]:+.3f}, {d1['ci'][1]:+.3f}], p={d1['p']:.3g} | "
                     f"{_fmt(s['before_k'])} | {_fmt(s['after_k'])} | {dk['delta']:+.3f} "
                     f"[{dk['ci'][0]:+.3f}, {dk['ci'][1]:+.3f}], p={dk['p']:.3g} |")
    lines += _behaviour_lines(per_variant)
    if baseline in per_variant and len(per_variant) > 1:
        lines += _elicit_lines(per_variant, baseline)
    return figures, lines + [""]


def _rl_variant(stage: RLStage, by_seed: dict[int, Path], progress: bool) -> tuple[dict, list, list]:
    """One variant's runs (seed -> SFT run folder) given their RL stage and both sampled
    evaluations: (its numbers, pass@k curve before, after)."""
    stats = {"before": [], "after": [], "before_k": [], "after_k": [], "pairs1": [], "pairsk": [],
             "items": {}, "behaviour": {"before": [], "after": []}}
    records_before, records_after = [], []
    for seed, run_dir in sorted(by_seed.items()):
        rl_dir = run_dir.parent / f"{run_dir.name}-rl"
        rl(run_dir, rl_dir, replace(stage.config, seed=seed), resume=(rl_dir / "run.json").is_file(),
           progress=progress)
        m0 = _sampled_eval(run_dir, stage.sampled, progress)
        m1 = _sampled_eval(rl_dir, stage.sampled, progress)
        for when, m in (("before", m0), ("after", m1)):
            stats[when].append(m["pass_at_k"]["value"][0])
            stats[f"{when}_k"].append(m["pass_at_k"]["value"][-1])
            if m.get("behaviour"):
                b = m["behaviour"]
                stats["behaviour"][when].append((b["wandering"]["value"], b["xi_ut"]["value"],
                                                 b["backtracks_per_trace"]["mean"]))
        a0, a1 = _per_instance(run_dir / EVAL_DIR), _per_instance(rl_dir / EVAL_DIR)
        for i in sorted(set(a0) & set(a1)):
            stats["pairs1"].append((a1[i][0], a0[i][0], seed))
            stats["pairsk"].append((a1[i][1], a0[i][1], seed))
            stats["items"][(seed, i)] = a1[i][0] - a0[i][0]
        records_before += _seed_records(run_dir, seed)
        records_after += _seed_records(rl_dir, seed)
    return stats, pass_at_k_curve(records_before), pass_at_k_curve(records_after)


def _seed_records(run_dir: Path, seed: int) -> list[dict]:
    """A run's sampled records, each row named with its seed (one curve holds several seeds)."""
    return [json.loads(x) | {"row": (seed, json.loads(x)["row"])} for x in
            (run_dir / EVAL_DIR / "records.jsonl").read_text().splitlines()]


def _behaviour_lines(per_variant: dict[str, dict]) -> list[str]:
    """The stream behaviour before -> after RL, for the variants that write streams."""
    streams = {v: s for v, s in per_variant.items() if s["behaviour"]["before"]}
    if not streams:
        return []
    lines = ["", "Stream behaviour of the sampled completions before → after RL (mean over seeds): "
             "does RL make the models wander or switch thoughts more?", "",
             "| variant | wandering | ξ_UT | backtracks per trace |", "|---|---|---|---|"]
    for v, s in streams.items():
        cells = []
        for j in range(3):
            b = [x[j] for x in s["behaviour"]["before"] if x[j] is not None]
            a = [x[j] for x in s["behaviour"]["after"] if x[j] is not None]
            cells.append(f"{np.mean(b):.3f} → {np.mean(a):.3f}" if a and b else "n/a")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def _elicit_lines(per_variant: dict[str, dict], baseline: str) -> list[str]:
    """The verdict per variant: does its SFT leave more for RL to elicit than the baseline's?"""
    lines = ["", f"Does a variant's SFT leave more for RL to elicit than {baseline}'s? Per training "
             f"seed, the mean over shared instances of Δpass@1(variant) − Δpass@1({baseline}); "
             "verdict by the study rule (docs/METRICS.md, Verdicts): paired t over seeds and TOST "
             f"within ±{MARGIN:g}, Holm across the rows of this table; none below {MIN_SEEDS} seeds. "
             "The pooled (seed, instance) bootstrap interval is shown beside it.",
             "", "| variant | seeds | per-seed mean [95% t-CI] | p (Holm) | pooled Δ [95% CI] "
             "| verdict |",
             "|---|---|---|---|---|---|"]
    base = per_variant[baseline]["items"]
    rows = []
    for variant, s in per_variant.items():
        if variant == baseline:
            continue
        shared = sorted(set(s["items"]) & set(base))
        seeds = sorted({x[0] for x in shared})
        per_seed = [float(np.mean([s["items"][x] - base[x] for x in shared if x[0] == seed]))
                    for seed in seeds]
        pooled = paired_bootstrap(np.array([s["items"][x] for x in shared]),
                                  np.array([base[x] for x in shared]),
                                  strata=np.array([x[0] for x in shared])) if shared else None
        t = paired_t(per_seed) if len(per_seed) >= 2 else None
        rows.append({"variant": variant, "per_seed": per_seed, "t": t, "pooled": pooled,
                     "p": t["p"] if t else float("nan"),
                     "tost": tost(per_seed, MARGIN)["p"] if t else float("nan")})
    for r, p_diff, p_equiv in zip(rows, holm([r["p"] for r in rows]), holm([r["tost"] for r in rows])):
        if not r["per_seed"]:
            lines.append(f"| {r['variant']} | 0 | n/a (no shared instances) | | | |")
            continue
        mean = float(np.mean(r["per_seed"]))
        if len(r["per_seed"]) < MIN_SEEDS:
            word = f"not judged: {len(r['per_seed'])} seed(s) (a claim needs >= {MIN_SEEDS})"
        else:
            said = verdict(mean, p_diff, p_equiv, MARGIN)
            word = {"helps": "leaves more to elicit", "hurts": "leaves less to elicit"}.get(said, said)
        ci = f" [{r['t']['ci'][0]:+.3f}, {r['t']['ci'][1]:+.3f}]" if r["t"] else ""
        pooled = r["pooled"]
        lines.append(f"| {r['variant']} | {len(r['per_seed'])} | {mean:+.3f}{ci} | "
                     f"{p_diff:.3g} | {pooled['delta']:+.3f} [{pooled['ci'][0]:+.3f}, "
                     f"{pooled['ci'][1]:+.3f}] | {word} |")
    return lines
