"""Driver of the checkpoint-boundary kill test: ``scale ARGS`` that signals itself just before
its N-th checkpoint write.

    python tests/support/drivers/kill.py N SIGNAL COUNT_FILE -- ARGS...

Before the N-th ``AsyncSqliteSaver.aput`` (the checkpoint write of a step; the node's writes are
saved already) the process sends itself SIGNAL (``KILL``: dies on the spot; ``INT``: what Ctrl-C
does). N = 0 never signals. Every aput is counted in COUNT_FILE (one line per write, appended
before the write), so an uninterrupted run with N = 0 tells how many boundaries there are.
"""

from __future__ import annotations

import os
import signal
import sys

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver


def install(kill_before: int, signum: int, count_file: str) -> None:
    put = AsyncSqliteSaver.aput
    written = [0]

    async def aput(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        written[0] += 1
        with open(count_file, "a") as out:
            out.write(f"{written[0]}\n")
        if written[0] == kill_before:
            os.kill(os.getpid(), signum)
        return await put(self, *args, **kwargs)

    AsyncSqliteSaver.aput = aput  # type: ignore[method-assign]


if __name__ == "__main__":
    number, name, count_file, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: N SIGNAL COUNT_FILE -- ARGS..."
    install(int(number), getattr(signal, f"SIG{name}"), count_file)
    sys.argv = ["scale", *args]
    from scale_graph.cli import main

    main()
