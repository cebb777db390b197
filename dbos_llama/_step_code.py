"""A step invocation's code run in this process: its context, its outputs and what they carry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workflows.events import Event, StopEvent
from workflows.runtime.types.results import (
    RetryAttempt,
    StepWorkerFailed,
    StepWorkerOutput,
    StepWorkerState,
)

from ._carry import end_sends
from ._context import Invocation, invocation_var, run_id_var
from ._run_state import RunState, forget_run
from ._runtime import dbos_runtime
from ._serialization import storable_outputs
from ._step_workflows import StepOutcome

if TYPE_CHECKING:
    from workflows.workflow import Workflow


async def run_step_code(
    run: RunState,
    workflow: Workflow,
    invocation: Invocation,
    step_name: str,
    event: Event,
    state: StepWorkerState,
    bound_events: dict[str, Event] | None,
    retry: RetryAttempt,
) -> StepOutcome:
    """Run the step's code for ``invocation``; what its DBOS workflow (or, run in the
    run's own workflow, its `_inline` record) records."""
    run_id = run.run_id
    invocation_id = invocation.invocation_id
    run_token = run_id_var.set(run_id)
    await run.restore_state(workflow)
    run.local_steps += 1
    inv_token = invocation_var.set(invocation)
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
        if any(isinstance(getattr(o, "result", None), StopEvent) for o in outputs):
            run.stopping = True
        if invocation.deferred_error is not None:
            failed = StepWorkerFailed(exception=invocation.deferred_error, failed_at=time.time())
            outputs = [failed]
        outputs = storable_outputs(step_name, _failures_on_run_clock(run, outputs))
        await end_sends(run_id, invocation, outputs)
    finally:
        if invocation.flush_timer is not None:  # (it did not return: it runs again)
            invocation.flush_timer.cancel()
        invocation_var.reset(inv_token)
        run_id_var.reset(run_token)
        run.local_steps -= 1
        if run.local_steps == 0 and not run.body_here and run.start_task is None:
            # A step recovered here while its run executes elsewhere.
            forget_run(run_id, run)
    return StepOutcome(
        outputs,
        invocation.stream,
        invocation.state,
        run.clock_if_live(),
    )


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
