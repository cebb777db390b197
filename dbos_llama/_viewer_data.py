"""What the web viewer reads of the system database: pages of runs, one run's life.

Everything goes through `DurableClient`, except what it does not expose: paging
through runs (DBOS's ``limit``/``offset`` on its ``created_at`` order, so the first
page of 100,000 runs costs what the first page of 100 does), the newest step
invocation of the running runs on a page (one query), and the times the step
invocations waited on a queue, read with a second, read-only `DBOSClient` on the
same database.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from dbos import DBOSClient, WorkflowStatus

from . import _naming
from ._client import DurableClient
from ._history import StepInvocationInfo, jsonable, outcome_summary, unreadable
from ._json_serializer import JsonDataSerializer
from ._patches import recorded_edits
from ._records import CANCELLED, ENQUEUED, PENDING, SUCCESS
from ._run_info import RunInfo, StreamEntry, run_info
from ._serialization import UNREADABLE_VALUE_ERRORS

#: Status filters that are not DBOS statuses, and the DBOS statuses they narrow (a
#: run being recovered is ENQUEUED a moment; a released run is CANCELLED in DBOS).
DERIVED = {
    "waiting-human": [PENDING, ENQUEUED, CANCELLED],
    "waiting-version": [PENDING, ENQUEUED],
    "released": [CANCELLED],
}
#: DBOS statuses offered as filters.
STATUSES = [
    "PENDING",
    "ENQUEUED",
    "SUCCESS",
    "ERROR",
    "CANCELLED",
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED",
]
#: Rows a derived filter looks through for one page before it offers "older".
SCAN_LIMIT = 2000
#: Rows read per database query while a derived filter scans.
SCAN_BATCH = 200
#: Reading a state whose classes cannot be imported here fails with these.
_STATE_ERRORS: tuple[type[Exception], ...] = (*UNREADABLE_VALUE_ERRORS, LookupError, ValueError)
#: What the page shows for a value this process cannot deserialize.
NOT_READABLE = "not readable here"


@dataclass(frozen=True)
class RunFilter:
    """The runs page's filters and position."""

    workflow: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class RunRow:
    """One line of the runs page."""

    info: RunInfo
    waiting_human: bool = False


@dataclass(frozen=True)
class RunsPage:
    """One page of runs, newest first; ``next_offset`` is None on the last page."""

    rows: list[RunRow]
    offset: int
    next_offset: int | None


@dataclass(frozen=True)
class Invocation:
    """A step invocation with what DBOS knows of its executions."""

    step: StepInvocationInfo
    #: Executions of the invocation: more than 1 after a crash re-executed it.
    attempts: int = 1
    #: Milliseconds it waited on a queue before it started, if it was queued.
    queued_ms: int | None = None


@dataclass
class RunView:
    """Everything the run page shows."""

    info: RunInfo
    attempts: int
    invocations: list[Invocation]
    stream: list[StreamEntry]
    state: Any
    edits: list[tuple[str, int, Any]]
    result: Any
    waiting_human: bool

    @property
    def awaited_prompt(self) -> str | None:
        """The question of the InputRequiredEvent the run waits on, if it does."""
        if not self.waiting_human:
            return None
        if self.stream and is_input_request(self.stream[-1]):
            data = jsonable(self.stream[-1].event)
            fields = data.get("data") if isinstance(data, dict) else None
            return str(fields.get("prefix", "")) if isinstance(fields, dict) else None
        last = self.invocations[-1].step.output if self.invocations else ""
        return last.removeprefix("InputRequiredEvent ")


def is_input_request(entry: StreamEntry) -> bool:
    """Whether a stream value asks a human for input (an ``InputRequiredEvent``)."""
    kinds = [c.__name__ for c in type(entry.event).__mro__]
    return entry.unreadable is None and "InputRequiredEvent" in kinds


def asks_human(steps: list[StepInvocationInfo]) -> bool:
    """Whether the last step invocation returned an ``InputRequiredEvent`` (recorded
    before the run writes it to its stream) and nothing ran after it."""
    return (
        bool(steps)
        and steps[-1].duration is not None
        and steps[-1].output.startswith("InputRequiredEvent")
    )


