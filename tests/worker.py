"""A worker process: ``python -m tests.worker DB EXECUTOR_ID``.

Launches DBOS with that executor ID (recovering what a killed worker of the same ID
left behind), listens on the test queue, prints ``READY``, and runs until killed.
With ``DBOS_LLAMA_FLEET_LEASE`` set it joins a `Fleet` with that lease (and
``DBOS_LLAMA_FLEET_HEARTBEAT``); SIGTERM then makes it leave the fleet and exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from dbos import DBOS

from dbos_llama import Fleet
from tests.queued_flows import APP_VERSION, QUEUE


async def main(db_url: str, executor_id: str) -> None:
    DBOS(
        config={
            "name": "dbos-llama-tests",
            "system_database_url": db_url,
            "executor_id": executor_id,
            "application_version": APP_VERSION,
            "notification_listener_polling_interval_sec": 0.05,
            # A small pool: the PostgreSQL tests share one server (max_connections
            # 100) and a fleet test runs four workers beside the other tests.
            "sys_db_pool_size": 8,
        }
    )
    DBOS.launch()
    await DBOS.register_queue_async(
        QUEUE,
        worker_concurrency=int(os.environ.get("DBOS_LLAMA_WORKER_CONCURRENCY", "8")),
        polling_interval_sec=0.1,
    )
    stop = asyncio.Event()
    fleet: Fleet | None = None
    if "DBOS_LLAMA_FLEET_LEASE" in os.environ:
        logging.basicConfig(
            stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        logging.getLogger("dbos_llama").setLevel(logging.INFO)
        heartbeat = os.environ.get("DBOS_LLAMA_FLEET_HEARTBEAT")
        fleet = Fleet(
            lease_seconds=float(os.environ["DBOS_LLAMA_FLEET_LEASE"]),
            heartbeat_seconds=float(heartbeat) if heartbeat else None,
        ).join()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    if fleet is not None:
        await asyncio.to_thread(fleet.leave)
    print("LEFT", flush=True)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
