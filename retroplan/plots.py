"""Figures, written as PNG and SVG (matplotlib, no screen needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .fsutil import atomic_path  # noqa: E402
from .stats import mean_ci, rate_ci, wilson  # noqa: E402


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


LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _no_data(ax, text: str) -> None:
    """Say in the panel that there is nothing to draw yet (rather than leave empty axes)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)


def accuracy_by_variant(rows: list[dict], path: Path, metric: str = "accuracy",
                        title: str = "Forward planning accuracy") -> list[Path]:
    """One panel per condition: a bar per variant (mean over seeds) with its 95% interval (a
    t-interval across seeds, clipped to [0, 1]; with one seed, the Wilson interval over its test
    instances), a dot per seed, and the chance level where the task has one."""
    by_cond: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[tuple[str, str], tuple[int, int]] = {}  # (panel, variant) -> (right, n), one seed
    chance: dict[str, float] = {}
    variants: list[str] = []
    for r in rows:
        if r.get(metric) is None:
            continue
        panel = r.get("panel", r["condition"])
        by_cond[panel][r["variant"]].append(float(r[metric]))
        if r.get("n") not in (None, ""):
            counts[(panel, r["variant"])] = (round(float(r[metric]) * int(r["n"])), int(r["n"]))
        if r.get("chance") not in (None, ""):
            chance[panel] = float(r["chance"])
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
            m, lo, hi = rate_ci(vals)  # one seed: lo = hi = m
            if len(vals) == 1 and (cond, variant) in counts:  # ... then its instances' interval
                lo, hi = wilson(*counts[(cond, variant)])
            ax.bar(x, m, color=colors[x % 10], alpha=0.8, width=0.7)
            if hi > lo:
                ax.errorbar(x, m, yerr=[[max(0.0, m - lo)], [max(0.0, hi - m)]], color="black",
                            capsize=4, lw=1)
            ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
            top = hi if hi > lo else m  # the value above its whisker
            ax.text(x, min(1.02, top + 0.02), f"{m:.2f}", ha="center", va="bottom", fontsize=8)
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
    """Training loss per supervised token against supervised tokens seen, one line per run:
    variants whose completions differ in length (a plan, a stream, a mixture) are compared at
    the same amount of supervision rather than at the same step."""
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = 0
    for k, (label, points) in enumerate(curves.items()):
        if points:
            tokens, losses = zip(*points)
            # variants with completions of one length share their x values and, early on, their
            # losses: a line style and marker each keep a curve drawn under another visible
            ax.plot(tokens, losses, label=label, lw=1.3, color=plt.cm.tab10.colors[k % 10],
                    ls=LINE_STYLES[k % len(LINE_STYLES)], marker=MARKERS[k % len(MARKERS)], ms=4,
                    markevery=max(1, len(points) // 8), alpha=0.9)
            drawn += 1
    ax.set_xlabel("supervised tokens seen (completion tokens that carry loss)")
    ax.set_ylabel("training loss per supervised token")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 3.8, not 3.8 x 10^0, within a decade
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, frameon=False)
    else:
        _no_data(ax, "no training loss logged yet")
    fig.tight_layout()
    return save(fig, path)


def accuracy_curves(curves: dict[str, dict[int, list[dict]]], path: Path, title: str = "") -> list[Path]:
    """Verified generation accuracy on the fixed validation subset during training
    (curve.jsonl), against optimizer steps and against supervised tokens: one thick line per
    variant (mean over seeds at each step), each seed a thin line. `curves`: variant -> seed ->
    points."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colors = plt.cm.tab10.colors
    for k, (variant, by_seed) in enumerate(curves.items()):
        color = colors[k % 10]
        for points in by_seed.values():
            for ax, key in zip(axes, ("step", "supervised_tokens")):
                ax.plot([p[key] for p in points], [p["val_accuracy"] for p in points],
                        color=color, lw=0.6, alpha=0.45)
        steps = sorted({p["step"] for pts in by_seed.values() for p in pts})
        mean_acc, mean_tok = [], []
        for step in steps:
            at = [p for pts in by_seed.values() for p in pts if p["step"] == step]
            mean_acc.append(sum(p["val_accuracy"] for p in at) / len(at))
            mean_tok.append(sum(p["supervised_tokens"] for p in at) / len(at))
        axes[0].plot(steps, mean_acc, color=color, lw=2, label=variant)
        axes[1].plot(mean_tok, mean_acc, color=color, lw=2, label=variant)
    axes[0].set_xlabel("optimizer steps")
    axes[1].set_xlabel("supervised tokens seen")
    axes[0].set_ylabel("verified accuracy (validation subset)")
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def clever_hans(rows: list[dict], path: Path) -> list[Path]:
    """Teacher-forced next-token accuracy next to verified generated accuracy, per variant and
    panel (mean over seeds): a high first bar over a low last one is the Clever Hans gap."""
    panels = list(dict.fromkeys(r.get("panel", r["condition"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    bars = (("tf_token_accuracy", "teacher-forced tokens"),
            ("tf_first_token_accuracy", "teacher-forced first token"),
            ("tf_deciding_token_accuracy", "teacher-forced deciding token"),
            ("accuracy", "generated, verified"))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 1.2 * len(variants) * len(panels), 3.8),
                             squeeze=False, sharey=True)
    colors = ("#9ecae1", "#4292c6", "#08519c", "#d94801")
    width = 0.2
    for ax, panel in zip(axes[0], panels):
        for x, variant in enumerate(variants):
            rs = [r for r in rows if r.get("panel", r["condition"]) == panel and r["variant"] == variant]
            for j, (key, _) in enumerate(bars):
                m, _, _ = mean_ci([r.get(key) for r in rs])
                if m == m:
                    ax.bar(x + (j - 1.5) * width, m, width, color=colors[j])
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(panel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    # below the panels: inside, it covered the bars (which start at 0, where a legend goes)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, label=label) for c, (_, label) in zip(colors, bars)],
               loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("Teacher-forced vs generated accuracy (the Clever Hans gap)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, path)


def accuracy_vs_difficulty(points: list[dict], path: Path) -> list[Path]:
    """Accuracy against each difficulty measure that varies: one line per variant.

    `points`: dicts with variant, key (difficulty name), x (its value), correct, n."""
    keys = []
    for p in points:
        if p["key"] not in keys:
            keys.append(p["key"])
    keys = [k for k in keys if len({p["x"] for p in points if p["key"] == k}) > 1]
    if not keys:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        variants = []
        for p in points:
            if p["key"] == key and p["variant"] not in variants:
                variants.append(p["variant"])
        for j, variant in enumerate(variants):
            agg: dict = defaultdict(lambda: [0, 0])
            for p in points:
                if p["key"] == key and p["variant"] == variant:
                    agg[p["x"]][0] += p["correct"]
                    agg[p["x"]][1] += p["n"]
            xs = sorted(agg)
            ax.plot(xs, [agg[x][0] / agg[x][1] for x in xs], marker="o", lw=1.2, label=variant,
                    color=plt.cm.tab10.colors[j % 10])
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.suptitle("Accuracy against difficulty (pooled over seeds)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


BEHAVIOUR_PANELS = (("wandering", "wandering\n(invalid + redundant) / steps"),
                    ("premature_backtracks", "premature backtracks\n/ backtracks"),
                    ("xi_ut", "underthinking ξ_UT\n(failed traces)"),
                    ("backtracks_per_trace", "backtracks per trace"),
                    ("trace_validity", "trace validity"))


def behaviour_bars(rows: list[dict], path: Path) -> list[Path]:
    """Wandering, underthinking and backtracking by variant: the model (solid) next to its
    teacher's streams (hatched), mean over seeds and conditions."""
    variants = []
    for r in rows:
        has_streams = r.get("trace_validity") is not None or r.get("teacher_trace_validity") is not None
        if has_streams and r["variant"] not in variants:
            variants.append(r["variant"])
    if not variants:
        return []
    fig, axes = plt.subplots(1, len(BEHAVIOUR_PANELS), figsize=(2.6 * len(BEHAVIOUR_PANELS), 3.2),
                             squeeze=False)
    for ax, (metric, label) in zip(axes[0], BEHAVIOUR_PANELS):
        tallest, drawn = 0.0, False
        for x, variant in enumerate(variants):
            for dx, prefix, hatch in ((-0.2, "", None), (0.2, "teacher_", "//")):
                vals = [r[prefix + metric] for r in rows
                        if r["variant"] == variant and r.get(prefix + metric) not in (None, "")]
                if not vals:
                    continue
                m, lo, hi = mean_ci([float(v) for v in vals])
                ax.bar(x + dx, m, width=0.38, color=plt.cm.tab10.colors[x % 10],
                       alpha=0.85 if not hatch else 0.35, hatch=hatch, edgecolor="black", lw=0.5)
                ax.text(x + dx, m, f"{m:.2g}", ha="center", va="bottom", fontsize=7)
                if len(vals) > 1:
                    ax.errorbar(x + dx, m, yerr=[[m - lo], [hi - m]], color="black", capsize=3, lw=0.8)
                tallest = max(tallest, hi if len(vals) > 1 else m)
                drawn = True
        # the variant's tick under its pair of bars, whichever of the two has data
        ax.set_xlim(-0.6, len(variants) - 0.4)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=7)
        # rates on their whole 0..1 scale (all zero early in training: not an empty 0..0.05 axis)
        ax.set_ylim(0, max(1.0, 1.15 * tallest) if metric == "backtracks_per_trace" else 1.05)
        if not drawn:
            _no_data(ax, "no value yet\n(no stream" + (" failed" if metric == "xi_ut" else "")
                     + (" backtracked)" if metric == "premature_backtracks" else ")"))
        ax.set_title(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Search behaviour: model (solid) vs teacher stream (hatched)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


# who wrote a stream: one colour each, in every figure that compares them
WHO_COLOUR = {"model": "tab:blue", "teacher": "tab:orange"}
WHO_MARKER = {"model": "o", "teacher": "s"}


def trajectory_points(records: list[dict]) -> dict[str, dict[str, list]]:
    """{who: {"tokens", "states", "solved"}} per test instance holding both streams (first
    sample only): the stream's own tokens, the distinct states it expanded, its own outcome
    (records from before `teacher_correct` was kept: the teacher's reference rows end in the
    right plan, so solved)."""
    recs = [r for r in records if r.get("sample", 0) == 0 and "behaviour" in r
            and r.get("teacher_tokens") is not None]
    return {"model": {"tokens": [r["behaviour"]["tokens"] for r in recs],
                      "states": [r["behaviour"]["expanded"] for r in recs],
                      "solved": [bool(r["correct"]) for r in recs]},
            "teacher": {"tokens": [r["teacher_tokens"] for r in recs],
                        "states": [r["teacher_expanded"] for r in recs],
                        "solved": [bool(r.get("teacher_correct", True)) for r in recs]}}


def _dodged(values: list, side: float, rng) -> np.ndarray:
    """Integer counts spread so equal points stay visible: each side shifted by `side` of a
    unit (teacher left, model right) plus a seeded jitter, both scaled to the axis span."""
    v = np.asarray(values, dtype=float)
    unit = max(1.0, (v.max() - v.min()) / 30) if len(v) else 1.0
    return v + unit * (side + rng.uniform(-0.17, 0.17, len(v)))


def trajectory_vs_stream(records_by_variant: dict[str, list[dict]], path: Path) -> list[Path]:
    """Per test instance, the model's stream (blue circles) against its teacher's (orange
    squares): tokens written vs distinct states expanded, filled when that stream's own plan is
    right, hollow when not; equal points dodged and jittered (seed 0). Below, the per-instance
    difference model - teacher in states, the comparison without any overlap."""
    from matplotlib.ticker import MaxNLocator

    panels = {label: trajectory_points(recs) for label, recs in records_by_variant.items()}
    panels = {label: pts for label, pts in panels.items() if pts["model"]["tokens"]}
    if not panels:
        return []
    fig, axes = plt.subplots(2, len(panels), figsize=(4.8 * len(panels), 6.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.4]})
    for col, (label, pts) in enumerate(panels.items()):
        rng = np.random.default_rng(0)
        ax = axes[0, col]
        for who, side in (("teacher", -0.25), ("model", 0.25)):
            p = pts[who]
            xs, ys = _dodged(p["tokens"], side, rng), _dodged(p["states"], side, rng)
            solved = np.asarray(p["solved"])
            for ok in (True, False):
                sel = solved == ok
                if not sel.any():
                    continue
                ax.scatter(xs[sel], ys[sel], s=22, marker=WHO_MARKER[who], linewidths=1.1, alpha=0.75,
                           edgecolors=WHO_COLOUR[who], facecolors=WHO_COLOUR[who] if ok else "none",
                           label=f"{who}, {'solved' if ok else 'unsolved'} ({int(sel.sum())})")
        ax.set_xlabel("tokens in the stream")
        ax.set_ylabel("distinct states expanded")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        diff = np.asarray(pts["model"]["states"]) - np.asarray(pts["teacher"]["states"])
        bx = axes[1, col]
        lo, hi = int(diff.min()), int(diff.max())
        bx.hist(diff, bins=np.arange(lo - 0.5, hi + 1.5), color=WHO_COLOUR["model"], alpha=0.8)
        bx.axvline(0, color="black", lw=0.8)
        bx.set_xlabel("model - teacher, distinct states expanded (per instance)")
        bx.set_ylabel("instances")
        bx.set_title(f"model more: {int((diff > 0).sum())}, equal: {int((diff == 0).sum())}, "
                     f"fewer: {int((diff < 0).sum())}", fontsize=9)
        for a in (ax, bx):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Model vs teacher search, per test instance (points dodged and jittered)", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def probe_by_layer(curves: dict[str, list[list[dict]]], path: Path, title: str = "",
                   ylabel: str = "held-out probe accuracy", chance: float | None = None,
                   baseline_label: str = "baseline: majority class") -> list[Path]:
    """Linear-probe score against layer (0: the embedding), one solid line per variant: the mean
    over seeds with its 95% t-interval shaded (one seed: the run's own interval); dashed, the
    baseline (`baseline_label`; one grey line when every run has the same); dotted,
    the probe fitted on shuffled labels (the control); a grey dash-dot line at `chance`.
    `curves`: variant -> per seed, the probe's per-layer entries (probe.json `layers`: layer,
    value, ci, baseline, control)."""
    fig, ax = plt.subplots(figsize=(8.4, 3.8))
    colors = plt.cm.tab10.colors
    baselines = {round(float(layers[0]["baseline"]), 12) for runs in curves.values() for layers in runs
                 if layers and layers[0].get("baseline") is not None}
    shared_baseline = len(baselines) == 1
    lowest = 0.0
    for k, (variant, runs) in enumerate(curves.items()):
        color = colors[k % 10]
        n_layers = max((len(layers) for layers in runs), default=0)
        xs, means, lows, highs, controls, bases = [], [], [], [], [], []
        for layer in range(n_layers):
            at = [layers[layer] for layers in runs if layer < len(layers)]
            values = [e["value"] for e in at if e.get("value") is not None]
            if not values:
                continue
            m, lo, hi = mean_ci(values)
            if len(values) == 1 and at[0].get("ci") and None not in at[0]["ci"]:
                lo, hi = at[0]["ci"]
            xs.append(layer)
            means.append(m)
            lows.append(lo)
            highs.append(hi)
            controls.append(mean_ci([e.get("control") for e in at])[0])
            bases.append(mean_ci([e.get("baseline") for e in at])[0])
        if not xs:
            continue
        seeds = len(runs)
        ax.plot(xs, means, color=color, lw=2, marker="o", ms=4,
                label=f"{variant} ({seeds} seed{'s' if seeds > 1 else ''})")
        ax.fill_between(xs, lows, highs, color=color, alpha=0.15, lw=0)
        ax.plot(xs, controls, color=color, lw=1, ls=":")
        if not shared_baseline:
            ax.plot(xs, bases, color=color, lw=1, ls="--")
        lowest = min([lowest] + [v for v in lows + controls if v == v])
    if shared_baseline:
        ax.axhline(next(iter(baselines)), color="gray", lw=1, ls="--")
    if chance is not None:
        ax.axhline(chance, color="gray", lw=1, ls="-.", label=f"chance {chance:.2f}")
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="black", ls="--", lw=1), Line2D([], [], color="black", ls=":", lw=1)]
    labels += [baseline_label, "control: probe fitted on shuffled labels"]
    # beside the axes: with many variants a legend inside would cover the lines
    ax.legend(handles, labels, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top = max(2, max((len(layers) for runs in curves.values() for layers in runs), default=1))
    ax.set_xticks(range(top), ["emb"] + [str(k) for k in range(1, top)])
    ax.set_xlabel("layer (residual stream after the embedding / after block k)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(max(-1.05, min(-0.02, lowest - 0.05)), 1.02)  # R² far below 0 is clipped
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def draw_search_tree(ax, stats, label=str, title: str = "") -> None:
    """One stream as a tree: states where first entered, moves, backtracks (dashed arcs),
    dead ends (x), the final path (green), invalid moves (red), premature abandonments
    (orange: the live successor left untried, and the backtrack that left it)."""
    children: dict = defaultdict(list)
    parent: dict = {}
    root = stats.tree[0][0] if stats.tree else (stats.path[0] if stats.path else None)
    for a, b, kind in stats.tree:
        if kind in ("move", "invalid") and b not in parent and b != root:
            parent[b] = a
            children[a].append(b)
    for v, u in stats.abandoned_live:  # draw the untried live successors as ghost leaves
        if u not in parent and u != root:
            parent[u] = v
            children[v].append(u)
    pos: dict = {}
    next_x = [0]

    def place(node, depth):
        kids = children.get(node, [])
        for k in kids:
            place(k, depth + 1)
        if kids:
            pos[node] = (sum(pos[k][0] for k in kids) / len(kids), -depth)
        else:  # leaves side by side, wider labels further apart
            width = max(1.0, 0.16 * len(label(node)))
            pos[node] = (next_x[0] + width / 2, -depth)
            next_x[0] += width

    if root is None:
        ax.set_axis_off()
        ax.set_title(_wrap(title + "\n(no stream)"), fontsize=9)
        return
    place(root, 0)
    final = set(zip(stats.path, stats.path[1:]))
    invalid = {(a, b) for a, b, k in stats.tree if k == "invalid"}
    ghosts = {u for _, u in stats.abandoned_live}
    for child, par in parent.items():
        (x0, y0), (x1, y1) = pos[par], pos[child]
        if (par, child) in invalid:
            style = dict(color="tab:red", lw=1.6)
        elif (par, child) in final:
            style = dict(color="tab:green", lw=2.6)
        elif child in ghosts and child not in {b for _, b, _ in stats.tree}:
            style = dict(color="tab:orange", lw=1.0, ls=":")
        else:
            style = dict(color="0.55", lw=1.0)
        ax.plot([x0, x1], [y0, y1], zorder=1, **style)
    for a, b, kind in stats.tree:
        if kind == "invalid" and parent.get(b) != a and a in pos and b in pos:
            if a == b:  # an illegal move onto itself: a red ring
                ax.scatter(*pos[a], s=700, facecolors="none", edgecolors="tab:red", lw=1.2, zorder=2)
            else:       # an illegal move back to a state already drawn
                ax.annotate("", xy=pos[b], xytext=pos[a], zorder=2,
                            arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.2,
                                            connectionstyle="arc3,rad=0.35"))
        if kind in ("necessary", "premature", "invalid_back") and a in pos and b in pos:
            colour = {"necessary": "tab:blue", "premature": "tab:orange", "invalid_back": "tab:red"}[kind]
            ax.annotate("", xy=pos[b], xytext=pos[a], zorder=2,
                        arrowprops=dict(arrowstyle="->", color=colour, lw=1.0, ls="--",
                                        connectionstyle="arc3,rad=-0.35"))
    dead = set(stats.dead_ends)
    reached = {b for _, b, _ in stats.tree}
    for node, (x, y) in pos.items():
        entered = node == root or node in reached
        face = "white" if entered else "#fff3e0"
        edge = "tab:orange" if node in ghosts and not entered else "black"
        ax.text(x, y, label(node), ha="center", va="center", fontsize=7, zorder=4,
                bbox=dict(boxstyle="round,pad=0.3", fc=face, ec=edge, lw=1.1))
        if node in dead:
            ax.scatter([x], [y - 0.3], marker="x", color="tab:red", s=30, zorder=4)
    if len(pos) == 1:
        title += "\n(the stream made no move)"
    ax.set_title(_wrap(title), fontsize=9)
    ax.set_axis_off()
    # limits from the nodes themselves: the labels are text, which autoscaling ignores, so a
    # tree of one node (an empty stream) would otherwise sit at the edge of default limits
    xs, ys = [x for x, _ in pos.values()], [y for _, y in pos.values()]
    pad_x = 0.12 * (max(xs) - min(xs)) + 0.8
    pad_y = 0.12 * (max(ys) - min(ys)) + 0.6
    ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
    ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)


