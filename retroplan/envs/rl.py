"""What the Gymnasium envs share for reinforcement learning: the illegal-move options, the action
mask convention and the time limit.

* **Action mask.** `info["action_mask"]` (from `reset` and every `step`) and `env.action_masks()`
  (sb3-contrib's MaskablePPO calls it) are a boolean numpy array over the action space, True
  exactly where the move is legal in the current state; all False once the episode has ended
  (goal, no legal move left, or an illegal move with `illegal="end"`). Gymnasium's own
  `action_space.sample(mask=...)` wants int8: `mask.astype(np.int8)`.
* **Illegal moves.** `illegal="end"` (default, the envs' original behaviour): the episode ends
  with reward 0. `illegal="penalty"`: reward `-illegal_penalty` (default 0.1), the state is
  unchanged and the episode goes on until the time limit. Either way `info["illegal"]` is True.
* **Time limit.** Each env truncates itself after `max_steps` moves (default: the task's
  `max_episode_steps(cfg)`); `gymnasium.make` also wraps it in `TimeLimit` with the same number,
  so `env.spec.max_episode_steps` tells it. These are env options, not task config fields: they
  change no suite.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numba
import numpy as np

from ..errors import require

ILLEGAL_MODES = ("end", "penalty")
DEFAULT_ILLEGAL_PENALTY = 0.1


def check_options(illegal: str, illegal_penalty: float, max_steps: int | None) -> None:
    """One sentence for a bad env option."""
    require(illegal in ILLEGAL_MODES,
            f"illegal must be one of {', '.join(ILLEGAL_MODES)}, got {illegal!r}.")
    require(isinstance(illegal_penalty, (int, float)) and not isinstance(illegal_penalty, bool)
            and math.isfinite(illegal_penalty) and illegal_penalty >= 0,
            f"illegal_penalty must be a number >= 0, got {illegal_penalty!r}.")
    require(max_steps is None or (isinstance(max_steps, int) and not isinstance(max_steps, bool)
                                  and max_steps >= 1),
            f"max_steps must be a positive integer (or None for the task's default), got {max_steps!r}.")


def entry_point(env_class: type[gym.Env]):
    """A task's registered Gymnasium entry point (`make_env`): `env_class(**kwargs)` in a
    `TimeLimit` of its own `max_steps`."""

    def make_env(**kwargs) -> gym.Env:
        env = env_class(**kwargs)
        return gym.wrappers.TimeLimit(env, env.max_steps)

    make_env.__doc__ = f"`{env_class.__module__}.Env(**kwargs)` in a TimeLimit of its max_steps."
    return make_env


def sample_one(task, cfg, seed: int) -> dict:
    """Instance 0 of the `env` split for `seed`, sampled on the calling thread: for one instance a
    parallel launch costs more than the sampling (measured: 0.1 ms on one thread against 1 to 15
    ms with two threads on a busy machine). An instance never depends on the thread count."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return task.sample_instances(cfg, seed, "env", np.arange(1))
    finally:
        numba.set_num_threads(previous)
