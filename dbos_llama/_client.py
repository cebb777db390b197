"""Operating durable runs from any process that can reach the system database."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from dbos import DBOSClient, Serializer, SetWorkflowID, WorkflowHandleAsync, WorkflowStatus
from dbos import error as dbos_error
from pydantic import BaseModel
from workflows.context.state_store import DictState, InMemoryStateStore
from workflows.errors import WorkflowCancelledByUser
from workflows.events import Event, StopEvent

from . import _envelope as envelope
from . import _naming, _otel, _registry
from ._handover import hand_over, resume_cancelled_steps
from ._history import StepInvocationInfo, fork_point, timeline
from ._json_serializer import JsonDataSerializer
from ._patches import ImportedClassesSerializer, rebuild_payload, recorded_edits
from ._records import CANCELLED, PENDING, SUCCESS, dbos_statuses, step_rows
from ._release import RELEASED_STATES, Releases, keep_following, wait_while_released
from ._run_info import RunInfo, StreamEntry, run_info
from ._send import Outbox, check_destinations
from ._serialization import UNREADABLE_VALUE_ERRORS
from ._upstream import class_state_type
from .errors import (
    RunConflictError,
    RunNotFoundError,
)

#: How often a reader of a live stream polls (SQLite; PostgreSQL is notified).
STREAM_POLLING_INTERVAL_SEC = 0.1


class DurableClient:
    """Inspect and steer durable runs by ``run_id``, with only a database URL.

    Works in any process, with or without the workflow's code (events and results
    are unpickled, so their classes must be importable to read them).

    Example:
        ```python
        async with DurableClient("sqlite:///orders.sqlite") as client:
            await client.send_event("order-42", HumanResponseEvent(response="yes"))
            print(await client.get_result("order-42"))
        ```
    """

    def __init__(self, system_database_url: str, serializer: Serializer | None = None) -> None:
        # Reads values stored as pickles and, by default, as dbos_llama JSON (the
        # `JsonDataSerializer` option of the workers) alike.
        self._dbos = DBOSClient(
            system_database_url=system_database_url, serializer=serializer or JsonDataSerializer()
        )
        self._sqlite = system_database_url.startswith("sqlite")
        # Runs released from memory while they wait (`@durable(idle_release=...)`).
        self._releases = Releases(
            system_database_url,
            self._dbos.resume_workflow,
            functools.partial(dbos_statuses, self._dbos.list_workflows),
        )
        self._outbox = Outbox(self._dbos, self._releases)

    async def __aenter__(self) -> DurableClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the client's database connections."""
        self._dbos.destroy()
        self._releases.table.dispose()

    async def _infos(self, statuses: list[WorkflowStatus]) -> list[RunInfo]:
        """`RunInfo`s of the durable runs among ``statuses``; released runs read as
        waiting."""
        cancelled = [s.workflow_id for s in statuses if s.status == CANCELLED]
        states = await asyncio.to_thread(self._releases.states, cancelled) if cancelled else {}
        infos = (run_info(s, states.get(s.workflow_id) in RELEASED_STATES) for s in statuses)
        return [info for info in infos if info is not None]

    async def get_run(self, run_id: str) -> RunInfo:
        """The run's workflow, status and timestamps; `RunNotFoundError` if none.

        ``run_id`` may also be the handler ID of a run started through a
        `dbos_llama.server.DurableWorkflowServer` (`RunInfo.handler_id`).
        """
        found = await self._dbos.list_workflows_async(
            workflow_ids=[run_id], load_output=False, load_input=False
        )
        if not found:
            found = await self._by_handler_id(run_id)
        infos = await self._infos(found) if len(found) == 1 else []
        info = infos[0] if infos else None
        if info is None:
            raise RunNotFoundError(
                f"No durable run with ID (or server handler ID) {run_id!r} in this system "
                "database. Check the ID and the database URL."
            )
        return info

    async def _by_handler_id(self, handler_id: str) -> list[WorkflowStatus]:
        """The runs recorded with server handler ID ``handler_id``."""
        wanted = {_naming.HANDLER_ATTR: handler_id}
        if not self._sqlite:
            return await self._dbos.list_workflows_async(
                attributes=wanted, load_output=False, load_input=False
            )
        # DBOS filters by attributes only on PostgreSQL: look through the runs.
        every = await self._dbos.list_workflows_async(
            has_parent=False, load_output=False, load_input=False
        )
        return [s for s in every if (s.attributes or {}).get(_naming.HANDLER_ATTR) == handler_id]

    async def list_runs(
        self,
        workflow: str | None = None,
        status: str | list[str] | None = None,
        limit: int | None = None,
        since: datetime | timedelta | None = None,
    ) -> list[RunInfo]:
        """Durable runs, newest first: optionally of one workflow, of one status (or
        any of several), and started at or after ``since`` (a time, or an age such as
        ``timedelta(hours=1)``).

        Example:
            ```python
            held = [r for r in await client.list_runs(status=PENDING) if r.waiting_for_version]
            ```
        """
        names = _naming.run_workflow_name(workflow) if workflow is not None else None
        if isinstance(since, timedelta):
            since = datetime.now(timezone.utc) - since
        wanted = [status] if isinstance(status, str) else status
        asked = wanted
        if wanted is not None and PENDING in wanted and CANCELLED not in wanted:
            asked = [*wanted, CANCELLED]  # released runs are CANCELLED in DBOS
        found = await self._dbos.list_workflows_async(
            name=names,
            status=asked,
            start_time=since.isoformat() if since is not None else None,
            sort_desc=True,
            load_output=False,
            load_input=False,
        )
        runs = await self._infos(found)
        if wanted is not None:
            runs = [info for info in runs if info.status in wanted]
        return runs[:limit] if limit is not None else runs

    async def steps(self, run_id: str) -> list[StepInvocationInfo]:
        """The run's timeline: each step invocation in call order with its status,
        start, duration and output summary, and the recorded calls inside it
        (`@durable_step` calls, ``now()``, durable sleeps, ...). A fork lists the
        reused invocations of the run it was forked from (``reused=True``).

        Example:
            ```python
            for inv in await client.steps("order-42"):
                print(inv.step, inv.status, inv.duration, [c.name for c in inv.calls])
            ```
        """
        await self.get_run(run_id)
        run_steps = await self._dbos.list_workflow_steps_async(run_id)
        ids = sorted({r.child_id for r in step_rows(run_steps) if r.child_id is not None})
        statuses = {
            s.workflow_id: s
            for s in await self._dbos.list_workflows_async(
                workflow_ids=ids, load_input=False, load_output=False
            )
        }
        inner = {i: await self._dbos.list_workflow_steps_async(i) for i in ids}
        return timeline(run_id, run_steps, statuses, inner)

    async def fork(
        self,
        run_id: str,
        from_step: str,
        *,
        new_run_id: str | None = None,
        version: str | None = None,
    ) -> str:
        """Start a new run that reuses every result ``run_id`` recorded before step
        ``from_step`` and executes that step and everything after it again, like
        restarting from a checkpoint. Returns the new run's ID.

        ``from_step`` is a step name (its first invocation) or ``step/N`` (the
        invocation numbered N in `steps`). The fork has its own ID, children and
        stream (holding the reused steps' events, as an uninterrupted run would);
        its state starts from the edits of the reused steps; the original run is
        not changed. ``version`` runs the fork under another code version (a run
        held for an old version continues on the new code this way); by default it
        keeps the original's version. A worker with the code executes it.

        Example:
            ```python
            new_id = await client.fork("order-42", from_step="charge", version="v2")
            print(await client.get_result(new_id))
            ```
        """
        info = await self.get_run(run_id)
        run_steps = await self._dbos.list_workflow_steps_async(run_id)  # (inline records)
        start_step = fork_point(run_steps, run_id, from_step)
        new_id = new_run_id or f"{run_id}-fork-{uuid.uuid4().hex[:6]}"
        if await self._dbos.list_workflows_async(
            workflow_ids=[new_id], load_input=False, load_output=False
        ):
            raise RunConflictError(
                f"Run ID {new_id!r} is already used. Choose another ID for the fork."
            )
        original = (
            await self._dbos.list_workflows_async(
                workflow_ids=[run_id], load_input=False, load_output=False
            )
        )[0]
        # Parked on a queue no worker reads until its attributes say which step it
        # re-executes from and which version it runs under; then released.
        with SetWorkflowID(new_id):
            await self._dbos.fork_workflow_async(
                run_id,
                start_step,
                # Same-version forks go where the original's code runs; a fork onto
                # other code to workers of the latest application version.
                application_version=original.app_version if version is None else None,
                queue_name=_naming.FORK_PARKING_QUEUE,
            )
        attributes: dict[str, Any] = {_naming.FORK_STEP_ATTR: from_step, _naming.HELD_ATTR: None}
        attributes[_naming.VERSION_ATTR] = version if version is not None else info.version
        attributes.update(_otel.forked_trace(original.attributes))  # not the original's span
        await self._dbos.update_workflow_attributes_async(new_id, attributes, merge=True)
        await self._dbos.resume_workflow_async(new_id)
        return new_id

    async def get_result(self, run_id: str, polling_interval_sec: float = 0.1) -> Any:
        """Wait for the run to end and return its result (``StopEvent.result``).

        Raises the run's exception if it failed, `WorkflowCancelledByUser` if it was
        cancelled.
        """
        await self.get_run(run_id)
        while True:
            handle: WorkflowHandleAsync[Any] = await self._dbos.retrieve_workflow_async(run_id)
            try:
                stop = await handle.get_result(polling_interval_sec=polling_interval_sec)
                break
            except dbos_error.DBOSAwaitedWorkflowCancelledError as cancelled:
                # A released run is waiting, not cancelled: await its wake-up.
                if not await wait_while_released(self._releases, run_id):
                    raise WorkflowCancelledByUser(f"Run {run_id!r} was cancelled") from cancelled
        return stop.result if type(stop) is StopEvent else stop

    async def send_event(self, run_id: str, event: Event, step: str | None = None) -> None:
        """Deliver ``event`` to the run (human in the loop), exactly once.

        Raises `RunNotFoundError`, `RunFinishedError`, `EventNotAcceptedError` (when
        this process has the workflow's code and no step accepts the event) or
        `NotSerializableError`; nothing is written then. The checks, the send and
        the wake-up of a released run are one database transaction.

        Example:
            ```python
            await client.send_event("order-42", HumanResponseEvent(response="yes"))
            ```
        """
        await self.send_events([(run_id, event, step)])

    async def send_events(
        self, events: Iterable[tuple[str, Event] | tuple[str, Event, str | None]]
    ) -> None:
        """Deliver many events at once, each ``(run_id, event)`` or ``(run_id, event,
        step)``: all or none. One database transaction for the whole batch (for
        example, the answers to many waiting runs); raises as `send_event` does, for
        the first event that cannot be delivered, and then sends nothing.

        Example:
            ```python
            await client.send_events(
                [(run_id, HumanResponseEvent(response="yes")) for run_id in approved]
            )
            ```
        """
        batch = [(item[0], item[1], item[2] if len(item) > 2 else None) for item in events]
        messages = [(run_id, envelope.encode(event, step)) for run_id, event, step in batch]
        if not messages:
            return
        check = functools.partial(check_destinations, [(r, e) for r, e, _ in batch])
        try:
            await asyncio.to_thread(self._outbox.deliver, messages, check)
        except dbos_error.DBOSNonExistentWorkflowError as missing:  # gone since the check
            raise RunNotFoundError(f"{missing} Check the ID and the database URL.") from missing

    async def read_stream(
        self, run_id: str, offset: int = 0, follow: bool = True
    ) -> AsyncIterator[Event]:
        """The run's event stream from ``offset``: live until the run ends, or
        (``follow=False``) only what is stored now. A run that succeeded ends it with
        its StopEvent (its recorded result)."""
        async for entry in self.stream_entries(run_id, offset, follow):
            if entry.unreadable is not None:
                raise TypeError(f"Stream value {entry.offset} of {run_id!r}: {entry.unreadable}")
            yield entry.event

    async def stream_entries(
        self, run_id: str, offset: int = 0, follow: bool = True
    ) -> AsyncIterator[StreamEntry]:
        """Like `read_stream`, with offsets, and going past values whose class cannot
        be imported here (reported as unreadable) instead of failing on them."""
        await self.get_run(run_id)
        async for entry in self._stored_entries(run_id, offset, follow):
            yield entry
            offset = entry.offset + 1
        handle: WorkflowHandleAsync[Any] = await self._dbos.retrieve_workflow_async(run_id)
        if (await handle.get_status()).status != SUCCESS:
            return
        if not follow:
            # The run may have stored more events between that read and its end.
            async for entry in self._stored_entries(run_id, offset, False):
                yield entry
                offset = entry.offset + 1
        try:
            stop = await handle.get_result()
        except UNREADABLE_VALUE_ERRORS as error:  # e.g. its class is not importable here
            yield StreamEntry(offset, None, f"not readable here ({type(error).__name__}: {error})")
            return
        yield StreamEntry(offset, stop)

    async def _stored_entries(
        self, run_id: str, offset: int, follow: bool
    ) -> AsyncIterator[StreamEntry]:
        """The values stored in the run's DBOS stream from ``offset``."""
        while True:
            values = self._dbos.read_stream_async(
                run_id,
                _naming.STREAM_KEY,
                offset=offset,
                polling_interval_sec=STREAM_POLLING_INTERVAL_SEC,
                timeout_seconds=None if follow else 0.0,
            )
            try:
                async for event in values:
                    yield StreamEntry(offset, event)
                    offset += 1
                # DBOS ended the reader: the run ended, or was released (then it
                # goes on once the run wakes up).
                if not follow or not await keep_following(self._releases, run_id):
                    return
            except dbos_error.DBOSStreamTimeoutError:
                return  # not following: everything stored so far was read
            except dbos_error.DBOSException:
                raise
            except UNREADABLE_VALUE_ERRORS as error:  # e.g. its class is not importable here
                why = f"not readable here ({type(error).__name__}: {error})"
                yield StreamEntry(offset, None, why)
                offset += 1
            finally:
                await values.aclose()

    async def get_state(self, run_id: str) -> Any:
        """The run's ``ctx.store`` state: every write committed so far, by completed
        steps and by steps still running (each committed write is recorded at once).

        A plain dict for the default `DictState`; a typed state model for a
        workflow with ``Context[MyState]`` (its class must be importable here).
        """
        info = await self.get_run(run_id)
        edits, _unfinished = await asyncio.to_thread(recorded_edits, self._dbos, run_id)
        binding = _registry.lookup(info.workflow)
        state_type: type[BaseModel] = DictState
        if binding is not None:
            state_type = class_state_type(binding.cls)
        base = InMemoryStateStore(state_type()).checkpoint().to_dict()
        payload = rebuild_payload(base, [(seq, patch) for _, seq, patch in edits])
        if payload.get("state_type") == DictState.__name__:
            return dict(payload["state_data"].get("_data", {}))
        return await InMemoryStateStore.from_dict(payload, ImportedClassesSerializer()).get_state()

    async def cancel(self, run_id: str) -> bool:
        """Cancel the run and its unfinished steps (status CANCELLED).

        Returns False, changing nothing, if the run had already ended.
        """
        info = await self.get_run(run_id)
        if info.finished:
            return False
        # A status change, not a message: nothing is added to the run's history, so
        # `resume` continues it from its checkpoints. A worker executing the run
        # notices within a couple of seconds and stops. A released run ends
        # CANCELLED even if a wake-up races with this.
        cancel = functools.partial(self._dbos.cancel_workflow, cancel_children=True)
        await asyncio.to_thread(self._releases.cancel, run_id, cancel)
        return True

    async def resume(self, run_id: str) -> None:
        """Resume a cancelled or failed run from its last checkpoint (a released run:
        wake it up). A cancelled run's step invocations that its cancel stopped are
        resumed first: the run's replay finds them running again."""
        info = await self.get_run(run_id)
        if info.status == CANCELLED:
            await asyncio.to_thread(resume_cancelled_steps, self._dbos, run_id)
        await asyncio.to_thread(self._releases.resume, run_id)

    async def take_over(self, executor_id: str) -> list[str]:
        """Hand the unfinished runs of a dead worker process to the live ones.

        Every PENDING run and step invocation that the worker with DBOS executor ID
        ``executor_id`` was executing goes back on its queue (runs submitted through a
        queue keep their queue and its limits), and live workers resume them from
        their checkpoints. Returns the IDs of the runs taken over.

        Only for a worker that is gone for good: a live worker would go on executing
        the same runs. A worker that restarts with its executor ID resumes its runs
        by itself, without this call, and workers that joined a `Fleet` take over a
        dead worker's runs by themselves.

        Example:
            ```python
            async with DurableClient(db_url) as client:
                print(await client.take_over("worker-2"))
            ```
        """
        return await asyncio.to_thread(hand_over, self._dbos, executor_id)
