"""Serve a durable human-in-the-loop workflow over HTTP with LlamaIndex's WorkflowServer.

    pip install -e ".[server]"
    python examples/serve.py serve   # the server on http://127.0.0.1:8000 (debugger UI at /)
    python examples/serve.py         # a demo: start a run over HTTP, kill -9 the server
                                     # while the run waits for a human, restart it, answer

The runs live in the DBOS system database `serve_example.sqlite` (in the current
directory), beside the server's own tables.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import _path  # noqa: F401  # makes examples.flows importable
import httpx
from llama_agents.client import WorkflowClient
from workflows.events import HumanResponseEvent

from dbos_llama.server import DurableWorkflowServer
from examples.flows.approvals import Approval

DB_URL = "sqlite:///serve_example.sqlite"
PORT = int(os.environ.get("PORT", "8000"))
BASE_URL = f"http://127.0.0.1:{PORT}"


def build_server() -> DurableWorkflowServer:
    server = DurableWorkflowServer({"name": "serve-example", "system_database_url": DB_URL})
    server.add_workflow("approval", Approval(timeout=None))
    return server


def start_server_process(log: Path) -> subprocess.Popen[bytes]:
    """This file's server in a new process, once it answers."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve"], stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    for _ in range(300):
        try:
            if httpx.get(f"{BASE_URL}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not start; see {log}")


async def demo() -> None:
    log = Path("serve_example.log")
    server = start_server_process(log)
    client = WorkflowClient(base_url=BASE_URL)
    handler = await client.run_workflow_nowait("approval", start_event={"customer": "ACME"})
    print(f"started handler {handler.handler_id} (run {handler.run_id}) over HTTP")
    stream = client.get_workflow_events(handler.handler_id, after_sequence=-1)
    async for event in stream:
        if event.type == "InputRequiredEvent":
            print(f"question for a human: {event.value['_data']['prefix']}")
            break
    await stream.aclose()

    server.kill()  # SIGKILL while the run waits for its human
    server.wait()
    print("server killed (SIGKILL) while the run waits; starting a new server process")
    server = start_server_process(log)
    try:
        await client.send_event(handler.handler_id, HumanResponseEvent(response="approved"))
        done = await client.wait_for_handler(handler.handler_id, timeout=60)
        print(f"handler {done.handler_id} is {done.status}: {done.result.value['result']}")
    finally:
        server.kill()
        server.wait()
    paid = log.read_text().count("(a paid call)")
    print(f"paid calls made: {paid} (the restarted server did not pay again)")
    print(f"see the run: dbos-llama runs show {handler.handler_id} --db {DB_URL}")


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        asyncio.run(build_server().serve(host="127.0.0.1", port=PORT))
    else:
        asyncio.run(demo())
