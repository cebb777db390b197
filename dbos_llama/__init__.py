"""dbos_llama: durable LlamaIndex Workflows on DBOS Transact, with one class decorator.

Example:
    ```python
    from dbos_llama import durable, durable_step

    @durable_step(max_attempts=3)
    async def call_model(prompt: str) -> str: ...

    @durable
    class Orders(Workflow):
        @step
        async def draft(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=await call_model(ev.prompt))
    ```
"""

from ._client import DurableClient
from ._context import current_run_id
from ._decorator import durable
from ._durable_step import durable_step, now, random, sleep, uuid4
from ._event_json import event_from_json
from ._fleet import Fleet, Takeover
from ._json_serializer import JsonDataSerializer
from ._registry import install_log_filters as _install_log_filters
from ._run_info import RunInfo
from ._runtime import DBOSRuntime, dbos_runtime
from .errors import (
    DBOSNotLaunchedError,
    DuplicateNameError,
    DurableDefinitionError,
    DurableError,
    EventDecodeError,
    EventNotAcceptedError,
    FleetConfigError,
    NotAWorkflowError,
    NotDurablyServedError,
    NotSerializableError,
    QueueNotFoundError,
    RecordedByNewerLibraryError,
    RejectedEventError,
    RunConflictError,
    RunFinishedError,
    RunInputConflictError,
    RunNotFoundError,
    ServerConfigError,
    SnapshotNotDurableError,
    StateNotSerializableError,
    StateWriteOutsideRunError,
    StepFailedError,
    StepNotFoundError,
    UnstableNameError,
    VersionMismatchError,
    WorkflowNotRegisteredError,
)

_install_log_filters()

# Durable LlamaIndex agents (the "agents" extra): imported on first use, so the core
# does not need llama-index-core.
_AGENT_NAMES = ("durable_tool", "DurableLLM", "DurableMemory")


def __getattr__(name: str) -> object:
    if name in _AGENT_NAMES:
        from . import _agents

        return getattr(_agents, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "durable",
    "durable_step",
    "durable_tool",
    "DurableLLM",
    "DurableMemory",
    "now",
    "random",
    "sleep",
    "uuid4",
    "current_run_id",
    "DurableClient",
    "Fleet",
    "Takeover",
    "RunInfo",
    "event_from_json",
    "JsonDataSerializer",
    "DBOSRuntime",
    "dbos_runtime",
    "DurableError",
    "DurableDefinitionError",
    "UnstableNameError",
    "DuplicateNameError",
    "NotAWorkflowError",
    "NotSerializableError",
    "StateNotSerializableError",
    "StateWriteOutsideRunError",
    "WorkflowNotRegisteredError",
    "VersionMismatchError",
    "RecordedByNewerLibraryError",
    "StepFailedError",
    "RunConflictError",
    "RunInputConflictError",
    "DBOSNotLaunchedError",
    "RunNotFoundError",
    "RunFinishedError",
    "SnapshotNotDurableError",
    "EventNotAcceptedError",
    "QueueNotFoundError",
    "StepNotFoundError",
    "EventDecodeError",
    "RejectedEventError",
    "NotDurablyServedError",
    "ServerConfigError",
    "FleetConfigError",
    "__version__",
]
