"""Runs in one process on real DBOS + SQLite: results, statuses, errors, idempotency."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from dbos import DBOS
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import (
    NotSerializableError,
    RunConflictError,
    StepFailedError,
    durable,
    durable_step,
    now,
    random,
    uuid4,
)

executions: Counter[str] = Counter()


class Half(Event):
    value: int


@durable_step
def sync_double(x: int) -> int:
    executions["sync_double"] += 1
    return 2 * x


class Tools:
    @durable_step(name="tools.add")
    async def add(self, x: int, y: int) -> int:
        executions["tools.add"] += 1
        return x + y


@durable
class Calc(Workflow):
    @step
    async def first(self, ev: StartEvent) -> Half:
        executions["first"] += 1
        return Half(value=sync_double(ev.x))

    @step
    def second(self, ev: Half) -> StopEvent:  # a sync step
        executions["second"] += 1
        return StopEvent(result=sync_double(ev.value))


@durable
class WithHelpers(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        total = await Tools().add(1, 2)
        stamp, r, u = await now(), await random(), await uuid4()
        return StopEvent(result={"total": total, "now": stamp, "r": r, "u": u})


class Boom(Exception):
    pass


class PickyError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")


@durable
class Fails(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        if ev.kind == "picky":
            raise PickyError(7, "custom init")
        raise Boom("step exploded")


class Holder(Event):
    lock: object


@durable
class BadOutput(Workflow):
    @step
    async def only(self, ev: StartEvent) -> Holder:
        return Holder(lock=threading.Lock())

    @step
    async def never(self, ev: Holder) -> StopEvent:
        return StopEvent()


@durable
class BadSend(Workflow):
    @step
    async def only(self, ctx: Context, ev: StartEvent) -> Holder | None:
        ctx.send_event(Holder(lock=threading.Lock()))
        return None

    @step
    async def never(self, ev: Holder) -> StopEvent:
        return StopEvent()


class Item(Event):
    i: int
    n: int


class Squared(Event):
    value: int
    n: int


@durable
class Fan(Workflow):
    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        for i in range(ev.n):
            ctx.send_event(Item(i=i, n=ev.n))
        ctx.write_event_to_stream(Half(value=ev.n))
        return None

    @step(num_workers=4)
    async def work(self, ev: Item) -> Squared:
        await asyncio.sleep(0.001 * (ev.i % 3))
        return Squared(value=ev.i * ev.i, n=ev.n)

    @step
    async def collect(self, ctx: Context, ev: Squared) -> StopEvent | None:
        got = ctx.collect_events(ev, [Squared] * ev.n)
        return None if got is None else StopEvent(result=sum(e.value for e in got))


async def statuses(prefix: str) -> dict[str, str]:
    workflows = await DBOS.list_workflows_async(workflow_id_prefix=prefix)
    return {w.workflow_id: w.status for w in workflows}


async def test_run_result_status_and_children(dbos_app: str) -> None:
    executions.clear()
    assert await Calc(timeout=None).run(run_id="calc-1", x=3) == 12
    assert executions == Counter(first=1, second=1, sync_double=2)
    assert await statuses("calc-1") == {
        "calc-1": "SUCCESS",
        "calc-1/first/0": "SUCCESS",
        "calc-1/second/1": "SUCCESS",
    }
    stop = await (await DBOS.retrieve_workflow_async("calc-1")).get_result()
    assert isinstance(stop, StopEvent) and stop.result == 12
    steps = await DBOS.list_workflow_steps_async("calc-1/first/0")
    assert [s["function_name"] for s in steps] == [f"{__name__}.sync_double"]


async def test_same_run_id_twice_concurrently_and_after_runs_once(dbos_app: str) -> None:
    executions.clear()
    wf = Calc(timeout=None)
    a, b = await asyncio.gather(wf.run(run_id="calc-2", x=1), wf.run(run_id="calc-2", x=1))
    assert a == b == 4
    assert await Calc(timeout=None).run(run_id="calc-2", x=1) == 4
    assert executions == Counter(first=1, second=1, sync_double=2)


async def test_run_id_of_another_workflow_is_a_conflict(dbos_app: str) -> None:
    await Calc(timeout=None).run(run_id="calc-3", x=1)
    with pytest.raises(RunConflictError, match="calc-3"):
        await Fails(timeout=None).run(run_id="calc-3", kind="boom")


async def test_durable_steps_methods_and_helpers_are_recorded(dbos_app: str) -> None:
    executions.clear()
    result = await WithHelpers(timeout=None).run(run_id="helpers-1")
    assert result["total"] == 3
    steps = await DBOS.list_workflow_steps_async("helpers-1/only/0")
    names = [s["function_name"] for s in steps]
    assert names == ["tools.add", "dbos_llama.now", "dbos_llama.random", "dbos_llama.uuid4"]
    assert [s["output"] for s in steps] == [3, result["now"], result["r"], result["u"]]


async def test_step_error_fails_the_run_with_that_exception(dbos_app: str) -> None:
    with pytest.raises(Boom, match="step exploded"):
        await Fails(timeout=None).run(run_id="fails-1", kind="boom")
    assert (await statuses("fails-1"))["fails-1"] == "ERROR"
    handle = await DBOS.retrieve_workflow_async("fails-1")
    with pytest.raises(Boom, match="step exploded"):
        await handle.get_result()
    assert "PENDING" not in (await statuses("fails-1")).values()


async def test_unstorable_step_error_is_kept_as_a_record(dbos_app: str) -> None:
    with pytest.raises(StepFailedError) as info:
        await Fails(timeout=None).run(run_id="fails-2", kind="picky")
    assert info.value.type_name == f"{__name__}.PickyError"
    assert info.value.message == "7: custom init"
    assert "raise PickyError" in info.value.traceback_text
    with pytest.raises(StepFailedError, match="PickyError"):
        await (await DBOS.retrieve_workflow_async("fails-2")).get_result()


async def test_unserializable_start_event_fails_at_the_call_and_persists_nothing(
    dbos_app: str,
) -> None:
    with pytest.raises(NotSerializableError, match=r"StartEvent\.lock .*lock"):
        Calc(timeout=None).run(run_id="bad-start", x=1, lock=threading.Lock())
    assert await statuses("bad-start") == {}


async def test_unserializable_step_result_names_the_field(dbos_app: str) -> None:
    with pytest.raises(NotSerializableError, match=r"'only' returned Holder.*Holder\.lock"):
        await BadOutput(timeout=None).run(run_id="bad-out")
    assert (await statuses("bad-out"))["bad-out"] == "ERROR"


async def test_unserializable_sent_event_fails_at_send(dbos_app: str) -> None:
    with pytest.raises(NotSerializableError, match=r"ctx.send_event.*Holder\.lock"):
        await BadSend(timeout=None).run(run_id="bad-send")


async def test_fan_out_collect_and_stream(dbos_app: str) -> None:
    wf = Fan(timeout=None)
    for attempt in range(3):
        handler = wf.run(run_id=f"fan-{attempt}", n=20)
        seen = [ev async for ev in handler.stream_events()]
        assert await handler == sum(i * i for i in range(20))
        assert isinstance(seen[0], Half) and isinstance(seen[-1], StopEvent)
        runs = await statuses(f"fan-{attempt}")
        assert set(runs.values()) == {"SUCCESS"}
        assert len([w for w in runs if "/work/" in w]) == 20