def _wrap(title: str, width: int = 60) -> str:
    """A panel title in lines of at most `width` characters (a long verdict would otherwise
    push the figure wider than its panels)."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def show_trace(panels: list[tuple[str, object]], path: Path, suptitle: str = "", label=str) -> list[Path]:
    """Search trees side by side (e.g. the teacher's stream and the model's)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (title, stats) in zip(axes[0], panels):
        if isinstance(stats, str):  # no stream to draw: show the text
            import textwrap

            ax.text(0.02, 0.98, textwrap.fill(stats, 60), va="top", ha="left", fontsize=7,
                    family="monospace", transform=ax.transAxes)
            ax.set_title(_wrap(title), fontsize=9)
            ax.set_axis_off()
        else:
            draw_search_tree(ax, stats, label=label, title=title)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], color="tab:green", lw=2.6, label="final path"),
              Line2D([], [], color="0.55", label="move"),
              Line2D([], [], color="tab:red", label="invalid move / backtrack"),
              Line2D([], [], color="tab:blue", ls="--", label="necessary backtrack"),
              Line2D([], [], color="tab:orange", ls="--", label="premature backtrack"),
              Line2D([], [], color="tab:orange", ls=":", label="live successor left untried"),
              Line2D([], [], marker="x", color="tab:red", ls="", label="dead end")]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=7, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save(fig, path)


def pass_at_k_curves(curves: dict[str, dict], path: Path, title: str = "",
                     paired: bool = False) -> list[Path]:
    """pass@k against k (log scale), one line per evaluation (`passk.pass_at_k_curve` of each,
    e.g. "SFT" and "SFT + RL"): RL that only sharpens lifts the left end and leaves the right
    end flat or lower; RL that adds capability lifts the right end too (Yue et al. 2025).
    `paired`: the curves come in (before, after) pairs, drawn in one color, after dashed."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    colors = plt.cm.tab10.colors
    for j, (label, curve) in enumerate(curves.items()):
        color = colors[(j // 2 if paired else j) % 10]
        ax.plot(curve["k"], curve["value"], marker="o", ms=3, lw=1.5, color=color,
                ls="--" if paired and j % 2 else "-", label=f"{label} (n={curve['n']})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per instance)")
    ax.set_ylabel("pass@k (unbiased, Chen et al. 2021)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)
