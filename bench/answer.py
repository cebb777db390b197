"""Answer a waiting run from another process; print the time the answer was sent.

python bench/answer.py DB_URL {dbos_llama|floor} RUN_ID
"""

from __future__ import annotations

import asyncio
import sys
import time


async def main(url: str, impl: str, run_id: str) -> None:
    if impl == "dbos_llama":
        from workflows.events import HumanResponseEvent

        from dbos_llama import DurableClient

        async with DurableClient(url) as client:
            sent = time.time()
            await client.send_event(run_id, HumanResponseEvent(response="yes"))
    else:
        from dbos import DBOSClient

        client = DBOSClient(system_database_url=url)
        sent = time.time()
        await client.send_async(run_id, "yes", "answer")
        client.destroy()
    print(sent)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
