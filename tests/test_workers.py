"""Several worker processes on one PostgreSQL database: queues, events, dead workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from dbos import DBOS, DBOSClient
from workflows.events import HumanResponseEvent, InputRequiredEvent

from dbos_llama import DurableClient, QueueNotFoundError
from tests.conftest import ROOT
from tests.queued_flows import Job, QueuedApproval
from tests.workers_support import (
    Worker,
    check_exactly_once,
    check_results,
    in_flight_on,
    submit,
    wait_all_done,
    wait_for,
)


async def test_queue_spreads_runs_over_workers_and_events_reach_them(submitter, workers, tmp_path):
    w1, w2 = (
        workers("w1", DBOS_LLAMA_CALL_SECONDS="0.2"),
        workers("w2", DBOS_LLAMA_CALL_SECONDS="0.2"),
    )
    xs, handlers = submit(16, "spread")
    results = await asyncio.wait_for(asyncio.gather(*handlers), 120)
    assert results == [{"x": x, "doubled": 2 * x} for x in xs.values()]
    client = DBOSClient(system_database_url=submitter)
    try:
        per_executor = check_results(client, xs)
        assert set(per_executor) == {"w1", "w2"}, per_executor  # both took runs
        check_exactly_once(tmp_path / "log", client, list(xs), killed_pids=set())
    finally:
        client.destroy()

    # Human in the loop: a queued run waits on some worker; the answer, sent from
    # this process, reaches it there.
    handler = QueuedApproval(timeout=None).run(run_id="approval-1", item="invoice")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            break
    async with DurableClient(submitter) as durable_client:
        await durable_client.send_event("approval-1", HumanResponseEvent(response="yes"))
    result = await asyncio.wait_for(handler, 30)
    assert result["answer"] == "yes"
    assert result["pid"] in w1.pids + w2.pids


async def test_enqueue_without_registered_queue_is_a_clear_error(dbos_app):
    handler = Job(timeout=None).run(run_id="nowhere", x=1)
    with pytest.raises(QueueNotFoundError, match="DBOS.register_queue"):
        await handler
    assert await DBOS.get_workflow_status_async("nowhere") is None


async def test_another_worker_takes_over_a_dead_workers_runs(submitter, workers, tmp_path):
    log = tmp_path / "log"
    w1 = workers("w1", DBOS_LLAMA_CALL_SECONDS="0.5", DBOS_LLAMA_WORKER_CONCURRENCY="4")
    xs, _ = submit(12, "takeover")
    await asyncio.to_thread(wait_for, lambda: in_flight_on(log, w1.pids[0]) >= 4, 60, "w1 busy")
    w1.kill()  # gone for good, with four runs in flight
    workers("w2", DBOS_LLAMA_CALL_SECONDS="0.5")
    async with DurableClient(submitter) as durable_client:
        taken = await durable_client.take_over("w1")
        assert len(taken) == 4 and set(taken) <= set(xs)
        assert await durable_client.take_over("w1") == []  # nothing left to take
    client = DBOSClient(system_database_url=submitter)
    try:
        await asyncio.to_thread(wait_all_done, client, list(xs), 120)
        per_executor = check_results(client, xs)
        assert set(per_executor) == {"w2"}, per_executor
        check_exactly_once(log, client, list(xs), killed_pids={w1.pids[0]})
    finally:
        client.destroy()


@pytest.mark.slow
async def test_load_300_runs_two_workers_one_killed_and_restarted(
    submitter, workers, tmp_path, capsys
):
    log = tmp_path / "log"
    w1 = workers("w1", DBOS_LLAMA_CALL_SECONDS="0.02")
    workers("w2", DBOS_LLAMA_CALL_SECONDS="0.02")
    client = DBOSClient(system_database_url=submitter)
    try:
        started = time.monotonic()
        xs, _ = submit(300, "load")

        def finished() -> int:
            return len(
                client.list_workflows(
                    status="SUCCESS",
                    name="llama:tests.queued_flows.Job",
                    load_input=False,
                    load_output=False,
                )
            )

        await asyncio.to_thread(wait_for, lambda: finished() >= 100, 120, "100 runs")
        killed_at = finished()
        w1.kill()
        w1.start()  # same executor ID: it resumes its own runs
        await asyncio.to_thread(wait_all_done, client, list(xs), 240)
        elapsed = time.monotonic() - started
        per_executor = check_results(client, xs)
        once = check_exactly_once(log, client, list(xs), killed_pids={w1.pids[0]})
    finally:
        client.destroy()
    with capsys.disabled():
        print(
            f"\nload: 300 runs on 2 workers in {elapsed:.1f} s = {300 / elapsed:.1f} runs/s; "
            f"w1 killed after {killed_at} runs and restarted; runs per executor "
            f"{per_executor}; lost 0; {once['calls']} calls recorded once each, "
            f"{once['repeated_in_flight']} re-executed because in flight at the kill"
        )


def test_runs_finish_after_the_database_server_restarts(throwaway_pg, tmp_path):
    cluster, url = throwaway_pg
    log = tmp_path / "log"
    worker = Worker(url, "w1", log, DBOS_LLAMA_CALL_SECONDS="1.0").start()
    client = DBOSClient(system_database_url=url)
    try:
        submitted = subprocess.run(
            [sys.executable, "-m", "tests.submit", url, "fault", "12"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "SUBMITTED" in submitted.stdout, submitted.stderr
        xs = {f"fault-{i}": i for i in range(12)}
        wait_for(lambda: in_flight_on(log, worker.pids[0]) >= 8, 60, "runs in flight")
        cluster.stop()  # the database goes away with eight runs in flight...
        time.sleep(3)
        cluster.start()  # ...and comes back
        wait_all_done(client, list(xs), 120)
        check_results(client, xs)
        check_exactly_once(log, client, list(xs), killed_pids=set(worker.pids))
        assert worker.proc is not None and worker.proc.poll() is None  # it carried on
    finally:
        client.destroy()
        worker.stop()
