"""Fan-outs whose concurrent workers edit the same state keys (for the state crash tests).

Run them with ``python -m tests.shared_state_driver``.
"""

from __future__ import annotations

import asyncio

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import current_run_id, durable, durable_step
from tests.flows import mark

ITEMS = 4


class Part(Event):
    i: int


class PartDone(Event):
    i: int


@durable_step
async def slow_call(run: str, i: int) -> str:
    mark(f"call:{run}:{i}")
    await asyncio.sleep(0.2)
    return f"<{run}:{i}>"


@durable(name="tests.SharedCount")
class SharedCount(Workflow):
    """Four items, two workers: each item counts and collects itself into shared state."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Part | None:
        for i in range(ITEMS):
            ctx.send_event(Part(i=i))
        return None

    @step(num_workers=2)
    async def work(self, ctx: Context, ev: Part) -> PartDone:
        await slow_call(current_run_id() or "", ev.i)
        ctx.write_event_to_stream(PartDone(i=ev.i))
        async with ctx.store.edit_state() as state:
            state["count"] = state.get("count", 0) + 1
            state["done"] = [*state.get("done", []), ev.i]
        return PartDone(i=ev.i)

    @step
    async def collect(self, ctx: Context, ev: PartDone) -> StopEvent | None:
        done = ctx.collect_events(ev, [PartDone] * ITEMS)
        if done is None:
            return None
        return StopEvent(result=sorted(d.i for d in done))


class Keyed(Event):
    i: int


class KeyedDone(Event):
    i: int


@durable(name="tests.SetAndEdit")
class SetAndEdit(Workflow):
    """Two concurrent steps write one key: one with ``set``, one with ``edit_state``."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Keyed | None:
        await ctx.store.set("log", [])
        ctx.send_event(Keyed(i=0))
        ctx.send_event(Keyed(i=1))
        return None

    @step(num_workers=2)
    async def write(self, ctx: Context, ev: Keyed) -> KeyedDone:
        await slow_call(current_run_id() or "", ev.i)
        if ev.i == 0:
            log = await ctx.store.get("log")
            await ctx.store.set("log", [*log, "set"])
        else:
            async with ctx.store.edit_state() as state:
                state["log"] = [*state["log"], "edit"]
        await slow_call(current_run_id() or "", 10 + ev.i)
        return KeyedDone(i=ev.i)

    @step
    async def collect(self, ctx: Context, ev: KeyedDone) -> StopEvent | None:
        if ctx.collect_events(ev, [KeyedDone] * 2) is None:
            return None
        return StopEvent(result=sorted(await ctx.store.get("log")))


class Lane(Event):
    i: int


class LaneDone(Event):
    i: int


@durable(name="tests.GatherWrites")
class GatherWrites(Workflow):
    """Two concurrent steps, each writing while a durable call runs beside the write
    (``asyncio.gather``): the write's step ID must not depend on who holds the lock."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Lane | None:
        ctx.send_event(Lane(i=0))
        ctx.send_event(Lane(i=1))
        return None

    @step(num_workers=2)
    async def lane(self, ctx: Context, ev: Lane) -> LaneDone:
        run = current_run_id() or ""
        for n in range(3):
            await asyncio.gather(
                slow_call(run, 100 + 10 * ev.i + n), ctx.store.set(f"lane{ev.i}.{n}", n)
            )
            async with ctx.store.edit_state() as state:
                state["writes"] = state.get("writes", 0) + 1
        return LaneDone(i=ev.i)

    @step
    async def collect(self, ctx: Context, ev: LaneDone) -> StopEvent | None:
        if ctx.collect_events(ev, [LaneDone] * 2) is None:
            return None
        return StopEvent(result=await ctx.store.get("writes"))
