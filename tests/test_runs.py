"""Runs in one process on real DBOS + SQLite: results, statuses, errors, idempotency."""

from __future__ import annotations

import asyncio
import logging
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


class Slow(Event):
    pass


#: Steps of `Race` whose code has started (what `fast` waits for).
race_started: set[str] = set()


@durable
class Race(Workflow):
    """The StopEvent arrives while a sibling step is still running."""

    @step
    async def start(self, ctx: Context, ev: StartEvent) -> Slow | Half:
        ctx.send_event(Slow())
        return Half(value=1)

    @step
    async def slow(self, ev: Slow) -> StopEvent:
        race_started.add("slow")
        await asyncio.sleep(30)
        return StopEvent(result="slow")

    @step
    async def fast(self, ev: Half) -> StopEvent:
        while "slow" not in race_started:  # the sibling is running when this ends
            await asyncio.sleep(0.01)
        return StopEvent(result="fast")


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


async def test_abandoned_sibling_is_cancelled_not_left_pending(dbos_app: str) -> None:
    race_started.clear()
    assert await Race(timeout=None).run(run_id="race-1") == "fast"
    runs = await statuses("race-1")
    assert runs["race-1"] == "SUCCESS"
    assert [s for w, s in runs.items() if "/slow/" in w] == ["CANCELLED"]
    assert "PENDING" not in runs.values()


async def test_successful_run_logs_no_error_or_traceback(dbos_app: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    assert await Fan(timeout=None).run(run_id="quiet-1", n=6) == sum(i * i for i in range(6))
    assert await Calc(timeout=None).run(run_id="quiet-2", x=2) == 8
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert noisy == []


class CalcTimesTen(Calc):
    """A subclass of a durable class: registered under its own name, runs durably."""

    @step
    def second(self, ev: Half) -> StopEvent:
        return StopEvent(result=ev.value * 10)


flaky_calls: list[int] = []


@durable_step(max_attempts=3, interval_seconds=0.01, backoff_rate=1.0)
async def flaky(x: int) -> int:
    flaky_calls.append(x)
    if len(flaky_calls) < 3:
        raise ConnectionError("transient")
    return x


@durable
class UsesFlaky(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=await flaky(ev.x))


async def test_subclass_of_durable_class_runs_durably(dbos_app: str) -> None:
    assert await CalcTimesTen(timeout=None).run(run_id="sub-1", x=2) == 40
    runs = await DBOS.list_workflows_async(workflow_id_prefix="sub-1")
    assert {w.name for w in runs} == {
        f"llama:{__name__}.CalcTimesTen",
        f"llama:{__name__}.CalcTimesTen/first",
        f"llama:{__name__}.CalcTimesTen/second",
    }


async def test_durable_step_retries_then_records_once(dbos_app: str) -> None:
    flaky_calls.clear()
    assert await UsesFlaky(timeout=None).run(run_id="flaky-1", x=5) == 5
    assert flaky_calls == [5, 5, 5]
    steps = await DBOS.list_workflow_steps_async("flaky-1/only/0")
    assert [(s["function_name"], s["output"]) for s in steps] == [(f"{__name__}.flaky", 5)]
