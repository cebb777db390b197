"""The DBOS workflows behind a durable class: one for the run, one per step, and their bodies."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbos import DBOS, SetWorkflowAttributes, SetWorkflowID
from dbos import error as dbos_error
from workflows.errors import WorkflowCancelledByUser, WorkflowRuntimeError
from workflows.events import Event, StartEvent, StopEvent
from workflows.runtime.types.internal_state import BrokerState
from workflows.runtime.types.results import (
    RetryAttempt,
    StepWorkerFailed,
    StepWorkerOutput,
    StepWorkerState,
)

from . import _naming, _registry
from ._runtime import (
    Invocation,
    RunState,
    _current_invocation,
    _current_run_id,
    dbos_runtime,
    forget_run,
    outside_workflow,
    run_state,
)
from ._serialization import ensure_serializable, storable_exception
from ._state import Patch
from ._upstream import class_step_names, step_source
from .errors import (
    NotSerializableError,
    QueueNotFoundError,
    RunConflictError,
    VersionMismatchError,
)

if TYPE_CHECKING:
    from workflows.workflow import Workflow

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
        self.version = version if version is not None else code_version(cls)
        self.run_function: Callable[..., Any] | None = None
        self.step_functions: dict[str, Callable[..., Any]] = {}
        self._callers: dict[str, Callable[..., Any]] = {}
        self.instance: Workflow | None = None

    def describe(self) -> str:
        return f"class {self.cls.__module__}.{self.cls.__qualname__}"

    # -- registration (class-definition time) ------------------------------------
    def register(self) -> None:
        """Claim the names and register the run's and each step's DBOS workflow."""
        steps = class_step_names(self.cls)
        names = [_naming.run_workflow_name(self.name)]
        names += [_naming.step_workflow_name(self.name, s) for s in steps]
        _registry.claim(self, names)
        self.run_function = DBOS.workflow(name=names[0])(self._make_run_body())
        for step in steps:
            self._register_step(step)
        setattr(self.cls, _registry.BINDING_ATTR, self)

    def _register_step(self, step: str) -> Callable[..., Any]:
        fn = self.step_functions.get(step)
        if fn is None:
            dbos_name = _naming.step_workflow_name(self.name, step)
            _registry.claim(self, [dbos_name])
            fn = DBOS.workflow(name=dbos_name)(self._make_step_body())
            self.step_functions[step] = fn
        return fn

    # -- instances -----------------------------------------------------------------
    def adopt(self, workflow: Workflow) -> None:
        """Remember the application's newest instance: recovered runs execute on it."""
        self.instance = workflow

    async def instance_for(self, run_id: str) -> Workflow:
        """The instance a (possibly recovered) run executes on; waits if none exists."""
        # A class may opt out (agents: a default instance would lack the app's LLM).
        automatic = getattr(self.cls, AUTO_INSTANCE_ATTR, True)
        if self.instance is None and automatic and _needs_no_arguments(self.cls):
            self.cls()  # adopts itself in __init__
        loop = asyncio.get_running_loop()
        next_reminder = loop.time()
        while self.instance is None:
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
        return self.instance

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
    async def start_run(self, run_id: str, start_event: StartEvent) -> Any:
        """Start, enqueue or find the run's DBOS workflow; its DBOS handle. A run this
        call starts in this process is marked ``fresh`` in its `RunState`."""
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
            return await DBOS.retrieve_workflow_async(run_id)
        attributes = SetWorkflowAttributes({_naming.VERSION_ATTR: self.version})
        if self.queue is not None:
            # Any worker with capacity on the queue executes the run.
            await self._check_queue()
            with SetWorkflowID(run_id), attributes:
                handle = await DBOS.enqueue_workflow_async(
                    self.queue, self.run_function, start_event, self.version, time.time()
                )
            return handle
        run_state(run_id).fresh = True  # set before its body can start
        with SetWorkflowID(run_id), attributes:
            return await DBOS.start_workflow_async(
                self.run_function, start_event, self.version, time.time()
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
            f"A durable run of {self.name!r} needs a start event: durable runs cannot "
            "continue from a Context snapshot. Start it with run(run_id=..., **fields)."
        )

    # -- the run ------------------------------------------------------------------------
    def _make_run_body(self) -> Callable[..., Any]:
        binding = self

        async def run_body(start_event: StartEvent, version: str, started_at: float) -> StopEvent:
            run_id = DBOS.workflow_id
            assert run_id is not None
            run = run_state(run_id)
            first_here = not run.body_present
            run.body_present = True  # its state stays in this process's table
            if not run.fresh:
                # Recovered, resumed or forked (not started just now by this
                # process): a fork onto other code carries its version.
                version = await binding.recorded_version(run_id, version)
            await binding.hold_if_other_version(run_id, version)
            workflow = await binding.instance_for(run_id)
            run.executing = True
            run.start_clock(started_at, first_here)
            await run.load_wakes()
            await run.restore_state(workflow)
            token = _current_run_id.set(run_id)
            try:
                registered = dbos_runtime.get_or_register(workflow)
                result = await registered.workflow_run_fn(
                    BrokerState.from_workflow(workflow), start_event, None
                )
            except BaseException as error:
                if not await _was_cancelled(run_id, error):
                    raise
                # Cancelled by handler.cancel_run() (an in-process request) or by run
                # ID (DBOS status): the run and its unfinished steps end CANCELLED.
                _registry.cancelled_runs.add(run_id)
                logger.info("Run %r of %r was cancelled.", run_id, binding.name)
                await outside_workflow(
                    functools.partial(DBOS.cancel_workflow, run_id, cancel_children=True)
                )
                raise dbos_error.DBOSWorkflowCancelledError(
                    f"Run {run_id!r} was cancelled"
                ) from error
            else:
                # No close of the stream: it ends with the StopEvent, and DBOS ends
                # its readers when the run's workflow ends.
                return result
            finally:
                _current_run_id.reset(token)
                run.executing = False
                leftovers = sorted(run.inflight)
                forget_run(run_id)
                if leftovers:
                    await _cancel_outside_workflow(leftovers)

        run_body.__qualname__ = f"run[{self.name}]"
        return run_body

    # -- one step invocation --------------------------------------------------------------
    def _make_step_body(self) -> Callable[..., Any]:
        binding = self

        async def step_body(
            run_id: str,
            step_name: str,
            event: Event,
            state: StepWorkerState,
            bound_events: dict[str, Event] | None,
            retry: RetryAttempt,
            version: str,
            rerun_of: str | None,
            checkpoint_edits: bool = False,
        ) -> StepOutcome:
            invocation_id = DBOS.workflow_id
            assert invocation_id is not None
            await binding.hold_if_other_version(invocation_id, version)
            workflow = await binding.instance_for(run_id)
            run_token = _current_run_id.set(run_id)
            # Invocations recorded before state writes were checkpoints have no such
            # input: they replay as they were recorded.
            invocation = Invocation(invocation_id, checkpoint_edits=checkpoint_edits)
            if rerun_of is not None:
                invocation.recorded = await _recorded_calls(rerun_of)
            run = run_state(run_id)
            await run.restore_state(workflow)
            run.local_steps += 1
            inv_token = _current_invocation.set(invocation)
            try:
                inner = dbos_runtime.inner_step(workflow, step_name)
                outputs = await inner(
                    state=state,
                    step_name=step_name,
                    event=event,
                    workflow=workflow,
                    bound_events=bound_events,
                    retry=retry,
                )
                run.finished_bodies.add(invocation_id)
                outputs = _failures_on_run_clock(run, outputs)
            finally:
                _current_invocation.reset(inv_token)
                _current_run_id.reset(run_token)
                run.local_steps -= 1
                if run.local_steps == 0 and not run.body_present and run.start_task is None:
                    # A step recovered here while its run executes elsewhere.
                    forget_run(run_id)
            return StepOutcome(
                _storable_outputs(step_name, outputs),
                invocation.stream,
                invocation.state,
                run.clock_if_live(),
            )

        step_body.__qualname__ = f"step[{self.name}]"
        return step_body

    def step_caller(self, step: str) -> Callable[..., Any]:
        """The `StepWorkerFunction` the control loop calls: runs the step's DBOS workflow."""
        caller = self._callers.get(step)
        if caller is not None:
            return caller
        step_function = self._register_step(step)

        # Keyword names must match upstream's StepWorkerFunction exactly.
        async def call_step(
            state: StepWorkerState,
            step_name: str,
            event: Event,
            workflow: Workflow,
            bound_events: dict[str, Event] | None = None,
            retry: RetryAttempt = RetryAttempt(),
        ) -> list[StepWorkerOutput]:
            # Everything up to the child call is synchronous: the child's DBOS
            # function IDs are taken in the deterministic order tasks first run.
            run_id = _current_run_id.get()
            assert run_id is not None, "a step ran outside its durable run"
            run = run_state(run_id)
            invocation_id = run.next_invocation_id(step_name)
            rerun_of = _rerun_of(run.work_items, state, invocation_id)
            retry = _storable_retry(retry)
            run.inflight.add(invocation_id)
            task = asyncio.current_task()
            if task is not None:
                run.task_invocations[task] = invocation_id
            with SetWorkflowID(invocation_id):
                try:
                    outcome = await step_function(
                        run_id,
                        step_name,
                        event,
                        state,
                        bound_events,
                        retry,
                        self.version,
                        rerun_of,
                        True,  # state writes are checkpoints
                    )
                except asyncio.CancelledError:
                    raise  # stays in-flight: the run cancels it in DBOS when it ends
                except BaseException:
                    run.inflight.discard(invocation_id)
                    raise
            run.inflight.discard(invocation_id)
            if task is not None:
                run.task_clocks[task] = outcome.clock
            # The invocation may have run in another process (recovered elsewhere).
            run.absorb(workflow, invocation_id, outcome.state)
            if outcome.stream and state.invocation_id is not None:
                run.pending_stream[state.invocation_id] = outcome.stream
            return outcome.outputs

        self._callers[step] = call_step
        return call_step


