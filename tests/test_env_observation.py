"""Countdown's `observation="scaled"`: the same observation as float32 in [-1, 1] (log-scaled,
empty slots -1) for RL libraries, passing Gymnasium's checker, equal step by step to the raw
observation mapped by `scale_observation`, monotone and distinct over the values a game holds."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import retroplan  # noqa: F401  (registers the envs)
from retroplan.envs import countdown as cd
from retroplan.errors import UserError


@pytest.mark.parametrize("kwargs", [{}, {"flat_actions": True, "n_inputs": 6, "max_input": 999}])
def test_the_scaled_observation_passes_gymnasiums_checker_in_a_fixed_range(kwargs):
    env = gym.make("retroplan/Countdown-v0", observation="scaled", **kwargs)
    check_env(env.unwrapped)
    space = env.observation_space
    assert space["numbers"].dtype == np.float32 and space["target"].dtype == np.float32
    assert space["numbers"].low.min() == -1.0 and space["numbers"].high.max() == 1.0
    assert 0.0 < space["target"].low[0] < space["target"].high[0] < 1.0
    obs, _ = env.reset(seed=3)
    assert space.contains(obs)


def test_every_step_is_the_raw_observation_scaled_and_a_win_shows_the_target():
    raw = gym.make("retroplan/Countdown-v0", n_inputs=3, max_input=12, min_target=4, max_target=30)
    scaled = gym.make("retroplan/Countdown-v0", n_inputs=3, max_input=12, min_target=4, max_target=30,
                      observation="scaled")
    cfg = raw.unwrapped.config
    wins = 0
    for episode in range(40):
        obs_raw, info = raw.reset(seed=episode)
        obs_scaled, _ = scaled.reset(seed=episode)
        rng = np.random.default_rng(episode)
        done = False
        while True:
            for key in ("numbers", "target"):
                assert np.array_equal(obs_scaled[key], cd.scale_observation(cfg, obs_raw[key]))
            assert scaled.observation_space.contains(obs_scaled)
            if done:
                break
            action = np.unravel_index(rng.choice(np.flatnonzero(info["action_mask"])), (3, 3, 4))
            obs_raw, reward, terminated, truncated, info = raw.step(np.array(action))
            obs_scaled, reward_scaled, *_ = scaled.step(np.array(action))
            assert reward == reward_scaled
            done = terminated or truncated
        if reward == 1.0:  # won: the last number is the target, on the same scale
            wins += 1
            assert obs_scaled["numbers"][0] == obs_scaled["target"][0]
            assert list(obs_scaled["numbers"][1:]) == [-1.0, -1.0]
    assert wins > 0


@pytest.mark.parametrize("cfg", [cd.Config(), cd.Config(n_inputs=6, max_input=999)])  # default, largest
def test_the_scale_is_monotone_and_keeps_the_values_of_a_game_apart(cfg):
    values = np.arange(0, 800_001)  # every target (at most 99,999) and far beyond
    scaled = cd.scale_observation(cfg, values)
    assert scaled[0] == 0.0 and np.all(np.diff(scaled) > 0)  # distinct and in order
    assert np.all(np.diff(cd.scale_observation(cfg, np.geomspace(1e6, cd.max_value(cfg), 200))) >= 0)
    assert cd.scale_observation(cfg, [cd.max_value(cfg)])[0] == pytest.approx(1.0)
    assert cd.scale_observation(cfg, [-1])[0] == -1.0


def test_a_bad_observation_option_is_refused_with_a_sentence():
    with pytest.raises(UserError, match="observation must be one of raw, scaled, got 'normalised'."):
        gym.make("retroplan/Countdown-v0", observation="normalised")
