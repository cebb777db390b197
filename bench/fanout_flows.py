"""The fan-out sweep's workflows: a plain LlamaIndex fan-out of any width and worker count,
and the raw DBOS floor with the same step invocations (no dbos_llama import, so the
alternative's own virtualenv can run the plain ones too)."""

from __future__ import annotations

import asyncio
from typing import Any

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

#: Widths and ``num_workers`` of the sweep.
WIDTHS = (8, 32, 128, 512)
WORKERS = (4, 16)


class Item(Event):
    i: int


class Squared(Event):
    value: int


def make_fan(width: int, workers: int) -> type[Workflow]:
    """One step sends ``width`` items, ``workers`` workers square them, one step collects."""

    class Fan(Workflow):
        @step
        async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
            for i in range(width):
                ctx.send_event(Item(i=i))
            return None

        @step(num_workers=workers)
        async def work(self, ev: Item) -> Squared:
            return Squared(value=ev.i * ev.i)

        @step
        async def collect(self, ctx: Context, ev: Squared) -> StopEvent | None:
            got = ctx.collect_events(ev, [Squared] * width)
            return None if got is None else StopEvent(result=sum(e.value for e in got))

    Fan.__name__ = Fan.__qualname__ = f"Fan{width}x{workers}"
    return Fan


def expected(width: int) -> int:
    return sum(i * i for i in range(width))


def invocations(width: int) -> int:
    """Step invocations of one uninterrupted run: the fan, each item's work and collect."""
    return 1 + 2 * width


def make_floor(dbos: Any) -> Any:
    """floor-b for the sweep: the same invocations as child ``@DBOS.workflow`` calls, with
    the fan-out's concurrency: ``workers`` items at once, and one collector invocation at
    a time, as in an uninterrupted plain run (each sees the events collected before it;
    `dbos_llama._collecting`)."""

    @dbos.workflow(name="bench.fanout.unit")
    async def unit(i: int) -> int:
        return i * i

    @dbos.workflow(name="bench.fanout.collect_unit")
    async def collect_unit(value: int) -> int:
        return value

    @dbos.workflow(name="bench.fanout.floor_b")
    async def floor_b(width: int, workers: int) -> int:
        await unit(0)  # the fan step
        work_slots = asyncio.Semaphore(workers)
        collect_slot = asyncio.Lock()

        async def item(i: int) -> int:
            async with work_slots:
                value = await unit(i)
            async with collect_slot:
                return await collect_unit(value)

        return sum(await asyncio.gather(*(item(i) for i in range(width))))

    return floor_b