def _rerun_of(
    work_items: dict[str, list[str]], state: StepWorkerState, invocation_id: str
) -> str | None:
    """The earlier invocation that this one re-runs because an awaited event arrived
    (``ctx.wait_for_event``), whose recorded calls it replays; None otherwise."""
    if state.work_item_id is None:
        return None
    earlier = work_items.setdefault(state.work_item_id, [])
    earlier.append(invocation_id)
    resumed = any(w.resolved_event is not None for w in state.collected_waiters)
    return earlier[-2] if resumed and len(earlier) > 1 else None


async def _recorded_calls(invocation_id: str) -> list[tuple[str, Any]]:
    """The durable calls an earlier invocation completed, in order: (name, output)."""
    steps = await outside_workflow(functools.partial(DBOS.list_workflow_steps, invocation_id))
    return [
        (s["function_name"], s["output"])
        for s in steps
        if s["error"] is None
        and s["child_workflow_id"] is None
        and not s["function_name"].startswith("DBOS.")
        # State writes are made again, as upstream re-runs the step's code.
        and s["function_name"] != _naming.STATE_STEP
    ]


@dataclasses.dataclass
class StepOutcome:
    """What a step invocation's DBOS workflow returns (and DBOS records)."""

    outputs: list[StepWorkerOutput]
    stream: list[Event]
    state: list[Patch] = dataclasses.field(default_factory=list)
    # The run's clock when the step ended, if the run executed live in this process.
    clock: float | None = None


