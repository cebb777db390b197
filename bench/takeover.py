"""Takeover latency of a fleet: a worker SIGKILLed with runs in flight, never restarted.

    python -m bench.takeover [PG_SERVER_URL] [--repeat N]

For each lease (3 s and 10 s): two `Fleet` workers on a fresh PostgreSQL database,
20 queued runs (one step each, calling a 2 s `@durable_step`), worker w1 SIGKILLed
once it has runs in flight. Measures from the kill to the moment none of w1's runs is
PENDING on it any more (taken over) and to every run finished. Median of N runs.
Writes ``bench/results/takeover.{json,md}``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from dbos import DBOS, DBOSClient
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

from dbos_llama import Fleet, durable, durable_step

QUEUE = "bench-takeover"
APP_VERSION = "bench-takeover-1"
RUNS = 20
CALL_SECONDS = 2.0
RESULTS = Path(__file__).resolve().parent / "results"


@durable_step
async def slow_call(x: int) -> int:
    await asyncio.sleep(CALL_SECONDS)
    return x * 2


@durable(queue=QUEUE)
class Doubler(Workflow):
    @step
    async def double(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=await slow_call(ev.x))


def config(url: str, executor_id: str) -> dict[str, object]:
    return {
        "name": "bench-takeover",
        "system_database_url": url,
        "executor_id": executor_id,
        "application_version": APP_VERSION,
        "notification_listener_polling_interval_sec": 0.05,
        "log_level": "WARNING",
    }


async def worker(url: str, executor_id: str, lease: float) -> None:
    DBOS(config=config(url, executor_id))  # type: ignore[arg-type]
    DBOS.launch()
    await DBOS.register_queue_async(QUEUE, worker_concurrency=10, polling_interval_sec=0.1)
    with Fleet(lease_seconds=lease):
        print("READY", flush=True)
        await asyncio.Event().wait()


async def submit(url: str, prefix: str) -> None:
    DBOS(config=config(url, "submitter"))  # type: ignore[arg-type]
    DBOS.listen_queues([])
    DBOS.launch()
    doubler = Doubler(timeout=None)
    handlers = [doubler.run(run_id=f"{prefix}-{i}", x=i) for i in range(RUNS)]
    await asyncio.sleep(1.0)  # enqueued
    print("SUBMITTED", flush=True)
    await asyncio.gather(*handlers)
    DBOS.destroy()


def fresh_database(server: str) -> str:
    import psycopg

    name = f"bench_takeover_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.takeover", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # READY / SUBMITTED
    return proc


def once(server: str, lease: float) -> dict[str, float]:
    url = fresh_database(server)
    w1 = spawn("worker", url, "w1", str(lease))
    w2 = spawn("worker", url, "w2", str(lease))
    time.sleep(lease + 1)  # members have watched each other for a whole lease
    submitter = spawn("submit", url, "run")
    client = DBOSClient(system_database_url=url)

    def pending_on(executor: str) -> int:
        rows = client.list_workflows(
            status="PENDING", executor_id=executor, load_input=False, load_output=False
        )
        return sum((s.name or "").startswith("llama:") and "/" not in (s.name or "") for s in rows)

    try:
        while pending_on("w1") < 5:
            time.sleep(0.02)
        w1.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while pending_on("w1"):
            time.sleep(0.02)
        taken = time.monotonic() - killed
        submitter.wait(timeout=120)
        finished = time.monotonic() - killed
    finally:
        client.destroy()
        for proc in (w1, w2, submitter):
            proc.kill()
    return {"taken_over_after": taken, "finished_after": finished}


def main(server: str, repeat: int) -> None:
    figures: dict[str, dict[str, float]] = {}
    for lease in (3.0, 10.0):
        samples = [once(server, lease) for _ in range(repeat)]
        figures[f"{lease:g}"] = {
            key: statistics.median(s[key] for s in samples) for key in samples[0]
        }
        print(f"lease {lease:g} s: {figures[f'{lease:g}']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "takeover.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        f"| lease | kill -> runs taken over | kill -> all {RUNS} runs finished |",
        "|---|---|---|",
        *(
            f"| {lease} s | {f['taken_over_after']:.1f} s | {f['finished_after']:.1f} s |"
            for lease, f in figures.items()
        ),
    ]
    (RESULTS / "takeover.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["bench"]
    if command == "worker":
        asyncio.run(worker(rest[0], rest[1], float(rest[2])))
    elif command == "submit":
        asyncio.run(submit(rest[0], rest[1]))
    else:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3
        main(
            next(
                (a for a in args if a.startswith("postgresql")),
                "postgresql://postgres@127.0.0.1:5432",
            ),
            repeat,
        )
