"""What a client reads of a run: `RunInfo` from its DBOS status, `StreamEntry`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from dbos import WorkflowStatus

from . import _naming
from ._history import jsonable, when
from ._records import CANCELLED, PENDING, TERMINAL


@dataclass(frozen=True)
class RunInfo:
    """One durable run as the system database records it."""

    run_id: str
    #: The durable workflow's name (``module.QualName`` or ``@durable(name=...)``).
    workflow: str
    #: DBOS status: PENDING, ENQUEUED, SUCCESS, ERROR, CANCELLED, ... (a run
    #: released while it waits reads PENDING, with `released` set).
    status: str
    created_at: datetime | None
    updated_at: datetime | None
    error: str | None = None
    #: The code version the run is recorded under.
    version: str | None = None
    #: Set while the run is held: a worker running this other code version refused
    #: to replay it, so it waits for a worker of its own version (or a fork).
    held_by_version: str | None = None
    #: The run this one was forked from, and the step it re-executed from.
    forked_from: str | None = None
    forked_from_step: str | None = None
    #: The handler ID of a run started through a `DurableWorkflowServer`.
    handler_id: str | None = None
    #: Set while the run waits released from every worker's memory
    #: (``@durable(idle_release=...)``): its event or timeout wakes it up.
    released: bool = False
    #: How many times DBOS started executing the run (its ``recovery_attempts``):
    #: more than 1 once it was resumed (after a crash, a resume, a wake-up from release).
    attempts: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def waiting_for_version(self) -> str | None:
        """The code version this PENDING run waits for, if a worker of another
        version held it."""
        if self.held_by_version is None or self.finished:
            return None
        return self.version

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields (times as ISO 8601)."""
        data = asdict(self)
        data["created_at"] = None if self.created_at is None else self.created_at.isoformat()
        data["updated_at"] = None if self.updated_at is None else self.updated_at.isoformat()
        data["waiting_for_version"] = self.waiting_for_version
        return data


def run_info(status: WorkflowStatus, released: bool = False) -> RunInfo | None:
    """A `RunInfo` for a DBOS workflow status, or None if it is not a durable run.
    ``released``: the run's release record says it is released (`_release`)."""
    workflow = _naming.parse_run_workflow_name(status.name or "")
    if workflow is None:
        return None
    attributes = status.attributes if isinstance(status.attributes, dict) else {}
    held = attributes.get(_naming.HELD_ATTR)
    return RunInfo(
        run_id=status.workflow_id,
        workflow=workflow,
        status=PENDING if released and status.status == CANCELLED else status.status,
        released=released and status.status == CANCELLED,
        created_at=when(status.created_at),
        updated_at=when(status.updated_at),
        error=None if status.error is None else f"{type(status.error).__name__}: {status.error}",
        version=attributes.get(_naming.VERSION_ATTR),
        held_by_version=held.get("worker_version") if isinstance(held, dict) else None,
        forked_from=status.forked_from,
        forked_from_step=attributes.get(_naming.FORK_STEP_ATTR),
        handler_id=attributes.get(_naming.HANDLER_ATTR),
        attempts=status.recovery_attempts,
    )


@dataclass(frozen=True)
class StreamEntry:
    """One value of a run's stream: the event, or why it cannot be read here."""

    offset: int
    event: Any
    #: Set when the value cannot be deserialized in this process (its class is
    #: not importable here); ``event`` is None then.
    unreadable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.unreadable is not None:
            return {"offset": self.offset, "unreadable": self.unreadable}
        value = jsonable(self.event)
        if isinstance(value, dict):
            return {"offset": self.offset, **value}
        return {"offset": self.offset, "value": value}
