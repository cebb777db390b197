"""Recovery latency: a chain killed as its sixth step starts, then resumed.

    python bench/recovery.py DB_URL {floor-a|floor-b|dbos_llama}

Runs itself twice: a process that starts the chain and dies (``os._exit``) when five
steps are done, then one that measures from ``DBOS.launch()`` (which resumes the run)
to the run's result. Prints ``{"seconds": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbos import DBOS, SetWorkflowID  # noqa: E402

from bench import workloads as w  # noqa: E402
from bench.run import dbos_config  # noqa: E402

RUN_ID = "recover-me"


async def crash(url: str, impl: str) -> None:
    chain = w.DURABLE["chain"](timeout=None)
    DBOS(config=dbos_config(url))
    DBOS.launch()
    if impl == "dbos_llama":
        await chain.run(run_id=RUN_ID)
    else:
        floor = w.floor_a_chain if impl == "floor-a" else w.floor_b_chain
        with SetWorkflowID(RUN_ID):
            await floor(w.CHAIN)
    raise SystemExit("the chain should have been killed")


async def recover(url: str) -> None:
    w.DURABLE["chain"](timeout=None)  # the application's instance
    DBOS(config=dbos_config(url))
    start = time.perf_counter()
    DBOS.launch()  # resumes the run
    handle = await DBOS.retrieve_workflow_async(RUN_ID)
    await handle.get_result(polling_interval_sec=0.01)
    print(json.dumps({"seconds": time.perf_counter() - start}))
    DBOS.destroy()


def main(url: str, impl: str) -> None:
    me = [sys.executable, __file__, url, impl]
    crashed = subprocess.run([*me, "crash"], env={**os.environ, "BENCH_CRASH_AFTER": "5"})
    assert crashed.returncode == 137, crashed.returncode
    subprocess.run([*me, "recover"], check=True)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        url, impl, phase = sys.argv[1:4]
        asyncio.run(crash(url, impl) if phase == "crash" else recover(url))
    else:
        main(*sys.argv[1:3])
