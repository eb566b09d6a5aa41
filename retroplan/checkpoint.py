"""Checkpoints: safetensors tensors + JSON, never pickle.

    RUN/run.json                         what was trained: suite, model and train configs
    RUN/checkpoints/step-000500/         model.safetensors, optimizer.safetensors, state.json
    RUN/checkpoints/latest.json          which step folder is current (written last)

A step folder is built under a temporary name and renamed; `latest.json` is replaced
atomically after it, so a kill at any moment leaves the previous checkpoint current (before
a run's first step folder it is written as `{"step": 0, "dir": null}`: no checkpoint yet). The
`KEEP` newest step folders stay on disk, and every step the run asked to keep
(`TrainConfig.keep_steps`); `load_model(run, step=N)` loads one of those.

state.json names the sha256 of the step folder's two safetensors files (`files`); loading
checks them, so a flipped bit in the weights is an error, not a silently different model.
Checkpoints written before the digests existed have no `files` and load unchecked. state.json
also names the run it belongs to (`run_identity`, a digest of run.json's lasting fields), so a
step folder copied in from another run is refused (`check_owner`), not evaluated as this one's.
`check_suite` compares a run's recorded suite digest (`suite_meta_sha256`) with a suite.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError, require
from .fsutil import atomic_dir, path_from, sha256_file, write_json
from .models import GPT, GPTConfig

KEEP = 2  # step folders kept on disk


def _read_json(path: Path, what: str) -> dict:
    require(path.is_file(), f"{what} {path} is missing.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{what} {path} is not valid JSON (corrupt).") from None
    require(isinstance(data, dict), f"{what} {path} is not a JSON object (corrupt).")
    return data


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    require(path.is_file(), f"checkpoint file {path} is missing.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint file {path} cannot be read ({exc}); it is corrupt.") from None


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:  # an I/O failure (disk full) reported by the Rust writer
        raise OSError(str(exc).removeprefix("Error while serializing: ")) from None


TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")


# run.json's fields that make a run itself and never change while it grows (`train` less the
# settings a resume may change: where it runs, and how many steps; and less the settings that
# name the model's size, which `model` holds as built: a run.json from before they were recorded
# as built says `preset` and 0s for the same model)
_IDENTITY_FIELDS = ("suite_meta_sha256", "task", "variant", "task_config", "vocab", "model", "long_examples")
_GROWING_SETTINGS = ("steps", "device", "compile", "threads", "tensorboard",
                     "preset", "n_layer", "n_head", "n_embd")


def run_identity(run: dict) -> str:
    """The sha256 of what makes the run with run.json `run` itself; every checkpoint it
    writes records it in state.json."""
    fields = {key: run.get(key) for key in _IDENTITY_FIELDS}
    train = run.get("train") if isinstance(run.get("train"), dict) else {}
    fields["train"] = {k: v for k, v in train.items() if k not in _GROWING_SETTINGS}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_owner(run_dir: Path, run: dict, ckpt: Path, state: dict) -> None:
    """Refuse a step folder whose state.json names another run than `run` (run_dir's
    run.json); checkpoints written before the field existed have none and are not checked."""
    owner = state.get("run_identity")
    if owner is None:
        return
    mine = run_identity(run)
    require(owner == mine,
            f"checkpoint {ckpt} belongs to another run than {run_dir} (its state.json names run "
            f"{str(owner)[:12]}..., this run.json is {mine[:12]}...): it was copied in from elsewhere; "
            "remove it, or use it in the run it came from.")


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict, keep=()) -> None:
    """Write step folder `step`, make it current, and remove older step folders except the
    `KEEP` newest and those of the steps in `keep`."""
    ckpts = run_dir / "checkpoints"
    name = step_dir_name(step)
    target = ckpts / name
    pointer = ckpts / "latest.json"
    if not pointer.exists():
        # A run's first step folder must never stand without a pointer: a kill between its
        # rename and latest.json would look like a run whose pointer was deleted, which resume
        # refuses. A pointer to no folder says "no checkpoint yet": resume starts at step 0.
        ckpts.mkdir(parents=True, exist_ok=True)
        write_json(pointer, {"step": 0, "dir": None})
    if target.exists():  # a previous run was killed after writing it but before latest.json
        shutil.rmtree(target)
    with atomic_dir(target) as tmp:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
                   if k != "head.weight"}  # tied to tok_emb.weight
        _save_tensors(weights, tmp / "model.safetensors")
        opt = optimizer.state_dict()
        tensors, groups = {}, opt["param_groups"]
        for pid, st in opt["state"].items():
            for key, value in st.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"{pid}.{key}"] = t.detach().to("cpu").contiguous()
        tensors["torch_rng_state"] = torch.get_rng_state()
        _save_tensors(tensors, tmp / "optimizer.safetensors")
        files = {name: sha256_file(tmp / name) for name in TENSOR_FILES}
        write_json(tmp / "state.json", dict(state, step=step, param_groups=groups, files=files,
                                            run_identity=run_identity(read_run(run_dir))))
    write_json(ckpts / "latest.json", {"step": step, "dir": name})
    kept = {step_dir_name(int(k)) for k in keep}
    for old in sorted(ckpts.glob("step-*"))[:-KEEP]:
        if old.name != name and old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)


def latest_dir(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    latest = _read_json(pointer, "checkpoint pointer")
    name = latest.get("dir")
    if name is None and latest.get("step") == 0:  # written before the first step folder
        return None
    require(isinstance(name, str) and name.startswith("step-") and "/" not in name,
            f"checkpoint pointer {pointer} is corrupt.")
    return run_dir / "checkpoints" / name


def read_run(run_dir: Path) -> dict:
    require(run_dir.is_dir(), f"run folder {run_dir} does not exist.")
    return _read_json(run_dir / "run.json", "run description")


def run_suite(run_dir: Path, run: dict) -> Path:
    """The suite a run was trained on (run.json stores it relative to the run folder)."""
    require(isinstance(run.get("suite"), str), f"{run_dir}/run.json names no suite (corrupt).")
    return path_from(run_dir, run["suite"])


def available_steps(run_dir: Path) -> list[int]:
    """The steps of the complete step folders on disk (those with a state.json), ascending."""
    steps = []
    for folder in (run_dir / "checkpoints").glob("step-*"):
        digits = folder.name[len("step-"):]
        if digits.isdigit() and (folder / "state.json").is_file():
            steps.append(int(digits))
    return sorted(steps)


def load_model(run_dir: Path, device: str = "cpu", step: int | None = None) -> tuple[GPT, dict, int]:
    """A checkpoint's model (eval mode), the run description and its step: the latest, or
    the step folder of `step` (one the run kept, see `TrainConfig.keep_steps`)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if step is None:
        ckpt = latest_dir(run_dir)
        require(ckpt is not None, f"run {run_dir} has no checkpoint yet.")
    else:
        ckpt = run_dir / "checkpoints" / step_dir_name(int(step))
        have = available_steps(run_dir)
        require(int(step) in have,
                f"run {run_dir} has no checkpoint at step {step}; the steps it kept are: "
                f"{', '.join(map(str, have)) or 'none'}.")
    try:
        cfg = GPTConfig(**run["model"])
    except (KeyError, TypeError):
        raise UserError(f"{run_dir}/run.json has no valid model config (corrupt).") from None
    model = GPT(cfg)
    state = read_state(ckpt)
    check_owner(run_dir, run, ckpt, state)
    _load_weights(model, ckpt)  # first: a file of another shape is named as such
    verify_files(ckpt, state, ("model.safetensors",))
    return model.to(device).eval(), run, state["step"]


