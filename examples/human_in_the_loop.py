"""Human in the loop across processes: ask, exit, answer later from another process.

    python examples/human_in_the_loop.py ask          # process 1: asks, then exits
    python examples/human_in_the_loop.py answer yes   # process 2: answers and finishes

(Without arguments it runs both, one after the other, on a temporary database.)
The first process starts run "refund-7", which asks for approval and waits; the
process exits. The second process delivers the human's answer by run ID with
`DurableClient` (it needs only the database URL), then launches DBOS, which resumes
the run: the asking step is not run again, and the run completes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _path  # noqa: F401  # makes examples.flows importable
from dbos import DBOS
from workflows.events import HumanResponseEvent, InputRequiredEvent

from dbos_llama import DurableClient, DurableError
from examples.flows.refunds import RUN_ID, Refund

DB_URL = os.environ.get("HITL_DB", "sqlite:///hitl.sqlite")


def launch_dbos() -> None:
    DBOS(config={"name": "refunds", "system_database_url": DB_URL, "log_level": "WARNING"})
    DBOS.launch()


async def ask() -> None:
    refund = Refund(timeout=None)
    launch_dbos()
    handler = refund.run(run_id=RUN_ID, order="order-7")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            print(f"  question for a human: {event.prefix}")
            break
    DBOS.destroy()
    print("  process 1 exits; the run waits in the database")


async def answer(response: str) -> None:
    async with DurableClient(DB_URL) as client:  # only the database URL is needed
        print(f"  run {RUN_ID} is {(await client.get_run(RUN_ID)).status}; answering {response!r}")
        try:
            await client.send_event(RUN_ID, HumanResponseEvent(response=response))
        except DurableError as error:  # e.g. RunFinishedError: already answered
            sys.exit(f"  not sent: {error}")
    refund = Refund(timeout=None)
    launch_dbos()  # resumes the waiting run, which now has its answer
    try:
        print(f"  result: {await refund.run(run_id=RUN_ID, order='order-7')}")
    finally:
        DBOS.destroy()


def demo() -> None:
    db = Path(tempfile.mkdtemp(prefix="dbos-llama-hitl-")) / "hitl.sqlite"
    env = {**os.environ, "HITL_DB": f"sqlite:///{db}"}
    print("process 1: python examples/human_in_the_loop.py ask")
    subprocess.run([sys.executable, __file__, "ask"], env=env, check=True)
    print("process 2: python examples/human_in_the_loop.py answer yes")
    subprocess.run([sys.executable, __file__, "answer", "yes"], env=env, check=True)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        demo()
    elif sys.argv[1] == "ask":
        asyncio.run(ask())
    else:
        asyncio.run(answer(sys.argv[2]))
