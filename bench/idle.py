"""Many runs waiting for a human in one worker, kept in memory or released.

    python -m bench.idle [--runs N] [--repeat R] [--backends sqlite,postgres]

For each backend and implementation (raw DBOS ``recv``; a durable run kept in
memory, the behaviour before idle release; a durable run with
``@durable(idle_release=2)``), in fresh processes:

1. fill: a submitter process enqueues N runs that each wait for an answer; one
   worker executes them; measured: the worker's RSS above its idle baseline once
   all wait (released runs: once all are released). Then the worker dies
   (``os._exit``, nothing shut down). Kept runs hold their queue slot while they
   wait, so their queue has no concurrency limit; released runs free theirs, and
   the worker takes 100 at a time. With ``--submit-first`` every run is queued
   before the worker starts reading the queue (after its baseline).
2. restart: a new worker on the same database; measured: ``DBOS.launch()`` until
   a new run (one step) has finished ("ready for new work"), and RSS once settled.
3. drain: that worker answers all N (``DurableClient.send_event``, or
   ``send_events`` of ``--send-batch`` N at a time; raw DBOS: ``DBOS.send``), or
   with ``--sender separate`` a front-end process does (raw: ``DBOSClient.send``);
   measured: until every run has finished.

Median of R repetitions; writes ``bench/results/idle.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, DBOSClient, SetWorkflowID
from workflows import Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent

from bench.databases import make_backend
from bench.plain_workflows import Ask
from dbos_llama import DurableClient, durable

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 50
IDLE_SECONDS = 2.0
IMPLS = ("raw", "kept", "released")

QUEUES = {impl: f"bench-idle-{impl}" for impl in IMPLS}
#: Runs a worker executes at once: kept (and raw) runs keep their slot while they wait.
CONCURRENCY = {"raw": None, "kept": None, "released": 100}
KEPT = durable(Ask, name="bench.idle.kept", queue=QUEUES["kept"])
RELEASED = durable(
    Ask, name="bench.idle.released", queue=QUEUES["released"], idle_release=IDLE_SECONDS
)


@DBOS.workflow(name="bench.idle.raw")
async def raw_wait() -> float:
    await DBOS.recv_async("answer", timeout_seconds=24 * 3600)
    return time.time()


class Probe(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="ready")


PROBE = durable(Probe, name="bench.idle.probe")


def config(url: str) -> dict[str, Any]:
    return {
        "name": "bench-idle",
        "system_database_url": url,
        "log_level": "ERROR",
        "notification_listener_polling_interval_sec": 0.05,
        "application_version": "bench-idle",
        "run_admin_server": False,
        "max_executor_threads": 64,
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 60})
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def count(url: str, sql: str, table: str) -> int:
    """One ``count(*)`` over a DBOS table (``{t}`` in ``sql``)."""
    name = table if url.startswith("sqlite") else f"dbos.{table}"
    db = engine(url)
    try:
        with db.begin() as c:
            return int(c.execute(sa.text(sql.format(t=name))).scalar() or 0)
    finally:
        db.dispose()


def finished_runs(url: str, impl: str) -> int:
    name = "bench.idle.raw" if impl == "raw" else f"llama:bench.idle.{impl}"
    sql = f"SELECT count(*) FROM {{t}} WHERE name = '{name}' AND status = 'SUCCESS'"
    return count(url, sql, "workflow_status")


def released_rows(url: str) -> int:
    table = "dbos_llama_released" if url.startswith("sqlite") else "dbos_llama.released"
    db = engine(url)
    try:
        with db.begin() as c:
            sql = f"SELECT count(*) FROM {table} WHERE state = 'released'"
            return int(c.execute(sa.text(sql)).scalar() or 0)
    except sa.exc.DBAPIError:
        return 0  # not created yet
    finally:
        db.dispose()


async def asked(handler: Any) -> None:
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            return


async def submit(url: str, impl: str, runs: int) -> dict[str, float]:
    """The application's front end: enqueues the runs, executes none."""
    DBOS(config=config(url))
    DBOS.listen_queues([])
    DBOS.launch()
    # Registered in the database (this process reads no queue): the worker may start later.
    await DBOS.register_queue_async(
        QUEUES[impl], worker_concurrency=CONCURRENCY[impl], polling_interval_sec=0.1
    )
    began = time.perf_counter()
    for first in range(0, runs, BATCH):
        ids = [f"{impl}-{i}" for i in range(first, min(first + BATCH, runs))]
        if impl == "raw":
            for run_id in ids:
                with SetWorkflowID(run_id):
                    await DBOS.enqueue_workflow_async(QUEUES["raw"], raw_wait)
        else:
            wf = (KEPT if impl == "kept" else RELEASED)(timeout=None)
            handlers = [wf.run(run_id=run_id) for run_id in ids]
            await asyncio.sleep(0)
            await asyncio.gather(*(h._external_adapter._run.start_task for h in handlers))
    return {"submit_seconds": time.perf_counter() - began}


