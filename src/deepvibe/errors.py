"""User-facing errors.

Anything raised as a :class:`DeepVibeError` is bad input or a failed precondition that the
user can fix; the CLI prints its message as one line on stderr and exits with status 1.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DeepVibeError(Exception):
    """An error whose message names the file, column or key and says what to do."""


class ConfigError(DeepVibeError):
    """A config file or ``--set`` override is malformed."""


class DataError(DeepVibeError):
    """An input table is missing, unreadable or inconsistent."""


class CheckpointError(DeepVibeError):
    """A checkpoint is missing, corrupt, unsafe or built for other data."""


class TrainingDiverged(DeepVibeError):
    """The loss became NaN or infinite."""
