"""A self-healing fleet of worker processes on one PostgreSQL database; runs go
through a DBOS queue.

The whole story in one command (three workers in a `Fleet`, 30 runs, one worker
killed with SIGKILL while it has runs in flight and never restarted: when its lease
lapses, a live worker takes its runs over and they finish, no call that completed
running again):

    python examples/workers.py demo

Or by hand, each in its own terminal (same database URL everywhere):

    export DBOS_LLAMA_DB=postgresql://postgres@127.0.0.1:5432/dbos_llama_workers
    python examples/workers.py worker w1
    python examples/workers.py worker w2
    python examples/workers.py submit 20
    # kill -9 one worker: within its lease (LEASE_SECONDS) the other takes over its
    # runs. (An operator may still hand a dead worker's runs over at once:)
    python examples/workers.py take-over w2
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import _path  # noqa: F401  # makes examples.flows importable
from dbos import DBOS

from dbos_llama import DurableClient, Fleet
from examples.flows.summaries import LEDGER, QUEUE, Summaries

DB_URL = os.environ.get("DBOS_LLAMA_DB", "postgresql://postgres@127.0.0.1:5432/dbos_llama_workers")
#: The limits of the DBOS queue (QUEUE) the workers take runs from.
WORKER_CONCURRENCY = 4  # runs at once in each worker process
GLOBAL_CONCURRENCY = 6  # runs at once across all workers
#: Every process of the deployment sets the same DBOS application version: DBOS hands
#: queued and recovered runs only to processes of the version that recorded them.
#: (dbos_llama checks each workflow class's own step code by itself.)
APP_VERSION = "workers-example-1"
#: A worker that stops renewing its lease for this long is declared dead and its
#: runs are taken over (30 s by default; short here for the demo).
LEASE_SECONDS = 5.0


class QueueBackoffNote(logging.Filter):
    """DBOS's queue threads back off when several workers dequeue at once from a queue
    with a global limit, and say so at WARNING ("Contention detected in queue
    thread"): expected with a fleet on one queue, not a fault. Shown at INFO here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Contention detected in queue thread"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger("dbos").isEnabledFor(logging.INFO)
        return True


def configure(executor_id: str) -> None:
    logging.getLogger("dbos").addFilter(QueueBackoffNote())
    DBOS(
        config={
            "name": "workers-example",
            "system_database_url": DB_URL,
            "application_version": APP_VERSION,
            "executor_id": executor_id,  # the process's identity, for recovery
            "log_level": "WARNING",
        }
    )


async def worker(executor_id: str) -> None:
    """A worker: resumes its own unfinished runs, takes runs from the queue, and
    takes over the runs of fleet members that die."""
    configure(executor_id)
    DBOS.launch()  # in the running loop: resumed runs execute on it
    await DBOS.register_queue_async(
        QUEUE,
        worker_concurrency=WORKER_CONCURRENCY,
        global_concurrency=GLOBAL_CONCURRENCY,
        polling_interval_sec=0.2,
    )
    async with Fleet(lease_seconds=LEASE_SECONDS) as fleet:
        print(f"worker {executor_id} ready (pid {os.getpid()})", flush=True)
        with READY.open("a") as f:
            f.write(f"{executor_id} {os.getpid()}\n")
        seen = 0
        while True:  # report takeovers as they happen
            await asyncio.sleep(0.5)
            for takeover in fleet.takeovers[seen:]:
                print(
                    f"worker {executor_id} took over {len(takeover.run_ids)} runs of dead "
                    f"worker {takeover.executor_id}: {takeover.run_ids}",
                    flush=True,
                )
            seen = len(fleet.takeovers)


async def submit(count: int) -> None:
    """Submit ``count`` runs and wait for their results (take none from the queue)."""
    configure("submitter")
    # A submitter, not a worker: it takes no runs from the queue. (Like any process
    # with the code and DBOS launched, it may still finish a step that a dead
    # worker left behind: DBOS recovers those through its internal queue.)
    DBOS.listen_queues([])
    DBOS.launch()
    batch = uuid.uuid4().hex[:6]
    summaries = Summaries(timeout=None)
    handlers = [summaries.run(run_id=f"doc-{batch}-{i}", doc=f"doc-{i}") for i in range(count)]
    print(f"submitted {count} runs (doc-{batch}-0 ... doc-{batch}-{count - 1})", flush=True)
    results = await asyncio.gather(*handlers)
    for result in results:
        print(f"  {result['doc']}: {result['summary']!r} by {result['worker']}")
    per_worker = Counter(r["worker"] for r in results)
    finishers = dict(sorted(per_worker.items()))
    print(f"{len(results)} runs finished, last step run by: {finishers}", flush=True)
    if "submitter" in per_worker:
        print(
            "  (the submitter takes no runs from the queue; it finished steps a killed "
            "worker left behind, which DBOS hands to any process with the code)",
            flush=True,
        )
    DBOS.destroy()


async def take_over(executor_id: str) -> None:
    """Hand the unfinished runs of a dead worker to the live ones."""
    async with DurableClient(DB_URL) as client:
        taken = await client.take_over(executor_id)
    print(f"took over {len(taken)} runs of {executor_id}: {taken}")


def demo() -> None:
    """Three workers, 30 runs, one worker killed mid-run for good."""
    LEDGER.unlink(missing_ok=True)
    env = {**os.environ, "DBOS_LLAMA_DB": DB_URL, "EXAMPLE_LEDGER": str(LEDGER.resolve())}

    def start_worker(executor_id: str) -> subprocess.Popen[str]:
        # Its output goes straight to this terminal: its first line says it is ready.
        proc = subprocess.Popen([sys.executable, __file__, "worker", executor_id], env=env)
        while not any(f"{executor_id} " in line for line in _ready()):
            time.sleep(0.05)
        return proc

    print(f"System database: {DB_URL}")
    READY.unlink(missing_ok=True)
    env["EXAMPLE_READY"] = str(READY.resolve())
    workers = {w: start_worker(w) for w in ("w1", "w2", "w3")}
    submitter = subprocess.Popen([sys.executable, __file__, "submit", "30"], env=env)
    try:
        while sum(" w1 " in f" {line}" for line in _ledger()) < 6:
            time.sleep(0.05)
        workers["w1"].send_signal(signal.SIGKILL)
        workers["w1"].wait()
        print(
            f"worker w1 killed (SIGKILL) with runs in flight, for good: the others take "
            f"them over when its {LEASE_SECONDS:.0f} s lease lapses",
            flush=True,
        )
        submitter.wait(timeout=300)
    finally:
        for proc in workers.values():
            proc.kill()
    lines = [line.split(" ", 2) for line in _ledger()]
    calls = Counter(call for _, _, call in lines)
    repeated = sorted(c for c, n in calls.items() if n > 1)
    in_w1 = {call for worker, _, call in lines if worker == "w1"}
    print(f"external calls executed: {sum(calls.values())} for {len(calls)} distinct calls")
    if not repeated:
        print("executed more than once: none")
    elif set(repeated) <= in_w1:
        print(
            f"executed twice: {len(repeated)} calls that were in flight in w1 when it was "
            f"killed (none that had completed): {repeated}"
        )
    else:
        print(f"executed more than once: {repeated} (some not started in w1: look at them)")
    sys.exit(submitter.returncode)


READY = Path(os.environ.get("EXAMPLE_READY", "ready.txt"))


def _ready() -> list[str]:
    return READY.read_text().splitlines() if READY.exists() else []


def _ledger() -> list[str]:
    return LEDGER.read_text().splitlines() if LEDGER.exists() else []


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["demo"]
    if command == "worker":
        asyncio.run(worker(args[0]))
    elif command == "submit":
        asyncio.run(submit(int(args[0]) if args else 20))
    elif command == "take-over":
        asyncio.run(take_over(args[0]))
    elif command == "demo":
        demo()
    else:
        sys.exit(__doc__)
