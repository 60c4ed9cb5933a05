"""Rewards for online RL and evaluation. A reward scores a batch: ``reward(prompts, completions, answers) ->
list[float]`` (:class:`~divalign.rewards.base.Reward`); ``--reward`` specs build them (:mod:`divalign.rewards.spec`).
"""

from divalign.rewards.base import PerSample, Reward, Weighted, overlong_penalty
from divalign.rewards.spec import RewardOptions, get

__all__ = ["PerSample", "Reward", "RewardOptions", "Weighted", "get", "overlong_penalty"]
