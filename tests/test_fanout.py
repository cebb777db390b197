"""Fan-out and collect: the collector is invoked once per collected event, as plain."""

from __future__ import annotations

import asyncio
import time

from dbos import DBOS
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import durable
from tests.test_human_in_the_loop import messages_to

ITEMS = 5
#: The collector's executions, per workflow instance.
collector_calls: dict[int, list[int]] = {}


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
        collector_calls.setdefault(id(self), []).append(ev.value)
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
        plain = Pipeline(timeout=30)
        assert await plain.run() == RESULT
        calls = collector_calls.pop(id(plain))
        assert set(calls) == set(RESULT) and len(calls) >= ITEMS

        run_id = f"pipeline-{n}"
        flow = DurablePipeline(timeout=30)
        assert await flow.run(run_id=run_id) == RESULT
        # One invocation per collected event, each seeing one new event.
        calls = collector_calls.pop(id(flow))
        assert sorted(calls) == RESULT, calls
        assert len(await recorded_invocations(run_id, "collect")) == ITEMS


async def recorded_invocations(run_id: str, step_name: str) -> list[str]:
    """The recorded invocations of one step of a run: child workflows, or records in
    the run's own workflow (a collecting step's, `_inline`)."""
    from dbos_llama._history import step_calls

    calls = step_calls(await DBOS.list_workflow_steps_async(run_id))
    return [c.invocation_id for c in calls if c.step == step_name]


def _receives(steps: list) -> int:
    return sum(1 for s in steps if s["function_name"] == "DBOS.recv")


async def test_events_sent_by_a_step_that_returns_travel_with_its_result(dbos_app: str) -> None:
    """The fan step's five sends are carried by its recorded result: the run receives
    at most one message (the wake-up of its waiting mailbox), not one per event."""
    assert await DurablePipeline(timeout=30).run(run_id="carried") == RESULT
    steps = await DBOS.list_workflow_steps_async("carried")
    assert _receives(steps) <= 1, [s["function_name"] for s in steps]


async def test_a_run_recorded_before_carried_events_sends_messages(dbos_app: str) -> None:
    """A run whose recorded input has no decision rules (recorded by an earlier
    version) replays and runs as it was recorded: every sent event is a message."""
    from dbos import SetWorkflowID

    from dbos_llama._registry import binding_of

    binding = binding_of(DurablePipeline)
    _instance = DurablePipeline(timeout=30)  # the instance its run uses
    with SetWorkflowID("rules-1"):
        handle = await DBOS.start_workflow_async(
            binding.run_function, StartEvent(), binding.version, time.time()
        )
    assert (await handle.get_result()).result == RESULT
    steps = await DBOS.list_workflow_steps_async("rules-1")
    assert _receives(steps) == ITEMS


class Tick(Event):
    n: int


class Slow(Workflow):
    """A producer that keeps running after each send; a consumer that notes when."""

    @step
    async def produce(self, ctx: Context, ev: StartEvent) -> Tick | None:
        for n in range(2):
            ctx.send_event(Tick(n=n))
            sent.append(time.monotonic())
            await asyncio.sleep(1.0)
        return None

    @step
    async def consume(self, ctx: Context, ev: Tick) -> StopEvent | None:
        consumed.append(time.monotonic())
        got = ctx.collect_events(ev, [Tick] * 2)
        return None if got is None else StopEvent(result=sorted(t.n for t in got))


sent: list[float] = []
consumed: list[float] = []
DurableSlow = durable(Slow, name="tests.fanout.Slow")


async def test_a_step_that_runs_on_delivers_its_events_as_it_goes(dbos_app: str) -> None:
    """As in a plain run, a step's sent event reaches its consumer while the step goes
    on running (held at most `CARRY_SECONDS`), not when it returns."""
    for cls, kwargs in ((Slow, {}), (DurableSlow, {"run_id": "slow"})):
        sent.clear()
        consumed.clear()
        assert await cls(timeout=30).run(**kwargs) == [0, 1]
        # The first event was consumed while the producer went on for 1 s.
        assert consumed[0] < sent[0] + 0.5, (cls, consumed, sent)


