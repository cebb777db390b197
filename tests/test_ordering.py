"""Event order and races as in a plain run (#23, group 5): plain and durable side by side."""

from __future__ import annotations

import asyncio

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import durable


class Part(Event):
    n: int


class Fourfold(Workflow):
    """One step sends four events; a join takes them in one collection."""

    @step
    async def emit(self, ctx: Context, ev: StartEvent) -> Part | None:
        for n in range(4):
            ctx.send_event(Part(n=n))
        return None

    @step
    async def join(self, ctx: Context, ev: Part) -> StopEvent | None:
        got = ctx.collect_events(ev, [Part] * 4)
        return None if got is None else StopEvent(result=[p.n for p in got])


class Answer(Event):
    text: str


class Asks(Workflow):
    """Waits for an event sent from outside, right after the run starts."""

    @step
    async def begin(self, ev: StartEvent) -> Answer | None:
        return None

    @step
    async def answered(self, ev: Answer) -> StopEvent:
        return StopEvent(result=ev.text)


class Late(Event):
    pass


class Racing(Workflow):
    """One step ends the run while a sibling still runs and then streams."""

    @step
    async def start(self, ctx: Context, ev: StartEvent) -> Part | None:
        ctx.send_event(Part(n=0))
        ctx.send_event(Part(n=1))
        return None

    @step(num_workers=2)
    async def branch(self, ctx: Context, ev: Part) -> StopEvent | None:
        if ev.n == 0:
            stopped[0].set()
            return StopEvent(result="first")
        await stopped[0].wait()
        await asyncio.sleep(late_after[0])
        ctx.write_event_to_stream(Late())
        return None


#: Set when the StopEvent's step returns; a new one for each run (an asyncio.Event is
#: bound to the event loop that first waits on it, and each test has its own loop).
stopped = [asyncio.Event()]
#: How long after the StopEvent's return the sibling writes: long enough for a plain
#: run to have taken it (and cancelled the sibling); a durable run drops the write
#: however soon it comes (it takes the StopEvent later, once it is recorded).
late_after = [0.0]


DurableFourfold = durable(Fourfold, name="tests.ordering.Fourfold")
DurableAsks = durable(Asks, name="tests.ordering.Asks")
DurableRacing = durable(Racing, name="tests.ordering.Racing")


async def test_events_sent_by_one_step_arrive_in_send_order(dbos_app: str) -> None:
    for n in range(3):
        assert await Fourfold(timeout=30).run() == [0, 1, 2, 3]
        assert await DurableFourfold(timeout=30).run(run_id=f"four-{n}") == [0, 1, 2, 3]


async def test_an_event_sent_right_after_run_reaches_the_run(dbos_app: str) -> None:
    for cls, kwargs in ((Asks, {}), (DurableAsks, {"run_id": "asks"})):
        handler = cls(timeout=30).run(**kwargs)
        handler.ctx.send_event(Answer(text="yes"))  # before the run has started
        assert await handler == "yes"


async def test_a_sibling_streams_nothing_after_the_stop_event(dbos_app: str) -> None:
    for cls, kwargs, delay in ((Racing, {}, 0.05), (DurableRacing, {"run_id": "racing"}, 0.005)):
        stopped[0] = asyncio.Event()
        late_after[0] = delay
        handler = cls(timeout=30).run(**kwargs)
        streamed = [type(e).__name__ async for e in handler.stream_events()]
        assert await handler == "first"
        assert "Late" not in streamed, (kwargs, streamed)
