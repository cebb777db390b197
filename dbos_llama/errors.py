"""Exception classes raised by dbos_llama, each saying what to do next."""

from __future__ import annotations

__all__ = [
    "DurableError",
    "DurableDefinitionError",
    "UnstableNameError",
    "DuplicateNameError",
    "NotAWorkflowError",
    "NotSerializableError",
    "WorkflowNotRegisteredError",
    "VersionMismatchError",
    "StepFailedError",
    "RunConflictError",
    "RunInputConflictError",
    "DBOSNotLaunchedError",
    "RunNotFoundError",
    "RunFinishedError",
    "EventNotAcceptedError",
    "QueueNotFoundError",
    "StepNotFoundError",
    "EventDecodeError",
    "RejectedEventError",
]


class DurableError(Exception):
    """Base class of every error raised by dbos_llama."""


class DurableDefinitionError(DurableError, TypeError):
    """A class or function cannot be made durable as written."""


class UnstableNameError(DurableDefinitionError):
    """The class has no name that is the same in every process (e.g. a local class)."""


class DuplicateNameError(DurableDefinitionError):
    """Two durable classes (or a class and a step) claim the same DBOS name."""


class NotAWorkflowError(DurableDefinitionError):
    """`@durable` was applied to something that is not a `Workflow` subclass."""


class NotSerializableError(DurableError, TypeError):
    """A value that must be stored in the DBOS system database cannot be serialized."""


class StateNotSerializableError(NotSerializableError, ValueError):
    """A value written to a durable run's ``ctx.store`` is not JSON data (the state is
    recorded as JSON). Also a `ValueError`, as upstream's store raises for it."""


class WorkflowNotRegisteredError(DurableError, LookupError):
    """A recorded run names a durable workflow that this process has not registered."""


class VersionMismatchError(DurableError):
    """A run was recorded by a different version of the workflow's code."""


class RecordedByNewerLibraryError(DurableError):
    """A run was recorded by a newer dbos_llama, with decision rules this version does
    not know: it is not replayed here (it stays PENDING for an upgraded worker)."""


class RunConflictError(DurableError):
    """A run ID is already used by a run of another workflow."""


class RunInputConflictError(RunConflictError):
    """A run with this ID exists, started with a different start event: starting it
    again with other input would silently return the old run's result. Attach to it
    with ``run(run_id=...)`` and no start event or fields, or use another run ID."""


class DBOSNotLaunchedError(DurableError, RuntimeError):
    """A durable run was started before ``DBOS.launch()``: configure DBOS and call
    ``DBOS.launch()`` first, inside the running event loop."""


class RunNotFoundError(DurableError, LookupError):
    """No durable run has this ID in the system database."""


class SnapshotNotDurableError(DurableError, ValueError):
    """``run(ctx=...)`` of a durable workflow was given a context snapshot it cannot
    continue: one of a run on the plain (in-memory) runtime or another durable runtime
    taken while it ran, or one with no run in it. The message says what to do instead."""


class StateWriteOutsideRunError(DurableError, RuntimeError):
    """A write through ``handler.ctx.store`` while the durable run runs (or to a run
    this process did not execute): only the run's steps' writes are recorded. Write
    from a step, or seed the state before the run."""


class RunFinishedError(DurableError):
    """The run has already ended, so it cannot take this operation."""


class EventNotAcceptedError(DurableError, TypeError):
    """No step of the run's workflow accepts this event type."""


class QueueNotFoundError(DurableError, LookupError):
    """A durable class submits its runs to a DBOS queue nobody has registered."""


class StepNotFoundError(DurableError, LookupError):
    """The run has no recorded invocation of this step (e.g. to fork from)."""


class EventDecodeError(DurableError, ValueError):
    """JSON given for an event does not name an importable event class, or its data
    does not validate against that class."""


class RejectedEventError(DurableError, ValueError):
    """A message from outside a run is not an event its workflow declares (unknown
    type, invalid data, not a dbos_llama envelope): the run drops it, logging why."""


class StepFailedError(DurableError):
    """A step raised an exception that cannot be stored as it is.

    It carries the original exception's type name, message and traceback text, so a
    run that failed can be inspected from any process after a restart.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[object, tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class NotDurablyServedError(DurableError):
    """A `@durable` workflow was handed to a runtime that would run it outside DBOS
    (e.g. a plain ``WorkflowServer``): its runs would not be durable. Serve it with
    ``dbos_llama.server.DurableWorkflowServer`` instead."""


class ServerConfigError(DurableError, ValueError):
    """A `DurableWorkflowServer` cannot be built from what it was given (say what)."""


class FleetConfigError(DurableError, ValueError):
    """A `Fleet` cannot be joined as configured (say what to change)."""