async def fill(url: str, impl: str, runs: int) -> dict[str, float]:
    """The worker: executes the queued runs until all wait."""
    DBOS(config=config(url))
    DBOS.launch()
    # The instances queued runs execute on, kept referenced: a dropped instance is
    # collected, and a run would execute on a default one (timeout=45).
    _instances = (KEPT(timeout=None), RELEASED(timeout=None))
    await PROBE(timeout=None).run(run_id="warm-up")  # code paths loaded before the baseline
    gc.collect()
    baseline = rss_mb()
    # The queue is read from here on (with --submit-first, the runs already wait in it).
    await DBOS.register_queue_async(
        QUEUES[impl], worker_concurrency=CONCURRENCY[impl], polling_interval_sec=0.1
    )
    print("READY", flush=True)
    began = time.perf_counter()
    while waiting(url, impl) < runs:
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # the last ones are at their receive
    gc.collect()
    return {"fill_seconds": time.perf_counter() - began, "waiting_rss_mb": rss_mb() - baseline}


def waiting(url: str, impl: str) -> int:
    """How many of the runs wait for their answer (released ones: released)."""
    if impl == "released":
        return released_rows(url)
    if impl == "raw":
        sql = "SELECT count(*) FROM {t} WHERE name = 'bench.idle.raw' AND status = 'PENDING'"
    else:
        sql = (
            "SELECT count(*) FROM {t} WHERE name = 'llama:bench.idle.kept/ask' "
            "AND status = 'SUCCESS'"
        )
    return count(url, sql, "workflow_status")


async def restart_and_drain(url: str, impl: str, runs: int) -> dict[str, float]:
    began = time.perf_counter()
    DBOS(config=config(url))
    DBOS.launch()
    launched = time.perf_counter() - began
    _instances = (KEPT(timeout=None), RELEASED(timeout=None))  # recovered runs execute on them
    assert await PROBE(timeout=None).run(run_id="probe") == "ready"
    ready = time.perf_counter() - began
    # Settled: the recovered runs are back at their receive (RSS stable for 3 s).
    last, stable = rss_mb(), 0
    while stable < 3:
        await asyncio.sleep(1.0)
        now = rss_mb()
        stable = stable + 1 if abs(now - last) < 2 else 0
        last = now
    settled_rss = last
    sender = None
    if os.environ.get("BENCH_SENDER") == "separate":
        # A front end answers: its sends do not share the worker's interpreter.
        sender = spawn("send", url, impl, runs)
        assert sender.stdout is not None
        assert sender.stdout.readline().strip() == "SENDING", sender.stderr
    start = time.perf_counter()
    if sender is None:
        sent = await answer_all(url, impl, runs, use_client=impl != "raw")
    while finished_runs(url, impl) < runs:
        await asyncio.sleep(0.2)
    drain = time.perf_counter() - start
    if sender is not None:
        sent = (await asyncio.to_thread(result_of, sender, "send"))["send_seconds"]
    return {
        "launch_seconds": launched,
        "ready_seconds": ready,
        "restarted_rss_mb": settled_rss,
        "send_seconds": sent,
        "drain_seconds": drain,
    }


async def answer_all(url: str, impl: str, runs: int, use_client: bool) -> float:
    """Answer every run (raw: ``DBOS.send``, or a `DBOSClient`'s outside DBOS);
    returns the seconds the sends took."""
    start = time.perf_counter()
    if impl == "raw":
        if use_client:
            client = DBOSClient(system_database_url=url)
            try:
                for i in range(runs):
                    await client.send_async(f"{impl}-{i}", "yes", "answer")
            finally:
                client.destroy()
        else:
            for i in range(runs):
                await DBOS.send_async(f"{impl}-{i}", "yes", "answer")
        return time.perf_counter() - start
    batch = int(os.environ.get("BENCH_SEND_BATCH", "1"))
    answer = HumanResponseEvent(response="yes")
    async with DurableClient(url) as durable_client:
        for first in range(0, runs, batch):
            ids = [f"{impl}-{i}" for i in range(first, min(first + batch, runs))]
            if batch == 1:
                await durable_client.send_event(ids[0], answer)
            else:
                await durable_client.send_events([(run_id, answer) for run_id in ids])
    return time.perf_counter() - start


async def send(url: str, impl: str, runs: int) -> dict[str, float]:
    """The front end that answers every run from its own process."""
    print("SENDING", flush=True)
    return {"send_seconds": await answer_all(url, impl, runs, use_client=True)}


