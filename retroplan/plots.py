"""Figures, written as PNG and SVG (matplotlib, no screen needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .fsutil import atomic_path  # noqa: E402
from .stats import mean_ci  # noqa: E402


def save(fig, path: Path) -> list[Path]:
    """Write `path`.png and `path`.svg atomically; returns both paths."""
    written = []
    for ext in ("png", "svg"):
        target = path.with_suffix(f".{ext}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight", metadata=_no_dates(ext))
        written.append(target)
    plt.close(fig)
    return written


def _no_dates(ext: str) -> dict:
    # keep figure files reproducible: no creation date or software stamp
    return {"Date": None} if ext == "svg" else {"Software": None}


def accuracy_by_variant(rows: list[dict], path: Path, metric: str = "accuracy",
                        title: str = "Forward planning accuracy") -> list[Path]:
    """One panel per condition: a bar per variant (mean over seeds, 95% interval), a dot per
    seed, and the chance level where the task has one."""
    by_cond: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    chance: dict[str, float] = {}
    variants: list[str] = []
    for r in rows:
        if r.get(metric) is None:
            continue
        by_cond[r["condition"]][r["variant"]].append(float(r[metric]))
        if r.get("chance") not in (None, ""):
            chance[r["condition"]] = float(r["chance"])
        if r["variant"] not in variants:
            variants.append(r["variant"])
    conds = list(by_cond)
    panels = max(1, len(conds))
    fig, axes = plt.subplots(1, panels, figsize=(1.2 + 1.1 * len(variants) * panels, 3.6),
                             squeeze=False, sharey=True)
    colors = plt.cm.tab10.colors
    for ax, cond in zip(axes[0], conds):
        for x, variant in enumerate(variants):
            vals = by_cond[cond].get(variant, [])
            if not vals:
                continue
            m, lo, hi = mean_ci(vals)
            ax.bar(x, m, color=colors[x % 10], alpha=0.8, width=0.7)
            if len(vals) > 1:
                ax.errorbar(x, m, yerr=[[m - lo], [hi - m]], color="black", capsize=4, lw=1)
            ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
            ax.text(x, min(1.02, m + 0.03), f"{m:.2f}", ha="center", va="bottom", fontsize=8)
        if cond in chance:
            ax.axhline(chance[cond], color="gray", ls="--", lw=1, label=f"chance {chance[cond]:.2f}")
            ax.legend(loc="upper left", fontsize=7, frameon=False)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(cond, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def learning_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> list[Path]:
    """Training loss against step, one line per run."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, points in curves.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=label, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save(fig, path)
