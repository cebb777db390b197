"""The event stream is durable: stored exactly once, readable from any process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dbos import DBOSClient
from workflows.events import StopEvent

from dbos_llama import DurableClient
from dbos_llama._naming import STREAM_KEY
from tests.conftest import kill_then_finish, read_log
from tests.flows import Progress, Streamer

EXPECTED = [0, 1, 2, 3]


def raw_stream(db_url: str, run_id: str, offset: int = 0) -> list:
    """The DBOS stream itself, read with plain DBOS."""
    client = DBOSClient(system_database_url=db_url)
    try:
        return list(client.read_stream(run_id, STREAM_KEY, offset=offset))
    finally:
        client.destroy()


async def read_stored(db_url: str, run_id: str, offset: int = 0) -> list:
    """The run's stream as `DurableClient.read_stream` gives it (StopEvent last)."""
    async with DurableClient(db_url) as client:
        return [e async for e in client.read_stream(run_id, offset=offset)]


def stored_stream(db_url: str, run_id: str, offset: int = 0) -> list:
    return asyncio.run(read_stored(db_url, run_id, offset))


def progress(events: list) -> list[int]:
    return [e.i for e in events if isinstance(e, Progress)]


@pytest.mark.parametrize("crash_at", [None, "streamer:one", "streamer:two"])
def test_stream_is_stored_exactly_once_across_a_crash(
    tmp_path: Path, db_url: str, crash_at: str | None
) -> None:
    log = tmp_path / "log"
    done = kill_then_finish(db_url, "streamer", "s-1", {}, log, crash_at)
    assert done.result == "<s-one>"
    events = stored_stream(db_url, "s-1")
    assert progress(events) == EXPECTED  # no duplicates, no gaps, in order
    assert isinstance(events[-1], StopEvent) and events[-1].result == "<s-one>"
    assert progress(stored_stream(db_url, "s-1", offset=2)) == EXPECTED[2:]
    # In the database: each event once; the StopEvent is the run's result, not stored twice.
    raw = raw_stream(db_url, "s-1")
    assert progress(raw) == EXPECTED and not any(isinstance(e, StopEvent) for e in raw)
    assert read_log(log)["effect:s-one"] == 1


async def test_stream_events_live_and_stored(dbos_app: str) -> None:
    handler = Streamer(timeout=None).run(run_id="live-1")
    live = [ev async for ev in handler.stream_events()]
    assert await handler == "<s-one>"
    assert progress(live) == EXPECTED and isinstance(live[-1], StopEvent)
    stored = await read_stored(dbos_app, "live-1")
    assert progress(stored) == EXPECTED and isinstance(stored[-1], StopEvent)
    assert progress(raw_stream(dbos_app, "live-1")) == EXPECTED


async def test_attached_handler_streams_the_stored_events(dbos_app: str) -> None:
    assert await Streamer(timeout=None).run(run_id="live-2") == "<s-one>"
    again = Streamer(timeout=None).run(run_id="live-2")  # attaches, runs nothing
    events = [ev async for ev in again.stream_events()]
    assert progress(events) == EXPECTED and isinstance(events[-1], StopEvent)
