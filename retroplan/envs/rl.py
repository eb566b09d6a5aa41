"""What the Gymnasium envs share for reinforcement learning: the illegal-move options, the action
mask convention and the time limit.

* **Action mask.** `info["action_mask"]` (from `reset` and every `step`) and `env.action_masks()`
  (sb3-contrib's MaskablePPO calls it) are a boolean numpy array over the action space, True
  exactly where the move is legal in the current state; all False once the episode has ended
  (goal, no legal move left, or an illegal move with `illegal="end"`). Bool, because that is
  MaskablePPO's convention and numpy's (`actions[mask]` selects; an int8 mask would index).
  Gymnasium's own idiom `env.action_space.sample(info["action_mask"])` works too: the envs'
  action spaces (`MaskedDiscrete`, `JointMaskedMultiDiscrete`) take the bool mask where
  Gymnasium's spaces want int8, and Gymnasium's own masks as before. Countdown's default
  MultiDiscrete([n, n, 4]) mask is joint, shape (n, n, 4): it says which (i, j, op) triples are
  legal, which MultiDiscrete's per-axis masks (Gymnasium's tuple of three, MaskablePPO's
  concatenation of n + n + 4) cannot; for MaskablePPO use `flat_actions=True`, whose
  Discrete(n * n * 4) mask is the same joint mask, flat.
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


def _int8(mask):
    """An envs' bool action mask as the int8 one Gymnasium's spaces sample with; anything else
    (Gymnasium's own masks, None) as it is."""
    return mask.astype(np.int8) if isinstance(mask, np.ndarray) and mask.dtype == np.bool_ else mask


class MaskedDiscrete(gym.spaces.Discrete):
    """`Discrete` whose `sample(mask)` also takes the envs' bool action mask."""

    def sample(self, mask=None, probability=None):
        return super().sample(_int8(mask), probability)


class JointMaskedMultiDiscrete(gym.spaces.MultiDiscrete):
    """`MultiDiscrete` whose `sample(mask)` also takes a joint mask: an array of shape `nvec`,
    nonzero at the legal action tuples, one of which it draws uniformly (the space's `start`
    where none is legal, as Gymnasium does). Gymnasium's per-axis masks work as before."""

    def sample(self, mask=None, probability=None):
        if isinstance(mask, np.ndarray) and mask.shape == tuple(self.nvec):
            require(probability is None, "give sample a mask or a probability, not both.")
            legal = np.flatnonzero(mask)
            if legal.size == 0:
                return np.array(self.start, dtype=self.dtype)
            return self.start + np.array(np.unravel_index(self.np_random.choice(legal), mask.shape),
                                         dtype=self.dtype)
        return super().sample(_int8(mask), probability)


class ActionMasks(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The outermost wrapper of what `gymnasium.make` returns: it forwards `action_masks()`
    (MaskablePPO's convention), which gymnasium 1.x wrappers do not forward. Through wrappers
    of your own, `env.get_wrapper_attr("action_masks")()` reaches it (what SB3's vector envs call)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def action_masks(self) -> np.ndarray:
        return self.env.get_wrapper_attr("action_masks")()


def entry_point(env_class: type[gym.Env]):
    """A task's registered Gymnasium entry point (`make_env`): `env_class(**kwargs)` in the
    wrappers `gymnasium.make` would add, in its order (the passive env checker, order
    enforcing), a `TimeLimit` of the env's own `max_steps`, and `ActionMasks` outermost. The ids
    are registered with `order_enforce=False, disable_env_checker=True` (retroplan/__init__.py)
    so that `make` adds none of them again outside `ActionMasks`."""

    def make_env(**kwargs) -> gym.Env:
        env = env_class(**kwargs)
        max_steps = env.max_steps
        env = gym.wrappers.OrderEnforcing(gym.wrappers.PassiveEnvChecker(env))
        return ActionMasks(gym.wrappers.TimeLimit(env, max_steps))

    make_env.__doc__ = (f"`{env_class.__module__}.Env(**kwargs)` in a TimeLimit of its max_steps, "
                        "`action_masks()` on the outermost wrapper.")
    return make_env


def sample_one(task, cfg, seed: int) -> dict:
    """Instance 0 of the `env` split for `seed`, sampled on the calling thread by the task's serial
    kernel (`serial=True`: the same instance). No parallel kernel runs in an env, so using one
    starts no OpenMP runtime: GNU OpenMP aborts a process that forks after starting it, and
    `gymnasium.make_vec(..., vectorization_mode="async")` forks. (For one instance a parallel
    launch also costs more than the sampling: 0.1 ms on one thread against 1 to 15 ms with two
    threads on a busy machine.)"""
    return task.sample_instances(cfg, seed, "env", np.arange(1), serial=True)
