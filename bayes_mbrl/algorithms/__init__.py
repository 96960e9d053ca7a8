"""Algorithms built on models and planners."""

from bayes_mbrl.algorithms.mpc import MODES, MPCAgent, RandomAgent

__all__ = ["MODES", "MPCAgent", "RandomAgent"]
