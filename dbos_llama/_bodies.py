"""The DBOS workflow bodies of a durable class (run, step invocation) and its step caller."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbos import DBOS, SetWorkflowID
from dbos import error as dbos_error
from workflows.errors import WorkflowCancelledByUser
from workflows.events import Event, StartEvent, StopEvent
from workflows.runtime.types.internal_state import BrokerState
from workflows.runtime.types.results import (
    RetryAttempt,
    StepWorkerOutput,
    StepWorkerState,
)

from . import _registry, _tracing
from ._adapters import cancel_run_by_id
from ._context import Invocation, outside_workflow, run_id_var
from ._inline import call_inline
from ._lease import generation_var, lease
from ._patches import seed_edit
from ._records import CANCELLED, step_rows
from ._registry import DurableBinding
from ._release_run import finish_release, sweeper, take_up
from ._run_state import RunState, StreamMoved, forget_run, run_state
from ._runtime import dbos_runtime
from ._serialization import storable_retry
from ._snapshots import forget_ticks
from ._step_code import run_step_code
from ._step_workflows import StepOutcome
from .errors import RecordedByNewerLibraryError

if TYPE_CHECKING:
    from workflows.workflow import Workflow


logger = logging.getLogger("dbos_llama")


#: The decision rules a new run records with its input (runs recorded before it existed
#: replay with 1): 2 lets a collecting step race the mailbox alone, 3 keeps the rest of
#: a recorded choice while a collecting step goes first (`_decisions`), 4 runs a
#: collecting step's invocations in the run's own workflow while it runs alone
#: beside the mailbox (`_inline`).
DECISION_RULES = 4


def make_run_body(binding: DurableBinding) -> Callable[..., Any]:
    """The DBOS workflow body of a run of ``binding``'s class."""

    # ``seed_state`` (`_naming.SEED_STATE_ARG`): only in the input of a seeded run.
    async def run_body(
        start_event: StartEvent,
        version: str,
        started_at: float,
        rules: int = 1,
        seed_state: dict[str, Any] | None = None,
    ) -> StopEvent:
        run_id = DBOS.workflow_id
        assert run_id is not None
        run = run_state(run_id)
        run.rules = rules
        task = lease.track(run.generation, run_id)
        generation_token = generation_var.set(run.generation)
        live = run.begin_body()  # its state stays in this process's table
        if not run.started_here:
            # Recovered, resumed or forked (not started just now by this
            # process): a fork onto other code carries its version.
            version = await binding.recorded_version(run_id, version)
        await binding.hold_if_other_version(run_id, version)
        await _hold_if_rules_unknown(binding.name, run_id, rules)
        workflow = run.instance = run.instance or await binding.instance_for(run_id)
        run.start_clock(started_at, live)
        run.idle_release, run.queue_name = binding.idle_release, binding.queue
        if run.idle_release is not None:
            sweeper.start()
            if not run.started_here and not await take_up(run):
                await _end_cancelled_while_released(run, binding.name, task)
        await run.load_wakes()
        if seed_state is not None:  # (a dequeued run is not replayed: seed it here)
            run.store_for(workflow).apply_edits([seed_edit(seed_state)])
        await run.restore_state(workflow)
        token = run_id_var.set(run_id)
        try:
            registered = dbos_runtime.get_or_register(workflow)
            result = await registered.workflow_run_fn(
                BrokerState.from_workflow(workflow), start_event, None
            )
        except BaseException as error:
            if lease.is_stale(run.generation):
                raise _taken_over(run_id) from None
            if not run.releasing:  # (released while idle: it ends below)
                if not await _was_cancelled(run_id, error):
                    raise
                # Cancelled by handler.cancel_run() (an in-process request) or by run
                # ID (DBOS status): the run and its unfinished steps end CANCELLED.
                _registry.cancelled_runs.add(run_id)
                logger.info("Run %r of %r was cancelled.", run_id, binding.name)
                await cancel_run_by_id(run_id)
                cancelled = f"Run {run_id!r} was cancelled"
                raise dbos_error.DBOSWorkflowCancelledError(cancelled) from error
        else:
            # No close of the stream: it ends with the StopEvent, and DBOS ends
            # its readers when the run's workflow ends.
            return result
        finally:
            run_id_var.reset(token)
            generation_var.reset(generation_token)
            lease.untrack(task)
            run.end_body()
            leftovers = sorted(run.inflight)
            forget_run(run_id, run)
            if run.releasing:
                run.publish(StreamMoved(offset=run.stream_length))
                run.events.clear()  # a caller's handler may hold the state for long
                forget_ticks(run)
                await finish_release(run)
            elif leftovers and not lease.is_stale(run.generation):
                await _cancel_outside_workflow(leftovers)
        # Released: this execution ends, and a wake-up resumes the run. Raised out
        # here, the error carries no traceback of the run's control loop (a caller
        # holding the run's handler would keep all of it in memory).
        raise dbos_error.DBOSWorkflowCancelledError(f"Run {run_id!r} was released")

    run_body.__qualname__ = f"run[{binding.name}]"
    return _tracing.traced_run_body(run_body, binding.name)


