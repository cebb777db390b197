"""Run (or recover) one fuzz program: ``python -m tests.fuzz_driver DB RUN_ID PROGRAM_JSON``.

Prints ``LAUNCHED`` once DBOS is launched, then ``RESULT <json>``, or ``ASKED <n>``
and exits 0 when the run asks a human for answer number ``n`` (``FUZZ_ANSWERED``
answers were already sent); then ``POINTS <k>``, how many kill points this process
passed. ``FUZZ_JSON=1`` stores all run data with `JsonDataSerializer`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from dbos import DBOS
from workflows.events import InputRequiredEvent

from dbos_llama import JsonDataSerializer
from tests import fuzz_flow
from tests.fuzz_flow import Program


async def main(db_url: str, run_id: str, program: str) -> None:
    wf = Program(timeout=None)
    config = {
        "name": "dbos-llama-fuzz",
        "system_database_url": db_url,
        "notification_listener_polling_interval_sec": 0.05,
    }
    if os.environ.get("FUZZ_JSON"):
        config["serializer"] = JsonDataSerializer()  # all run data as JSON
    DBOS(config=config)
    DBOS.launch()
    print("LAUNCHED", flush=True)
    answered = int(os.environ.get("FUZZ_ANSWERED", "0"))
    try:
        handler = wf.run(run_id=run_id, program=program)
        asked = 0
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                asked += 1
                if asked > answered:
                    print(f"ASKED {asked}\nPOINTS {fuzz_flow._points}", flush=True)
                    os._exit(0)
        result = await handler
        print(f"RESULT {json.dumps(result)}\nPOINTS {fuzz_flow._points}", flush=True)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