def child(phase: str, url: str, impl: str, runs: int) -> None:
    work = {"fill": fill, "submit": submit, "restart": restart_and_drain, "send": send}[phase]

    async def then_die() -> None:
        figures = await work(url, impl, runs)
        print("RESULT " + json.dumps(figures), flush=True)
        os._exit(0)  # a worker that dies: nothing is shut down

    asyncio.run(then_die())


def spawn(phase: str, url: str, impl: str, runs: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.idle", "--child", phase, url, impl, str(runs)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(proc: subprocess.Popen[str], what: str) -> dict[str, float]:
    out, err = proc.communicate(timeout=3600)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise RuntimeError(f"{what} failed (rc={proc.returncode}):\n{err[:3000]}")


def once(backend_name: str, impl: str, runs: int) -> dict[str, float]:
    backend = make_backend(backend_name)
    try:
        if os.environ.get("BENCH_SUBMIT_FIRST") == "1":
            # Every run is queued before the worker starts: on SQLite, a submitter
            # writing beside a busy worker waits for its lock most of the time.
            figures = result_of(spawn("submit", backend.url, impl, runs), "submit")
            worker = spawn("fill", backend.url, impl, runs)
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "READY", worker.stderr
        else:
            worker = spawn("fill", backend.url, impl, runs)
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "READY", worker.stderr
            figures = result_of(spawn("submit", backend.url, impl, runs), "submit")
        figures.update(result_of(worker, "fill"))
        figures.update(result_of(spawn("restart", backend.url, impl, runs), "restart"))
        return figures
    finally:
        backend.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument(
        "--send-batch",
        type=int,
        default=1,
        help="answers per DurableClient call: 1 = send_event each, N = send_events of N",
    )
    parser.add_argument(
        "--sender",
        choices=("worker", "separate"),
        default="worker",
        help="who answers: the restarted worker itself, or a separate front-end process",
    )
    parser.add_argument(
        "--submit-first",
        action="store_true",
        help="queue every run before the worker starts (a faster fill on SQLite)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where idle.{json,md} go")
    args = parser.parse_args()
    os.environ["BENCH_SEND_BATCH"] = str(args.send_batch)  # read by the drain's process
    os.environ["BENCH_SENDER"] = args.sender
    os.environ["BENCH_SUBMIT_FIRST"] = "1" if args.submit_first else "0"
    found: dict[str, dict[str, dict[str, float]]] = {}
    for backend_name in args.backends.split(","):
        for impl in args.impls.split(","):
            samples = [once(backend_name, impl, args.runs) for _ in range(args.repeat)]
            found.setdefault(backend_name, {})[impl] = {
                key: statistics.median(s[key] for s in samples) for key in samples[0]
            }
            print(backend_name, impl, found[backend_name][impl], flush=True)
    report = {
        "runs": args.runs,
        "repeat": args.repeat,
        "idle_release": IDLE_SECONDS,
        "send_batch": args.send_batch,
        "sender": args.sender,
        "submit_first": args.submit_first,
    }
    previous = args.out / "idle.json"
    if previous.exists():  # a run of one backend keeps the other's figures
        kept = json.loads(previous.read_text())
        same = (kept.get("runs"), kept.get("idle_release"), kept.get("sender", "worker"))
        if same == (args.runs, IDLE_SECONDS, args.sender):
            report.update({k: v for k, v in kept.items() if k in ("sqlite", "postgres")})
    report.update(found)
    args.out.mkdir(exist_ok=True)
    (args.out / "idle.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "idle.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    lines = [
        f"{runs:,} runs waiting for a human in one worker (median of {report['repeat']}); "
        + (
            "answered with one `send_event` each."
            if report.get("send_batch", 1) == 1
            else f"answered with `send_events` of {report['send_batch']} at a time."
        )
        + (
            " Answers sent by a separate front-end process (raw: a `DBOSClient`)."
            if report.get("sender") == "separate"
            else " Answers sent by the worker itself."
        ),
        "",
        "| backend | runs | RSS waiting (MB) | KB per run | restart: ready (s) | RSS after "
        "restart (MB) | sends (s) | drain (s) | drain vs raw |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "raw": "raw DBOS recv",
        "kept": "kept in memory (before)",
        "released": f"idle_release={report['idle_release']:g}",
    }
    for backend in ("sqlite", "postgres"):
        if backend not in report:
            continue
        raw = report[backend].get("raw", {}).get("drain_seconds")
        for impl, f in report[backend].items():
            ratio = f"{f['drain_seconds'] / raw:.2f}x" if raw else "-"
            lines.append(
                f"| {backend} | {labels[impl]} | {f['waiting_rss_mb']:.0f} | "
                f"{f['waiting_rss_mb'] * 1024 / runs:.1f} | {f['ready_seconds']:.1f} | "
                f"{f['restarted_rss_mb']:.0f} | {f.get('send_seconds', 0):.1f} | "
                f"{f['drain_seconds']:.1f} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
