"""The cost of durable state writes: chain and fan-out, with and without `ctx.store` edits.

    python bench/state_cost.py [--backends sqlite,postgres] [--repeat 9] [--label NAME]

Runs, interleaved in one process per backend, median of ``--repeat`` runs: a chain of
10 steps and a fan-out of 8 items (``num_workers=4``, collected), each once as is and
once with one ``edit_state`` per step or item (the fan-out's items all edit the same
keys). Prints one JSON line: ms and rows written per llama step, per workload.
Run it against another checkout (``PYTHONPATH=<checkout>``) to compare versions;
`bench/results/state_cost.md` holds the numbers of issue #21 (before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from dbos import DBOS  # noqa: E402
from workflows import Context, Workflow, step  # noqa: E402
from workflows.events import Event, StartEvent, StopEvent  # noqa: E402

from bench.databases import make_backend  # noqa: E402
from dbos_llama import durable  # noqa: E402

CHAIN = 10
FAN = 8


class Hop(Event):
    n: int


class Item(Event):
    i: int


class Done(Event):
    i: int


async def _edit(ctx: Context, edits: bool, key: str) -> None:
    if edits:
        async with ctx.store.edit_state() as state:
            state[key] = state.get(key, 0) + 1


class _Chain(Workflow):
    edits = False

    @step
    async def first(self, ctx: Context, ev: StartEvent) -> Hop:
        await _edit(ctx, self.edits, "hops")
        return Hop(n=1)

    @step
    async def hop(self, ctx: Context, ev: Hop) -> Hop | StopEvent:
        await _edit(ctx, self.edits, "hops")
        return StopEvent(result=ev.n + 1) if ev.n + 1 >= CHAIN else Hop(n=ev.n + 1)


class _Fan(Workflow):
    edits = False

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        for i in range(FAN):
            ctx.send_event(Item(i=i))
        return None

    @step(num_workers=4)
    async def work(self, ctx: Context, ev: Item) -> Done:
        await _edit(ctx, self.edits, "count")
        return Done(i=ev.i)

    @step
    async def collect(self, ctx: Context, ev: Done) -> StopEvent | None:
        got = ctx.collect_events(ev, [Done] * FAN)
        return None if got is None else StopEvent(result=len(got))


@durable(name="bench.state.Chain")
class Chain(_Chain):
    pass


@durable(name="bench.state.ChainEdits")
class ChainEdits(_Chain):
    edits = True


@durable(name="bench.state.Fan")
class Fan(_Fan):
    pass


@durable(name="bench.state.FanEdits")
class FanEdits(_Fan):
    edits = True


#: workload -> (class, llama step invocations per run)
WORKLOADS: dict[str, tuple[type[Workflow], int]] = {
    "chain": (Chain, CHAIN),
    "chain, 1 edit per step": (ChainEdits, CHAIN),
    "fan-out 8": (Fan, 1 + FAN + FAN),  # fan, 8 items, one collector call per item
    "fan-out 8, 1 shared edit per item": (FanEdits, 1 + FAN + FAN),
}


async def measure(backend_name: str, repeat: int) -> dict[str, dict[str, float]]:
    backend = make_backend(backend_name)
    instances = {name: cls(timeout=None) for name, (cls, _) in WORKLOADS.items()}
    DBOS(
        config={
            "name": "bench-state",
            "system_database_url": backend.url,
            "log_level": "ERROR",
            "notification_listener_polling_interval_sec": 0.05,
            "application_version": "bench",
            "run_admin_server": False,
        }
    )
    DBOS.launch()
    try:
        times: dict[str, list[float]] = {name: [] for name in WORKLOADS}
        rows: dict[str, int] = {}
        for wf in instances.values():  # warm-up
            await wf.run(run_id=uuid.uuid4().hex)
        for _ in range(repeat):
            for name, wf in instances.items():  # interleaved
                before = backend.rows()
                start = time.perf_counter()
                await wf.run(run_id=uuid.uuid4().hex)
                times[name].append(time.perf_counter() - start)
                rows[name] = backend.rows() - before
        out: dict[str, dict[str, float]] = {}
        for name, (_, steps) in WORKLOADS.items():
            out[name] = {
                "ms_per_step": round(statistics.median(times[name]) * 1000 / steps, 2),
                "rows_per_step": round(rows[name] / steps, 2),
            }
        return out
    finally:
        DBOS.destroy()
        backend.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--label", default="this checkout")
    args = parser.parse_args()
    found: dict[str, Any] = {"label": args.label}
    for name in args.backends.split(","):
        found[name] = asyncio.run(measure(name, args.repeat))
    print(json.dumps(found))


if __name__ == "__main__":
    main()
