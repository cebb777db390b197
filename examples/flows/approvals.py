"""The HTTP example's workflow: price a quote (a paid call), ask a human, decide."""

from __future__ import annotations

from workflows import Context, Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent

from dbos_llama import durable, durable_step


@durable_step
async def price_quote(customer: str) -> float:
    """A paid call: checkpointed, so a restarted server never pays for it twice."""
    print(f"  [server] pricing the quote for {customer} (a paid call)", flush=True)
    return 1200.0


@durable
class Approval(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        amount = await price_quote(ev.customer)
        await ctx.store.set("amount", amount)
        return InputRequiredEvent(prefix=f"Approve {amount:.2f} EUR for {ev.customer}?")

    @step
    async def decide(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        amount = await ctx.store.get("amount")
        return StopEvent(result=f"{ev.response}: {amount:.2f} EUR for the quote")
