"""A self-healing fleet on real PostgreSQL: dead, paused and replaced workers, no operator."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest
from dbos import DBOS, DBOSClient

from dbos_llama import Fleet, FleetConfigError
from tests.conftest import dbos_config
from tests.flows import Tally
from tests.queued_flows import APP_VERSION
from tests.workers_support import (
    Worker,
    check_exactly_once,
    check_results,
    in_flight_on,
    submit,
    wait_all_done,
    wait_for,
)

LEASE = 3.0
FLEET = {
    "DBOS_LLAMA_FLEET_LEASE": str(LEASE),
    "DBOS_LLAMA_FLEET_HEARTBEAT": "0.5",
    "DBOS_LLAMA_CALL_SECONDS": "1.0",
    "DBOS_LLAMA_WORKER_CONCURRENCY": "4",
}


def call_times(log: Path) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Each execution of each tagged call: value -> (start time, end time or None)."""
    times: dict[str, dict[str, tuple[float, float | None]]] = defaultdict(dict)
    for line in log.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("started", "ended"):
            key, value, at = rest.split(" ")
            start, end = times[key].get(value, (0.0, None))
            times[key][value] = (float(at), end) if kind == "started" else (start, float(at))
    return times


def check_no_call_after_it_completed(log: Path, client: DBOSClient, run_ids: list[str]) -> int:
    """No execution of a call starts after the execution whose result DBOS recorded
    ended: a completed call never executes twice. Returns the calls checked."""
    times = call_times(log)
    checked = 0
    for run_id in run_ids:
        for child in client.list_workflows(workflow_id_prefix=f"{run_id}/", load_input=False):
            for st in client.list_workflow_steps(child.workflow_id):
                if st["error"] is None and st["function_name"].endswith("tagged_call"):
                    key = f"{run_id}/{child.workflow_id.split('/')[1]}"
                    _, completed = times[key][st["output"]]
                    assert completed is not None
                    later = [v for v, (start, _) in times[key].items() if start > completed]
                    assert not later, f"{key} executed again after it completed: {later}"
                    checked += 1
    return checked


def fleet_rows(db_url: str) -> dict[str, dict[str, object]]:
    with psycopg.connect(db_url) as conn:
        cur = conn.execute("SELECT executor_id, epoch, state, taken_by FROM dbos_llama.workers")
        return {r[0]: {"epoch": r[1], "state": r[2], "taken_by": r[3]} for r in cur.fetchall()}


@pytest.mark.slow
async def test_fleet_heals_itself_dead_paused_and_replaced_workers(
    submitter, workers, tmp_path, capsys
):
    log = tmp_path / "log"
    w1, w2, w3 = (workers(f"w{i}", **FLEET) for i in (1, 2, 3))
    client = DBOSClient(system_database_url=submitter)
    try:
        xs, _ = submit(100, "fleet")

        def started_by(worker) -> int:  # noqa: ANN001
            pid = f" {worker.pids[-1]}-"
            lines = log.read_text().splitlines() if log.exists() else []
            return sum(pid in line for line in lines if line.startswith("started "))

        await asyncio.to_thread(wait_for, lambda: started_by(w1) >= 4, 60, "w1 busy")
        w1.kill()  # SIGKILL, never restarted
        killed_at = time.monotonic()
        await asyncio.to_thread(wait_for, lambda: started_by(w2) >= 6, 60, "w2 busy")
        assert w2.proc is not None
        w2.proc.send_signal(signal.SIGSTOP)  # paused past its lease
        await asyncio.sleep(LEASE + 3)
        w2.proc.send_signal(signal.SIGCONT)
        # w3 is stopped (SIGTERM: it leaves the fleet) and replaced by w4, a new name.
        await asyncio.sleep(2)
        w4 = workers("w4", **FLEET)
        assert w4.proc is not None
        assert w3.proc is not None
        w3.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(w3.proc.wait, 60) == 0
        await asyncio.to_thread(wait_all_done, client, list(xs), LEASE + 90)
        healed_in = time.monotonic() - killed_at

        per_executor = check_results(client, xs)  # all SUCCESS, right results, none left
        interrupted = {w1.pids[0], w2.pids[0], w3.pids[0]}
        once = check_exactly_once(log, client, list(xs), killed_pids=interrupted)
        checked = check_no_call_after_it_completed(log, client, list(xs))
        assert checked == 200

        rows = fleet_rows(submitter)
        assert rows["w1"]["state"] == "dead" and rows["w1"]["taken_by"] in ("w2", "w3", "w4")
        assert rows["w2"]["state"] == "live" and rows["w2"]["epoch"] == 2  # joined again
        assert rows["w4"]["state"] == "live"
        w2_log = log.with_suffix(".w2.out").read_text()
        assert "lost its fleet lease" in w2_log and "WARNING" in w2_log
        assert "w4" in per_executor
        assert healed_in < LEASE + 90
    finally:
        client.destroy()
    with capsys.disabled():
        print(
            f"\nfleet: 100 runs on w1..w3; w1 SIGKILLed, w2 SIGSTOPped {LEASE + 3:.0f} s, "
            f"w3 replaced by w4: all finished {healed_in:.1f} s after the kill; runs per "
            f"executor {per_executor}; {once['repeated_in_flight']} in-flight calls re-run"
        )


