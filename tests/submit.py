"""Submit Job runs to the workers' queue and exit: ``python -m tests.submit DB PREFIX N``.

Prints ``SUBMITTED`` once every run is in the database; the runs are then the
workers' business (this process dequeues nothing and does not wait for results).
"""

from __future__ import annotations

import asyncio
import os
import sys

from dbos import DBOS

from tests.queued_flows import APP_VERSION, Job


async def main(db_url: str, prefix: str, count: int) -> None:
    DBOS(
        config={
            "name": "dbos-llama-tests",
            "system_database_url": db_url,
            "application_version": APP_VERSION,
        }
    )
    DBOS.listen_queues([])
    DBOS.launch()
    job = Job(timeout=None)
    run_ids = [f"{prefix}-{i}" for i in range(count)]
    for i, run_id in enumerate(run_ids):
        job.run(run_id=run_id, x=i)
    while len(await DBOS.list_workflows_async(workflow_ids=run_ids, load_input=False)) < count:
        await asyncio.sleep(0.05)
    print("SUBMITTED", flush=True)
    os._exit(0)  # without waiting for the results


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
