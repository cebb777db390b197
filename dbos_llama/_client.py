"""Operating durable runs from any process that can reach the system database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dbos import DBOSClient
from dbos import error as dbos_error
from pydantic import BaseModel
from workflows.context.serializers import JsonSerializer
from workflows.context.state_store import DictState, InMemoryStateStore, infer_state_type
from workflows.errors import WorkflowCancelledByUser
from workflows.events import Event, StopEvent
from workflows.runtime.types.step_id import StepId
from workflows.runtime.types.ticks import TickAddEvent

from . import _naming, _registry
from ._serialization import ensure_serializable
from ._state import patches_of, rebuild_payload
from ._upstream import class_accepted_events
from .errors import EventNotAcceptedError, RunFinishedError, RunNotFoundError

#: DBOS statuses of a run that has ended.
TERMINAL_STATUSES = frozenset({"SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"})


@dataclass(frozen=True)
class RunInfo:
    """One durable run as the system database records it."""

    run_id: str
    #: The durable workflow's name (``module.QualName`` or ``@durable(name=...)``).
    workflow: str
    #: DBOS status: PENDING, ENQUEUED, SUCCESS, ERROR, CANCELLED, ...
    status: str
    created_at: datetime | None
    updated_at: datetime | None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _when(epoch_ms: int | None) -> datetime | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)


def _info(status: Any) -> RunInfo | None:
    """A `RunInfo` for a DBOS workflow status, or None if it is not a durable run."""
    name = status.name or ""
    if not name.startswith(_naming.NAME_PREFIX) or "/" in name[len(_naming.NAME_PREFIX) :]:
        return None
    return RunInfo(
        run_id=status.workflow_id,
        workflow=name[len(_naming.NAME_PREFIX) :],
        status=status.status,
        created_at=_when(status.created_at),
        updated_at=_when(status.updated_at),
        error=None if status.error is None else f"{type(status.error).__name__}: {status.error}",
    )


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

    def __init__(self, system_database_url: str) -> None:
        self._dbos = DBOSClient(system_database_url=system_database_url)

    async def __aenter__(self) -> DurableClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the client's database connections."""
        self._dbos.destroy()

    async def get_run(self, run_id: str) -> RunInfo:
        """The run's workflow, status and timestamps; `RunNotFoundError` if none."""
        found = await self._dbos.list_workflows_async(
            workflow_ids=[run_id], load_output=False, load_input=False
        )
        info = _info(found[0]) if found else None
        if info is None:
            raise RunNotFoundError(
                f"No durable run with ID {run_id!r} in this system database. Check the "
                "run ID and the database URL."
            )
        return info

    async def list_runs(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Durable runs, newest first, optionally of one workflow and/or one status."""
        names = _naming.run_workflow_name(workflow) if workflow is not None else None
        found = await self._dbos.list_workflows_async(
            name=names, status=status, sort_desc=True, load_output=False, load_input=False
        )
        runs = [info for info in map(_info, found) if info is not None]
        return runs[:limit] if limit is not None else runs

    async def get_result(self, run_id: str, polling_interval_sec: float = 0.1) -> Any:
        """Wait for the run to end and return its result (``StopEvent.result``).

        Raises the run's exception if it failed, `WorkflowCancelledByUser` if it was
        cancelled.
        """
        await self.get_run(run_id)
        handle = await self._dbos.retrieve_workflow_async(run_id)
        try:
            stop = await handle.get_result(polling_interval_sec=polling_interval_sec)
        except dbos_error.DBOSAwaitedWorkflowCancelledError as cancelled:
            raise WorkflowCancelledByUser(f"Run {run_id!r} was cancelled") from cancelled
        return stop.result if type(stop) is StopEvent else stop

    async def send_event(self, run_id: str, event: Event, step: str | None = None) -> None:
        """Deliver ``event`` to the run (human in the loop), exactly once.

        Raises `RunNotFoundError`, `RunFinishedError`, `EventNotAcceptedError` (when
        this process has the workflow's code and no step accepts the event) or
        `NotSerializableError`; nothing is written then.
        """
        info = await self.get_run(run_id)
        if info.finished:
            raise RunFinishedError(
                f"Run {run_id!r} has already ended ({info.status}): it accepts no more "
                "events. Start a new run instead."
            )
        binding = _registry.lookup(info.workflow)
        if binding is not None:
            accepted = class_accepted_events(binding.cls)
            if not any(isinstance(event, t) for t in accepted):
                names = ", ".join(sorted(t.__name__ for t in accepted))
                raise EventNotAcceptedError(
                    f"No step of {info.workflow!r} accepts {type(event).__name__}; "
                    f"it accepts: {names}."
                )
        ensure_serializable(event, f"Event {type(event).__name__} sent to run {run_id!r}")
        step_id = StepId.root(step) if step is not None else None
        await self._dbos.send_async(
            run_id, TickAddEvent(event=event, step_id=step_id), _naming.TICK_TOPIC
        )

    async def read_stream(self, run_id: str, offset: int = 0) -> AsyncIterator[Event]:
        """The run's stored event stream from ``offset``, live until the run ends."""
        await self.get_run(run_id)
        async for event in self._dbos.read_stream_async(run_id, _naming.STREAM_KEY, offset=offset):
            yield event

    async def get_state(self, run_id: str) -> Any:
        """The run's ``ctx.store`` state as its completed steps left it.

        A plain dict for the default `DictState`; a typed state model for a
        workflow with ``Context[MyState]`` (its class must be importable here).
        """
        info = await self.get_run(run_id)
        children = await self._dbos.list_workflows_async(
            parent_workflow_id=run_id, status="SUCCESS", load_input=False
        )
        binding = _registry.lookup(info.workflow)
        state_type: type[BaseModel] = DictState
        if binding is not None and binding.instance is not None:
            state_type = infer_state_type(binding.instance)
        base = InMemoryStateStore(state_type()).checkpoint().to_dict()
        payload = rebuild_payload(base, patches_of(children))
        if payload.get("state_type") == DictState.__name__:
            return dict(payload["state_data"].get("_data", {}))
        return await InMemoryStateStore.from_dict(payload, JsonSerializer()).get_state()

    async def cancel(self, run_id: str) -> bool:
        """Cancel the run and its unfinished steps (status CANCELLED).

        Returns False, changing nothing, if the run had already ended.
        """
        info = await self.get_run(run_id)
        if info.finished:
            return False
        # A status change, not a message: nothing is added to the run's history, so
        # `resume` continues it from its checkpoints. A worker executing the run
        # notices within a couple of seconds and stops.
        await self._dbos.cancel_workflow_async(run_id, cancel_children=True)
        return True

    async def resume(self, run_id: str) -> None:
        """Resume a cancelled or failed run from its last checkpoint."""
        await self.get_run(run_id)
        await self._dbos.resume_workflow_async(run_id)

    async def take_over(self, executor_id: str) -> list[str]:
        """Hand the unfinished runs of a dead worker process to the live ones.

        Every PENDING run and step invocation that the worker with DBOS executor ID
        ``executor_id`` was executing goes back on its queue (runs submitted through a
        queue keep their queue and its limits), and live workers resume them from
        their checkpoints. Returns the IDs of the runs taken over.

        Only for a worker that is gone for good: a live worker would go on executing
        the same runs. A worker that restarts with its executor ID resumes its runs
        by itself, without this call.

        Example:
            ```python
            async with DurableClient(db_url) as client:
                print(await client.take_over("worker-2"))
            ```
        """
        pending = await self._dbos.list_workflows_async(
            status="PENDING", executor_id=executor_id, load_input=False, load_output=False
        )
        ours = [s for s in pending if (s.name or "").startswith(_naming.NAME_PREFIX)]
        by_queue: dict[str | None, list[str]] = {}
        for status in ours:
            by_queue.setdefault(status.queue_name, []).append(status.workflow_id)
        for queue_name, workflow_ids in by_queue.items():
            await self._dbos.resume_workflows_async(workflow_ids, queue_name=queue_name)
        return sorted(s.workflow_id for s in ours if _info(s) is not None)
