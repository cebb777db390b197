"""The official ``llama-agents-dbos`` on the fan-out sweep, in its own virtualenv.

    /path/to/venv-with-llama-agents-dbos/bin/python -m bench.fanout_alternative DB_URL REPEAT \
        --widths 8 32 --workers 4 16

Run by ``bench/fanout.py`` when that virtualenv exists (``bench/setup_alternative.sh``).
Prints one JSON object: ``{"WxN": {"ms_per_invocation": ..., "rows_per_item": ...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

from dbos import DBOS
from llama_agents.dbos import DBOSRuntime

from bench.databases import Backend
from bench.fanout_flows import expected, invocations, make_fan


async def main(url: str, repeat: int, widths: list[int], workers: list[int]) -> None:
    backend = Backend("sqlite" if url.startswith("sqlite") else "postgres", url)
    DBOS(
        config={
            "name": "bench-alternative-fanout",
            "system_database_url": url,
            "log_level": "ERROR",
            "notification_listener_polling_interval_sec": 0.05,
            "run_admin_server": False,
        }
    )
    runtime = DBOSRuntime(polling_interval_sec=0.05)
    flows = {(w, n): make_fan(w, n)(runtime=runtime, timeout=None) for w in widths for n in workers}
    await runtime.launch()
    found = {}
    for (width, n), flow in flows.items():
        await flow.run(run_id=uuid.uuid4().hex)  # warm-up
        times, rows = [], []
        for _ in range(repeat):
            before = backend.rows()
            start = time.perf_counter()
            result = await flow.run(run_id=uuid.uuid4().hex)
            times.append(time.perf_counter() - start)
            rows.append(backend.rows() - before)
            assert result == expected(width), result
        found[f"{width}x{n}"] = {
            "ms_per_invocation": statistics.median(times) * 1000 / invocations(width),
            "rows_per_item": statistics.median(rows) / width,
        }
    await runtime.destroy()
    print(json.dumps(found))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("repeat", type=int)
    parser.add_argument("--widths", nargs="+", type=int, required=True)
    parser.add_argument("--workers", nargs="+", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.repeat, args.widths, args.workers))