async def _end_cancelled_while_released(
    run: RunState, workflow: str, task: asyncio.Task[Any] | None
) -> None:
    """A run cancelled while it was released, resumed by a racing wake-up: it ends
    CANCELLED without executing."""
    run_id = run.run_id
    _registry.cancelled_runs.add(run_id)
    logger.info("Run %r of %r was cancelled.", run_id, workflow)
    run.end_body()
    lease.untrack(task)
    forget_run(run_id, run)
    await cancel_run_by_id(run_id)
    raise dbos_error.DBOSWorkflowCancelledError(f"Run {run_id!r} was cancelled")


def make_step_body(binding: DurableBinding) -> Callable[..., Any]:
    """The DBOS workflow body of one step invocation of ``binding``'s class."""

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
        generation = lease.current()
        task = lease.track(generation, invocation_id)
        try:
            await binding.hold_if_other_version(invocation_id, version)
            await lease.admit(generation)
            return await _execute_step(
                binding,
                invocation_id,
                generation,
                run_id,
                step_name,
                event,
                state,
                bound_events,
                retry,
                rerun_of,
                checkpoint_edits,
            )
        except BaseException:
            if lease.is_stale(generation):
                raise _taken_over(invocation_id) from None
            raise
        finally:
            lease.untrack(task)

    step_body.__qualname__ = f"step[{binding.name}]"
    return _tracing.traced_step_body(step_body)


async def _execute_step(
    binding: DurableBinding,
    invocation_id: str,
    generation: int,
    run_id: str,
    step_name: str,
    event: Event,
    state: StepWorkerState,
    bound_events: dict[str, Event] | None,
    retry: RetryAttempt,
    rerun_of: str | None,
    checkpoint_edits: bool,
) -> StepOutcome:
    """The step invocation's code, run in this process."""
    run = run_state(run_id)
    workflow = run.instance or await binding.instance_for(run_id)
    # Invocations recorded before state writes were checkpoints have no such
    # input: they replay as they were recorded.
    invocation = Invocation(
        invocation_id,
        checkpoint_edits=checkpoint_edits,
        generation=generation,
        on_sleep=run.sleep_hook(invocation_id),
    )
    if rerun_of is not None:
        invocation.recorded = await _recorded_calls(rerun_of)
    return await run_step_code(
        run, workflow, invocation, step_name, event, state, bound_events, retry
    )


