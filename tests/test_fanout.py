"""Fan-out and collect: the collector is invoked once per collected event, as plain."""

from __future__ import annotations

import asyncio

from dbos import DBOS
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import durable

ITEMS = 5
#: The collector's executions in this process, per run ID ("plain" for plain runs).
collector_calls: list[int] = []


class Item(Event):
    i: int


class Done(Event):
    value: int


class Pipeline(Workflow):
    """A new user's pipeline: five items sent, three workers, a collector."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        for i in range(ITEMS):
            ctx.send_event(Item(i=i))
        return None

    @step(num_workers=3)
    async def work(self, ev: Item) -> Done:
        await asyncio.sleep(0.01 * (ev.i % 3))  # items finish out of order
        return Done(value=ev.i * 10)

    @step
    async def collect(self, ctx: Context, ev: Done) -> StopEvent | None:
        collector_calls.append(ev.value)
        got = ctx.collect_events(ev, [Done] * ITEMS)
        return None if got is None else StopEvent(result=sorted(e.value for e in got))


DurablePipeline = durable(Pipeline, name="tests.fanout.Pipeline")
RESULT = [i * 10 for i in range(ITEMS)]


async def test_collector_runs_once_per_collected_event_like_plain(dbos_app: str) -> None:
    """Durable: exactly one collector invocation per collected event, every run. Plain
    (upstream's runtime, side by side): at least one; more when two results reach the
    control loop together and two collectors start on one buffer (upstream then re-runs
    the second), which depends on timing."""
    for n in range(3):
        collector_calls.clear()
        assert await Pipeline(timeout=30).run() == RESULT
        assert set(collector_calls) == set(RESULT) and len(collector_calls) >= ITEMS

        collector_calls.clear()
        run_id = f"pipeline-{n}"
        assert await DurablePipeline(timeout=30).run(run_id=run_id) == RESULT
        # One invocation per collected event, each seeing one new event.
        assert sorted(collector_calls) == RESULT, collector_calls
        recorded = await DBOS.list_workflows_async(workflow_id_prefix=f"{run_id}/collect/")
        assert len(recorded) == ITEMS
