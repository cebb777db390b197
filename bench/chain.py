"""Cost of a durable chain: time and DBOS rows per llama step, next to DBOS's floors.

    python bench/chain.py [--steps 10] [--runs 7]

Runs, side by side in one process on fresh SQLite files:
  plain    the same workflow on the in-memory BasicRuntime (no durability)
  floor-a  raw DBOS: one workflow calling one @DBOS.step per unit
  floor-b  raw DBOS: one workflow calling one child @DBOS.workflow per unit
  durable  the workflow decorated with @durable (one child workflow per step)
and prints the median time per unit and the rows each run wrote, by table and kind.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from dbos import DBOS
from workflows import Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from dbos_llama import durable

MAX_STEPS = 10


class Hop(Event):
    n: int


class Chain(Workflow):
    """A plain chain of `limit` llama steps (one start step, then hops)."""

    def __init__(self, limit: int = MAX_STEPS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.limit = limit

    @step
    async def first(self, ev: StartEvent) -> Hop:
        return Hop(n=1)

    @step
    async def hop(self, ev: Hop) -> Hop | StopEvent:
        # first is step 1 and emits n=1; the hop that sees n completes step n + 1.
        return StopEvent(result=ev.n + 1) if ev.n + 1 >= self.limit else Hop(n=ev.n + 1)


DurableChain = durable(Chain, name="bench.chain")


@DBOS.step()
async def unit_step(i: int) -> int:
    return i + 1


@DBOS.workflow()
async def floor_a(units: int) -> int:
    value = 0
    for _ in range(units):
        value = await unit_step(value)
    return value


@DBOS.workflow()
async def unit_workflow(i: int) -> int:
    return i + 1


@DBOS.workflow()
async def floor_b(units: int) -> int:
    value = 0
    for _ in range(units):
        value = await unit_workflow(value)
    return value


def count_rows(db: Path) -> Counter[str]:
    rows: Counter[str] = Counter()
    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            if table in ("operation_outputs", "dbos_migrations", "application_versions"):
                continue
            rows[table] = conn.execute(f'select count(*) from "{table}"').fetchone()[0]
        for (name,) in conn.execute("select function_name from operation_outputs"):
            known = name.startswith(("DBOS.", "dbos_llama."))
            rows[f"operation_outputs: {name if known else 'child call / step'}"] += 1
    return rows


async def measure(kind: str, units: int, runs: int) -> tuple[float, Counter[str]]:
    db = Path(tempfile.mkdtemp()) / "bench.sqlite"
    DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{db}", "log_level": "ERROR"})
    DBOS.launch()
    try:
        plain, durable_wf = (
            Chain(limit=units, timeout=None),
            DurableChain(limit=units, timeout=None),
        )
        times = []
        rows_per_run: Counter[str] = Counter()
        for run in range(runs + 1):  # the first run warms up and is not counted
            before = count_rows(db)
            start = time.perf_counter()
            if kind == "plain":
                await plain.run()
            elif kind == "floor-a":
                await floor_a(units)
            elif kind == "floor-b":
                await floor_b(units)
            else:
                assert await durable_wf.run(run_id=f"chain-{run}") == units
            elapsed = time.perf_counter() - start
            if run:
                times.append(elapsed)
                rows_per_run = count_rows(db) - before
        return statistics.median(times) / units, rows_per_run
    finally:
        DBOS.destroy()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=MAX_STEPS)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{args.steps}-unit chain, median of {args.runs} runs, SQLite")
    results = {}
    for kind in ("plain", "floor-a", "floor-b", "durable"):
        results[kind] = await measure(kind, args.steps, args.runs)
    base = results["floor-b"][0]
    for kind, (per_unit, rows) in results.items():
        total = sum(rows.values())
        print(
            f"  {kind:<8} {per_unit * 1000:7.2f} ms/unit  x{per_unit / base:5.2f} of floor-b"
            f"  {total / args.steps:5.1f} rows/unit"
        )
    print("\nRows written by one durable run, by kind:")
    for name, count in sorted(results["durable"][1].items()):
        print(f"  {name:<40} {count:4d}  ({count / args.steps:.1f} per llama step)")


if __name__ == "__main__":
    asyncio.run(main())
