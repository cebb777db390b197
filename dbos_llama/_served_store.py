"""The server's workflow store on the DBOS system database, reading durable runs from DBOS.

llama-agents-server keeps handlers, events and state in its workflow store. For a
durable run that would be a second, weaker record: the server writes an event when
it sees it, so a re-run step or a replayed run writes it again. Here the server's own
tables (in the DBOS system database: the same SQLite file, or a schema of the same
PostgreSQL database) keep only the handler rows; a durable run's events are read
from its DBOS stream (each once, in order, the offset as the sequence), its outcome
from its DBOS status, and its state is dbos_llama's journaled ``ctx.store``. Runs of
workflows that are not durable are stored as the server stores them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any, Literal

from dbos import DBOS, WorkflowStatus
from dbos import error as dbos_error
from llama_agents.client.protocol.serializable_events import EventEnvelopeWithMetadata
from llama_agents.server import HandlerQuery, PersistentHandler, SqliteWorkflowStore
from workflows.context.serializers import BaseSerializer
from workflows.context.state_store import DictState, StateStore
from workflows.errors import WorkflowTimeoutError
from workflows.events import (
    StopEvent,
    WorkflowCancelledEvent,
    WorkflowFailedEvent,
    WorkflowTimedOutEvent,
)

from . import _naming, _release
from ._context import outside_workflow
from ._patches import recorded_edits
from ._records import CANCELLED, ERROR, SUCCESS, TERMINAL
from ._release_run import local
from ._run_state import _runs
from ._state import DurableStateStore
from ._upstream import postgres_workflow_store_class, stored_event_class

#: How often a reader of a live run's events looks for new ones.
EVENT_POLL_SECONDS = 0.1
#: The PostgreSQL schema holding the server's tables, beside DBOS's ``dbos`` schema.
POSTGRES_SCHEMA = "llama_server"


#: A handler's status as llama-agents-server names them.
Status = Literal["running", "completed", "failed", "cancelled"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a durable run ended, as the server shows it."""

    status: Status
    event: StopEvent
    error: str | None


def outcome_of(status: WorkflowStatus, released: Collection[str] = ()) -> Outcome | None:
    """The server's view of a finished run's DBOS status (None while it runs, or
    waits released from memory: its ID is in ``released``)."""
    if status.status not in TERMINAL or status.workflow_id in released:
        return None
    if status.status == SUCCESS:
        output = status.output
        event = output if isinstance(output, StopEvent) else StopEvent(result=output)
        return Outcome("completed", event, None)
    if status.status == CANCELLED:
        return Outcome("cancelled", WorkflowCancelledEvent(), None)
    error = status.error
    if isinstance(error, WorkflowTimeoutError):
        seconds = _timeout_seconds(status)
        timed_out = WorkflowTimedOutEvent(timeout=seconds, active_steps=[])
        return Outcome("failed", timed_out, f"Workflow timed out after {seconds}s")
    text = "the run failed" if error is None else f"{type(error).__name__}: {error}"
    if status.status != ERROR:  # MAX_RECOVERY_ATTEMPTS_EXCEEDED
        text = f"{status.status}: {text}"
    exception = error if isinstance(error, Exception) else RuntimeError(text)
    return Outcome("failed", WorkflowFailedEvent(step_name="", exception=exception), text)


def _timeout_seconds(status: WorkflowStatus) -> float:
    """The run timeout of a timed-out run, from upstream's error message ("Operation
    timed out after 3.0 seconds. ..."); 0.0 if the message says none."""
    found = re.search(r"after ([0-9.]+) seconds", str(status.error))
    return float(found.group(1)) if found else 0.0


