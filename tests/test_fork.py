"""The Python API of operating runs, in one process on real DBOS + SQLite: fork
(stream, state, errors), list filters, and JSON events."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from dbos import DBOS
from workflows.events import HumanResponseEvent, StopEvent

from dbos_llama import (
    DurableClient,
    EventDecodeError,
    RunConflictError,
    RunNotFoundError,
    StepNotFoundError,
    event_from_json,
)
from tests.conftest import dbos_config
from tests.flows import Progress, Streamer, Tally


@pytest.fixture
async def client(sqlite_url: str):
    DBOS(config=dbos_config(sqlite_url))
    DBOS.launch()
    try:
        async with DurableClient(sqlite_url) as client:
            yield client
    finally:
        DBOS.destroy()


async def stream_of(client: DurableClient, run_id: str) -> list:
    return [event async for event in client.read_stream(run_id, follow=False)]


async def test_fork_has_its_own_complete_stream(client: DurableClient) -> None:
    assert await Streamer(timeout=None).run(run_id="s-a") == "<s-one>"
    original = await stream_of(client, "s-a")
    fork_id = await client.fork("s-a", from_step="two")
    assert fork_id.startswith("s-a-fork-")
    assert await client.get_result(fork_id) == "<s-one>"
    # Step one's events were reused, step two's written again: as if uninterrupted.
    events = await stream_of(client, fork_id)
    assert [e.i for e in events if isinstance(e, Progress)] == [0, 1, 2, 3]
    assert isinstance(events[-1], StopEvent) and len(events) == 5
    assert await stream_of(client, "s-a") == original
    steps = await client.steps(fork_id)
    assert [(s.invocation_id, s.reused) for s in steps] == [
        ("s-a/one/0", True),
        (f"{fork_id}/two/1", False),
    ]
    info = await client.get_run(fork_id)
    assert (info.forked_from, info.forked_from_step) == ("s-a", "two")


async def test_fork_state_starts_from_the_reused_steps_edits(client: DurableClient) -> None:
    expected = {"customer": "ada", "count": 11, "last": "<tally-two>"}
    assert await Tally(timeout=None).run(run_id="t-a", customer="ada") == expected
    fork_id = await client.fork("t-a", from_step="two", new_run_id="t-b")
    # count is 1 (step one, reused) + 10 (step two, executed again): not 10, not 21.
    assert await client.get_result(fork_id) == expected
    assert await client.get_state("t-b") == expected
    assert await client.get_state("t-a") == expected


async def test_fork_refuses_unknown_steps_runs_and_taken_ids(client: DurableClient) -> None:
    await Tally(timeout=None).run(run_id="t-c", customer="bo")
    with pytest.raises(StepNotFoundError, match="recorded steps are: one, two"):
        await client.fork("t-c", from_step="three")
    with pytest.raises(StepNotFoundError):
        await client.fork("t-c", from_step="two/7")
    with pytest.raises(RunConflictError, match="already used"):
        await client.fork("t-c", from_step="two", new_run_id="t-c")
    with pytest.raises(RunNotFoundError):
        await client.fork("nothing", from_step="two")


async def test_list_runs_since(client: DurableClient) -> None:
    await Tally(timeout=None).run(run_id="t-d", customer="cy")
    recent = await client.list_runs(since=timedelta(hours=1))
    assert [r.run_id for r in recent] == ["t-d"]
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert await client.list_runs(since=later) == []


def test_event_from_json() -> None:
    full = '{"type": "workflows.events.HumanResponseEvent", "data": {"response": "yes"}}'
    assert event_from_json(full) == HumanResponseEvent(response="yes")
    short = event_from_json('{"response": "no"}', type_name="HumanResponseEvent")
    assert short == HumanResponseEvent(response="no")
    assert event_from_json({"type": "tests.flows.Progress", "data": {"i": 3}}) == Progress(i=3)
    with pytest.raises(EventDecodeError, match="not valid JSON"):
        event_from_json("{oops")
    with pytest.raises(EventDecodeError, match="names no type"):
        event_from_json('{"response": "yes"}')
    with pytest.raises(EventDecodeError, match="is not an Event class"):
        event_from_json('{"type": "json.JSONDecoder"}')
    with pytest.raises(EventDecodeError, match="does not make a valid tests.flows.Progress"):
        event_from_json('{"type": "tests.flows.Progress", "data": {"i": "many"}}')