def read_state(ckpt: Path) -> dict:
    """A step folder's state.json, with a valid step and, where it has them, valid digests."""
    path = ckpt / "state.json"
    state = _read_json(path, "checkpoint state")
    step = state.get("step")
    require(isinstance(step, int) and not isinstance(step, bool) and step >= 0,
            f"checkpoint state {path} has no valid step (it says {step!r}); it is corrupt.")
    files = state.get("files")
    require(files is None or (isinstance(files, dict)
                              and all(isinstance(files.get(n), str) for n in TENSOR_FILES)),
            f"checkpoint state {path} has no valid file digests; it is corrupt.")
    return state


def verify_files(ckpt: Path, state: dict, names=TENSOR_FILES) -> None:
    """The files `names` of a step folder match the digests its state.json names (a
    checkpoint from before the digests has none and is not checked)."""
    files = state.get("files")
    if files is None:
        return
    for name in names:
        require((ckpt / name).is_file(), f"checkpoint file {ckpt / name} is missing.")
        require(sha256_file(ckpt / name) == files[name],
                f"checkpoint file {ckpt / name} does not match its checksum in state.json; it is "
                "corrupt (or was changed).")


def check_suite(run_dir: Path, run: dict, suite, action: str = "use") -> None:
    """Refuse `suite` (a `traces.suite.Suite`) unless its meta.json is the one the run in
    `run_dir` (its run.json: `run`) was trained on, by the digest run.json recorded; `action`
    ("resume with", "evaluate the run on", ...) is what the message tells the user to do
    with the right suite."""
    recorded = run.get("suite_meta_sha256")
    if recorded is None:  # a run.json without it: nothing to compare
        return
    actual = sha256_file(suite.path / "meta.json")
    require(actual == recorded,
            f"suite {suite.path} is not the suite run {run_dir} was trained on: its meta.json "
            f"digest differs from the suite_meta_sha256 in run.json ({actual[:12]}... vs "
            f"{str(recorded)[:12]}...; the suite was replaced or regenerated); {action} the suite "
            "it was trained on.")


def load_training_state(ckpt: Path, model: GPT, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer moments and the torch RNG from a step folder (of this run:
    `check_owner` against the run.json two folders up)."""
    state = read_state(ckpt)
    run_dir = ckpt.parent.parent
    check_owner(run_dir, read_run(run_dir), ckpt, state)
    _load_weights(model, ckpt)
    tensors = _load_tensors(ckpt / "optimizer.safetensors")
    verify_files(ckpt, state)
    try:
        rng = tensors.pop("torch_rng_state")
        per_param: dict[int, dict] = {}
        for key, value in tensors.items():
            pid, name = key.split(".", 1)
            per_param.setdefault(int(pid), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
        torch.set_rng_state(rng)
        int(state["step"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"checkpoint {ckpt} cannot be resumed from: its optimizer state does not fit "
                        f"this model ({type(exc).__name__}: {exc}).") from None
    return state


def _load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Load a step folder's weights into `model`, naming the first tensor that does not fit."""
    weights = _load_tensors(ckpt / "model.safetensors")
    expected = {k: v for k, v in model.state_dict().items() if k != "head.weight"}
    for key in sorted(set(expected) | set(weights)):
        require(key in weights, f"checkpoint {ckpt} does not fit the model in run.json: it has no {key}.")
        require(key in expected,
                f"checkpoint {ckpt} does not fit the model in run.json: it has an unknown tensor {key}.")
        require(weights[key].shape == expected[key].shape,
                f"checkpoint {ckpt} does not fit the model in run.json: {key} has shape "
                f"{tuple(weights[key].shape)} there, {tuple(expected[key].shape)} here.")
    weights["head.weight"] = weights["tok_emb.weight"]  # tied
    model.load_state_dict(weights)
