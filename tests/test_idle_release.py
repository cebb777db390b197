"""Idle release (``@durable(idle_release=...)``): waiting runs leave their worker's
memory, read as waiting, and come back for their event or timeout, on real DBOS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from workflows.errors import WorkflowCancelledByUser
from workflows.events import HumanResponseEvent

from dbos_llama import DurableClient, RunInfo
from dbos_llama._naming import TICK_TOPIC
from dbos_llama._release import ReleaseTable
from dbos_llama._release_run import local
from dbos_llama._upstream import has_pending_message
from tests.conftest import ROOT, _driver_env, read_log, snapshot, start_driver
from tests.flows import IdleApproval, IdleDeadline
from tests.test_cli import cli
from tests.test_human_in_the_loop import send_from_bare_process


async def released(db_url: str, run_id: str, timeout: float = 30) -> RunInfo:
    """The run's info once it reads released (it waited past its idle threshold)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with DurableClient(db_url) as client:
                info = await client.get_run(run_id)
        except Exception:  # the worker has not created the database or the run yet
            if time.monotonic() > deadline:
                raise
        else:
            if info.released or time.monotonic() > deadline:
                assert info.released, info
                return info
        await asyncio.sleep(0.2)


def finished(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{out}\n{err}"
    return out


async def test_a_released_run_reads_waiting_and_an_answer_from_another_process_ends_it(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    worker = start_driver(db_url, "idle-approval", "idle-1", {"customer": "ada"}, log)
    try:
        info = await released(db_url, "idle-1")
        assert (info.status, info.finished) == ("PENDING", False)
        # In DBOS the run's workflow is not executing anywhere: it is CANCELLED.
        assert snapshot(db_url, "idle-1").statuses["idle-1"] == "CANCELLED"
        async with DurableClient(db_url) as client:
            pending = [r.run_id for r in await client.list_runs(status="PENDING")]
            cancelled = [r.run_id for r in await client.list_runs(status="CANCELLED")]
        assert "idle-1" in pending and "idle-1" not in cancelled
        listed = json.loads(cli(db_url, "runs", "list", "--json").stdout)
        assert [(r["status"], r["released"]) for r in listed if r["run_id"] == "idle-1"] == [
            ("PENDING", True)
        ]
        assert "released: waiting for its event" in cli(db_url, "runs", "show", "idle-1").stdout

        # A process without the workflow's code answers: the worker takes the run up.
        assert "PENDING" in send_from_bare_process(db_url, "idle-1", "yes")
        out = finished(worker)
    finally:
        worker.kill()
    assert 'RESULT "answer=yes"' in out
    lines = read_log(log)
    assert lines["step:idle-1/ask/0"] == 1  # the asking step did not run again
    assert lines["effect:quote"] == 1
    assert lines["decided:yes"] == 1
    assert set(snapshot(db_url, "idle-1").statuses.values()) == {"SUCCESS"}


async def test_handler_and_cli_sends_wake_released_runs(dbos_app: str) -> None:
    by_handler = IdleApproval(timeout=None).run(run_id="idle-h", customer="bo")
    by_cli = IdleApproval(timeout=None).run(run_id="idle-c", customer="cy")
    await released(dbos_app, "idle-h")
    await released(dbos_app, "idle-c")
    await by_handler.send_event(HumanResponseEvent(response="handler"))
    event = json.dumps({"type": "workflows.events.HumanResponseEvent", "data": {"response": "cli"}})
    await asyncio.to_thread(cli, dbos_app, "runs", "send", "idle-c", event)
    assert await asyncio.wait_for(by_handler, 30) == "answer=handler"
    assert await asyncio.wait_for(by_cli, 30) == "answer=cli"


async def test_a_released_wait_ends_with_its_timeout(dbos_app: str) -> None:
    began = time.monotonic()
    handler = IdleDeadline(timeout=None).run(run_id="idle-t", wait=4.0)
    info = await released(dbos_app, "idle-t")
    assert info.status == "PENDING"
    # Nothing is sent: the sweep wakes the run when its wait's 4 s are up.
    assert await asyncio.wait_for(handler, 30) == "<before-wait>:timed-out"
    took = time.monotonic() - began
    assert 4.0 <= took < 15, took  # released time counted toward the timeout


async def test_a_released_run_can_be_cancelled_then_resumed(dbos_app: str) -> None:
    handler = IdleApproval(timeout=None).run(run_id="idle-x", customer="di")
    await released(dbos_app, "idle-x")
    async with DurableClient(dbos_app) as client:
        assert await client.cancel("idle-x") is True
        info = await client.get_run("idle-x")
        assert (info.status, info.released) == ("CANCELLED", False)
        with pytest.raises(WorkflowCancelledByUser):
            await asyncio.wait_for(handler, 30)
        # Resumed, it waits again (and is released again), then takes its answer.
        await client.resume("idle-x")
        await released(dbos_app, "idle-x")
        await client.send_event("idle-x", HumanResponseEvent(response="later"))
        assert await asyncio.wait_for(client.get_result("idle-x"), 30) == "answer=later"
        steps = [s.step for s in await client.steps("idle-x")]
    assert steps.count("ask") == 1


async def test_a_released_run_can_be_forked(dbos_app: str) -> None:
    IdleApproval(timeout=None).run(run_id="idle-f", customer="ed")
    await released(dbos_app, "idle-f")
    async with DurableClient(dbos_app) as client:
        fork = await client.fork("idle-f", "ask", new_run_id="idle-f2")
        await released(dbos_app, fork)  # the fork asks again, and waits released too
        await client.send_event(fork, HumanResponseEvent(response="fork"))
        await client.send_event("idle-f", HumanResponseEvent(response="original"))
        assert await asyncio.wait_for(client.get_result(fork), 30) == "answer=fork"
        assert await asyncio.wait_for(client.get_result("idle-f"), 30) == "answer=original"


async def test_sweep_leaves_runs_of_other_states_alone(dbos_app: str) -> None:
    releases = local()
    assert releases is not None
    assert releases.sweep() == 0
    assert releases.wake("no-such-run") is False


@pytest.mark.slow
async def test_crash_during_release(sqlite_url: str, tmp_path: Path) -> None:
    """Killed after the run's workflow was cancelled, before the release is recorded
    as done: the run reads waiting, and a live worker's sweep finishes the release and
    delivers the answer that came meanwhile."""
    log = tmp_path / "log"
    kwargs = json.dumps({"customer": "fay"})
    dying = subprocess.run(
        [sys.executable, "-m", "tests.idle_crash", "release", sqlite_url, "idle-approval"]
        + ["idle-cr", kwargs],
        cwd=ROOT,
        env=_driver_env(log, {}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dying.returncode == 137, dying.stderr
    assert snapshot(sqlite_url, "idle-cr").statuses["idle-cr"] == "CANCELLED"
    info = await released(sqlite_url, "idle-cr", timeout=5)
    assert info.status == "PENDING"
    send_from_bare_process(sqlite_url, "idle-cr", "meanwhile")
    worker = start_driver(sqlite_url, "idle-approval", "idle-cr", {"customer": "fay"}, log)
    try:
        out = finished(worker, timeout=90)
    finally:
        worker.kill()
    assert 'RESULT "answer=meanwhile"' in out
    assert read_log(log)["effect:quote"] == 1


@pytest.mark.slow
async def test_crash_during_wake_up(sqlite_url: str, tmp_path: Path) -> None:
    """A sender killed after it claimed the released run, before it resumed it: the
    run still reads waiting, and the worker's sweep resumes it."""
    log = tmp_path / "log"
    worker = start_driver(sqlite_url, "idle-approval", "idle-cw", {"customer": "gus"}, log)
    try:
        await released(sqlite_url, "idle-cw")
        sender = subprocess.run(
            [sys.executable, "-m", "tests.idle_crash", "wake", sqlite_url, "idle-cw", "ok"],
            cwd=ROOT,
            env=_driver_env(log, {}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (sender.returncode, "CLAIMED idle-cw" in sender.stdout) == (137, True), sender
        info = await released(sqlite_url, "idle-cw", timeout=5)
        assert info.status == "PENDING"
        out = finished(worker, timeout=90)
    finally:
        worker.kill()
    assert 'RESULT "answer=ok"' in out
    assert read_log(log)["step:idle-cw/ask/0"] == 1


async def test_a_served_run_is_released_and_woken_through_the_server(
    sqlite_url: str, tmp_path: Path
) -> None:
    from llama_agents.client import WorkflowClient

    from tests.serving import Served, effect_counts
    from tests.test_server import events_of

    log = tmp_path / "log"
    with Served(sqlite_url, log) as served:
        client = WorkflowClient(base_url=served.base_url)
        await client.run_workflow_nowait(
            "idle-approval", handler_id="h-idle", start_event={"topic": "q9"}
        )
        await events_of(served.base_url, "h-idle", until="InputRequiredEvent")
        await released(sqlite_url, "h-idle")  # found by its handler ID
        # The server shows it still running, not cancelled.
        assert (await client.get_handler("h-idle")).status == "running"
        await client.send_event("h-idle", HumanResponseEvent(response="served"))
        handler = await client.wait_for_handler("h-idle", timeout=60)
    assert handler.status == "completed", handler
    assert handler.result.value["result"] == "answer=served"
    assert effect_counts(log) == {"effect:quote:q9": 1}


async def test_streams_go_on_across_a_release(dbos_app: str) -> None:
    handler = IdleApproval(timeout=None).run(run_id="idle-s", customer="hal")
    seen: list[str] = []

    async def watch() -> None:
        async for event in handler.stream_events():
            seen.append(type(event).__name__)

    watching = asyncio.ensure_future(watch())
    async with DurableClient(dbos_app) as client:
        await released(dbos_app, "idle-s")
        followed = asyncio.ensure_future(
            asyncio.wait_for(_collect(client.read_stream("idle-s")), 30)
        )
        await asyncio.sleep(0.5)  # the client's reader is past the stored events
        await client.send_event("idle-s", HumanResponseEvent(response="go"))
        assert await asyncio.wait_for(handler, 30) == "answer=go"
        await asyncio.wait_for(watching, 30)
        stored = [type(e).__name__ for e in await followed]
    assert seen[-3:] == ["InputRequiredEvent", "Progress", "StopEvent"], seen
    assert stored == ["InputRequiredEvent", "Progress", "StopEvent"]


async def _collect(events: Any) -> list[Any]:
    return [event async for event in events]


async def test_an_answer_taken_during_the_release_is_not_lost(
    dbos_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's receive takes the answer after its release began, before its
    workflow is cancelled: the release goes on, and the run is woken at once."""
    real_begin = ReleaseTable.begin
    releases = local()
    assert releases is not None

    def begin_then_answer(self: ReleaseTable, run_id: str, *args: Any) -> None:
        real_begin(self, run_id, *args)
        if run_id != "idle-race":
            return

        async def answer() -> None:
            async with DurableClient(dbos_app) as client:
                await client.send_event(run_id, HumanResponseEvent(response="raced"))

        asyncio.run(answer())
        deadline = time.monotonic() + 10
        while has_pending_message(releases.table.engine, run_id, TICK_TOPIC):
            assert time.monotonic() < deadline, "the live receive never took the answer"
            time.sleep(0.05)

    monkeypatch.setattr(ReleaseTable, "begin", begin_then_answer)
    handler = IdleApproval(timeout=None).run(run_id="idle-race", customer="ivy")
    assert await asyncio.wait_for(handler, 30) == "answer=raced"
    async with DurableClient(dbos_app) as client:
        steps = [s.step for s in await client.steps("idle-race")]
    assert steps.count("ask") == 1


async def test_an_answer_that_arrives_as_the_idle_window_ends_is_not_lost(
    dbos_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mailbox takes the answer in the same turn of the event loop as the idle
    window ends (found by a 2,000-run drain: 2 runs were released with their answer
    consumed and never woken): the run is not released; it goes on with its answer."""
    import dbos_llama._decisions as decisions

    injected: list[bool] = []

    class ArrivalAtTheDeadline:
        """``asyncio`` for the decision engine, whose idle wait ([pull, arrival], with
        a timeout) times out in the turn the arrival comes."""

        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        async def wait(self, fs: Any, *, timeout: Any = None, return_when: Any = None) -> Any:
            fs = list(fs)
            if injected or timeout is None or len(fs) != 2:
                return await asyncio.wait(fs, timeout=timeout, return_when=return_when)
            injected.append(True)
            async with DurableClient(dbos_app) as client:
                await client.send_event("idle-arrival", HumanResponseEvent(response="late"))
            await asyncio.wait([fs[1]])  # the mailbox holds the answer now...
            return set(), set(fs)  # ...and the window ended as it came

    monkeypatch.setattr(decisions, "asyncio", ArrivalAtTheDeadline())
    handler = IdleApproval(timeout=None).run(run_id="idle-arrival", customer="kim")
    assert await asyncio.wait_for(handler, 30) == "answer=late"
    assert injected
    async with DurableClient(dbos_app) as client:
        steps = [s.step for s in await client.steps("idle-arrival")]
    assert steps.count("ask") == 1