def faketime_env(offset: str) -> dict[str, str]:
    """Environment that shifts a worker's wall clock by ``offset`` (libfaketime)."""
    for lib in Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"):
        return {"LD_PRELOAD": str(lib), "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}
    if os.environ.get("CI"):
        pytest.fail("libfaketime (Debian package faketime) is required in CI")
    pytest.skip("libfaketime (Debian package faketime) is not installed")


def worker_logs(log: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(log.parent.glob(f"{log.name}.*.out")))


async def test_skewed_clocks_and_a_dropped_lease_table_take_over_nobody(
    submitter, workers, tmp_path
):
    """Clocks 5 s ahead and behind, then the lease table dropped under live workers:
    no live worker is declared dead, and every run finishes once."""
    log = tmp_path / "log"
    env = {**FLEET, "DBOS_LLAMA_CALL_SECONDS": "0.5"}
    ahead = workers("w1", **env, **faketime_env("+5s"))
    behind = workers("w2", **env, **faketime_env("-5s"))
    on_time = workers("w3", **env)
    client = DBOSClient(system_database_url=submitter)
    try:
        xs, _ = submit(30, "skew")
        await asyncio.sleep(2 * LEASE)
        with psycopg.connect(submitter, autocommit=True) as conn:
            conn.execute("DROP TABLE dbos_llama.workers")
        await asyncio.sleep(2 * LEASE)
        await asyncio.to_thread(wait_all_done, client, list(xs), 120)
        check_results(client, xs)
        check_exactly_once(log, client, list(xs), killed_pids=set())
        rows = fleet_rows(submitter)
        assert {k: (r["state"], r["epoch"]) for k, r in rows.items()} == {
            "w1": ("live", 1),
            "w2": ("live", 1),
            "w3": ("live", 1),
        }
        logs = worker_logs(log)
        assert "took over" not in logs and "lost its fleet lease" not in logs
        assert "lease row is gone" in logs  # they noticed, and said so
        assert all(w.proc is not None and w.proc.poll() is None for w in (ahead, behind, on_time))
    finally:
        client.destroy()


async def test_a_database_outage_longer_than_the_lease_takes_over_nobody(
    throwaway_pg, tmp_path, monkeypatch
):
    cluster, url = throwaway_pg
    log = tmp_path / "log"
    env = {**FLEET, "DBOS_LLAMA_CALL_SECONDS": "0.5"}
    fleet = [Worker(url, f"w{i}", log, **env).start() for i in (1, 2)]
    monkeypatch.setenv("DBOS_LLAMA_TEST_LOG", str(log))
    DBOS(config=dbos_config(url, application_version=APP_VERSION))
    DBOS.listen_queues([])
    DBOS.launch()
    client = DBOSClient(system_database_url=url)
    try:
        xs, _ = submit(12, "outage")
        await asyncio.to_thread(
            wait_for, lambda: in_flight_on(log, fleet[0].pids[0]) >= 2, 60, "w1 busy"
        )
        cluster.stop()  # gone for more than two leases
        await asyncio.sleep(3 * LEASE)
        cluster.start()
        await asyncio.to_thread(wait_all_done, client, list(xs), 120)
        check_results(client, xs)
        check_exactly_once(log, client, list(xs), killed_pids={w.pids[0] for w in fleet})
        rows = fleet_rows(url)
        assert {k: (r["state"], r["epoch"]) for k, r in rows.items()} == {
            "w1": ("live", 1),
            "w2": ("live", 1),
        }
        logs = worker_logs(log)
        assert "cannot renew its fleet lease" in logs
        assert "took over" not in logs and "lost its fleet lease" not in logs
        assert all(w.proc is not None and w.proc.poll() is None for w in fleet)
    finally:
        client.destroy()
        DBOS.destroy()
        for w in fleet:
            w.stop()


def test_a_fleet_is_configured_sensibly() -> None:
    with pytest.raises(FleetConfigError, match="lease_seconds must be positive"):
        Fleet(lease_seconds=0)
    with pytest.raises(FleetConfigError, match="at most half of lease_seconds"):
        Fleet(lease_seconds=3, heartbeat_seconds=2)


async def test_joining_needs_launched_dbos_and_an_executor_id_of_its_own(sqlite_url) -> None:
    with pytest.raises(FleetConfigError, match="DBOS is not configured"):
        Fleet(lease_seconds=3).join()
    DBOS(config=dbos_config(sqlite_url))  # executor_id left at DBOS's default, 'local'
    DBOS.launch()
    try:
        with pytest.raises(FleetConfigError, match="its own DBOS executor_id"):
            Fleet(lease_seconds=3).join()
    finally:
        DBOS.destroy()


async def test_a_sqlite_worker_holds_renews_and_hands_back_its_lease(sqlite_url, tmp_path) -> None:
    """The lease table on the SQLite backend: join, renew in database time, leave."""
    DBOS(config=dbos_config(sqlite_url, executor_id="solo"))
    DBOS.launch()
    path = sqlite_url.removeprefix("sqlite:///")

    def row() -> tuple[int, str, int]:
        with sqlite3.connect(path) as conn:
            return conn.execute(
                "SELECT epoch, state, heartbeat_ms FROM dbos_llama_workers "
                "WHERE executor_id = 'solo'"
            ).fetchone()

    try:
        fleet = Fleet(lease_seconds=2, heartbeat_seconds=0.2).join()
        with pytest.raises(FleetConfigError, match="already joined"):
            Fleet(lease_seconds=2).join()
        epoch, state, first = row()
        assert (epoch, state) == (1, "live") and abs(first / 1000 - time.time()) < 5
        await asyncio.sleep(0.8)
        assert row()[2] > first  # renewed
        await asyncio.to_thread(fleet.leave)
        assert row()[2] == 0  # expired at once: live workers would take anything left
        async with Fleet(lease_seconds=2, heartbeat_seconds=0.2):  # joins again
            assert row()[:2] == (2, "live")
        assert row()[2] == 0
        # Outside the fleet again, the process runs durable work as before.
        assert await Tally(timeout=None).run(run_id="after-leaving", customer="ada") == {
            "customer": "ada",
            "count": 11,
            "last": "<tally-two>",
        }
    finally:
        DBOS.destroy()
