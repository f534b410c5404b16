"""Every error the user can see, in one place; each message is one line meant for the user."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range."""
