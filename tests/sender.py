"""Answer a waiting run from a process without the workflow's code.

``python -m tests.sender DB RUN_ID RESPONSE`` (imports only dbos_llama and workflows).
"""

from __future__ import annotations

import asyncio
import sys

from workflows.events import HumanResponseEvent

from dbos_llama import DurableClient


async def main(db_url: str, run_id: str, response: str) -> None:
    async with DurableClient(db_url) as client:
        info = await client.get_run(run_id)
        print(f"STATUS {info.workflow} {info.status}", flush=True)
        await client.send_event(run_id, HumanResponseEvent(response=response))


if __name__ == "__main__":
    assert "tests.flows" not in sys.modules
    asyncio.run(main(*sys.argv[1:4]))
