"""retroplan: measure whether backward, search-stream or goal-revealing training traces
make a small transformer plan better forward, on tasks whose every plan is verified."""

import os as _os

from .version import __version__  # noqa: F401  (retroplan.__version__)

# Numba caches compiled kernels beside the source; where the install is read-only (a system
# site-packages), cache them in the user's cache folder instead.
if "NUMBA_CACHE_DIR" not in _os.environ and not _os.access(_os.path.dirname(__file__), _os.W_OK):
    _os.environ["NUMBA_CACHE_DIR"] = _os.path.join(
        _os.path.expanduser("~"), ".cache", "retroplan", "numba")

# The Gymnasium ids, registered on `import retroplan` by entry-point strings: gymnasium imports
# a task module only when `gymnasium.make` builds its env, so this pulls in no Numba kernel.
# Each entry point wraps the env in a `TimeLimit` of its config's step limit (envs/rl.py).
ENV_ENTRY_POINTS = {
    "retroplan/PathStar-v0": "retroplan.envs.pathstar:make_env",
    "retroplan/GraphPlan-v0": "retroplan.envs.graph:make_env",
    "retroplan/Countdown-v0": "retroplan.envs.countdown:make_env",
}


def score(task_or_suite, entry: dict, text: str, variant: str | None = None) -> dict:
    """Judge one model answer `text` for the dataset row `entry` exactly as `retroplan eval`
    does: {"correct", "reason", "first_step", "optimal", "plan", "parse_error"}.
    `task_or_suite` is a suite folder, an export folder or a task name; see
    `retroplan.scoring.score` for every argument."""
    from .scoring import score as _score  # (imported here: `import retroplan` stays light)

    return _score(task_or_suite, entry, text, variant)


def register_envs() -> None:
    """Register the retroplan ids with Gymnasium (again: nothing happens)."""
    import gymnasium

    for env_id, entry_point in ENV_ENTRY_POINTS.items():
        if env_id not in gymnasium.registry:
            # the entry point adds make's own wrappers itself, inside `ActionMasks` (envs/rl.py)
            gymnasium.register(id=env_id, entry_point=entry_point, order_enforce=False,
                               disable_env_checker=True)


register_envs()
