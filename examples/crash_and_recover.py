"""A durable workflow that is killed in the middle of a run and finishes after a restart.

Run it:  python examples/crash_and_recover.py

It starts itself twice as a child process on one SQLite file:
1. the first child runs order-42 and dies (os._exit) between two external calls of
   the second step, as a deploy, an OOM or a spot-instance loss would kill it;
2. the second child is the restarted application: DBOS.launch() resumes order-42,
   and the run finishes without repeating any call that had completed.
Then it prints which calls each process executed. The workflow is in
examples/flows/orders.py (an importable module), so from the project root
`dbos-llama runs show order-42 --db sqlite:///<the printed file>` shows every
step's output, and marks the step the restart re-executed.
"""

from __future__ import annotations

import asyncio
import os

import _path  # noqa: F401  # makes examples.flows importable
from _restart import print_ledger, run_killed_then_restarted
from dbos import DBOS

from examples.flows.orders import Orders


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
