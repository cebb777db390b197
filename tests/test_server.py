"""Durable workflows behind LlamaIndex's WorkflowServer: real uvicorn processes on
127.0.0.1, driven with llama-agents-client's `WorkflowClient` and plain HTTP, killed
with SIGKILL and restarted on the same database."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_agents.client import WorkflowClient
from workflows.events import HumanResponseEvent

from dbos_llama import DurableClient, NotDurablyServedError
from tests.serving import Served, effect_counts

EXPECTED_RESULT = {"draft": "q1:<draft-a:q1><draft-b:q1>", "decision": "yes"}
EXPECTED_EVENTS = [
    ("Progress", {"n": 0}),
    ("Progress", {"n": 1}),
    ("Progress", {"n": 2}),
    ("InputRequiredEvent", {"_data": {"prefix": "approve q1?"}}),
    ("StopEvent", {"result": EXPECTED_RESULT}),
]


async def events_of(base_url: str, handler_id: str, until: str | None = None) -> list[Any]:
    """The handler's events from sequence 0, as ``(type, value)``: all of them, or
    up to the first of type ``until``."""
    client = WorkflowClient(base_url=base_url)
    seen: list[Any] = []
    stream = client.get_workflow_events(handler_id, after_sequence=-1)
    try:
        async for envelope in stream:
            seen.append((envelope.type, envelope.value))
            if envelope.type == until:
                break
    finally:
        await stream.aclose()
    return seen


async def answer_and_finish(base_url: str, handler_id: str) -> Any:
    client = WorkflowClient(base_url=base_url)
    await client.send_event(handler_id, HumanResponseEvent(response="yes"))
    return await client.wait_for_handler(handler_id, timeout=90)


async def assert_finished_exactly(url: str, served: Served, handler_id: str, log: Path) -> None:
    handler = await answer_and_finish(served.base_url, handler_id)
    assert handler.status == "completed", handler
    assert handler.result.value["result"] == EXPECTED_RESULT
    assert await events_of(served.base_url, handler_id) == EXPECTED_EVENTS
    # No completed @durable_step call ran twice.
    assert effect_counts(log) == {"effect:draft-a:q1": 1, "effect:draft-b:q1": 1}
    async with DurableClient(url) as client:
        run = await client.get_run(handler_id)  # found by its handler ID
        assert (run.run_id, run.status, run.handler_id) == (handler.run_id, "SUCCESS", handler_id)
        assert await client.get_state(run.run_id) == EXPECTED_RESULT


async def test_a_run_through_the_server_is_a_durable_run(sqlite_url: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with Served(sqlite_url, log) as served:
        client = WorkflowClient(base_url=served.base_url)
        started = await client.run_workflow_nowait(
            "approval", handler_id="h-plain", start_event={"topic": "q1"}
        )
        assert started.status == "running"
        asked = await events_of(served.base_url, "h-plain", until="InputRequiredEvent")
        assert asked == EXPECTED_EVENTS[:4]
        await assert_finished_exactly(sqlite_url, served, "h-plain", log)


SCENARIOS = {
    # (a) inside a step, between two @durable_step calls
    "between-calls": "served:between-calls",
    # (b) while the run waits for a human (killed from outside)
    "waiting": None,
    # (c) while a step writes stream events
    "mid-stream": "served:mid-stream",
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_server_sigkilled_mid_run_restarts_and_finishes_exactly(
    sqlite_url: str, tmp_path: Path, scenario: str
) -> None:
    log = tmp_path / "log"
    crash_at = SCENARIOS[scenario]
    first = Served(sqlite_url, log, env={"DBOS_LLAMA_CRASH_AT": crash_at} if crash_at else {})
    with first:
        client = WorkflowClient(base_url=first.base_url)
        await client.run_workflow_nowait("approval", handler_id="h-1", start_event={"topic": "q1"})
        if crash_at is None:
            await events_of(first.base_url, "h-1", until="InputRequiredEvent")
            first.kill()
        else:
            assert first.wait_killed() == -9, first.output()
    with Served(sqlite_url, log) as second:
        # DBOS recovers the run; it asks again (once), and the answer sent through
        # the restarted server reaches it.
        asked = await events_of(second.base_url, "h-1", until="InputRequiredEvent")
        assert asked == EXPECTED_EVENTS[:4]
        await assert_finished_exactly(sqlite_url, second, "h-1", log)


@pytest.mark.slow
async def test_two_replicas_on_postgres_share_runs(pg_database: Any, tmp_path: Path) -> None:
    url = pg_database()
    log = tmp_path / "log"
    with Served(url, log) as a, Served(url, log) as b:
        # Started through A, followed and answered through B.
        await WorkflowClient(base_url=a.base_url).run_workflow_nowait(
            "approval", handler_id="h-ab", start_event={"topic": "q1"}
        )
        assert (
            await events_of(b.base_url, "h-ab", until="InputRequiredEvent") == (EXPECTED_EVENTS[:4])
        )
        await assert_finished_exactly(url, b, "h-ab", log)
    # A dies mid-run (SIGKILL between two paid calls); A restarted completes it, and
    # B serves its events and takes the answer.
    second_log = tmp_path / "log2"
    a = Served(url, second_log, env={"DBOS_LLAMA_CRASH_AT": "served:between-calls"})
    with a, Served(url, second_log) as b:
        await WorkflowClient(base_url=a.base_url).run_workflow_nowait(
            "approval", handler_id="h-kill", start_event={"topic": "q1"}
        )
        assert a.wait_killed() == -9
        with Served(url, second_log, port=a.port):
            asked = await events_of(b.base_url, "h-kill", until="InputRequiredEvent")
            assert asked == EXPECTED_EVENTS[:4]
            await assert_finished_exactly(url, b, "h-kill", second_log)


async def test_outcomes_and_bad_input_through_the_server(sqlite_url: str, tmp_path: Path) -> None:
    with Served(sqlite_url, tmp_path / "log") as served:
        http = httpx.AsyncClient(base_url=served.base_url, timeout=30)
        client = WorkflowClient(base_url=served.base_url)

        # A run waiting for its human takes only declared events, well formed.
        await client.run_workflow_nowait(
            "approval", handler_id="h-bad", start_event={"topic": "q1"}
        )
        await events_of(served.base_url, "h-bad", until="InputRequiredEvent")
        undeclared = await http.post(
            "/events/h-bad", json={"event": {"type": "Bogus", "value": {}}}
        )
        assert undeclared.status_code == 400 and "Invalid event type" in undeclared.text
        malformed = await http.post(
            "/events/h-bad", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        unknown = await http.post(
            "/events/no-such-handler",
            json={"event": {"type": "HumanResponseEvent", "value": {"response": "x"}}},
        )
        assert unknown.status_code == 404
        assert (await http.get("/handlers/no-such-handler")).status_code == 404
        async with DurableClient(sqlite_url) as durable:
            run = await durable.get_run("h-bad")
            assert run.status == "PENDING"
            # Nothing was written to the run: its recorded operations end with its wait.
            steps = await durable.steps(run.run_id)
            assert [s.step for s in steps] == ["draft"]
        finished = await answer_and_finish(served.base_url, "h-bad")
        assert finished.status == "completed"

        failed = (await http.post("/workflows/failing/run", json={"handler_id": "h-fail"})).json()
        assert (failed["status"], failed["error"]) == ("failed", "ValueError: no budget")
        unstorable = (
            await http.post("/workflows/unstorable/run", json={"handler_id": "h-unstorable"})
        ).json()
        assert unstorable["status"] == "failed"
        assert unstorable["error"].startswith("NotSerializableError: Event Unstorable")
        timed_out = (
            await http.post("/workflows/slow-timeout/run", json={"handler_id": "h-timeout"})
        ).json()
        assert timed_out["status"] == "failed"
        assert timed_out["error"] == "Workflow timed out after 1.0s"
        assert [t for t, _ in await events_of(served.base_url, "h-timeout")] == [
            "WorkflowTimedOutEvent"
        ]

        await client.run_workflow_nowait("slow", handler_id="h-cancel")
        await asyncio.sleep(1.0)
        await client.cancel_handler("h-cancel")
        cancelled = await _wait_status(http, "h-cancel", "cancelled")
        # llama-agents-server 0.8.0 answers 500 for any handler that did not
        # complete (the body still says "cancelled"): upstream's status mapping.
        assert cancelled.status_code == 500
        assert [t for t, _ in await events_of(served.base_url, "h-cancel")] == [
            "WorkflowCancelledEvent"
        ]
        async with DurableClient(sqlite_url) as durable:
            assert (await durable.get_run("h-cancel")).status == "CANCELLED"

        # A workflow that is not @durable is served in memory, with a warning.
        plain = (await http.post("/workflows/plain/run", json={})).json()
        assert (plain["status"], plain["result"]["value"]["result"]) == ("completed", "plain")
        async with DurableClient(sqlite_url) as durable:
            with pytest.raises(LookupError):
                await durable.get_run(plain["run_id"])
        await http.aclose()
    assert "Plain is not @durable: it is served in memory" in served.output(whole=True)


async def _wait_status(http: httpx.AsyncClient, handler_id: str, status: str) -> httpx.Response:
    for _ in range(150):
        response = await http.get(f"/handlers/{handler_id}")
        if response.json().get("status") == status:
            return response
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handler_id} never became {status}: {response.text}")


def test_a_plain_workflow_server_refuses_a_durable_workflow() -> None:
    from llama_agents.server import WorkflowServer

    from tests.served_app import ServedApproval

    with pytest.raises(NotDurablyServedError, match="DurableWorkflowServer"):
        WorkflowServer().add_workflow("approval", ServedApproval(timeout=None))


def test_server_config_errors_say_what_to_write(tmp_path: Path) -> None:
    from dbos_llama import ServerConfigError
    from dbos_llama.server import DurableWorkflowServer

    with pytest.raises(ServerConfigError, match="system_database_url"):
        DurableWorkflowServer({"name": "x"})
    with pytest.raises(ServerConfigError, match="runtime"):
        DurableWorkflowServer(
            {"name": "x", "system_database_url": f"sqlite:///{tmp_path}/x.sqlite"}, runtime=None
        )
