"""A durable workflow that is killed in the middle of a run and finishes after a restart.

Run it:  python examples/crash_and_recover.py

It starts itself twice as a child process on one SQLite file:
1. the first child runs order-42 and dies (os._exit) between two external calls of
   the second step, as a deploy, an OOM or a spot-instance loss would kill it;
2. the second child is the restarted application: DBOS.launch() resumes order-42,
   and the run finishes without repeating any call that had completed.
Then it prints which calls each process executed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from _restart import print_ledger, run_killed_then_restarted
from dbos import DBOS
from workflows import Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import durable, durable_step

LEDGER = Path(os.environ.get("EXAMPLE_LEDGER", "ledger.txt"))


def record(call: str) -> None:
    """The side effect of an external call: one line in the ledger per execution."""
    with LEDGER.open("a") as f:
        f.write(f"pid {os.getpid()}: {call}\n")


@durable_step(max_attempts=3)
async def call_model(prompt: str) -> str:
    record(f"call_model({prompt!r})")  # imagine a paid LLM call here
    await asyncio.sleep(0.05)
    return f"answer to {prompt}"


@durable_step
async def charge_card(order: str, cents: int) -> str:
    record(f"charge_card({order!r}, {cents})")  # a side effect that must not repeat
    return f"receipt-{order}"


class Drafted(Event):
    draft: str


class Reviewed(Event):
    draft: str
    review: str


@durable
class Orders(Workflow):
    @step
    async def draft(self, ev: StartEvent) -> Drafted:
        return Drafted(draft=await call_model(f"draft {ev.order}"))

    @step
    async def review(self, ev: Drafted) -> Reviewed:
        review = await call_model(f"review {ev.draft}")
        if os.environ.get("EXAMPLE_CRASH") == "1":
            print("  ... process dies now (os._exit), mid-step", flush=True)
            os._exit(1)
        return Reviewed(draft=ev.draft, review=await call_model(f"polish {review}"))

    @step
    async def charge(self, ev: Reviewed) -> StopEvent:
        receipt = await charge_card("order-42", 1999)
        return StopEvent(result={"review": ev.review, "receipt": receipt})


async def app(db_url: str) -> None:
    """The application: configure DBOS, create the workflow, launch, run order-42."""
    orders = Orders(timeout=None)
    DBOS(config={"name": "orders-app", "system_database_url": db_url, "log_level": "WARNING"})
    DBOS.launch()  # resumes every run a crash left behind
    try:
        result = await orders.run(run_id="order-42", order="order-42")
        print(f"  result: {result}", flush=True)
    finally:
        DBOS.destroy()


def main() -> None:
    ledger = run_killed_then_restarted(
        __file__,
        "orders.sqlite",
        first="runs order-42 and is killed mid-run",
        second="DBOS.launch() resumes order-42",
    )
    print_ledger(ledger, "External calls executed")
    print("Completed calls were not re-executed; the run finished where it stopped.")


if __name__ == "__main__":
    if "EXAMPLE_APP" in os.environ:
        asyncio.run(app(os.environ["EXAMPLE_APP"]))
    else:
        main()