def _failures_on_run_clock(
    run: RunState, outputs: list[StepWorkerOutput]
) -> list[StepWorkerOutput]:
    """Upstream stamps a step failure with the wall clock; the run's clock lags it by
    the time the run was down (or queued), so retry delays would count that time too.
    Put the failure on the run's clock (when the run executes here)."""
    lag = run.live_offset()
    if not lag:
        return outputs
    return [
        o.model_copy(update={"failed_at": o.failed_at - lag})
        if isinstance(o, StepWorkerFailed)
        else o
        for o in outputs
    ]


def _storable_retry(retry: RetryAttempt) -> RetryAttempt:
    if retry.last_exception is None:
        return retry
    exc = storable_exception(retry.last_exception)
    if exc is retry.last_exception:
        return retry
    assert isinstance(exc, Exception)
    return dataclasses.replace(retry, last_exception=exc)


def _storable_outputs(step_name: str, outputs: list[StepWorkerOutput]) -> list[StepWorkerOutput]:
    """The step's outputs, made safe to record: failures as storable exceptions, and
    a result DBOS cannot serialize turned into a clear failure of the step."""
    safe: list[StepWorkerOutput] = []
    for output in outputs:
        if isinstance(output, StepWorkerFailed):
            exc = storable_exception(output.exception)
            if exc is not output.exception:
                output = output.model_copy(update={"exception": exc})
        safe.append(output)
    try:
        ensure_serializable(safe, f"The output of step {step_name!r}")
    except NotSerializableError as whole:
        failure = whole
        # Prefer the precise culprit: the step's own serialization error (e.g. from
        # ctx.send_event), else the event the step returned.
        raised = [
            o.exception
            for o in safe
            if isinstance(o, StepWorkerFailed) and isinstance(o.exception, NotSerializableError)
        ]
        for output in [] if raised else outputs:
            result = getattr(output, "result", None)
            if result is None:
                continue
            try:
                ensure_serializable(
                    result, f"Step {step_name!r} returned {type(result).__name__}, which"
                )
            except NotSerializableError as precise:
                failure = precise
                break
        failed_at = next((o.failed_at for o in safe if isinstance(o, StepWorkerFailed)), 0.0)
        return [StepWorkerFailed(exception=raised[0] if raised else failure, failed_at=failed_at)]
    return safe


async def _was_cancelled(run_id: str, error: BaseException) -> bool:
    """Whether ``error`` ended the run because it was cancelled."""
    if isinstance(error, (WorkflowCancelledByUser, dbos_error.DBOSWorkflowCancelledError)):
        return True
    if isinstance(error, dbos_error.DBOSWorkflowConflictIDError):
        # Cancelling by run ID takes the run away from this execution.
        status = await outside_workflow(functools.partial(DBOS.get_workflow_status, run_id))
        return status is not None and status.status == "CANCELLED"
    return False


async def _cancel_outside_workflow(invocation_ids: list[str]) -> None:
    # Step invocations the control loop abandoned (e.g. siblings of the step that
    # returned the StopEvent) are marked CANCELLED so no launch ever resumes them.
    for invocation_id in invocation_ids:
        await outside_workflow(functools.partial(DBOS.cancel_workflow, invocation_id))
