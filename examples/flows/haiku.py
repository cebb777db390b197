"""The quickstart's workflow: two steps, one external call."""

from __future__ import annotations

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
