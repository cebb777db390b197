"""Retries and timeouts: decisions are recorded, so a replay keeps the schedule."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from dbos import DBOS
from workflows import Context, Workflow, step
from workflows.errors import WorkflowCancelledByUser, WorkflowTimeoutError
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)

from dbos_llama import DurableClient, durable
from tests.conftest import kill_then_finish, read_log, run_driver, snapshot


@pytest.mark.parametrize("crash_at", [None, "shaky:1", "shaky:2"])
def test_retry_schedule_survives_a_crash(tmp_path: Path, db_url: str, crash_at) -> None:
    log = tmp_path / "log"
    done = kill_then_finish(db_url, "flaky", "f-1", {}, log, crash_at)
    assert done.returncode == 0, done.stderr
    assert "DBOSUnexpectedStepError" not in done.stderr
    # The step counts earlier executions in the log: the killed one counts too.
    executions = 4 if crash_at == "shaky:2" else 3
    assert done.result == f"ok after {executions - 1} failures"
    assert read_log(log)["shaky-attempt"] == executions
    statuses = snapshot(db_url, "f-1").statuses
    # One child workflow per attempt; an attempt killed mid-way is resumed (and here
    # succeeds), not counted as a failure.
    attempts = 2 if crash_at == "shaky:1" else 3
    assert sorted(w for w in statuses if "/shaky/" in w) == [
        f"f-1/shaky/{n}" for n in range(attempts)
    ]
    assert set(statuses.values()) == {"SUCCESS"}


@pytest.mark.parametrize("crash_at", [None, "sib:2"])
def test_retry_delays_replay_while_a_sibling_runs(tmp_path: Path, db_url: str, crash_at) -> None:
    # While the sibling runs, each retry delay ends with a recorded timeout: a
    # replay must take the same decisions at the same recorded times.
    log = tmp_path / "log"
    done = kill_then_finish(db_url, "flaky-sibling", "fs-1", {}, log, crash_at)
    assert done.returncode == 0, done.stderr
    assert "DBOSUnexpectedStepError" not in done.stderr
    # Three failures, then success; a killed attempt is resumed and succeeds.
    assert done.result == "shaky after 3 + steady"
    assert read_log(log)["sib-attempt"] == 4
    assert set(snapshot(db_url, "fs-1").statuses.values()) == {"SUCCESS"}


def test_timeout_counts_alive_time_not_downtime(tmp_path: Path, db_url: str) -> None:
    log = tmp_path / "log"
    first = run_driver(db_url, "timed", "tm-1", {}, log, crash_at="timed:one")
    assert first.returncode == 137, first.stderr
    time.sleep(4.5)  # the process is down for longer than the whole 4 s budget
    done = run_driver(db_url, "timed", "tm-1", {}, log)
    assert done.returncode == 0, done.stderr
    assert done.result == "<timed-one>"
    assert snapshot(db_url, "tm-1").statuses["tm-1"] == "SUCCESS"


@durable
class Slowpoke(Workflow):
    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(ev.seconds)
        return StopEvent(result="woke")


async def test_timeout_fails_the_run_cleanly(dbos_app: str) -> None:
    with pytest.raises(WorkflowTimeoutError):
        await Slowpoke(timeout=0.5).run(run_id="slow-1", seconds=30)
    statuses = {w.workflow_id: w.status for w in await DBOS.list_workflows_async()}
    assert statuses["slow-1"] == "ERROR"
    assert "PENDING" not in statuses.values(), statuses
    async with DurableClient(dbos_app) as client:
        with pytest.raises(WorkflowTimeoutError):
            await client.get_result("slow-1")


async def test_no_timeout_runs_as_long_as_needed(dbos_app: str) -> None:
    assert await Slowpoke(timeout=None).run(run_id="slow-2", seconds=1.2) == "woke"


@pytest.mark.parametrize("crash_at", [None, "rescue:handler", "effect:rescue-call"])
def test_catch_error_handler_survives_a_crash(tmp_path: Path, db_url: str, crash_at) -> None:
    log = tmp_path / "log"
    done = kill_then_finish(db_url, "rescued", "r-1", {}, log, crash_at)
    assert done.result == "rescued fragile: the fragile step broke <rescue-call>"
    lines = read_log(log)
    assert lines["step:r-1/fragile/0"] == 1  # the failed step is not run again
    assert lines["effect:fragile-call"] == 1
    assert lines["effect:rescue-call"] == (2 if crash_at == "effect:rescue-call" else 1)
    assert set(snapshot(db_url, "r-1").statuses.values()) == {"SUCCESS"}


class Ping(Event):
    n: int


class Pong(Event):
    side: str


@durable
class Router(Workflow):
    @step
    async def start(self, ctx: Context, ev: StartEvent) -> Ping | None:
        ctx.send_event(Ping(n=1), step="right")
        return None

    @step
    async def left(self, ev: Ping) -> Pong:
        return Pong(side="left")

    @step
    async def right(self, ev: Ping) -> Pong:
        return Pong(side="right")

    @step
    async def done(self, ev: Pong) -> StopEvent:
        return StopEvent(result=ev.side)


async def test_send_event_to_a_named_step(dbos_app: str) -> None:
    assert await Router(timeout=None).run(run_id="route-1") == "right"


async def test_list_and_resume_runs(dbos_app: str) -> None:
    from tests.flows import Approval

    async with DurableClient(dbos_app) as client:
        handler = Approval(timeout=None).run(run_id="res-1", customer="ivy")
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                await client.cancel("res-1")
                break
        with pytest.raises(WorkflowCancelledByUser):
            await handler
        assert await Slowpoke(timeout=None).run(run_id="res-2", seconds=0) == "woke"

        runs = await client.list_runs()
        assert [r.run_id for r in runs][:2] == ["res-2", "res-1"]  # newest first
        assert [r.status for r in await client.list_runs(workflow="tests.flows.Approval")] == [
            "CANCELLED"
        ]
        assert await client.list_runs(status="SUCCESS", limit=5) == [runs[0]]

        # Resume the cancelled run: it continues from its checkpoints and waits again.
        await client.resume("res-1")
        await client.send_event("res-1", HumanResponseEvent(response="after all"))
        assert await client.get_result("res-1") == "answer=after all"


async def test_a_run_cancelled_mid_step_resumes_with_its_step(dbos_app: str) -> None:
    """The cancel stops the running step with the run; the resume starts it again
    (before, the run's replay found its step cancelled and ended CANCELLED again)."""
    handler = Slowpoke(timeout=None).run(run_id="mid-1", seconds=2)
    await asyncio.sleep(0.5)  # the step sleeps
    async with DurableClient(dbos_app) as client:
        assert await client.cancel("mid-1") is True
        with pytest.raises(WorkflowCancelledByUser):
            await handler
        assert snapshot(dbos_app, "mid-1").statuses["mid-1/nap/0"] == "CANCELLED"
        await client.resume("mid-1")
        assert await asyncio.wait_for(client.get_result("mid-1"), 30) == "woke"
    assert set(snapshot(dbos_app, "mid-1").statuses.values()) == {"SUCCESS"}


@pytest.mark.parametrize("crash_at", [None, "inner:work"])
def test_nested_durable_run_from_a_step(tmp_path: Path, db_url: str, crash_at) -> None:
    log = tmp_path / "log"
    done = kill_then_finish(db_url, "outer", "o-1", {"run": "o-1"}, log, crash_at)
    assert done.result == "outer(<inner-o-1>)"
    # The nested run is one run: its completed call is never repeated, and the
    # outer step (in flight at the kill) attaches to it instead of starting another.
    assert read_log(log)["effect:inner-o-1"] == 1
    statuses = snapshot(db_url, "o-1").statuses
    assert statuses == {
        "o-1": "SUCCESS",
        "o-1/delegate/0": "SUCCESS",
        "o-1-inner": "SUCCESS",
        "o-1-inner/work/0": "SUCCESS",
    }
