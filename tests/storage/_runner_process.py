"""A runner process for the multi-process tests: runs one batch and logs when each item ran.

Usage: ``python _runner_process.py URL PREFIX BATCH_ID LOG_FILE`` (a SQL or Redis URL)

It opens the storage, prints ``ready`` and waits for a line on its standard input, so that
the test starts every process's run at the same moment (interpreter start-up takes longer
than some runs). The generator appends one JSON line per attempt to ``LOG_FILE``:
``{"key", "pid", "start", "end"}``, times from the system-wide monotonic clock, which
processes of one machine share. The final status goes to standard output as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from batchkit import BatchRunner, ItemContext

if TYPE_CHECKING:
    from batchkit.protocols import Storage

__all__: list[str] = []


async def main(url: str, prefix: str, batch_id: str, log: IO[str]) -> None:
    pid = os.getpid()

    async def generate(ctx: ItemContext) -> dict[str, Any]:
        start = time.monotonic()
        await anyio.sleep(0.001)
        end = time.monotonic()
        log.write(json.dumps({"key": ctx.key, "pid": pid, "start": start, "end": end}) + "\n")
        return {"pid": pid}

    async with _storage(url, prefix) as storage:
        runner = BatchRunner(storage, generate)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        final = await runner.run(batch_id)
    print(json.dumps({"state": final.state.value, "pid": pid}), flush=True)


def _storage(url: str, prefix: str) -> Storage:
    if url.startswith("redis"):
        from batchkit.storage.redis import RedisStorage

        return RedisStorage(url, prefix=prefix)
    from batchkit.storage.sql import SQLStorage

    return SQLStorage(url, table_prefix=prefix)


if __name__ == "__main__":
    url, prefix, batch_id, path = sys.argv[1:5]
    with open(path, "a", encoding="utf-8") as log_file:
        anyio.run(main, url, prefix, batch_id, log_file)
