"""Files a user names (a problem file, a dataset, a SQLite database): only regular files are read.

Opening a FIFO waits for a writer — forever, when there is none — and a device or socket is no
document; each is refused with one line before it is opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("a FIFO", "a directory" …), else None."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:  # missing or unreadable: the caller's own open says so
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
