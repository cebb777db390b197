"""Run one durable workflow in this process: ``python -m tests.driver DB FLOW RUN_ID JSON``.

Prints ``RESULT <json>`` on success. With DBOS_LLAMA_CRASH_AT set the flow kills the
process at that point instead; run the same command again to recover and finish.
"""

from __future__ import annotations

import asyncio
import json
import sys

from dbos import DBOS

from tests.flows import FLOWS


async def main(db_url: str, flow: str, run_id: str, kwargs: dict) -> None:
    wf = FLOWS[flow](timeout=None)
    DBOS(
        config={
            "name": "dbos-llama-tests",
            "system_database_url": db_url,
            "notification_listener_polling_interval_sec": 0.05,
        }
    )
    DBOS.launch()
    try:
        result = await wf.run(run_id=run_id, **kwargs)
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