class Reader:
    """The viewer's reads (and the client its actions go through) on one database."""

    def __init__(self, db_url: str) -> None:
        self.client = DurableClient(db_url)
        self._dbos = DBOSClient(system_database_url=db_url, serializer=JsonDataSerializer())

    def close(self) -> None:
        """Release both clients' connections."""
        self.client.close()
        self._dbos.destroy()

    async def runs_page(self, wanted: RunFilter) -> RunsPage:
        """The runs matching ``wanted``, newest first, one page from its offset."""
        base = DERIVED.get(wanted.status or "") or wanted.status
        rows: list[RunRow] = []
        offset = wanted.offset
        batch = wanted.limit + 1 if wanted.status not in DERIVED else SCAN_BATCH
        while len(rows) <= wanted.limit:
            found = await self._dbos.list_workflows_async(
                name=_naming.run_workflow_name(wanted.workflow) if wanted.workflow else None,
                status=base,
                start_time=wanted.since.isoformat() if wanted.since else None,
                end_time=wanted.until.isoformat() if wanted.until else None,
                has_parent=False,
                sort_desc=True,
                limit=batch,
                offset=offset,
                load_input=False,
                load_output=False,
            )
            for row in await self._rows(found):
                offset += 1
                if row is not None and _matches(row, wanted.status):
                    rows.append(row)
                    if len(rows) > wanted.limit:
                        return RunsPage(rows[:-1], wanted.offset, offset - 1)
            scanned = offset - wanted.offset
            if len(found) < batch:
                return RunsPage(rows, wanted.offset, None)
            if scanned >= SCAN_LIMIT:
                return RunsPage(rows, wanted.offset, offset)
        return RunsPage(rows[: wanted.limit], wanted.offset, offset)

    async def _rows(self, found: list[WorkflowStatus]) -> list[RunRow | None]:
        """A row per status (None: not a durable run). Whether a running run waits
        for a human is read for the whole batch at once: its newest step invocation
        (by number) ended returning an ``InputRequiredEvent``."""
        infos: list[RunInfo | None] = []
        for status in found:
            info = run_info(status)
            if info is not None and status.status == CANCELLED:
                # Released runs are CANCELLED in DBOS: the client tells them apart.
                info = await self.client.get_run(status.workflow_id)
            infos.append(info)
        running = [i.run_id for i in infos if i is not None and i.status == PENDING]
        asking = await self._asking(running) if running else set()
        return [None if i is None else RunRow(i, i.run_id in asking or i.released) for i in infos]

    async def _asking(self, run_ids: list[str]) -> set[str]:
        """Those of ``run_ids`` whose newest step invocation returned an
        InputRequiredEvent (one query for all)."""
        children = await self._dbos.list_workflows_async(
            parent_workflow_id=run_ids, load_input=False, load_output=True
        )
        newest: dict[str, tuple[int, WorkflowStatus]] = {}
        for child in children:
            number = _naming.invocation_number(child.workflow_id)
            parent = child.parent_workflow_id
            if parent is None or number is None:
                continue
            if parent not in newest or newest[parent][0] < number:
                newest[parent] = (number, child)
        return {
            parent
            for parent, (_, child) in newest.items()
            if child.status == SUCCESS
            and outcome_summary(child.output).startswith("InputRequiredEvent")
        }

    async def run_view(self, run_id: str) -> RunView:
        """The run, its step invocations with their executions, stream, state,
        edits and result; `RunNotFoundError` for an unknown run."""
        info = await self.client.get_run(run_id)
        run_id = info.run_id  # a server handler ID names its run
        steps = await self.client.steps(run_id)
        statuses = {
            s.workflow_id: s
            for s in await self._dbos.list_workflows_async(
                workflow_id_prefix=run_id, load_input=False, load_output=False
            )
        }
        invocations = [_invocation(s, statuses.get(s.invocation_id)) for s in steps]
        stream = [e async for e in self.client.stream_entries(run_id, follow=False)]
        try:
            state: Any = await self.client.get_state(run_id)
        except _STATE_ERRORS as error:
            state = f"{NOT_READABLE} ({type(error).__name__}: {error})"
        edits, _ = await asyncio.to_thread(recorded_edits, self._dbos, run_id)
        return RunView(
            info=info,
            attempts=info.attempts or 1,
            invocations=invocations,
            stream=stream,
            state=state,
            edits=[(source, seq, patch) for source, seq, patch in edits],
            result=await self._result(info),
            waiting_human=not info.finished
            and ((bool(stream) and is_input_request(stream[-1])) or asks_human(steps)),
        )

    async def _result(self, info: RunInfo) -> Any:
        if info.status != "SUCCESS":
            return None
        try:
            found = await self._dbos.list_workflows_async(
                workflow_ids=[info.run_id], load_input=False, load_output=True
            )
        except UNREADABLE_VALUE_ERRORS as error:
            return f"{NOT_READABLE} ({type(error).__name__}: {error})"
        output = found[0].output if found else None
        if unreadable(output):
            return NOT_READABLE
        result = getattr(output, "result", output)
        return jsonable(result)


def _invocation(step: StepInvocationInfo, status: WorkflowStatus | None) -> Invocation:
    """``step`` with its executions, and the time it waited on a queue (DBOS's
    recovery queue aside)."""
    queued = None
    if status is not None:
        internal = (status.queue_name or "").startswith("_dbos_internal")
        if status.dequeued_at is not None and status.created_at is not None and not internal:
            queued = max(0, status.dequeued_at - status.created_at)
    return Invocation(step, step.attempts or 1, queued)


def _matches(row: RunRow, wanted: str | None) -> bool:
    if wanted == "waiting-human":
        return row.waiting_human or row.info.released
    if wanted == "waiting-version":
        return row.info.waiting_for_version is not None
    if wanted == "released":
        return row.info.released
    if wanted in (PENDING, CANCELLED):
        return row.info.status == wanted  # a released run reads PENDING
    return True


def parse_time(text: str | None) -> datetime | None:
    """A filter time: an age (``30m``, ``2h``, ``1d``) back from now, or ISO 8601."""
    if not text:
        return None
    text = text.strip()
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        age = timedelta(**{units[text[-1]]: float(text[:-1])})
        return datetime.now(timezone.utc) - age
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def epoch(moment: datetime | None) -> float | None:
    """Seconds since the epoch, for the timeline."""
    return None if moment is None else moment.timestamp()
