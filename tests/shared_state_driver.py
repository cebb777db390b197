"""Run the shared-state fan-outs: ``python -m tests.shared_state_driver DB N``.

Starts (or, after a kill, attaches to) ``N`` runs of `SharedCount` (``shared-0`` ..),
one of `SetAndEdit` (``set-edit-0``) and one of `GatherWrites` (``gather-0``) in one
process, waits for them all, and prints ``RESULTS <json>``: each run's result, its
state and stream read by run ID.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from dbos import DBOS

from dbos_llama import DurableClient
from tests.conftest import dbos_config
from tests.shared_state_flows import GatherWrites, PartDone, SetAndEdit, SharedCount


async def main(db_url: str, runs: int) -> None:
    shared, set_edit = SharedCount(timeout=None), SetAndEdit(timeout=None)
    gather = GatherWrites(timeout=None)
    version = os.environ.get("DBOS_LLAMA_APP_VERSION")
    extra: dict[str, Any] = {"application_version": version} if version else {}
    # A small pool: the PostgreSQL tests share one server (max_connections 100).
    DBOS(config=dbos_config(db_url, sys_db_pool_size=8, **extra))
    DBOS.launch()
    try:
        handlers = {f"shared-{n}": shared.run(run_id=f"shared-{n}") for n in range(runs)}
        handlers["set-edit-0"] = set_edit.run(run_id="set-edit-0")
        handlers["gather-0"] = gather.run(run_id="gather-0")
        results = await asyncio.gather(*handlers.values())
        out = {}
        async with DurableClient(db_url) as client:
            for run_id, result in zip(handlers, results, strict=True):
                events = client.read_stream(run_id, follow=False)
                stream = [e.i async for e in events if isinstance(e, PartDone)]
                state = await client.get_state(run_id)
                out[run_id] = {"result": result, "state": state, "stream": stream}
        print("RESULTS " + json.dumps(out), flush=True)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
