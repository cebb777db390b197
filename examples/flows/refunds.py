"""The human-in-the-loop example's workflow: ask for approval, then decide."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent

from dbos_llama import durable, durable_step

RUN_ID = "refund-7"


@durable_step
async def quote_refund(order: str) -> int:
    print(f"  (computing the refund for {order}: runs once)")
    return 4200


@durable
class Refund(Workflow):
    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        cents = await quote_refund(ev.order)
        return InputRequiredEvent(prefix=f"Refund {cents / 100:.2f} EUR for {ev.order}?")

    @step
    async def decide(self, ev: HumanResponseEvent) -> StopEvent:
        verdict = "refunded" if ev.response == "yes" else "refused"
        return StopEvent(result=f"{RUN_ID}: {verdict}")
