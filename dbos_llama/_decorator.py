"""`@durable`: turn a Workflow class into a durable one at class-definition time."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar, overload

from pydantic import ValidationError
from workflows.runtime.types.plugin import Runtime
from workflows.workflow import Workflow

from . import _naming
from ._binding import Binding
from ._context import attaching
from ._registry import BINDING_ATTR, binding_of
from ._release_run import sweeper
from ._runtime import dbos_runtime, runs_on_dbos
from ._upstream import SWITCH_RUNTIME, copy_step_functions
from .errors import (
    DurableDefinitionError,
    NotAWorkflowError,
    NotDurablyServedError,
    UnstableNameError,
)

W = TypeVar("W", bound=type[Workflow])

# Modules defining the LlamaIndex agent classes: a class can only derive from them
# once they are imported, so the optional agents support is imported only then.
_AGENT_MODULES = (
    "llama_index.core.agent.workflow.base_agent",
    "llama_index.core.agent.workflow.multi_agent_workflow",
)

# Set while `durable()` builds its own subclass, so that subclass is not also
# auto-registered under its derived name.
_building: ContextVar[bool] = ContextVar("dbos_llama_building", default=False)


@overload
def durable(
    cls: W,
    *,
    name: str | None = None,
    version: str | None = None,
    queue: str | None = None,
    idle_release: float | timedelta | None = None,
) -> W: ...


@overload
def durable(
    cls: None = None,
    *,
    name: str | None = None,
    version: str | None = None,
    queue: str | None = None,
    idle_release: float | timedelta | None = None,
) -> Callable[[W], W]: ...


def durable(
    cls: W | None = None,
    *,
    name: str | None = None,
    version: str | None = None,
    queue: str | None = None,
    idle_release: float | timedelta | None = None,
) -> W | Callable[[W], W]:
    """Make a LlamaIndex `Workflow` class durable on DBOS.

    At class-definition time this registers one DBOS workflow for the run and one
    per ``@step`` under stable names (``module.QualName``, or ``name``), so that
    ``DBOS.launch()`` in a restarted process can resume every unfinished run.
    Instances run on the DBOS runtime without a ``runtime=`` argument; subclasses
    are registered under their own names automatically.

    Args:
        cls: The `Workflow` subclass (when used bare or as a function).
        name: Stable name to register under, instead of ``module.QualName``.
            Required for classes defined inside functions.
        version: Code version recorded with each run. By default a hash of the
            class's step source: a run is never replayed against other code.
        queue: Name of a DBOS queue (``DBOS.register_queue(...)``) that runs are
            submitted to, instead of starting in the calling process: any worker
            process with capacity executes them, within the queue's
            ``worker_concurrency`` / ``global_concurrency`` limits.
        idle_release: Seconds (or a `timedelta`) a run may wait for its next event
            (a human's answer, ``ctx.wait_for_event``) with no step running before it
            is released from the worker's memory. A released run keeps reading as
            waiting (`RunInfo.released`); the event's arrival (through any sender:
            handlers, `DurableClient`, the CLI, the server) or the end of its
            ``wait_for_event`` timeout brings it back, continuing from its checkpoints
            on any worker. None (the default) keeps waiting runs in memory.

    Returns:
        A durable subclass of ``cls`` with the same name, module and signature.

    Example:
        ```python
        @durable
        class Orders(Workflow):
            @step
            async def draft(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=await call_model(ev.prompt))

        DurableAgent = durable(AgentWorkflow, name="support-agent")

        @durable(queue="orders")  # after launch: DBOS.register_queue("orders", ...)
        class QueuedOrders(Workflow): ...

        @durable(idle_release=timedelta(minutes=5))  # approvals that wait for days
        class Approvals(Workflow): ...
        ```
    """
    if cls is None:
        return functools.partial(
            durable, name=name, version=version, queue=queue, idle_release=idle_release
        )
    if not (isinstance(cls, type) and issubclass(cls, Workflow)):
        raise NotAWorkflowError(
            f"@durable applies to subclasses of workflows.Workflow, not to "
            f"{cls!r}. Decorate the class itself: @durable class MyFlow(Workflow): ..."
        )
    existing: Binding | None = cls.__dict__.get(BINDING_ATTR)
    if (
        existing is not None
        and name in (None, existing.name)
        and version in (None, existing.explicit_version)
        and queue in (None, existing.queue)
        and _idle_seconds(idle_release) in (None, existing.idle_release)
    ):
        return cls
    stable_name = name if name is not None else _naming.derive_name(cls)
    durable_cls = _make_durable_subclass(cls)
    binding = Binding(durable_cls, stable_name, version, queue)
    binding.idle_release = _idle_seconds(idle_release)
    binding.register()
    if binding.idle_release is not None:
        sweeper.start()  # wakes released runs whose timeout ends, once DBOS is launched
    return durable_cls  # type: ignore[return-value]  # a subclass of cls, typed as Workflow


def _make_durable_subclass(cls: type[Workflow]) -> type[Workflow]:
    original_init = cls.__init__

    def __init__(self: Workflow, *args: Any, **kwargs: Any) -> None:
        binding = binding_of(type(self))
        if kwargs.get("runtime") is None:
            kwargs.pop("runtime", None)
            with dbos_runtime.registering():
                original_init(self, *args, **kwargs)
        else:
            original_init(self, *args, **kwargs)
        if runs_on_dbos(self.runtime):
            # (An instance on another runtime, e.g. ``runtime=BasicRuntime()``, runs
            # as a plain workflow: never one for the class's durable runs.)
            binding.adopt(self)

    functools.update_wrapper(__init__, original_init)
    __init__.__signature__ = inspect.signature(original_init)  # type: ignore[attr-defined]  # set for inspect

    def __init_subclass__(sub: type[Workflow], /, **kwargs: Any) -> None:
        super(durable_cls, sub).__init_subclass__(**kwargs)
        if _building.get():
            return
        try:
            derived = _naming.derive_name(sub)
        except UnstableNameError:
            # A local subclass: it gets a binding only through @durable(name=...).
            return
        # A subclass submits its runs where its durable base does.
        parent = binding_of(durable_cls)
        binding = Binding(sub, derived, None, parent.queue)
        binding.idle_release = parent.idle_release
        binding.register()

    def switch_runtime(self: Workflow, new_runtime: Runtime) -> None:
        # `WorkflowServer.add_workflow` switches the instance to the server's runtime:
        # never, silently, off DBOS.
        if runs_on_dbos(self.runtime) and not runs_on_dbos(new_runtime):
            raise NotDurablyServedError(
                f"{cls.__qualname__} is @durable, but {type(new_runtime).__name__} would "
                "run it outside DBOS (its runs would not survive a crash). Serve it with "
                "dbos_llama.server.DurableWorkflowServer(...) instead of WorkflowServer(...)."
            )
        getattr(super(durable_cls, self), SWITCH_RUNTIME)(new_runtime)

    upstream_run = cls.run

    def run(self: Workflow, *args: Any, **kwargs: Any) -> Any:
        # ``run(run_id=X)`` alone attaches to run X whatever input it started with.
        if args or set(kwargs) != {"run_id"}:
            return upstream_run(self, *args, **kwargs)
        mode, start_event = "attach", None
        try:
            self._start_event_class()
        except ValidationError:  # required fields: it can only attach
            mode = "attach-only"
            start_event = self._start_event_class.model_construct()
        token = attaching.set(mode)
        try:
            if start_event is None:
                return upstream_run(self, **kwargs)
            return upstream_run(self, start_event=start_event, **kwargs)
        finally:
            attaching.reset(token)

    functools.update_wrapper(run, upstream_run)

    namespace = {
        "__module__": cls.__module__,
        "run": run,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__init__": __init__,
        "__init_subclass__": classmethod(__init_subclass__),
        SWITCH_RUNTIME: switch_runtime,
    }
    if any(module in sys.modules for module in _AGENT_MODULES):
        from . import _agents

        _agents.extend_durable_class(cls, namespace)
    token = _building.set(True)
    try:
        metaclass: Any = type(cls)
        durable_cls: type[Workflow] = metaclass(cls.__name__, (cls,), namespace)
    finally:
        _building.reset(token)
    # Free-function steps added with `add_step` live on the class itself.
    copy_step_functions(cls, durable_cls)
    return durable_cls


def _idle_seconds(idle_release: float | timedelta | None) -> float | None:
    if idle_release is None:
        return None
    seconds = idle_release.total_seconds() if isinstance(idle_release, timedelta) else idle_release
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise DurableDefinitionError(
            f"@durable(idle_release={idle_release!r}): give a positive number of seconds "
            "or a timedelta (or None to keep waiting runs in memory)."
        )
    return float(seconds)
