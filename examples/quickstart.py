"""The smallest durable workflow: python examples/quickstart.py

Runs a two-step workflow on the embedded SQLite system database and shows what DBOS
recorded: the run (its ID is the run_id) and one child workflow per step invocation.
"""

from __future__ import annotations

import asyncio

from dbos import DBOS
from workflows import Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import durable, durable_step


@durable_step(max_attempts=3)
async def call_model(prompt: str) -> str:
    return f"a haiku about {prompt}"  # a real app calls an LLM here


class Drafted(Event):
    text: str


@durable
class Haiku(Workflow):
    @step
    async def draft(self, ev: StartEvent) -> Drafted:
        return Drafted(text=await call_model(ev.topic))

    @step
    async def sign(self, ev: Drafted) -> StopEvent:
        return StopEvent(result=ev.text + " -- dbos_llama")


async def main() -> None:
    haiku = Haiku(timeout=None)
    DBOS(
        config={
            "name": "quickstart",
            "system_database_url": "sqlite:///quickstart.sqlite",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        # Same run_id again (even after a crash, in another process) never runs twice.
        print(await haiku.run(run_id="haiku-1", topic="durable workflows"))
        for wf in await DBOS.list_workflows_async(workflow_id_prefix="haiku-1"):
            print(f"  {wf.workflow_id:<18} {wf.name:<28} {wf.status}")
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main())
