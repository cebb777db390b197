"""A server a user would write: durable workflows behind `DurableWorkflowServer`.

``python -m tests.serve DB_URL PORT`` serves it on 127.0.0.1:PORT until killed.
Side effects are logged as in `tests.flows` (DBOS_LLAMA_TEST_LOG); at the crash point
named by DBOS_LLAMA_CRASH_AT the server SIGKILLs itself; DBOS_LLAMA_DEBUGGER_ASSETS
serves the debugger UI's files.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)

from dbos_llama import durable
from dbos_llama.server import DurableWorkflowServer
from tests.flows import effect, mark


def sigkill_at(label: str) -> None:
    """SIGKILL this server process at crash point ``label`` (DBOS_LLAMA_CRASH_AT)."""
    if os.environ.get("DBOS_LLAMA_CRASH_AT") == label:
        mark(f"crash:{label}")
        os.kill(os.getpid(), signal.SIGKILL)


class Progress(Event):
    n: int


@durable
class ServedApproval(Workflow):
    """Two paid calls, a state write, three stream events, then a human's answer."""

    @step
    async def draft(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        topic = ev.get("topic", "budget")
        first = await effect(f"draft-a:{topic}")
        sigkill_at("served:between-calls")
        second = await effect(f"draft-b:{topic}")
        await ctx.store.set("draft", f"{topic}:{first}{second}")
        for n in range(3):
            ctx.write_event_to_stream(Progress(n=n))
            if n == 1:
                await asyncio.sleep(0.3)  # the stream is half written here
                sigkill_at("served:mid-stream")
        return InputRequiredEvent(prefix=f"approve {topic}?")

    @step
    async def decide(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        draft = await ctx.store.get("draft")
        await ctx.store.set("decision", ev.response)
        return StopEvent(result={"draft": draft, "decision": ev.response})


class ReviewDecision(HumanResponseEvent):
    """A human's answer with a declared field (the debugger UI shows a form for it)."""

    response: str


@durable
class ServedReview(Workflow):
    """Asks; a person answers from the debugger UI."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        # The debugger page follows a run's events from when it opens the run: give
        # it a moment to open it.
        await asyncio.sleep(1.5)
        ctx.write_event_to_stream(Progress(n=0))
        return InputRequiredEvent(prefix=f"review {ev.get('topic', 'it')}?")

    @step
    async def decide(self, ev: ReviewDecision) -> StopEvent:
        return StopEvent(result=f"reviewed: {ev.response}")


@durable(idle_release=1.0)
class ServedIdleApproval(Workflow):
    """A paid call, then a human's answer, released from memory while it waits."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        quote = await effect(f"quote:{ev.get('topic', 'it')}")
        return InputRequiredEvent(prefix=f"approve {quote}?")

    @step
    async def decide(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=f"answer={ev.response}")


@durable
class Slow(Workflow):
    """Waits (for a cancel or a timeout)."""

    @step
    async def wait(self, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(float(ev.get("seconds", 30)))
        return StopEvent(result="done")


class Unstorable(Event):
    handle: Any


@durable
class WritesUnstorable(Workflow):
    """Writes a stream event DBOS cannot store: the step fails, as it does unserved."""

    @step
    async def write(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Unstorable(handle=threading.Lock()))
        return StopEvent(result="not reached")


@durable
class Failing(Workflow):
    @step
    async def boom(self, ev: StartEvent) -> StopEvent:
        raise ValueError("no budget")


class Plain(Workflow):
    """Not durable: served in memory."""

    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="plain")


def build(db_url: str) -> DurableWorkflowServer:
    server = DurableWorkflowServer(
        {
            "name": "dbos-llama-served",
            "system_database_url": db_url,
            "notification_listener_polling_interval_sec": 0.05,
        },
        debugger_assets=os.environ.get("DBOS_LLAMA_DEBUGGER_ASSETS") or None,
    )
    server.add_workflow("approval", ServedApproval(timeout=None))
    server.add_workflow("review", ServedReview(timeout=None))
    server.add_workflow("slow", Slow(timeout=None))
    server.add_workflow("idle-approval", ServedIdleApproval(timeout=None))
    server.add_workflow("slow-timeout", Slow(timeout=1.0))
    server.add_workflow("failing", Failing(timeout=None))
    server.add_workflow("unstorable", WritesUnstorable(timeout=None))
    server.add_workflow("plain", Plain(timeout=None))
    return server
