"""The errors a user can see, in one place; each message is one line meant for the user.

Exit codes (see :mod:`scale_graph.cli.common`): bad input → 2, a failed run → 1 (it stays
resumable). Errors of one component that carry its own details live beside it and derive from
these: ``servers.chat_errors.EndpointError`` (and ``ContextLengthError``), ``runner.RunBusy``
(an :class:`InputError`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range."""


class InputError(ValueError):
    """Bad input from the user: a problem, a thread id, a file, an option."""


class UnknownRun(LookupError):
    """No run with this id in the database."""


class DatabaseError(RuntimeError):
    """The run database cannot be used (missing, foreign, corrupted, read-only, unreachable)."""
