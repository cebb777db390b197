"""Process-wide registry of durable workflow classes by their stable names."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from dbos import DBOS

from ._naming import NAME_PREFIX
from ._redact import PasswordRedactor
from ._upstream import dbos_launched
from .errors import DuplicateNameError, WorkflowNotRegisteredError

if TYPE_CHECKING:
    from workflows.events import StartEvent
    from workflows.workflow import Workflow


class DurableBinding(Protocol):
    """What the layers under the decorator use of one durable class's registration
    (`_binding.Binding` is the implementation)."""

    cls: type[Workflow]
    name: str
    version: str
    queue: str | None
    idle_release: float | None

    @property
    def instance(self) -> Workflow | None: ...

    def describe(self) -> str: ...
    def adopt(self, workflow: Workflow) -> None: ...
    def register_step(self, step: str) -> Callable[..., Any]: ...
    def step_caller(self, step: str) -> Callable[..., Any]: ...
    async def start_run(
        self,
        run_id: str,
        start_event: StartEvent,
        attach: str | None = None,
        seed: dict[str, Any] | None = None,
    ) -> Any: ...
    def error_no_start_event(self) -> Exception: ...
    async def instance_for(self, run_id: str) -> Workflow: ...
    async def hold_if_other_version(self, workflow_id: str, version: str) -> None: ...
    async def recorded_version(self, run_id: str, input_version: str) -> str: ...


#: Attribute of a durable class holding its `DurableBinding` (set on that class only).
BINDING_ATTR = "__dbos_llama_binding__"

_by_name: dict[str, DurableBinding] = {}
# Every DBOS workflow name claimed, mapped to the workflow name that claimed it.
_claimed: dict[str, str] = {}


def _binding_or_none(obj: Any) -> Any:
    cls = obj if isinstance(obj, type) else type(obj)
    return cls.__dict__.get(BINDING_ATTR)


def is_durable(obj: Any) -> bool:
    """Whether ``obj`` is a durable class (made by `@durable`) or an instance of one."""
    return _binding_or_none(obj) is not None


def binding_of(obj: Any) -> DurableBinding:
    """The binding of a durable class or of an instance of one."""
    binding = _binding_or_none(obj)
    if binding is None:
        cls = obj if isinstance(obj, type) else type(obj)
        raise WorkflowNotRegisteredError(
            f"{cls.__module__}.{cls.__qualname__} is not a durable workflow class: "
            "decorate it with @durable (or @durable(name=...)) where it is defined."
        )
    return cast(DurableBinding, binding)


def lookup(name: str) -> DurableBinding | None:
    """The binding registered under workflow name ``name``, if any."""
    return _by_name.get(name)


def claim(binding: DurableBinding, dbos_names: list[str]) -> None:
    """Reserve ``binding.name`` and its DBOS names, or raise `DuplicateNameError`."""
    owner = _by_name.get(binding.name)
    if owner is not None and owner is not binding:
        raise DuplicateNameError(
            f"The durable workflow name {binding.name!r} is already used by "
            f"{owner.describe()}; {binding.describe()} cannot use it too. Give one "
            "of them another name with @durable(name=...)."
        )
    for dbos_name in dbos_names:
        holder = _claimed.get(dbos_name)
        if holder is not None and holder != binding.name:
            raise DuplicateNameError(
                f"The DBOS workflow name {dbos_name!r} of {binding.describe()} is "
                f"already registered by durable workflow {holder!r}. Rename one of "
                "them with @durable(name=...)."
            )
    _by_name[binding.name] = binding
    for dbos_name in dbos_names:
        _claimed[dbos_name] = binding.name


_UNREGISTERED = re.compile(r"(" + re.escape(NAME_PREFIX) + r"\S+) is not a registered workflow")


class _UnregisteredWorkflowHint(logging.Filter):
    """Adds what to do to DBOS's log line about a run whose workflow is not registered."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "dbos_llama_hint", False):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        match = _UNREGISTERED.search(record.getMessage()) or (
            _UNREGISTERED.search(str(exc)) if exc is not None else None
        )
        if match is not None:
            name = match.group(1)[len(NAME_PREFIX) :].split("/")[0]
            record.msg = (
                f"{record.getMessage()} dbos_llama: durable workflow {name!r} is not "
                "registered in this process. Import the module that defines its @durable "
                "class (with the same name=) before DBOS.launch(); the run stays PENDING "
                "until a process that registers it is launched."
            )
            record.args = ()
            record.dbos_llama_hint = True
        return True


#: Runs this process cancelled: DBOS's own error report of their end is dropped.
cancelled_runs: set[str] = set()


_CANCELLED_DURING = re.compile(r"Workflow (.+?) was cancelled during execution")
#: DBOS's warning when the asyncio task of a workflow it executes is cancelled.
_TASK_CANCELLED = "Asyncio task cancelled for workflow or step"


class _CancelledRunQuiet(logging.Filter):
    """Drops DBOS's traceback and warning for a run that ended because we cancelled
    it: a cancelled run is a normal ending, and dbos_llama logs it at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and getattr(exc, "workflow_id", None) in cancelled_runs:
            return False
        message = record.getMessage()
        if message.startswith(_TASK_CANCELLED) and DBOS.workflow_id in cancelled_runs:
            return False  # (a step invocation's task, cancelled with its released run)
        found = _CANCELLED_DURING.search(message)
        return found is None or found.group(1) not in cancelled_runs


class _ShutdownCancelQuiet(logging.Filter):
    """Drops DBOS's "Asyncio task cancelled for workflow or step" warning for a
    workflow task cancelled after ``DBOS.destroy()``: ``asyncio.run`` cancels the
    tasks left in its loop when the process ends, e.g. a run still waiting for a
    human. The run stays PENDING and resumes in the next process; that is how a
    waiting run is left, not a failure. While DBOS is launched the warning stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_TASK_CANCELLED):
            return True
        # DBOS's wrapper of every workflow body; after DBOS.destroy() nothing it
        # still runs is a live run's cancel (that is logged while DBOS is launched).
        return "_dropping_datasource_checkpoints" not in message or dbos_launched()


def install_log_filters() -> None:
    """Attach dbos_llama's filters to DBOS's logger and its own (idempotent)."""
    dbos_logger = logging.getLogger("dbos")
    filters = (
        _UnregisteredWorkflowHint,
        _CancelledRunQuiet,
        _ShutdownCancelQuiet,
        PasswordRedactor,
    )
    for kind in filters:
        if not any(isinstance(f, kind) for f in dbos_logger.filters):
            dbos_logger.addFilter(kind())
    own = logging.getLogger("dbos_llama")
    if not any(isinstance(f, PasswordRedactor) for f in own.filters):
        own.addFilter(PasswordRedactor())
