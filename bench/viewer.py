"""How fast the web viewer (``dbos-llama ui``) renders its runs page over many runs.

    python -m bench.viewer [--runs 10000] [--repeat 7] [--backends sqlite,postgres] [--out]

For each backend: a fresh system database gets N durable runs, enqueued with DBOS's
client (``DBOSClient.enqueue`` with a durable run's workflow name, on a queue no
worker reads: the runs stay ENQUEUED), a tenth of them then cancelled (the viewer asks
`DurableClient.get_run` about each CANCELLED run on a page: it may be released, not
cancelled); then W real runs (default 100) that ask a human and wait (PENDING, the
newest: the first page is made of them, and the viewer reads whether each waits for
a human, one query for the page). A real ``dbos-llama ui`` process serves the database; measured
over HTTP: the first page (50 runs), a page deep in the list (offset N - 100), and the
first page filtered to "waiting for a human" (which scans up to 2,000 runs), each the
median of R requests after one warm-up. With ``--out``: ``bench/results/viewer.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from dbos import DBOS, DBOSClient
from workflows import Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent

from dbos_llama import _naming, durable

RESULTS = Path(__file__).parent / "results"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
#: A queue no worker reads: the enqueued runs wait there.
PARKED = "bench-viewer-parked"


@durable
class Ask(Workflow):
    """Asks a human, then ends with the answer."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix=f"approve order {ev.order}?")

    @step
    async def decide(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=ev.response)


async def waiting_runs(count: int) -> None:
    """``count`` runs of `Ask` until each waits for its answer (then DBOS stops: they
    stay PENDING, waiting)."""
    flow = Ask(timeout=None)
    for i in range(count):
        handler = flow.run(run_id=f"w-{i}", order=i)
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                break


def fill(db: str, runs: int, waiting: int) -> float:
    """Enqueue ``runs`` durable runs (a tenth cancelled), then ``waiting`` real runs
    that wait for a human; seconds it took."""
    DBOS(config={"name": "bench-viewer", "system_database_url": db, "log_level": "WARNING"})
    DBOS.launch()  # creates DBOS's tables
    began = time.perf_counter()
    client = DBOSClient(system_database_url=db)
    try:
        name = _naming.run_workflow_name("bench.viewer.Orders")
        for i in range(runs):
            options: Any = {"workflow_name": name, "queue_name": PARKED, "workflow_id": f"o-{i}"}
            client.enqueue(options, {"order": i})
            if i % 10 == 0:
                client.cancel_workflow(f"o-{i}")
        asyncio.run(waiting_runs(waiting))
    finally:
        client.destroy()
        DBOS.destroy()
    return time.perf_counter() - began


def pg_database() -> str:
    import psycopg

    name = f"bench_viewer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}"


def drop_pg(db: str) -> None:
    import psycopg

    name = db.rsplit("/", 1)[1]
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def serve(db: str, port: int) -> subprocess.Popen[str]:
    script = Path(sys.executable).parent / "dbos-llama"
    proc = subprocess.Popen(
        [str(script), "ui", "--db", db, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the viewer did not start: {proc.communicate()[1]}")


def timed(url: str, repeat: int, expect: str) -> float:
    """Median seconds to GET ``url`` (the whole page), after one warm-up."""
    with httpx.Client(timeout=120) as client:
        first = client.get(url)
        assert first.status_code == 200 and expect in first.text, first.text[-500:]
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            client.get(url).raise_for_status()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(backend: str, runs: int, waiting: int, repeat: int, port: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as where:
        db = f"sqlite:///{where}/viewer.sqlite" if backend == "sqlite" else pg_database()
        try:
            filled = fill(db, runs, waiting)
            proc = serve(db, port)
            try:
                base = f"http://127.0.0.1:{port}"
                return {
                    "backend": backend,
                    "runs": runs + waiting,
                    "waiting": waiting,
                    "fill_s": round(filled, 1),
                    "first_page_s": timed(f"{base}/", repeat, "waiting for a human"),
                    "deep_page_s": timed(f"{base}/?offset={runs - 100}", repeat, 'data-run="o-'),
                    "waiting_filter_s": timed(f"{base}/?status=waiting-human", repeat, "<table"),
                }
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            if backend != "sqlite":
                drop_pg(db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--waiting", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--port", type=int, default=8047)
    parser.add_argument("--out", action="store_true", help="write bench/results/viewer.*")
    args = parser.parse_args()
    backends = args.backends.split(",")
    rows = [measure(b, args.runs, args.waiting, args.repeat, args.port) for b in backends]
    lines = [
        "| backend | runs (waiting) | first page | page at offset N-100 | 'waiting for a human' "
        "filter |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['runs']:,} ({r['waiting']}) | "
            f"{r['first_page_s'] * 1000:.0f} ms | {r['deep_page_s'] * 1000:.0f} ms | "
            f"{r['waiting_filter_s'] * 1000:.0f} ms |"
        )
    print("\n".join(lines))
    if args.out:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "viewer.json").write_text(json.dumps(rows, indent=2) + "\n")
        (RESULTS / "viewer.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
