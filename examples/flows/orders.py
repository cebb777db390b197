"""The crash example's workflow: three steps and external calls that write a ledger
line per execution (the process dies mid-step when ``EXAMPLE_CRASH=1``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

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
