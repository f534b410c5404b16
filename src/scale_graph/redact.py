"""Secrets never leave the process: every error text stored or shown passes through :func:`redact`.

Upstream servers may echo request headers (``Authorization: Bearer sk-…``) in their error
bodies; those bodies reach exception messages, results databases, stderr and ``scale serve``'s
replies unless scrubbed here.
"""

from __future__ import annotations

import os
import re

MASK = "[redacted]"
_KEY_LIKE = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+|\bsk-[A-Za-z0-9_\-]{6,}|(api[_-]?key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+")


def configured_keys() -> list[str]:
    """The API keys this process may send (environment and config file), longest first."""
    from scale_graph.settings import api_key

    keys = set()
    for system in (1, 2):
        try:
            key = api_key(system)
        except Exception:  # an unreadable config file must not stop an error from being reported
            key = None
        if key:
            keys.add(key)
    keys.update(value for name, value in os.environ.items() if name.endswith("_API_KEY") and value)
    return sorted((k for k in keys if len(k) >= 4), key=len, reverse=True)


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """``text`` with configured keys, ``extra`` secrets, ``Bearer …`` and ``sk-…`` tokens masked."""
    for secret in (*extra, *configured_keys()):
        if secret:
            text = text.replace(secret, MASK)
    return _KEY_LIKE.sub(lambda m: (m.group(1) or m.group(2) or "") + MASK, text)
