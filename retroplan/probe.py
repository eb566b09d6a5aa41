"""Linear probes: what a trained model's residual stream holds, layer by layer, before it commits.

`retroplan probe RUN --target arm|distance|live` reads the residual stream of the run's latest
checkpoint at chosen positions of held-out rows (teacher-forced: the suite's own rows, never the
model's generations), fits one linear probe per layer and reports how well each predicts a label
taken from the task's instances (the oracle; never from the model).

Activations. Layer 0 is the residual stream after the token embedding (the input of the first
block), layer k (1..n_layer) the residual stream after block k (before the final LayerNorm).
They are read with hooks on `model.blocks`; the model's forward is unchanged.

Targets (what a row gives: its positions and their labels):

- `arm` (pathstar, graph; every variant): one position per instance, the decision point = the
  position whose next-token prediction is the row's deciding token (`eval.deciding_positions`,
  docs/METRICS.md): for a forward plan the start node written after `=`, where the model
  predicts its first move (the position before it, `=`, only predicts the copied start); for
  the other variants where they first write a token the prompt does not fix (reverse: the
  copied goal; stream: the `s` of `at s`). Rows without a deciding token give no position.
  `arm-eq` reads the last prompt token (`=`) instead, where every variant has read the same
  prompt and nothing else (the position `arm` read before issue 20). Label: the index of the
  reference plan's first move among the start's successors in the order their edges appear in
  the prompt. On path-star the goal's arm is uniform and the edges are shuffled, so the labels
  are uniform over `degree` classes and chance is 1/degree; on `graph` the label is the index
  of the reference (shortest, ties: smallest label) first move, and only the majority baseline applies.
- `distance` (pathstar, graph; every variant): every node token of the written plan (the part
  after the last `;`, or the whole completion when there is none, nodes inside a `<T> .. </T>`
  span left out; `reverse` writes it goal-first), the node just written; label: its shortest
  distance to the goal d*(node) from the oracle. Linear regression, scored by R².
- `live` (pathstar, graph, countdown; the variants `stream` and `backward-stream`, whose streams
  are their own instance's search): every move (GO event, metrics.py) of the teacher's stream,
  at the move's last token before any `dead` / `goal` / `start` word (graph streams: the bare
  node entered; Countdown: the last token of the state a `try` or `go` printed), so the stream
  has not yet said what it found there; label: R(state entered) = 1 when the stream's target can
  still be reached from it (the task's `Walk`, the same oracle as the behaviour metrics).
  Backtracks and jumps give no position (their target is a state entered before). `corrupted`
  is refused: its stream belongs to another instance.

Rows whose position lies beyond the model's context are cut there; positions past it are dropped
and counted (`positions_beyond_context`). Mixtures are probed on their first component's rows
(kind 0), as eval does; `--limit N` takes the first N of them.

Probes. The instances that give positions are split at random (numpy `default_rng([seed, 0])`)
into probe-train (`TRAIN_SHARE`) and held-out; every position of an instance goes with it, so no
graph is seen on both sides. Features are standardized with the probe-train mean and standard
deviation (a constant feature becomes 0). Classification: multinomial logistic regression,
mean cross-entropy + `L2`/2 |W|², full-batch L-BFGS (strong Wolfe line search) from zero weights
for at most `LBFGS_ITERATIONS` iterations, in float64: no random initialisation, so the fit is a
function of the data. Regression: ridge, mean squared error + `L2` |w|², closed form. Per layer:

- `value`: held-out accuracy (share of held-out positions predicted right) or held-out R²
  (1 - SSE / the held-out labels' sum of squares about their own mean); `train_value` the same
  on the probe-train positions (a large gap: the probe memorises);
- `ci`: a 95% interval. Wilson over the held-out positions when every held-out instance gives
  one position (`arm`); otherwise a percentile bootstrap over held-out instances
  (`BOOTSTRAP_RESAMPLES` resamples of whole instances, `default_rng([seed, 2])`), because the
  positions of one instance are not independent;
- `baseline`: classification, the held-out accuracy of always answering the probe-train
  majority class (ties: the smallest label); regression, the held-out R² of always answering
  the probe-train mean (about 0);
- `control`, `control_ci`: the same probe fitted on the probe-train labels permuted at random
  (`default_rng([seed, 1])`, one permutation for every layer, so the class counts stay), scored
  on the true held-out labels: what the probe reaches from activations alone with no relation
  to the labels (near chance/the baseline; a control well above it means the probe memorises
  something that leaks). A layer's selectivity is value - control.

Everything is deterministic for a seed. `probe.json` records an `identity` (suite digest, step,
weights digest, target, split, limit, seed, probe settings, retroplan version); `probe_study`
reuses a probe.json only when its identity is what it would compute now.

Studies: a `[probe]` table in an experiment file (`PROBE_KEYS`; checked by
`check_probe_section`) asks `retroplan run` to call `probe_study`, which probes every run, draws
`plots.probe_by_layer` (one line per variant) and returns the report's table.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, plots
from .batching import collate
from .device import DEVICE_HELP, resolve_device
from .envs import digraph, get_task
from .errors import require, require_seed, setting
from .eval import deciding_positions
from .events import Event
from .fsutil import path_for, refuse_foreign_output, sha256_file, write_json
from .stats import mean_ci, wilson
from .traces import components
from .traces import digraphs as graph_grammar
from .traces.suite import Suite, open_suite
from .variants import VARIANT, names
from .version import __version__

TARGETS = ("arm", "distance", "live", "arm-eq")
GRAPH_TASKS = ("pathstar", "graph")
TARGET_TASKS = {"arm": GRAPH_TASKS, "distance": GRAPH_TASKS, "live": GRAPH_TASKS + ("countdown",),
                "arm-eq": GRAPH_TASKS}
REGRESSION_TARGETS = ("distance",)
TARGET_WHERE = {
    "arm": "the decision point (the position that predicts the deciding token: the start node after "
           "`=` for a forward plan); label: the first move's index among the start's successors",
    "arm-eq": "the last prompt token (`=`); label: the first move's index among the start's successors",
    "distance": "each node of the written plan (teacher-forced); label: its shortest distance to the goal",
    "live": "each move of the teacher's stream; label: the goal can still be reached from the state entered",
}
TARGET_SHORT = {"arm": "the first move, where it is predicted",
                "arm-eq": "the first move, at the last prompt token",
                "distance": "the distance to the goal, at each plan node",
                "live": "the goal still reachable, at each stream move"}

PROBE_KEYS = ("targets", "split", "limit", "seed")
TRAIN_SHARE = 0.5            # share of the instances the probes are fitted on
L2 = 1e-2                    # penalty on the standardized weights (logistic and ridge)
LBFGS_ITERATIONS = 100
BOOTSTRAP_RESAMPLES = 1000
MIN_INSTANCES = 4            # at least 2 on each side of the split


@dataclass
class ProbeConfig:
    target: str = setting("arm", "arm: the first move, where it is predicted (pathstar, graph; "
                                 "arm-eq: at the last prompt token `=`, one position earlier); "
                                 "distance: the plan node's distance to the goal (pathstar, graph); "
                                 "live: the goal is still reachable, at each move of a "
                                 f"{' / '.join(names('own_stream'))} run")
    split: str = setting("test", "the held-out split to probe on")
    limit: int = setting(0, "the first N instances of the split (0: every instance)")
    seed: int = setting(0, "seed of the probe-train / held-out split of instances, the shuffled "
                           "control and the bootstrap")
    device: str = setting("auto", DEVICE_HELP + " (changes no number beyond float rounding)")
    batch_size: int = setting(32, "rows run through the model side by side (changes no number beyond float "
                                 "rounding)")

    def validate(self) -> None:
        require(self.target in TARGETS,
                f"unknown probe target {self.target!r}; allowed: {', '.join(TARGETS)}.")
        require(self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                f"probe device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
        require(isinstance(self.split, str) and self.split != "",
                f"probe split must be a split name, got {self.split!r}.")
        require_seed(self.seed, "probe seed")
        for name in ("limit", "seed"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"probe {name} must be a non-negative integer, got {value!r}.")
        require(isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
                and self.batch_size >= 1,
                f"probe batch_size must be a positive integer, got {self.batch_size!r}.")


def target_problem(task_name: str, variant: str, target: str) -> str | None:
    """Why `target` cannot be probed on a `task_name` run that writes `variant` (a mixture: its
    first component), as the end of a sentence; None when it can."""
    if target not in TARGETS:
        return f"{target!r} is not a probe target (allowed: {', '.join(TARGETS)})"
    if task_name not in TARGET_TASKS[target]:
        return (f"{task_name} has no {target} target (allowed there: "
                f"{', '.join(t for t in TARGETS if task_name in TARGET_TASKS[t])})")
    first = components(variant)[0]
    if target == "live" and not (first in VARIANT and VARIANT[first].own_stream):
        return (f"live needs a stream of the instance's own search ({', '.join(names('own_stream'))}), "
                f"and {variant} writes none")
    return None


# --------------------------------------------------------------------------- positions and labels


@dataclass
class Positions:
    """Where to read the residual stream and what the label is there: one entry per position."""

    rows: np.ndarray       # suite row
    tokens: np.ndarray     # token index within the row
    instance: np.ndarray   # instance position in the split (the unit of the probe split)
    labels: np.ndarray     # int64 class or float64 value

    def take(self, keep: np.ndarray) -> Positions:
        return Positions(self.rows[keep], self.tokens[keep], self.instance[keep], self.labels[keep])


def target_positions(suite: Suite, split, rows: np.ndarray, target: str) -> Positions:
    """The positions of `rows` that `target` reads and their labels, from the instances."""
    collect = {"arm": _arm_positions, "arm-eq": _arm_eq_positions, "distance": _distance_positions,
               "live": _live_positions}[target]
    out_rows, out_tokens, out_inst, out_labels = [], [], [], []
    for r in rows:
        r = int(r)
        i = int(split.instance[r])
        for token, label in collect(suite, split, r, i):
            out_rows.append(r)
            out_tokens.append(token)
            out_inst.append(i)
            out_labels.append(label)
    dtype = np.float64 if target in REGRESSION_TARGETS else np.int64
    return Positions(np.asarray(out_rows, dtype=np.int64), np.asarray(out_tokens, dtype=np.int64),
                     np.asarray(out_inst, dtype=np.int64), np.asarray(out_labels, dtype=dtype))


def _arm_label(suite: Suite, split, r: int, i: int) -> int:
    """The index of the reference plan's first move among the start's successors, in the order
    the prompt lists them: the edge list's order, or the adjacency lists' (trace option
    prompt = "adjacency", traces/digraphs.py)."""
    start = int(split.instances["start"][i])
    successors = graph_grammar.prompt_successors(split.prompt(r), len(suite.vocab))[start]
    return successors.index(int(split.instances["plan"][i, 1]))


def _arm_positions(suite: Suite, split, r: int, i: int):
    position = int(deciding_positions(suite, split, np.array([r]))[0])
    if position >= 0:
        yield position, _arm_label(suite, split, r, i)


def _arm_eq_positions(suite: Suite, split, r: int, i: int):
    yield int(split.prompt_len[r]) - 1, _arm_label(suite, split, r, i)


def _distance_positions(suite: Suite, split, r: int, i: int):
    g = graph_grammar
    dist = digraph.distances_to_goal(np.ascontiguousarray(split.instances["edges"][i]),
                                     int(split.instances["goal"][i]), suite.config.num_nodes)
    completion = split.completion(r).tolist()
    end = completion.index(g.EOS) if g.EOS in completion else len(completion)
    semis = [j for j in range(end) if completion[j] == g.SEMI]
    begin = semis[-1] + 1 if semis else 0
    prompt_len = int(split.prompt_len[r])
    inside_span = False
    for j in range(begin, end):
        token = completion[j]
        if token == g.T_OPEN:
            inside_span = True
        elif token == g.T_CLOSE:
            inside_span = False
        elif not inside_span and token >= g.NODE0:
            yield prompt_len + j, float(dist[token - g.NODE0])


OUTCOME_WORDS = ("dead", "goal", "start")  # a stream's verdict on the state it stands on


def _live_positions(suite: Suite, split, r: int, i: int):
    parsed = suite.grammar.parse(suite.variant, split.completion(r), suite.vocab)
    walk = suite.task.Walk(suite.config, split.instances, i, backward=parsed.backward)
    row = split.row(r)
    prompt_len = int(split.prompt_len[r])
    outcome_ids = {suite.vocab.ids[w] for w in OUTCOME_WORDS if w in suite.vocab.ids}
    current = walk.root
    for k, event in enumerate(parsed.events):
        kind, payload = event[0], event[1]
        written = event[2] if len(event) > 2 else True
        if kind == Event.GO:
            state, _ = walk.go(current, payload)
            if state is None:
                continue
            current = state
            if written and k < len(parsed.event_ends):
                # the move's last token, before a `dead` / `goal` its event may end with
                # (Countdown: `try 82 - 33 = 49 : 49 dead`): the position where it has not
                # yet said what it found
                position = prompt_len + parsed.event_ends[k] - 1
                while position > prompt_len and int(row[position]) in outcome_ids:
                    position -= 1
                yield position, int(walk.live(current))
        elif kind in (Event.BACK, Event.JUMP):
            target = walk.back_target(payload)
            if target is not None:
                current = target


# --------------------------------------------------------------------------- activations


@torch.no_grad()
def collect_activations(model, split, positions: Positions, pad_id: int, batch_size: int,
                        device, progress: bool = False) -> np.ndarray:
    """The residual stream at every position, (n_layer + 1, positions, n_embd) float32: layer 0
    after the embedding (the first block's input), layer k after block k. Rows are teacher-forced
    (right-padded, so padding never reaches an earlier position under the causal mask)."""
    n_layers = len(model.blocks) + 1
    width = model.cfg.n_embd
    out = np.zeros((n_layers, len(positions.rows), width), dtype=np.float32)
    unique_rows = np.unique(positions.rows)
    where: dict = {}
    captured: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]

    def keep(layer, x):
        captured[layer].append(x[where["batch"], where["token"]].float().cpu())

    handles = [model.blocks[0].register_forward_pre_hook(lambda module, args: keep(0, args[0]))]
    for k, block in enumerate(model.blocks, 1):
        handles.append(block.register_forward_hook(
            lambda module, args, output, k=k: keep(k, output)))
    bar = tqdm(total=len(unique_rows), desc="probe activations", unit="row",
               disable=None if progress else True, leave=False)
    try:
        for lo in range(0, len(unique_rows), batch_size):
            chunk = unique_rows[lo: lo + batch_size]
            x, _ = collate(split, chunk, pad_id, [], model.cfg.block_size + 1)
            slot = {int(r): b for b, r in enumerate(chunk)}
            picked = np.flatnonzero(np.isin(positions.rows, chunk))  # the positions in these rows
            where["batch"] = torch.tensor([slot[int(r)] for r in positions.rows[picked]], device=device)
            where["token"] = torch.from_numpy(positions.tokens[picked]).to(device)
            for layer in captured:
                layer.clear()
            model(x.to(device))
            for layer in range(n_layers):
                out[layer, picked] = captured[layer][0].numpy()
            bar.update(len(chunk))
    finally:
        for h in handles:
            h.remove()
        bar.close()
    return out


# --------------------------------------------------------------------------- probes


def standardize(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays (positions, features) in float64, centred and scaled by the probe-train mean
    and standard deviation; a (numerically) constant feature becomes 0 on both sides."""
    train = train.astype(np.float64)
    other = other.astype(np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    constant = std <= 1e-8 * (np.abs(mean) + 1.0)
    std = np.where(constant, 1.0, std)
    train_z, other_z = (train - mean) / std, (other - mean) / std
    train_z[:, constant] = 0.0
    other_z[:, constant] = 0.0
    return train_z, other_z


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2,
                 iterations: int = LBFGS_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardized `x` (n, d), labels `y` in 0..n_classes-1:
    (weights (d, n_classes), bias (n_classes,)), from zero by full-batch L-BFGS in float64."""
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    ys = torch.from_numpy(np.asarray(y, dtype=np.int64))
    weights = torch.zeros(xs.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(xs @ weights + bias, ys) + 0.5 * l2 * (weights ** 2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only wait for each other (10-50x slower)
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    return weights.detach().numpy(), bias.detach().numpy()


def predict_logistic(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.argmax(x @ weights + bias, axis=1)


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float]:
    """Ridge regression on standardized (centred) `x`: (weights, intercept) minimising
    mean squared error + l2 |w|², in closed form."""
    n, d = x.shape
    intercept = float(np.mean(y))
    gram = x.T @ x / n + l2 * np.eye(d)
    weights = np.linalg.solve(gram, x.T @ (np.asarray(y, dtype=np.float64) - intercept) / n)
    return weights, intercept


def r2_score(y: np.ndarray, predicted: np.ndarray) -> float | None:
    """1 - SSE / (sum of squares of y about its mean); None when y is constant."""
    y = np.asarray(y, dtype=np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    if total <= 0:
        return None
    return 1.0 - float(((y - predicted) ** 2).sum()) / total


def split_instances(instances: np.ndarray, seed: int) -> np.ndarray:
    """Per position, True when its instance fell in the probe-train share (a seeded draw of
    whole instances, so every position of an instance lands on the same side)."""
    distinct = np.unique(instances)
    rng = np.random.default_rng([seed, 0])
    chosen = rng.permutation(distinct.size)[: int(round(TRAIN_SHARE * distinct.size))]
    return np.isin(instances, distinct[chosen])


def _instance_bootstrap(per_instance: np.ndarray, statistic, seed: int) -> tuple[float, float]:
    """95% percentile interval of `statistic` over resamples of whole instances. `per_instance`
    (instances, k) holds sums that add up over instances; `statistic` maps summed rows (R, k) to
    R values (NaN where undefined, left out)."""
    n = per_instance.shape[0]
    rng = np.random.default_rng([seed, 2])
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = statistic(weights @ per_instance)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def _accuracy_with_interval(right: np.ndarray, groups: np.ndarray, seed: int) -> dict:
    value = float(right.mean())
    distinct, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.max() == 1:
        low, high = wilson(int(right.sum()), right.size)
    else:
        per = np.zeros((distinct.size, 2))
        np.add.at(per[:, 0], inverse, right.astype(np.float64))
        np.add.at(per[:, 1], inverse, 1.0)
        low, high = _instance_bootstrap(per, lambda s: s[:, 0] / s[:, 1], seed)
    return {"value": value, "ci": [low, high]}


def _r2_with_interval(y: np.ndarray, predicted: np.ndarray, groups: np.ndarray, seed: int) -> dict:
    distinct, inverse = np.unique(groups, return_inverse=True)
    per = np.zeros((distinct.size, 4))
    for column, values in enumerate(((y - predicted) ** 2, y, y ** 2, np.ones_like(y))):
        np.add.at(per[:, column], inverse, values)

    def r2(s):
        total = s[:, 2] - s[:, 1] ** 2 / s[:, 3]
        return np.where(total > 1e-12, 1.0 - s[:, 0] / total, np.nan)

    low, high = _instance_bootstrap(per, r2, seed)
    return {"value": r2_score(y, predicted), "ci": [low, high]}


def probe_layers(features: np.ndarray, labels: np.ndarray, instances: np.ndarray, regression: bool,
                 seed: int = 0) -> dict:
    """Fit a probe per layer of `features` (layers, positions, width) on the probe-train
    instances and score it on the held-out ones; also the baseline and the shuffled-label
    control (see the module docstring). `instances` names each position's instance."""
    n_distinct = np.unique(instances).size
    require(n_distinct >= MIN_INSTANCES,
            f"a probe needs positions from at least {MIN_INSTANCES} instances (two to fit, two to "
            f"score), got {n_distinct}; probe more instances (a larger split or --limit).")
    train = split_instances(instances, seed)
    held = ~train
    y_train, y_held = labels[train], labels[held]
    shuffled = np.random.default_rng([seed, 1]).permutation(y_train)
    summary = {"metric": "r2" if regression else "accuracy",
               "n_train_instances": int(np.unique(instances[train]).size),
               "n_heldout_instances": int(np.unique(instances[held]).size),
               "n_train_positions": int(train.sum()), "n_heldout_positions": int(held.sum())}
    if regression:
        baseline = r2_score(y_held, np.full(y_held.shape, y_train.mean()))
        summary["baseline_kind"] = "R² of always answering the probe-train mean"
        summary["label_mean"] = float(labels.mean())
    else:
        n_classes = int(labels.max()) + 1
        majority = int(np.bincount(y_train, minlength=n_classes).argmax())
        baseline = float((y_held == majority).mean())
        summary["baseline_kind"] = f"accuracy of always answering the probe-train majority class ({majority})"
        summary["classes"] = n_classes
        summary["heldout_label_counts"] = np.bincount(y_held, minlength=n_classes).tolist()
    one_each = np.unique(instances[held], return_counts=True)[1].max() == 1
    summary["interval"] = (
        "95% Wilson interval over held-out positions (one per instance)" if one_each and not regression
        else f"95% percentile bootstrap over held-out instances ({BOOTSTRAP_RESAMPLES} resamples)")
    layers = []
    for layer in range(features.shape[0]):
        x_train, x_held = standardize(features[layer][train], features[layer][held])
        entry = {"layer": layer, "name": "embedding" if layer == 0 else f"block {layer}",
                 "baseline": baseline}
        if regression:
            w, b = fit_ridge(x_train, y_train)
            scored = _r2_with_interval(y_held, x_held @ w + b, instances[held], seed)
            entry["train_value"] = r2_score(y_train, x_train @ w + b)
            w_c, b_c = fit_ridge(x_train, shuffled)
            control = _r2_with_interval(y_held, x_held @ w_c + b_c, instances[held], seed)
        else:
            w, b = fit_logistic(x_train, y_train, n_classes)
            right = predict_logistic(x_held, w, b) == y_held
            scored = _accuracy_with_interval(right, instances[held], seed)
            entry["train_value"] = float((predict_logistic(x_train, w, b) == y_train).mean())
            w_c, b_c = fit_logistic(x_train, shuffled, n_classes)
            control = _accuracy_with_interval(predict_logistic(x_held, w_c, b_c) == y_held,
                                              instances[held], seed)
        entry.update(scored)
        entry["control"], entry["control_ci"] = control["value"], control["ci"]
        layers.append(entry)
    summary["layers"] = layers
    return summary


# --------------------------------------------------------------------------- one run


def _settings() -> dict:
    return {"train_share": TRAIN_SHARE, "l2": L2, "lbfgs_iterations": LBFGS_ITERATIONS,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES}


def identity(run_dir: Path, suite_path: Path, cfg: ProbeConfig, step: int) -> dict:
    """Everything a probe.json's numbers depend on (not the device or batch size)."""
    weights = Path(run_dir) / "checkpoints" / checkpoint.step_dir_name(step) / "model.safetensors"
    return {"suite_meta_sha256": sha256_file(Path(suite_path) / "meta.json"), "step": int(step),
            "model_sha256": sha256_file(weights), "target": cfg.target, "split": cfg.split,
            "limit": cfg.limit, "seed": cfg.seed, "probe": _settings(),
            "retroplan_version": __version__}


def default_out(run_dir: Path, cfg: ProbeConfig) -> Path:
    return Path(run_dir) / f"probe-{cfg.target}-{cfg.split}"


def probe_current(out: Path, expected: dict) -> dict | None:
    """The probe.json in `out` when its identity is `expected`, else None."""
    path = Path(out) / "probe.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return result if isinstance(result, dict) and result.get("identity") == expected else None


def _expected_identity(run_dir: Path, cfg: ProbeConfig) -> dict | None:
    """The identity a probe of the run's latest checkpoint would record, or None without one."""
    run = checkpoint.read_run(run_dir)
    latest = checkpoint.latest_dir(run_dir)
    if latest is None or not isinstance(run.get("suite"), str):
        return None
    step = checkpoint.read_state(latest)["step"]
    return identity(run_dir, checkpoint.run_suite(run_dir, run), cfg, step)


def probe_run(run_dir: str | os.PathLike, cfg: ProbeConfig, out: str | os.PathLike | None = None,
              progress: bool = True, reuse: bool = False) -> dict:
    """Probe the run's latest checkpoint on its own suite; writes OUT/probe.json (default
    RUN/probe-TARGET-SPLIT) and returns it, plus `probe_dir` (where it went) and `reused`. With
    `reuse`, a probe.json whose identity is what this probe would record is returned as it is."""
    cfg.validate()
    run_dir = Path(run_dir)
    out = Path(out) if out else default_out(run_dir, cfg)
    refuse_foreign_output(out, run_dir, "probe")
    if reuse:
        expected = _expected_identity(run_dir, cfg)
        found = probe_current(out, expected) if expected is not None else None
        if found is not None:
            return dict(found, probe_dir=str(out), reused=True)
    device = resolve_device(cfg.device)
    model, run, step = checkpoint.load_model(run_dir, device)
    suite = open_suite(checkpoint.run_suite(run_dir, run))
    checkpoint.check_suite(run_dir, run, suite, "probe the run on")
    require(suite.vocab.to_json() == run["vocab"],
            f"the checkpoint in {run_dir} was trained with a different vocabulary than suite "
            f"{suite.path} uses.")
    task = suite.meta["task"]
    problem = target_problem(task, suite.name, cfg.target)
    require(problem is None, f"cannot probe {cfg.target} on run {run_dir}: {problem}.")
    require(cfg.split in suite.splits,
            f"suite {suite.path} has no split {cfg.split!r}; probe one of: {', '.join(suite.splits)}.")
    split = suite.split(cfg.split)
    rows = np.flatnonzero(split.kind == 0)
    if cfg.limit:
        rows = rows[: cfg.limit]
    positions = target_positions(suite, split, rows, cfg.target)
    context = model.cfg.block_size
    inside = positions.tokens < context
    beyond = int((~inside).sum())
    positions = positions.take(inside)
    require(len(positions.rows) > 0,
            f"split {cfg.split} of {suite.path} gives no {cfg.target} positions within the model's "
            f"context of {context} tokens.")
    features = collect_activations(model, split, positions, suite.vocab.pad_id, cfg.batch_size,
                                   device, progress)
    regression = cfg.target in REGRESSION_TARGETS
    result = probe_layers(features, positions.labels, positions.instance, regression, cfg.seed)
    # the arm's chance is the task's chance of a forward guess (path-star: 1/degree; graph: none)
    chance = suite.task.chance(suite.config) if cfg.target in ("arm", "arm-eq") else None
    result.update({"target": cfg.target, "where": TARGET_WHERE[cfg.target], "chance": chance,
                   "task": task, "variant": suite.name, "run": path_for(out, run_dir),
                   "suite": path_for(out, suite.path),
                   "split": cfg.split, "limit": cfg.limit, "seed": cfg.seed, "step": step,
                   "n_layer": len(model.blocks), "n_instances": int(np.unique(positions.instance).size),
                   "positions_beyond_context": beyond, "settings": _settings(),
                   "identity": identity(run_dir, suite.path, cfg, step)})
    write_json(out / "probe.json", result)
    return dict(result, probe_dir=str(out), reused=False)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(result: dict) -> str:
    """probe.json as a readable per-layer table."""
    metric = "R²" if result["metric"] == "r2" else "accuracy"
    chance = result.get("chance")
    lines = [f"{result['task']}/{result['variant']} probe {result['target']} on {result['split']} "
             f"(step {result['step']}): {result['where']}",
             f"  {result['n_train_instances']} probe-train / {result['n_heldout_instances']} held-out "
             f"instances ({result['n_train_positions']} / {result['n_heldout_positions']} positions); "
             f"interval: {result['interval']}"
             + (f"; chance {chance:.3f}" if chance is not None else ""),
             f"  {'layer':<16} {'held-out ' + metric:>26} {'probe-train':>12} {'baseline':>9} "
             f"{'shuffled control':>26}"]

    def interval(ci):
        low, high = ci
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return "[n/a]"
        return f"[{low:.3f}, {high:.3f}]"

    for entry in result["layers"]:
        label = f"{entry['layer']} ({entry['name']})"
        lines.append(f"  {label:<16} {_number(entry['value']) + ' ' + interval(entry['ci']):>26} "
                     f"{_number(entry['train_value']):>12} {_number(entry['baseline']):>9} "
                     f"{_number(entry['control']) + ' ' + interval(entry['control_ci']):>26}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- studies


def check_probe_section(section: dict, task: str, variants: list[str]) -> dict:
    """Validate an experiment's `[probe]` table for a study of `variants` on `task`; return the
    settings with defaults filled in: targets (default `arm` on the graph tasks, `live` on
    countdown), split (`test`), limit (0: all), seed (0). A target that only some variants can
    give (`live`: the stream variants) is probed on those; one that none can give is refused."""
    require(isinstance(section, dict), f"[probe] must be a table, got {section!r}.")
    unknown = sorted(set(section) - set(PROBE_KEYS))
    require(not unknown, f"unknown probe setting {unknown[0] if unknown else ''!r}; allowed: "
            f"{', '.join(PROBE_KEYS)}.")
    task_module = get_task(task)
    default_target = "arm" if task in GRAPH_TASKS else "live"
    targets = section.get("targets", [default_target])
    require(isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
            and len(set(targets)) == len(targets),
            f"probe targets must be a non-empty list of distinct names among {', '.join(TARGETS)}, "
            f"got {targets!r}.")
    for target in targets:
        require(target in TARGETS, f"unknown probe target {target!r}; allowed: {', '.join(TARGETS)}.")
        problems = [target_problem(task, v, target) for v in variants]
        require(any(p is None for p in problems),
                f"probe target {target} fits no variant of this study: {problems[0]}.")
    split = section.get("split", "test")
    require(isinstance(split, str) and split in task_module.SPLITS,
            f"probe split must be one of {', '.join(task_module.SPLITS)}, got {split!r}.")
    settings = {"targets": list(targets), "split": split}
    for key in ("limit", "seed"):
        value = section.get(key, 0)
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"probe {key} must be a non-negative integer, got {value!r}.")
        settings[key] = value
    return settings


def _cell(values: list[float | None], own_ci: list | None) -> str:
    """Mean over seeds [95% t-interval]; one seed: the value [its own interval]."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        low, high = own_ci if own_ci else (None, None)
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return f"{values[0]:.3f}"
        return f"{values[0]:.3f} [{low:.2f}, {high:.2f}]"
    m, low, high = mean_ci(values)
    return f"{m:.3f} [{low:.2f}, {high:.2f}]"


def probe_study(settings: dict, run_dirs: dict[str, dict[int, Path]], out: Path, title: str,
                progress: bool, name: str = "probe", heading: str = "Probes") -> tuple[list[Path], list[str]]:
    """Probe every run of a study (variant -> seed -> run folder) for every target of
    `settings` (from `check_probe_section`), reusing each RUN/probe-TARGET-SPLIT/probe.json whose
    identity is current. Writes one figure per target, OUT/NAME_TARGET.png and .svg
    (`plots.probe_by_layer`: one line per variant, mean over seeds), and returns (the figure
    paths, the report's markdown: a `## Probes` section with a variant x layer table per
    target). Variants that cannot give a target (`live` without a stream) are named, not probed."""
    out = Path(out)
    figures: list[Path] = []
    lines = [f"## {heading}", "",
             "Linear probes of the residual stream (layer 0: after the embedding; layer k: after "
             "block k), fitted on half of the held-out instances and scored on the other half "
             "(docs/METRICS.md, Probes). Cells: mean over seeds [95% t-interval], or with one seed "
             "the run's value [its 95% interval]; \"baseline\": the majority class (accuracy) or "
             "the training mean (R²); \"control\": the best layer of the same probe fitted on "
             "shuffled labels.", ""]
    for target in settings["targets"]:
        results: dict[str, list[dict]] = {}
        skipped: list[str] = []
        for variant, by_seed in run_dirs.items():
            for _, run_dir in sorted(by_seed.items()):
                run = checkpoint.read_run(Path(run_dir))
                problem = target_problem(str(run.get("task")), str(run.get("variant", variant)), target)
                if problem is not None:
                    if variant not in skipped:
                        skipped.append(variant)
                    continue
                cfg = ProbeConfig(target=target, split=settings["split"], limit=settings["limit"],
                                  seed=settings["seed"])
                result = probe_run(run_dir, cfg, progress=progress, reuse=True)
                scored = [e for e in result["layers"] if e["value"] is not None]
                if progress and scored:
                    best = max(scored, key=lambda e: e["value"])
                    print(f"      probe {target} {Path(run_dir).name}: best layer {best['layer']} "
                          f"{result['metric']} {best['value']:.3f} (baseline {_number(best['baseline'])})"
                          f"{', reused' if result['reused'] else ''}", flush=True)
                results.setdefault(variant, []).append(result)
        if not results:
            continue
        first = next(iter(results.values()))[0]
        metric = "R²" if first["metric"] == "r2" else "accuracy"
        chances = {r.get("chance") for rs in results.values() for r in rs}
        chance = chances.pop() if len(chances) == 1 else None  # one task config: one chance
        figures += plots.probe_by_layer(
            {v: [r["layers"] for r in rs] for v, rs in results.items()}, out / f"{name}_{target}",
            title=f"{title}: probe `{target}` ({TARGET_SHORT[target]})",
            ylabel=f"held-out probe {metric}", chance=chance,
            baseline_label="baseline: the training mean" if metric == "R²" else "baseline: majority class")
        n_layers = max(len(r["layers"]) for rs in results.values() for r in rs)
        lines += [f"### Probe `{target}`: {TARGET_SHORT[target]} ({metric})", "",
                  f"Positions and labels: {TARGET_WHERE[target]}.", ""]
        header = ["variant", "seeds", "held-out instances"] + [
            "layer 0 (embedding)" if k == 0 else f"layer {k}" for k in range(n_layers)] + [
            "baseline", "control (max over layers)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant, rs in results.items():
            cells = [variant, str(len(rs)), "/".join(str(r["n_heldout_instances"]) for r in rs)]
            for k in range(n_layers):
                at = [r["layers"][k] for r in rs if k < len(r["layers"])]
                cells.append(_cell([e["value"] for e in at], at[0]["ci"] if len(at) == 1 else None)
                             if at else "–")
            cells.append(_cell([r["layers"][0]["baseline"] for r in rs], None))
            controls = [max((e["control"] for e in r["layers"] if e["control"] is not None),
                            default=None) for r in rs]
            cells.append(_cell(controls, None))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![{name}_{target}]({name}_{target}.png)"]
        if chance is not None:
            lines += ["", f"Chance (1/degree): {chance:.3f}."]
        if skipped:
            lines += ["", f"Not probed for {target}: {', '.join(skipped)} "
                      f"({target_problem(first['task'], skipped[0], target)})."]
        lines.append("")
    return figures, lines
