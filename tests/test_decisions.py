"""Which decisions a run records: none when a lone step finishes first, and the clock
still right for what a step's result schedules (retries, waiter timeouts)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from dbos import DBOS
from workflows import Context, Workflow, step
from workflows.errors import WorkflowCancelledByUser, WorkflowTimeoutError
from workflows.events import Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent
from workflows.retry_policy import ConstantDelayRetryPolicy

from dbos_llama import durable
from tests.conftest import run_driver


class Hop(Event):
    value: int


@durable
class ThreeHops(Workflow):
    @step
    async def one(self, ev: StartEvent) -> Hop:
        return Hop(value=1)

    @step
    async def two(self, ev: Hop) -> StopEvent | Hop:
        if ev.value < 3:
            return Hop(value=ev.value + 1)
        return StopEvent(result=ev.value)


attempts: list[tuple[float, float]] = []


@durable
class SlowFailure(Workflow):
    @step(retry_policy=ConstantDelayRetryPolicy(delay=0.5, maximum_attempts=2))
    async def only(self, ev: StartEvent) -> StopEvent:
        began = time.monotonic()
        await asyncio.sleep(0.6)  # longer than the retry delay
        attempts.append((began, time.monotonic()))
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return StopEvent(result="second")


@durable
class LateWaiter(Workflow):
    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(0.6)  # the step runs a while before it waits
        answer = await ctx.wait_for_event(HumanResponseEvent, timeout=0.5)
        return StopEvent(result=answer.response)


class Go(Event):
    pass


@durable
class LoneThenPair(Workflow):
    """A lone step (no record when it ends), then two steps side by side."""

    @step
    async def lone(self, ev: StartEvent) -> Go:
        await asyncio.sleep(2.0)
        return Go()  # both `left` and `right` take it

    @step
    async def left(self, ev: Go) -> StopEvent:
        await asyncio.sleep(2.5)
        return StopEvent(result="too late")

    @step
    async def right(self, ev: Go) -> StopEvent:
        await asyncio.sleep(2.5)
        return StopEvent(result="too late")


async def recorded_names(run_id: str) -> list[str]:
    steps = await DBOS.list_workflow_steps_async(run_id)
    return [s["function_name"] for s in steps]


async def test_steps_finishing_first_record_no_decision(dbos_app: str) -> None:
    assert await ThreeHops(timeout=None).run(run_id="hops-1") == 3
    names = await recorded_names("hops-1")
    assert [n for n in names if n.startswith("llama:")] == [
        "llama:tests.test_decisions.ThreeHops/one",
        *["llama:tests.test_decisions.ThreeHops/two"] * 3,
    ]
    assert "dbos_llama.next" not in names and "dbos_llama.wake" not in names


async def test_steps_beside_a_run_timeout_record_no_decision(dbos_app: str) -> None:
    # A run timeout is a pending deadline at every wait: steps that finish before
    # it still need no record.
    assert await ThreeHops(timeout=60).run(run_id="hops-2") == 3
    names = await recorded_names("hops-2")
    assert "dbos_llama.next" not in names and "dbos_llama.wake" not in names


async def test_retry_delay_counts_from_the_failure(dbos_app: str) -> None:
    attempts.clear()
    assert await SlowFailure(timeout=None).run(run_id="slow-fail-1") == "second"
    (_, first_end), (second_start, _) = attempts
    # The failure's time is recorded: the delay is not measured from an older clock.
    assert second_start - first_end >= 0.45


async def test_waiter_timeout_counts_from_the_wait(dbos_app: str) -> None:
    handler = LateWaiter(timeout=None).run(run_id="late-wait-1")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="HumanResponseEvent"):
        await handler
    # 0.6 s of step, then the full 0.5 s of waiting (not cut short by the step's time).
    assert time.monotonic() - started >= 1.0


async def test_run_timeout_counts_the_time_of_unrecorded_steps(dbos_app: str) -> None:
    # The lone step's end is not recorded as a decision; the run's clock still
    # advances by its 2 s (from the step's recorded result), so the 3 s run timeout
    # fires about 1 s into the pair of steps, before they end 2.5 s into it (3 s in,
    # had the clock missed the lone step's time, the pair would end the run).
    with pytest.raises(WorkflowTimeoutError):
        await LoneThenPair(timeout=3.0).run(run_id="lone-pair-1")


@durable
class AskWithDeadline(Workflow):
    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="?")

    @step
    async def answer(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=ev.response)


async def test_resumed_run_is_not_stuck_on_its_recorded_cancel(dbos_app: str) -> None:
    # The run waits with a deadline pending, so its wait is a recorded choice; the
    # cancel wins it. Resumed, the run must wait again and its deadline still fire
    # (not wait forever for the cancel that a replay never sees).
    handler = AskWithDeadline(timeout=3.0).run(run_id="ask-deadline-1")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            break
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    resumed = await DBOS.resume_workflow_async("ask-deadline-1")
    with pytest.raises(WorkflowTimeoutError):
        await asyncio.wait_for(resumed.get_result(polling_interval_sec=0.1), timeout=30)


def test_retry_delay_after_a_restart_does_not_count_the_downtime(
    tmp_path: Path, db_url: str
) -> None:
    # The run is killed, stays down 4 s, and is recovered; its step then fails once
    # with a 1 s retry delay. The retry comes about 1 s later, not 1 s + the downtime:
    # before a bystander step that ends the run 3 s after the recovery.
    log = tmp_path / "log"
    first = run_driver(db_url, "retry-after-restart", "retry-1", {}, log, crash_at="retry:prepared")
    assert first.returncode == 137, first.stderr
    time.sleep(4.0)
    done = run_driver(db_url, "retry-after-restart", "retry-1", {}, log)
    assert done.result == "done", done.stderr[-3000:]
    first_try, second_try = (
        float(line.split()[1])
        for line in log.read_text().splitlines()
        if line.startswith("attempt ")
    )
    assert second_try - first_try >= 0.9  # the delay itself is kept
