"""Workflows whose runs are submitted through a DBOS queue to worker processes.

Each `tagged_call` logs ``call <run_id>/<label> <value>`` with a value unique to that
execution (the process ID and a nonce) and returns it, so a test can tell which
execution's result DBOS recorded and which executions were repeats.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)

from dbos_llama import current_run_id, durable, durable_step
from tests.flows import mark

#: The DBOS queue the test workers listen on.
QUEUE = "dbos-llama-tests"
#: DBOS application version shared by the workers and the submitting test process.
APP_VERSION = "dbos-llama-workers-test"


@durable_step
async def tagged_call(label: str) -> str:
    value = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    key = f"{current_run_id()}/{label}"
    mark(f"call {key} {value}")
    mark(f"started {key} {value} {time.time():.3f}")
    # Keeps the call in flight for a while, so a kill can land inside it.
    await asyncio.sleep(float(os.environ.get("DBOS_LLAMA_CALL_SECONDS", "0")))
    mark(f"ended {key} {value} {time.time():.3f}")
    return value


class Doubled(Event):
    x: int


@durable(queue=QUEUE)
class Job(Workflow):
    """A short run: two steps, one external call each, one state edit."""

    @step
    async def first(self, ctx: Context, ev: StartEvent) -> Doubled:
        await tagged_call("first")
        await ctx.store.set("x", ev.x)
        return Doubled(x=ev.x * 2)

    @step
    async def second(self, ctx: Context, ev: Doubled) -> StopEvent:
        await tagged_call("second")
        return StopEvent(result={"x": await ctx.store.get("x"), "doubled": ev.x})


@durable(queue=QUEUE)
class QueuedApproval(Workflow):
    """Asks a human, then finishes with the answer and the worker that took it."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix=f"approve {ev.item}?")

    @step
    async def decide(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result={"answer": ev.response, "pid": os.getpid()})
