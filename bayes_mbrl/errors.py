"""Errors a user can cause. Each names the problem and the fix.

Every error the toolkit raises on bad input derives from :class:`BayesMBRLError`,
so ``except BayesMBRLError`` catches all of them and nothing from inside torch,
Pyro or gymnasium leaks out as a bare traceback.
"""

from __future__ import annotations


class BayesMBRLError(Exception):
    """Base class of every error bayes_mbrl raises on user input."""


class ConfigError(BayesMBRLError, ValueError):
    """A configuration key, type or value is wrong."""


class DataError(BayesMBRLError, ValueError):
    """Transitions have the wrong shape or dtype, contain NaN/inf, or leave the space."""


class ModelError(BayesMBRLError, RuntimeError):
    """A dynamics model cannot be used as asked (not fitted, unsupported option)."""


class EnvError(BayesMBRLError, ValueError):
    """An environment is unknown or its spaces do not fit the chosen components."""


class CheckpointError(BayesMBRLError, RuntimeError):
    """A run directory or checkpoint cannot be read or written."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint would run code when unpickled (a crafted file); it was refused."""
