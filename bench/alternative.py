"""The official ``llama-agents-dbos`` on the same workloads, in its own virtualenv.

    /path/to/venv-with-llama-agents-dbos/bin/python bench/alternative.py DB_URL REPEAT RUNS

It needs ``dbos`` 2.31.x (it does not launch on dbos 3.x), so it cannot share a
process with dbos_llama; ``bench/run.py`` runs it when that virtualenv exists
(``BENCH_ALT_PYTHON``, set it up with ``bash bench/setup_alternative.sh``).
Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbos import DBOS  # noqa: E402
from llama_agents.dbos import DBOSRuntime  # noqa: E402

from bench.databases import Backend  # noqa: E402
from bench.plain_workflows import CHAIN, FAN, LOOP, Chain, Fan, Loop  # noqa: E402

INVOCATIONS = {"chain": CHAIN, "loop": LOOP + 1, "fanout": 1 + FAN + FAN}


async def main(url: str, repeat: int, concurrent: int) -> None:
    backend = Backend("sqlite" if url.startswith("sqlite") else "postgres", url)
    DBOS(
        config={
            "name": "bench-alternative",
            "system_database_url": url,
            "log_level": "ERROR",
            "notification_listener_polling_interval_sec": 0.05,
            "run_admin_server": False,
        }
    )
    runtime = DBOSRuntime(polling_interval_sec=0.05)
    flows = {
        "chain": Chain(runtime=runtime, timeout=None),
        "loop": Loop(runtime=runtime, timeout=None),
        "fanout": Fan(runtime=runtime, timeout=None),
    }
    await runtime.launch()
    per_run = {}
    for name, flow in flows.items():
        await flow.run(run_id=uuid.uuid4().hex)  # warm-up
        times, rows = [], 0
        for _ in range(repeat):
            before = backend.rows()
            start = time.perf_counter()
            await flow.run(run_id=uuid.uuid4().hex)
            times.append(time.perf_counter() - start)
            rows = backend.rows() - before
        per_run[name] = {
            "ms_per_run": statistics.median(times) * 1000,
            "ms_per_step": statistics.median(times) * 1000 / INVOCATIONS[name],
            "rows_per_step": rows / INVOCATIONS[name],
        }
    start = time.perf_counter()
    await asyncio.gather(*(flows["chain"].run(run_id=uuid.uuid4().hex) for _ in range(concurrent)))
    rate = concurrent / (time.perf_counter() - start)
    await runtime.destroy()
    print(
        json.dumps(
            {"dbos_version": version("dbos"), "per_run": per_run, "concurrent": rate},
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
