"""The workers example's workflow: fetch a document, summarize it (two slow external
calls, each writing a ledger line per execution), submitted through a DBOS queue."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from dbos import DBOS
from workflows import Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import durable, durable_step

#: The DBOS queue the workers take runs from.
QUEUE = "documents"
LEDGER = Path(os.environ.get("EXAMPLE_LEDGER", "ledger.txt"))


def record(call: str) -> None:
    """The side effect of an external call: one ledger line per execution."""
    with LEDGER.open("a") as f:
        f.write(f"{DBOS.executor_id} {os.getpid()} {call}\n")


@durable_step
async def fetch_document(doc: str) -> str:
    record(f"fetch_document({doc})")
    await asyncio.sleep(0.3)  # a slow download
    return f"the text of {doc}"


@durable_step(max_attempts=3)
async def call_model(text: str) -> str:
    record(f"call_model({text})")
    await asyncio.sleep(0.3)  # a paid LLM call
    return f"summary of {text}"


class Fetched(Event):
    doc: str
    text: str


@durable(name="summaries", queue=QUEUE)  # runs are submitted to the queue
class Summaries(Workflow):
    @step
    async def fetch(self, ev: StartEvent) -> Fetched:
        return Fetched(doc=ev.doc, text=await fetch_document(ev.doc))

    @step
    async def summarize(self, ev: Fetched) -> StopEvent:
        summary = await call_model(ev.text)
        return StopEvent(result={"doc": ev.doc, "summary": summary, "worker": DBOS.executor_id})
