"""Many runs waiting for a human in one process: memory per waiting run, time to finish.

    python bench/waiting.py DB_URL {plain|floor|dbos_llama} N

Starts N runs that each wait for an answer, measures the process's RSS growth per
waiting run, then answers them all (from this process) and measures the time until
every run has finished. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbos import DBOS, SetWorkflowID  # noqa: E402
from workflows.events import HumanResponseEvent, InputRequiredEvent  # noqa: E402

from bench import workloads as w  # noqa: E402
from bench.run import dbos_config  # noqa: E402

#: Runs started at once (a burst of requests), for every implementation alike.
BATCH = 50


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def asked(handler) -> None:
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            return


async def main(url: str, impl: str, count: int) -> None:
    DBOS(config=dbos_config(url))
    DBOS.launch()
    flow = (w.PLAIN if impl == "plain" else w.DURABLE)["hitl"](timeout=None)

    async def start_batch(n: int) -> list:
        if impl == "floor":
            ids = [uuid.uuid4().hex for _ in range(n)]

            async def start(run_id: str):
                with SetWorkflowID(run_id):
                    return await DBOS.start_workflow_async(w.floor_wait)

            return list(await asyncio.gather(*(start(i) for i in ids)))
        handlers = [
            flow.run() if impl == "plain" else flow.run(run_id=uuid.uuid4().hex) for _ in range(n)
        ]
        await asyncio.gather(*(asked(h) for h in handlers))
        return handlers

    async def start_all(n: int) -> list:
        # Every implementation starts its runs the same way: BATCH at a time.
        runs = []
        for first in range(0, n, BATCH):
            runs += await start_batch(min(BATCH, n - first))
        if impl == "floor":
            await asyncio.sleep(1.0)  # every run reaches its receive
        return runs

    async def answer_all(runs: list) -> None:
        if impl == "floor":
            for handle in runs:
                await DBOS.send_async(handle.workflow_id, "yes", "answer")
            await asyncio.gather(*(h.get_result(polling_interval_sec=0.05) for h in runs))
        else:
            for handler in runs:
                handler.ctx.send_event(HumanResponseEvent(response="yes"))
            await asyncio.gather(*runs)

    await answer_all(await start_all(2))  # warm-up
    before = rss_kb()
    runs = await start_all(count)
    grown = rss_kb() - before
    start = time.perf_counter()
    await answer_all(runs)
    finish = time.perf_counter() - start
    threads = threading.active_count()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    DBOS.destroy()
    print(
        json.dumps(
            {
                "kb_per_run": grown / count,
                "finish_seconds": finish,
                "peak_rss_mb": peak_mb,
                "threads": threads,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
