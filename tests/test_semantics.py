"""Retries and timeouts: decisions are recorded, so a replay keeps the schedule."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dbos import DBOS
from workflows import Workflow, step
from workflows.errors import WorkflowTimeoutError
from workflows.events import StartEvent, StopEvent

from dbos_llama import DurableClient, durable
from tests.conftest import read_log, run_driver, snapshot


@pytest.mark.parametrize("crash_at", [None, "shaky:1", "shaky:2"])
def test_retry_schedule_survives_a_crash(tmp_path: Path, db_url: str, crash_at) -> None:
    log = tmp_path / "log"
    if crash_at is not None:
        first = run_driver(db_url, "flaky", "f-1", {}, log, crash_at=crash_at)
        assert first.returncode == 137, first.stderr
    done = run_driver(db_url, "flaky", "f-1", {}, log)
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
    if crash_at is not None:
        first = run_driver(db_url, "flaky-sibling", "fs-1", {}, log, crash_at=crash_at)
        assert first.returncode == 137, first.stderr
    done = run_driver(db_url, "flaky-sibling", "fs-1", {}, log)
    assert done.returncode == 0, done.stderr
    assert "DBOSUnexpectedStepError" not in done.stderr
    # Three failures, then success; a killed attempt is resumed and succeeds.
    assert done.result == "shaky after 3 + steady"
    assert read_log(log)["sib-attempt"] == 4
    assert set(snapshot(db_url, "fs-1").statuses.values()) == {"SUCCESS"}


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
