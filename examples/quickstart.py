"""The smallest durable workflow: python examples/quickstart.py

Runs the two-step workflow of examples/flows/haiku.py on the embedded SQLite system
database and shows what DBOS recorded: the run (its ID is the run_id) and one child
workflow per step invocation. It stores everything as JSON (`JsonDataSerializer`),
so DBOS's own tools show the values too. Then, from the project root:

    dbos-llama runs show haiku-1 --db sqlite:///quickstart.sqlite
    dbos workflow steps haiku-1/draft/0 -s sqlite:///quickstart.sqlite
"""

from __future__ import annotations

import asyncio

import _path  # noqa: F401  # makes examples.flows importable
from dbos import DBOS

from dbos_llama import JsonDataSerializer
from examples.flows.haiku import Haiku


async def main() -> None:
    haiku = Haiku(timeout=None)
    DBOS(
        config={
            "name": "quickstart",
            "system_database_url": "sqlite:///quickstart.sqlite",
            "log_level": "WARNING",  # DBOS logs its migrations and set-up at INFO
            "serializer": JsonDataSerializer(),  # values stored as JSON, not pickles
        }
    )
    DBOS.launch()
    try:
        # Same run_id again (even after a crash, in another process) never runs twice.
        print(await haiku.run(run_id="haiku-1", topic="durable workflows"))
        for wf in await DBOS.list_workflows_async(workflow_id_prefix="haiku-1"):
            print(f"  {wf.workflow_id:<18} {wf.name:<38} {wf.status}")
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main())
