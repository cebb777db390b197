"""Idle release of a run whose only running step is in a long durable sleep
(`dbos_llama.sleep`): the run and the sleeping step leave the worker's memory and
come back when the sleep ends, on real DBOS with real worker processes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from workflows.errors import WorkflowCancelledByUser

from dbos_llama import DurableClient, RunInfo
from dbos_llama._asleep import sleep_left
from dbos_llama._records import StepRow
from tests.conftest import read_log, snapshot, start_driver
from tests.flows import IdleNap, Poke
from tests.test_idle_release import finished, released

NAP = "nap/0"  # the sleeping step's invocation, under the run's ID


async def nap_through(
    db_url: str,
    run_id: str,
    seconds: float,
    log: Path,
    while_released: Callable[[RunInfo], Awaitable[None]],
) -> float:
    """Run the "idle-nap" flow in a worker process; once the run reads released, call
    ``while_released``; return the seconds until the run ended with its result."""
    began = time.monotonic()
    worker = start_driver(db_url, "idle-nap", run_id, {"seconds": seconds}, log)
    try:
        await while_released(await released(db_url, run_id))
        out = finished(worker)
    finally:
        worker.kill()
    assert 'RESULT "<before-nap><after-nap>"' in out
    return time.monotonic() - began


async def test_a_run_whose_step_sleeps_past_the_idle_threshold_is_released_until_it_wakes(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"

    async def while_released(info: RunInfo) -> None:
        assert (info.status, info.finished) == ("PENDING", False)
        # Neither the run nor its sleeping step is executing anywhere.
        statuses = snapshot(db_url, "nap-1").statuses
        assert (statuses["nap-1"], statuses[f"nap-1/{NAP}"]) == ("CANCELLED", "CANCELLED")
        assert read_log(log)["woke"] == 0

    took = await nap_through(db_url, "nap-1", 6.0, log, while_released)
    assert 6.0 <= took < 25, took
    lines = read_log(log)
    # The step's code ran again when woken; its completed call was not repeated.
    assert lines[f"step:nap-1/{NAP}"] == 2
    assert (lines["effect:before-nap"], lines["woke"], lines["effect:after-nap"]) == (1, 1, 1)
    assert set(snapshot(db_url, "nap-1").statuses.values()) == {"SUCCESS"}


async def test_an_event_sent_while_the_run_sleeps_released_is_taken_and_the_sleep_ends_on_time(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"

    async def poke(info: RunInfo) -> None:
        async with DurableClient(db_url) as client:
            await client.send_event("nap-2", Poke(note="hello"))

    took = await nap_through(db_url, "nap-2", 8.0, log, poke)
    assert 8.0 <= took < 30, took
    lines = read_log(log)
    assert lines["poked:hello"] == 1
    assert (lines["effect:before-nap"], lines["woke"], lines["effect:after-nap"]) == (1, 1, 1)


@pytest.mark.slow
async def test_a_run_released_asleep_wakes_in_another_worker_after_its_own_died(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    first = start_driver(db_url, "idle-nap", "nap-3", {"seconds": 6.0}, log)
    try:
        await released(db_url, "nap-3")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # A worker started anew (a new process, the same code) wakes it when the sleep ends.
    second = start_driver(db_url, "idle-nap", "nap-3", {"seconds": 6.0}, log)
    try:
        out = finished(second)
    finally:
        second.kill()
    assert 'RESULT "<before-nap><after-nap>"' in out
    lines = read_log(log)
    assert (lines["effect:before-nap"], lines["woke"], lines["effect:after-nap"]) == (1, 1, 1)


async def test_a_run_released_asleep_can_be_cancelled_then_resumed(
    dbos_app: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    monkeypatch.setenv("DBOS_LLAMA_TEST_LOG", str(log))
    handler = IdleNap(timeout=None).run(run_id="nap-x", seconds=4.0)
    await released(dbos_app, "nap-x")
    async with DurableClient(dbos_app) as client:
        await client.cancel("nap-x")
    with pytest.raises(WorkflowCancelledByUser):
        await asyncio.wait_for(handler, 30)
    await asyncio.sleep(7)  # past the sleep's end: nothing wakes it
    statuses = snapshot(dbos_app, "nap-x").statuses
    assert (statuses["nap-x"], statuses[f"nap-x/{NAP}"]) == ("CANCELLED", "CANCELLED")
    assert read_log(log)["woke"] == 0
    # Resumed, it goes on with its step (its sleep is over) and ends.
    async with DurableClient(dbos_app) as client:
        await client.resume("nap-x")
        assert await asyncio.wait_for(client.get_result("nap-x"), 30) == ("<before-nap><after-nap>")
    assert read_log(log)["effect:before-nap"] == 1


def test_the_time_left_of_a_sleep_is_its_last_recorded_end() -> None:
    def row(function_id: int, name: str, output: object) -> StepRow:
        return StepRow(function_id, name, output, None, None, None, None)

    rows = [row(1, "effect", "<x>"), row(2, "DBOS.sleep", 100.0), row(4, "DBOS.sleep", 250.0)]
    assert sleep_left(rows, 200.0) == 50.0
    assert sleep_left(rows[:1], 200.0) is None
