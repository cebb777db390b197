"""One durable class's registration: names, DBOS workflows, instances, version, start."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbos import DBOS, SetWorkflowAttributes, SetWorkflowID
from workflows.errors import WorkflowRuntimeError
from workflows.events import StartEvent

from . import _naming, _registry, _tracing
from ._context import extra_run_attributes, outside_workflow
from ._patches import recorded_seed
from ._run_state import run_state
from ._runtime import input_conflict, same_start_event
from ._upstream import class_step_names, step_source
from .errors import (
    QueueNotFoundError,
    RunConflictError,
    RunInputConflictError,
    RunNotFoundError,
    VersionMismatchError,
)

if TYPE_CHECKING:
    from workflows.workflow import Workflow


from ._bodies import DECISION_RULES, make_run_body, make_step_body, make_step_caller

logger = logging.getLogger("dbos_llama")


#: Seconds between two looks for a missing workflow instance during recovery.
INSTANCE_POLL_SECONDS = 0.05
#: Seconds between two reminders that a recovered run waits for its instance.
INSTANCE_REMINDER_SECONDS = 30.0
#: Class attribute: False keeps recovery from instantiating the class by itself.
AUTO_INSTANCE_ATTR = "__dbos_llama_auto_instance__"


def code_version(cls: type[Workflow]) -> str:
    """A short hash of the source of every step of ``cls`` (its default version)."""
    digest = hashlib.sha256()
    for name in class_step_names(cls):
        digest.update(name.encode())
        digest.update(step_source(cls, name).encode())
    return digest.hexdigest()[:16]


async def _mark_held(workflow_id: str, held: dict[str, Any] | None) -> None:
    """Set (or, with None, clear) the "held for its version" mark of a workflow: an
    attribute of its DBOS status, not part of its history."""
    attributes = {_naming.HELD_ATTR: held}
    update = DBOS.update_workflow_attributes
    await outside_workflow(functools.partial(update, workflow_id, attributes, merge=True))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _needs_no_arguments(cls: type) -> bool:
    try:
        inspect.signature(cls).bind()
    except (TypeError, ValueError):
        return False
    return True


class Binding:
    """Everything dbos_llama registered for one durable workflow class."""

    def __init__(
        self, cls: type[Workflow], name: str, version: str | None, queue: str | None = None
    ) -> None:
        self.cls = cls
        self.name = name
        #: The DBOS queue runs are submitted to (None: they start in the caller).
        self.queue = queue
        self.explicit_version = version
        #: Seconds a run may wait idle before it is released from memory (`_release`).
        self.idle_release: float | None = None
        self.version = version if version is not None else code_version(cls)
        self.run_function: Callable[..., Any] | None = None
        self.step_functions: dict[str, Callable[..., Any]] = {}
        self._callers: dict[str, Callable[..., Any]] = {}
        self._instance: weakref.ref[Workflow] | None = None

    def describe(self) -> str:
        return f"class {self.cls.__module__}.{self.cls.__qualname__}"

    # -- registration (class-definition time) ------------------------------------
    def register(self) -> None:
        """Claim the names and register the run's and each step's DBOS workflow."""
        steps = class_step_names(self.cls)
        names = [_naming.run_workflow_name(self.name)]
        names += [_naming.step_workflow_name(self.name, s) for s in steps]
        _registry.claim(self, names)
        self.run_function = DBOS.workflow(name=names[0])(make_run_body(self))
        for step in steps:
            self.register_step(step)
        setattr(self.cls, _registry.BINDING_ATTR, self)

    def register_step(self, step: str) -> Callable[..., Any]:
        """The DBOS workflow of ``step``, registered on first use."""
        fn = self.step_functions.get(step)
        if fn is None:
            dbos_name = _naming.step_workflow_name(self.name, step)
            _registry.claim(self, [dbos_name])
            fn = DBOS.workflow(name=dbos_name)(make_step_body(self))
            self.step_functions[step] = fn
        return fn

    # -- instances -----------------------------------------------------------------
    @property
    def instance(self) -> Workflow | None:
        """The application's newest live instance of the class, if any."""
        return self._instance() if self._instance is not None else None

    def adopt(self, workflow: Workflow) -> None:
        """Remember the application's newest instance: recovered runs execute on it.
        Only weakly: an instance the application drops is collected, as upstream's
        are (a run executing on it holds it meanwhile)."""
        self._instance = weakref.ref(workflow)

    async def instance_for(self, run_id: str) -> Workflow:
        """The instance a (possibly recovered) run executes on; waits if none exists."""
        instance = self.instance
        # A class may opt out (agents: a default instance would lack the app's LLM).
        automatic = getattr(self.cls, AUTO_INSTANCE_ATTR, True)
        if instance is None and automatic and _needs_no_arguments(self.cls):
            instance = self.cls()  # (adopts itself in __init__)
        loop = asyncio.get_running_loop()
        next_reminder = loop.time()
        while instance is None:
            if loop.time() >= next_reminder:
                next_reminder += INSTANCE_REMINDER_SECONDS
                logger.warning(
                    "Run %r of durable workflow %r is waiting: create an instance of %s "
                    "(its constructor needs arguments) in this process to resume it. "
                    "The run stays PENDING until then.",
                    run_id,
                    self.name,
                    self.describe(),
                )
            await asyncio.sleep(INSTANCE_POLL_SECONDS)
            instance = self.instance
        return instance

    async def hold_if_other_version(self, workflow_id: str, version: str) -> None:
        """Never replay a run (or step invocation) recorded by other code: log, mark
        it held (`runs list` shows it waiting for its version) and leave it PENDING,
        for a worker with that code version to finish, or for a fork onto this one."""
        if version == self.version:
            return
        error = VersionMismatchError(
            f"{workflow_id!r} of durable workflow {self.name!r} was recorded by code "
            f"version {version!r}, but this process runs version {self.version!r}. It is "
            "not replayed against different code: finish it with a worker running the "
            "old code, or fork it onto this version (dbos-llama runs fork RUN_ID "
            f"--from-step STEP --version {self.version}); pin @durable(version=...) if "
            "the change is compatible."
        )
        logger.error("%s It stays PENDING.", error)
        held = {"recorded_version": version, "worker_version": self.version, "at": _now_ms()}
        await _mark_held(workflow_id, held)
        await asyncio.Event().wait()

    async def recorded_version(self, run_id: str, input_version: str) -> str:
        """The version a run not started by this process runs under: a fork onto
        other code carries it in its attributes. Clears a stale "held" mark when this
        worker takes the run."""
        status = await outside_workflow(functools.partial(DBOS.get_workflow_status, run_id))
        attributes = (status.attributes if status is not None else None) or {}
        version = attributes.get(_naming.VERSION_ATTR) or input_version
        if version == self.version and attributes.get(_naming.HELD_ATTR) is not None:
            await _mark_held(run_id, None)
        return str(version)

    # -- starting a run -------------------------------------------------------------
    async def start_run(
        self,
        run_id: str,
        start_event: StartEvent,
        attach: str | None = None,
        seed: dict[str, Any] | None = None,
    ) -> Any:
        """Start, enqueue or find the run's DBOS workflow; its DBOS handle. A run this
        call starts in this process is marked `RunState.started_here`.

        ``attach`` (`_context.attaching`) says the caller gave no input: an existing
        run is attached to whatever it started with. Otherwise an existing run must
        have been started with an equal start event and, if ``seed`` (the state
        seeded before the run, recorded with its input) is given, the same seed
        (`RunInputConflictError`)."""
        assert self.run_function is not None
        status = await DBOS.get_workflow_status_async(run_id)
        if status is not None:
            # The run exists (here or in another process): attach, never re-run it.
            expected = _naming.run_workflow_name(self.name)
            if status.name != expected:
                raise RunConflictError(
                    f"Run ID {run_id!r} already belongs to DBOS workflow "
                    f"{status.name!r}, not to {expected!r}. Use another run_id."
                )
            if attach is None:
                self._check_same_input(run_id, status.input, start_event, seed)
            return await DBOS.retrieve_workflow_async(run_id)
        if attach == "attach-only":
            raise RunNotFoundError(
                f"No run {run_id!r} to attach to: run(run_id=...) without a start event "
                "attaches to an existing run only. Give the start event's fields to start it."
            )
        attributes = SetWorkflowAttributes(
            {
                **(extra_run_attributes.get() or {}),
                _naming.VERSION_ATTR: self.version,
                **_tracing.start_attributes(run_id),
            }
        )
        # Recorded only when there is a seed: a run without one keeps the input shape
        # of earlier releases.
        seeded = {} if seed is None else {_naming.SEED_STATE_ARG: seed}
        traced = _tracing.propagate(run_id)
        if self.queue is not None:
            # Any worker with capacity on the queue executes the run.
            await self._check_queue()
            with SetWorkflowID(run_id), attributes, traced:
                handle = await DBOS.enqueue_workflow_async(
                    self.queue,
                    self.run_function,
                    start_event,
                    self.version,
                    time.time(),
                    DECISION_RULES,
                    **seeded,
                )
            return handle
        run_state(run_id).mark_starting()  # before its body can start
        with SetWorkflowID(run_id), attributes, traced:
            return await DBOS.start_workflow_async(
                self.run_function,
                start_event,
                self.version,
                time.time(),
                DECISION_RULES,
                **seeded,
            )

    def _check_same_input(
        self, run_id: str, recorded: Any, start_event: StartEvent, seed: dict[str, Any] | None
    ) -> None:
        """Raise `RunInputConflictError` if the existing run ``run_id`` was started
        with another start event than ``start_event``, or (``seed`` given) with
        another seeded state (a recorded input this process cannot read is not
        compared: the run is attached to, as before)."""
        args = recorded.get("args") if isinstance(recorded, dict) else None
        first = args[0] if isinstance(args, (list, tuple)) and args else None
        if isinstance(first, StartEvent) and not same_start_event(first, start_event):
            raise input_conflict(run_id, self.name, first, start_event)
        if isinstance(first, StartEvent) and seed is not None and recorded_seed(recorded) != seed:
            raise RunInputConflictError(
                f"Run {run_id!r} of durable workflow {self.name!r} already exists, started "
                "with other state than this call's context holds (ctx.store before "
                "run(ctx=ctx)). A run ID runs once: to attach to the existing run, call "
                f"run(run_id={run_id!r}) with no context; to run with this state, use "
                "another run_id."
            )

    async def _check_queue(self) -> None:
        assert self.queue is not None
        if await DBOS.retrieve_queue_async(self.queue) is None:
            raise QueueNotFoundError(
                f"Durable workflow {self.name!r} submits its runs to DBOS queue "
                f"{self.queue!r}, which is not registered in this system database, so no "
                f"worker would ever run them. After DBOS.launch(), register it: "
                f"DBOS.register_queue({self.queue!r}, worker_concurrency=..., "
                "global_concurrency=...)."
            )

    def error_no_start_event(self) -> Exception:
        return WorkflowRuntimeError(
            f"A durable run of {self.name!r} needs a start event. Start it with "
            "run(run_id=..., **fields), or attach to a run with run(run_id=...) or with "
            "the context snapshot it gave (Context.from_dict(wf, ctx.to_dict()))."
        )

    def step_caller(self, step: str) -> Callable[..., Any]:
        """The `StepWorkerFunction` the control loop calls: runs the step's DBOS workflow."""
        caller = self._callers.get(step)
        if caller is None:
            caller = self._callers[step] = make_step_caller(self, step)
        return caller
