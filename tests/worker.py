"""A worker process: ``python -m tests.worker DB EXECUTOR_ID``.

Launches DBOS with that executor ID (recovering what a killed worker of the same ID
left behind), listens on the test queue, prints ``READY``, and runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys

from dbos import DBOS

from tests.queued_flows import APP_VERSION, QUEUE


async def main(db_url: str, executor_id: str) -> None:
    DBOS(
        config={
            "name": "dbos-llama-tests",
            "system_database_url": db_url,
            "executor_id": executor_id,
            "application_version": APP_VERSION,
            "notification_listener_polling_interval_sec": 0.05,
        }
    )
    DBOS.launch()
    await DBOS.register_queue_async(
        QUEUE,
        worker_concurrency=int(os.environ.get("DBOS_LLAMA_WORKER_CONCURRENCY", "8")),
        polling_interval_sec=0.1,
    )
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
