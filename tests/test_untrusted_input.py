"""Events from outside a run travel as JSON and are checked against the workflow."""

from __future__ import annotations

import logging
import sqlite3
import sys

from dbos import DBOSClient, WorkflowSerializationFormat
from workflows.events import HumanResponseEvent, InputRequiredEvent

from dbos_llama import DurableClient
from dbos_llama._naming import TICK_TOPIC
from tests.conftest import snapshot
from tests.flows import Approval

PORTABLE = WorkflowSerializationFormat.PORTABLE

#: Crafted messages a writer of the mailbox could store, and why each is dropped.
CRAFTED = [
    # A type the workflow does not declare, in a module nobody imported.
    ({"dbos_llama": 1, "type": "tests.untrusted_marker.Boom", "data": {}}, "Boom"),
    # A real event class that no step accepts: would end the run if delivered.
    (
        {"dbos_llama": 1, "type": "workflows.events.StopEvent", "data": {"result": "pwned"}},
        "StopEvent",
    ),
    # A declared type with data that does not validate.
    (
        {"dbos_llama": 1, "type": "workflows.events.HumanResponseEvent", "data": "rm -rf /"},
        "validate",
    ),
    # An envelope of an unknown format, and a plain object that is no envelope.
    ({"dbos_llama": 99, "type": "workflows.events.HumanResponseEvent", "data": {}}, "format"),
    ({"type": "workflows.events.HumanResponseEvent"}, "neither"),
]


async def test_crafted_events_are_rejected_and_nothing_runs(sqlite_url: str, caplog) -> None:
    from dbos import DBOS

    from tests.conftest import dbos_config

    caplog.set_level(logging.INFO)
    DBOS(config=dbos_config(sqlite_url))
    DBOS.launch()
    raw = DBOSClient(system_database_url=sqlite_url)
    try:
        handler = Approval(timeout=None).run(run_id="crafted", customer="eve")
        async for event in handler.stream_events():
            if not isinstance(event, InputRequiredEvent):
                continue
            for message, _ in CRAFTED:
                raw.send("crafted", message, TICK_TOPIC, serialization_type=PORTABLE)
            async with DurableClient(sqlite_url) as client:
                await client.send_event("crafted", HumanResponseEvent(response="fine"))
        # Only the genuine answer was delivered: the StopEvent did not end the run.
        assert await handler == "answer=fine"
    finally:
        raw.destroy()
        DBOS.destroy()
    assert "tests.untrusted_marker" not in sys.modules
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == len(CRAFTED), errors
    for (_, why), error in zip(CRAFTED, errors, strict=True):
        assert "crafted" in error and "dropped" in error and why in error, error
    assert set(snapshot(sqlite_url, "crafted").statuses.values()) == {"SUCCESS"}
    # Every message from outside was stored as JSON, none as a pickle.
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        formats = {row[0] for row in conn.execute("SELECT serialization FROM notifications")}
    assert formats == {"portable_json"}


def test_start_and_stop_events_are_never_taken_from_outside() -> None:
    from workflows.events import StartEvent, StopEvent

    from dbos_llama._envelope import declared_types
    from dbos_llama._upstream import class_accepted_events

    declared = declared_types(class_accepted_events(Approval))
    assert declared  # the answer it waits for is declared...
    # ...but starting or ending the run is never an outside sender's to do.
    assert not [c for c in declared.values() if issubclass(c, (StartEvent, StopEvent))]
