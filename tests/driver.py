"""Run one durable workflow in this process: ``python -m tests.driver DB FLOW RUN_ID JSON``.

Prints ``RESULT <json>`` on success. With DBOS_LLAMA_CRASH_AT set the flow kills the
process at that point instead; run the same command again to recover and finish.
DBOS_LLAMA_SEED (a JSON object) seeds the run's state through ``Context(wf).store``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

from dbos import DBOS
from workflows import Context
from workflows.errors import WorkflowCancelledByUser
from workflows.events import InputRequiredEvent

from tests.flows import CONSTRUCTOR_ARGS, FLOWS


async def main(db_url: str, flow: str, run_id: str, kwargs: dict) -> None:
    def make():
        if flow.startswith("agent-"):  # LlamaIndex agents (the "agents" extra)
            from tests.agent_flows import AGENT_FLOWS

            return AGENT_FLOWS[flow]()
        return FLOWS[flow](timeout=None, **CONSTRUCTOR_ARGS.get(flow, {}))

    # By default the application builds its workflow objects, then launches DBOS.
    late = float(os.environ.get("DBOS_LLAMA_LATE_INSTANCE", "0"))
    no_instance = bool(os.environ.get("DBOS_LLAMA_NO_INSTANCE"))
    wf = None if late or no_instance else make()
    config = {
        "name": "dbos-llama-tests",
        "system_database_url": db_url,
        "notification_listener_polling_interval_sec": 0.05,
    }
    if os.environ.get("DBOS_LLAMA_OTLP"):
        config["enable_otlp"] = True  # DBOS's spans, to the application's TracerProvider
    if os.environ.get("DBOS_LLAMA_APP_VERSION"):
        config["application_version"] = os.environ["DBOS_LLAMA_APP_VERSION"]
    DBOS(config=config)
    DBOS.launch()
    if os.environ.get("DBOS_LLAMA_CRASH_AFTER"):
        # A kill at a moment chosen by time, not by code position.
        delay = float(os.environ["DBOS_LLAMA_CRASH_AFTER"])
        threading.Timer(delay, lambda: os._exit(137)).start()
    try:
        if late:
            await asyncio.sleep(late)
            wf = make()
        if os.environ.get("DBOS_LLAMA_LAUNCH_ONLY"):
            # Only launch (recovery runs in the background), wait, and exit.
            await asyncio.sleep(float(os.environ["DBOS_LLAMA_LAUNCH_ONLY"]))
            return
        if os.environ.get("DBOS_LLAMA_SEED"):
            # State seeded before the run, as upstream documents it.
            ctx = Context(wf)
            for key, value in json.loads(os.environ["DBOS_LLAMA_SEED"]).items():
                await ctx.store.set(key, value)
            handler = wf.run(ctx=ctx, run_id=run_id, **kwargs)
        else:
            handler = wf.run(run_id=run_id, **kwargs)
        if os.environ.get("DBOS_LLAMA_EXIT_ON_INPUT"):
            # The application asks a human, then its process goes away.
            async for event in handler.stream_events():
                if isinstance(event, InputRequiredEvent):
                    print("ASKED " + json.dumps(event.prefix), flush=True)
                    if os.environ.get("DBOS_LLAMA_EXIT_ON_INPUT") == "snapshot":
                        # Upstream's way to persist the run: its context snapshot.
                        print("SNAPSHOT " + json.dumps(handler.ctx.to_dict()), flush=True)
                    os._exit(0)
        try:
            result = await handler
        except WorkflowCancelledByUser:
            print("CANCELLED", flush=True)  # a normal ending: no traceback
            return
        # An agent's result (AgentOutput) prints as its answer.
        print("RESULT " + json.dumps(result, default=str), flush=True)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