class Burst(Workflow):
    """A fan step that sends many events in one long synchronous loop."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        for i in range(40):
            ctx.send_event(Item(i=i))
            time.sleep(0.005)  # the loop outlasts the hold: 0.2 s without an await
        return None

    @step(num_workers=4)
    async def work(self, ev: Item) -> Done:
        return Done(value=ev.i)

    @step
    async def collect(self, ctx: Context, ev: Done) -> StopEvent | None:
        got = ctx.collect_events(ev, [Done] * 40)
        return None if got is None else StopEvent(result=sum(e.value for e in got))


DurableBurst = durable(Burst, name="tests.fanout.Burst")


async def test_a_step_that_sends_in_a_long_loop_carries_its_events(dbos_app: str) -> None:
    """The hold runs from the step's last send, not its first: a loop of sends that
    takes longer than the hold still carries every event with the step's result
    (no DBOS message per event; at most the mailbox's wake-up)."""
    assert await DurableBurst(timeout=30).run(run_id="burst") == sum(range(40))
    assert messages_to(dbos_app, "burst", envelopes_only=False) <= 1


class FourItems(Workflow):
    """Four items; the first worker returns at once, the other three 0.2 s later."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        for i in range(4):
            ctx.send_event(Item(i=i))
        return None

    @step(num_workers=4)
    async def work(self, ev: Item) -> Done:
        await asyncio.sleep(0 if ev.i == 0 else 0.2)
        return Done(value=ev.i)


class Together(FourItems):
    """Three workers finish while the first collector invocation still runs."""

    @step
    async def collect(self, ctx: Context, ev: Done) -> StopEvent | None:
        collector_calls.setdefault(id(self), []).append(ev.value)
        if ev.value == 0:
            await asyncio.sleep(0.6)  # the other three finish meanwhile
        got = ctx.collect_events(ev, [Done] * 4)
        return None if got is None else StopEvent(result=sorted(e.value for e in got))


DurableTogether = durable(Together, name="tests.fanout.Together")


INLINE = "dbos_llama.inline"


def _decisions(steps: list) -> int:
    return sum(1 for s in steps if s["function_name"] == "dbos_llama.next")


async def test_workers_that_finished_together_share_one_checkpoint(dbos_app: str) -> None:
    """Three worker results that waited for the collector are taken without a decision
    each, though each of them starts the collector again: under decision rules 4 the
    first collector invocation's record names them (it runs in the run's workflow),
    under rules 3 one recorded choice does. Runs recorded with rules 3 and 2 (earlier
    versions) replay as they were recorded: rules 2 take one choice per result."""
    from dbos import SetWorkflowID

    from dbos_llama._bodies import DECISION_RULES
    from dbos_llama._records import InlineRecord
    from dbos_llama._registry import binding_of

    assert DECISION_RULES == 4
    flow = DurableTogether(timeout=30)
    assert await flow.run(run_id="together") == [0, 1, 2, 3]
    assert sorted(collector_calls.pop(id(flow))) == [0, 1, 2, 3]
    steps = await DBOS.list_workflow_steps_async("together")
    # The first collector invocation's record saw the other three finished.
    first = InlineRecord.read(next(s["output"] for s in steps if s["function_name"] == INLINE))
    assert list(first.then) == ["work:1", "work:2", "work:3"], first.then
    # (Its one choice: the fan step's carried events beside the first worker; that
    # worker, the lowest-keyed, is taken without one.)
    assert _decisions(steps) == 1

    binding = binding_of(DurableTogether)
    counts = {}
    for rules in (3, 2):
        earlier = DurableTogether(timeout=30)  # the instance its run uses
        with SetWorkflowID(f"together-rules-{rules}"):
            handle = await DBOS.start_workflow_async(
                binding.run_function, StartEvent(), binding.version, time.time(), rules
            )
        assert (await handle.get_result()).result == [0, 1, 2, 3]
        assert sorted(collector_calls.pop(id(earlier))) == [0, 1, 2, 3]
        counts[rules] = _decisions(await DBOS.list_workflow_steps_async(handle.workflow_id))
        if rules == 3:
            # The last choice took the first of the three and saw the other two finished.
            rows = await DBOS.list_workflow_steps_async(handle.workflow_id)
            last = [s["output"] for s in rows if s["function_name"] == "dbos_llama.next"][-1]
            assert list(last[3]) == ["work:2", "work:3"], last
    # Rules 2 drop the rest of a choice once the collector starts: the second of the
    # three needs a choice of its own (the last, alone beside the mailbox, needs none).
    assert counts[2] == counts[3] + 1 and counts[3] == _decisions(steps) + 2


class Half(Event):
    total: int


class TwoCollectors(FourItems):
    """Two collecting steps take the same events; a third collects their totals."""

    @step
    async def sum_a(self, ctx: Context, ev: Done) -> Half | None:
        collector_calls.setdefault(id(self), []).append(ev.value)
        await asyncio.sleep(0.3 if ev.value == 0 else 0.01)
        got = ctx.collect_events(ev, [Done] * 4, buffer_id="a")
        return None if got is None else Half(total=sum(e.value for e in got))

    @step
    async def sum_b(self, ctx: Context, ev: Done) -> Half | None:
        collector_calls.setdefault(id(self), []).append(100 + ev.value)
        await asyncio.sleep(0.3 if ev.value == 0 else 0.01)
        got = ctx.collect_events(ev, [Done] * 4, buffer_id="b")
        return None if got is None else Half(total=10 * sum(e.value for e in got))

    @step
    async def end(self, ctx: Context, ev: Half) -> StopEvent | None:
        got = ctx.collect_events(ev, [Half] * 2)
        return None if got is None else StopEvent(result=sorted(h.total for h in got))


DurableTwoCollectors = durable(TwoCollectors, name="tests.fanout.TwoCollectors")


async def test_two_collecting_steps_on_the_same_events_run_once_per_event(
    dbos_app: str,
) -> None:
    """Two collectors running at once race as any steps do (one recorded choice each);
    each still runs exactly once per collected event."""
    flow = DurableTwoCollectors(timeout=30)
    assert await flow.run(run_id="two-collectors") == [6, 60]
    assert sorted(collector_calls.pop(id(flow))) == [0, 1, 2, 3, 100, 101, 102, 103]


async def test_a_run_recorded_under_newer_decision_rules_is_not_replayed(
    dbos_app: str, caplog
) -> None:
    """A worker that has not been upgraded yet (rolling deploy) never replays a run
    recorded under decision rules it does not know: an ERROR line, and the run stays
    PENDING with nothing recorded, for an upgraded worker."""
    from dbos import SetWorkflowID

    from dbos_llama._bodies import DECISION_RULES
    from dbos_llama._registry import binding_of

    binding = binding_of(DurablePipeline)
    _instance = DurablePipeline(timeout=30)  # the instance its run uses
    with SetWorkflowID("rules-newer"):
        await DBOS.start_workflow_async(
            binding.run_function, StartEvent(), binding.version, time.time(), DECISION_RULES + 1
        )
    await asyncio.sleep(1.0)
    status = await DBOS.get_workflow_status_async("rules-newer")
    assert status is not None and status.status == "PENDING"
    assert await DBOS.list_workflow_steps_async("rules-newer") == []
    assert "recorded by a newer dbos_llama" in caplog.text
    assert f"this one knows up to {DECISION_RULES}" in caplog.text
    await DBOS.cancel_workflow_async("rules-newer")


class InOrder(FourItems):
    """Workers that finish in the order they started (the first slowest if ``reverse``)."""

    reverse = False

    @step(num_workers=4)
    async def work(self, ev: Item) -> Done:
        await asyncio.sleep(0.1 * ((3 - ev.i) if self.reverse else ev.i))
        return Done(value=ev.i)

    @step
    async def collect(self, ctx: Context, ev: Done) -> StopEvent | None:
        got = ctx.collect_events(ev, [Done] * 4)
        return None if got is None else StopEvent(result=sorted(e.value for e in got))


class Reversed(InOrder):
    reverse = True


DurableInOrder = durable(InOrder, name="tests.fanout.InOrder")
DurableReversed = durable(Reversed, name="tests.fanout.Reversed")


async def test_workers_taken_in_the_order_they_started_need_no_checkpoint(dbos_app: str) -> None:
    """Decision rules 4: taking the running worker started first needs no record (a
    replay without one takes it too); a worker taken ahead of it is recorded with
    its wait's number."""
    from dbos_llama._records import Choice

    assert await DurableInOrder(timeout=30).run(run_id="in-order") == [0, 1, 2, 3]
    steps = await DBOS.list_workflow_steps_async("in-order")
    # Only the pull of the fan step's carried events beside the first worker.
    assert _decisions(steps) <= 1, [s["function_name"] for s in steps]

    assert await DurableReversed(timeout=30).run(run_id="reversed") == [0, 1, 2, 3]
    steps = await DBOS.list_workflow_steps_async("reversed")
    choices = [Choice.read(s["output"]) for s in steps if s["function_name"] == "dbos_llama.next"]
    # The last worker first, ahead of the three started before it: recorded, with
    # the number of its wait.
    assert len(choices) >= 2 and all(c.wait is not None for c in choices), choices
    waits = [c.wait for c in choices]
    assert waits == sorted(set(waits)), waits