def make_step_caller(binding: DurableBinding, step: str) -> Callable[..., Any]:
    """The `StepWorkerFunction` the control loop calls for ``step``: runs the step's
    DBOS workflow."""
    step_function = binding.register_step(step)

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
        run_id = run_id_var.get()
        assert run_id is not None, "a step ran outside its durable run"
        run = run_state(run_id)
        invocation_id = run.next_invocation_id(step_name)
        rerun_of = _rerun_of(run.work_items, state, invocation_id)
        retry = storable_retry(retry)
        task = asyncio.current_task()
        if task is not None:
            run.task_invocations[task] = invocation_id
        slot = run.inline_tasks.get(task) if task is not None else None
        if slot is not None and rerun_of is None:
            # A collecting step's invocation: in the run's own workflow (`_inline`),
            # once the tasks started with it have taken their function IDs.
            await slot.gate.wait()
            with _tracing.step_call(run_id, invocation_id, step_name):
                outcome = await call_inline(
                    run, workflow, invocation_id, step_name, event, state, bound_events, retry
                )
            return await _took(run, workflow, invocation_id, state, task, outcome)
        run.inflight.add(invocation_id)
        with SetWorkflowID(invocation_id), _tracing.step_call(run_id, invocation_id, step_name):
            try:
                outcome = await step_function(
                    run_id,
                    step_name,
                    event,
                    state,
                    bound_events,
                    retry,
                    binding.version,
                    rerun_of,
                    True,  # state writes are checkpoints
                )
            except asyncio.CancelledError:
                raise  # stays in-flight: the run cancels it in DBOS when it ends
            except BaseException:
                run.inflight.discard(invocation_id)
                raise
        run.inflight.discard(invocation_id)
        return await _took(run, workflow, invocation_id, state, task, outcome)

    return call_step


async def _took(
    run: RunState,
    workflow: Workflow,
    invocation_id: str,
    state: StepWorkerState,
    task: asyncio.Task[Any] | None,
    outcome: StepOutcome,
) -> list[StepWorkerOutput]:
    """The outputs of a step invocation's outcome, for the control loop, after taking
    in what it carries: its clock, state edits and stream events."""
    if task is not None:
        run.task_clocks[task] = outcome.clock
    # The invocation may have run in another process (recovered elsewhere).
    await run.absorb(workflow, invocation_id, outcome.state)
    if outcome.stream and state.invocation_id is not None:
        run.pending_stream[state.invocation_id] = outcome.stream
    outputs: list[StepWorkerOutput] = outcome.outputs
    return outputs


async def _hold_if_rules_unknown(name: str, run_id: str, rules: int) -> None:
    """Never replay a run recorded under decision rules newer than this version's (a
    worker not yet upgraded, in a rolling deploy): log it and leave it PENDING."""
    if rules <= DECISION_RULES:
        return
    error = RecordedByNewerLibraryError(
        f"Run {run_id!r} of durable workflow {name!r} was recorded by a newer dbos_llama "
        f"(decision rules {rules}; this one knows up to {DECISION_RULES}). It is not "
        "replayed here: upgrade this worker's dbos_llama, or let an upgraded worker "
        "recover it."
    )
    logger.error("%s It stays PENDING.", error)
    await asyncio.Event().wait()


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
    return [(row.name, row.output) for row in step_rows(steps) if row.is_replayable_call()]


def _taken_over(workflow_id: str) -> dbos_error.DBOSWorkflowConflictIDError:
    """What a stale execution ends with: DBOS's "no longer owned by this execution",
    on which DBOS records nothing and waits for the owner's outcome."""
    return dbos_error.DBOSWorkflowConflictIDError(workflow_id)


async def _was_cancelled(run_id: str, error: BaseException) -> bool:
    """Whether ``error`` ended the run because it was cancelled."""
    if isinstance(error, (WorkflowCancelledByUser, dbos_error.DBOSWorkflowCancelledError)):
        return True
    if isinstance(error, dbos_error.DBOSWorkflowConflictIDError):
        # Cancelling by run ID takes the run away from this execution.
        status = await outside_workflow(functools.partial(DBOS.get_workflow_status, run_id))
        return status is not None and status.status == CANCELLED
    return False


async def _cancel_outside_workflow(invocation_ids: list[str]) -> None:
    # Step invocations the control loop abandoned (e.g. siblings of the step that
    # returned the StopEvent) are marked CANCELLED so no launch ever resumes them
    # (an ending of theirs that DBOS reports as an error is a normal one here).
    _registry.cancelled_runs.update(invocation_ids)
    for invocation_id in invocation_ids:
        await outside_workflow(functools.partial(DBOS.cancel_workflow, invocation_id))
