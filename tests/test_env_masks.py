"""The envs' action masks under both conventions: Gymnasium's own idiom
`env.action_space.sample(info["action_mask"])` and MaskablePPO's bool `action_masks()`."""

import gymnasium as gym
import numpy as np
import pytest

import retroplan  # noqa: F401  (registers the envs)

ENVS = [
    ("retroplan/PathStar-v0", {"degree": 3, "path_len": 4, "num_nodes": 20}),
    ("retroplan/GraphPlan-v0", {"num_nodes": 12, "min_distance": 2, "max_distance": 4}),
    ("retroplan/Countdown-v0", {"flat_actions": True}),
    ("retroplan/Countdown-v0", {}),  # MultiDiscrete([n, n, 4]) with its joint (n, n, 4) mask
]


@pytest.mark.parametrize("env_id,kwargs", ENVS)
def test_gymnasiums_idiom_samples_only_legal_moves(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    env.action_space.seed(0)
    ended = 0
    for seed in range(5):
        _, info = env.reset(seed=seed)
        done = False
        while not done:
            mask = info["action_mask"]
            action = env.action_space.sample(mask)  # the bool mask, as the env gives it
            assert env.action_space.contains(action)
            assert mask[tuple(np.atleast_1d(action))]
            _, _, terminated, truncated, info = env.step(action)
            assert not info["illegal"]
            done = terminated or truncated
        if terminated:  # nothing is legal once the episode has ended: Gymnasium's answer, the start
            ended += 1
            assert not info["action_mask"].any()
            assert np.all(env.action_space.sample(info["action_mask"]) == env.action_space.start)
    assert ended


@pytest.mark.parametrize("env_id,kwargs", ENVS)
def test_maskable_ppo_reads_the_same_mask_as_bool(env_id, kwargs):
    """sb3-contrib's MaskablePPO calls `action_masks()` (its `get_action_masks` when installed)
    and reads the array as bool; the mask is bool, so numpy selects with it, never indexes."""
    try:
        from sb3_contrib.common.maskable.utils import get_action_masks
    except ImportError:
        def get_action_masks(env):
            return env.action_masks()
    env = gym.make(env_id, **kwargs)
    _, info = env.reset(seed=3)
    masks = get_action_masks(env)
    assert masks.dtype == np.bool_ and info["action_mask"].dtype == np.bool_
    assert np.array_equal(masks, info["action_mask"]) and masks.any()
    assert np.arange(masks.size)[masks.reshape(-1)].size == masks.sum()  # selects, not indexes


def test_every_legal_move_is_drawn_and_gymnasiums_own_masks_still_work():
    env = gym.make("retroplan/Countdown-v0")
    _, info = env.reset(options={"instance": {"numbers": [12, 63, 96, 99], "target": 33}})
    mask = info["action_mask"]
    space = env.action_space
    space.seed(1)
    drawn = {tuple(int(x) for x in space.sample(mask)) for _ in range(4000)}
    assert drawn == set(map(tuple, np.argwhere(mask)))  # uniform over the legal triples: all seen
    # the int8 joint mask, and Gymnasium's per-axis masks (a tuple of int8 arrays), as before
    assert mask[tuple(space.sample(mask.astype(np.int8)))]
    per_axis = tuple(np.eye(4, dtype=np.int8)[k] for k in (1, 2, 0))
    assert space.sample(per_axis).tolist() == [1, 2, 0]
    flat = gym.make("retroplan/GraphPlan-v0")
    _, info = flat.reset(seed=0)
    legal = np.flatnonzero(info["action_mask"])
    assert int(flat.action_space.sample(info["action_mask"].astype(np.int8))) in legal
    assert flat.action_space == gym.spaces.Discrete(flat.unwrapped.config.num_nodes)