class DurableRunsStore:
    """The part shared by the SQLite and PostgreSQL stores (a mixin over a
    llama-agents-server store class): durable runs are read from DBOS.

    ``plain_runs`` holds the run IDs of workflows that are not durable (started in
    this process, in memory): those are left to the server's own tables.
    """

    _plain_runs: Collection[str] = ()

    def serve_durable_runs(self, plain_runs: Collection[str]) -> None:
        self._plain_runs = plain_runs
        self.poll_interval = EVENT_POLL_SECONDS

    def _durable(self, run_id: str | None) -> bool:
        return run_id is not None and run_id not in self._plain_runs

    # -- state ---------------------------------------------------------------------------
    def create_state_store(
        self,
        run_id: str,
        state_type: type[Any] | None = None,
        serialized_state: dict[str, Any] | None = None,
        serializer: BaseSerializer | None = None,
        namespace: tuple[str, ...] = (),
    ) -> StateStore[Any]:
        if not self._durable(run_id) or namespace:
            parent: Any = super()
            return parent.create_state_store(  # type: ignore[no-any-return]  # upstream's store
                run_id, state_type, serialized_state, serializer, namespace
            )
        run = _runs.get(run_id)
        if run is not None:  # executing here (its body or one of its steps)
            return run.store_of(state_type or DictState)
        # A run not executing here (finished, or elsewhere): its state as recorded.
        store = DurableStateStore((state_type or DictState)())
        store.apply_edits(*recorded_edits(DBOS, run_id))
        return store

    # -- handlers ------------------------------------------------------------------------
    async def query(self, query: HandlerQuery) -> list[PersistentHandler]:
        """Handlers as stored, with a durable run's status and result taken from DBOS
        (so a run that ended while no server watched it, or in another replica,
        shows its outcome)."""
        parent: Any = super()
        wanted = query.status_in
        found: list[PersistentHandler] = await parent.query(
            dataclasses.replace(query, status_in=None)
        )
        await self._refresh([h for h in found if h.status == "running" and self._durable(h.run_id)])
        return [h for h in found if wanted is None or h.status in wanted]

    async def _refresh(self, handlers: list[PersistentHandler]) -> None:
        if not handlers:
            return
        ids = [h.run_id for h in handlers if h.run_id is not None]
        statuses = {
            s.workflow_id: s
            for s in await outside_workflow(
                functools.partial(DBOS.list_workflows, workflow_ids=ids, load_input=False)
            )
        }
        now = datetime.now(timezone.utc)
        parent: Any = super()
        released = await _released(list(statuses.values()))
        for handler in handlers:
            status = statuses.get(handler.run_id or "")
            outcome = outcome_of(status, released) if status is not None else None
            if outcome is None:
                continue
            handler.status = outcome.status
            handler.result = outcome.event if outcome.status == "completed" else None
            handler.error = outcome.error
            handler.updated_at = handler.completed_at = now
            await parent.update(handler)

    # -- events --------------------------------------------------------------------------
    async def query_events(
        self, run_id: str, after_sequence: int | None = None, limit: int | None = None
    ) -> list[Any]:
        """A durable run's events: its DBOS stream (offset = sequence), then the
        event that ended it once it has ended."""
        parent: Any = super()
        if not self._durable(run_id):
            return await parent.query_events(run_id, after_sequence, limit)  # type: ignore[no-any-return]
        start = 0 if after_sequence is None else after_sequence + 1
        # The status first: once it says the run ended, its stream is complete.
        status = await DBOS.get_workflow_status_async(run_id)
        released = await _released([status] if status is not None else [])
        outcome = outcome_of(status, released) if status is not None else None
        now = datetime.now(timezone.utc)
        events: list[Any] = []
        async for value in _stored_values(run_id, start):
            events.append(_stored(run_id, start + len(events), value, now))
            if limit is not None and len(events) >= limit:
                return events
        if outcome is not None:
            # The ending event comes right after the stream's last value.
            length = start + len(events)
            if events or start == 0 or await _has_value(run_id, start - 1):
                events.append(_stored(run_id, length, outcome.event, now))
        return events


async def _released(statuses: list[WorkflowStatus]) -> set[str]:
    """Which of the CANCELLED runs among ``statuses`` are released, not cancelled."""
    releases = local()
    cancelled = [s.workflow_id for s in statuses if s.status == CANCELLED]
    if releases is None or not cancelled:
        return set()
    states = await outside_workflow(functools.partial(releases.states, cancelled))
    return {run_id for run_id, state in states.items() if state in _release.RELEASED_STATES}


def _stored(run_id: str, sequence: int, event: Any, when: datetime) -> Any:
    """A server ``StoredEvent``."""
    return stored_event_class()(
        run_id=run_id,
        sequence=sequence,
        timestamp=when,
        event=EventEnvelopeWithMetadata.from_event(event),
    )


async def _stored_values(run_id: str, offset: int) -> Any:
    """The values a run's DBOS stream holds now, from ``offset`` (not waiting for more)."""
    values = DBOS.read_stream_async(run_id, _naming.STREAM_KEY, offset=offset, timeout_seconds=0.0)
    try:
        async for value in values:
            yield value
    except dbos_error.DBOSStreamTimeoutError:
        return  # everything stored so far was read
    finally:
        await values.aclose()


async def _has_value(run_id: str, offset: int) -> bool:
    values = _stored_values(run_id, offset)
    try:
        async for _ in values:
            return True
        return False
    finally:
        await values.aclose()


class DurableSqliteStore(DurableRunsStore, SqliteWorkflowStore):
    """The server's tables in the DBOS system database's SQLite file."""


def durable_postgres_store(dsn: str, **options: Any) -> Any:
    """The server's tables in schema `POSTGRES_SCHEMA` of the DBOS system database."""
    base = postgres_workflow_store_class()
    cls = type("DurablePostgresStore", (DurableRunsStore, base), {"__module__": __name__})
    return cls(dsn, schema=POSTGRES_SCHEMA, **options)
