"""Driver of the open race test: open fresh databases at the same moment as other processes.

    python tests/support/drivers/open_race.py FOLDER NAME ROUNDS

For round r it writes ``FOLDER/ready-r-NAME``, waits for ``FOLDER/go-r`` and then opens (and
closes) ``FOLDER/db-r.db`` with ``persistence.open_async``, so every process sets the same new
file up at once. Prints one JSON line: ``{"failures": ["round r: Type: message", ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from scale_graph.persistence import open_async


async def open_once(path: Path) -> None:
    async with open_async(path):
        pass


def main(folder: Path, name: str, rounds: int) -> dict:
    failures = []
    for r in range(rounds):
        (folder / f"ready-{r}-{name}").touch()
        go = folder / f"go-{r}"
        deadline = time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                failures.append(f"round {r}: no go signal")
                return {"failures": failures}
            time.sleep(0.0005)
        try:
            asyncio.run(open_once(folder / f"db-{r}.db"))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            failures.append(f"round {r}: {type(exc).__name__}: {exc}")
    return {"failures": failures}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))), flush=True)
