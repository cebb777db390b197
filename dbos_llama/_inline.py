"""Collecting steps' invocations run in the run's own workflow: one record each, no child workflow.

A collecting step (``ctx.collect_events``) is invoked once per collected event, and
most invocations only add the event to the buffer and return None. While exactly one
collecting step runs beside the mailbox, the decision engine takes nothing but its
result (`_collecting`), so nothing else in the run takes a DBOS function ID until it
returns. Its invocation then needs no child workflow of its own (five rows): it
reserves a function ID when it starts (before any ID of its code), runs its code
in the run's workflow, whose own IDs its durable calls and state writes take in the
order its code makes them, and records its `StepOutcome` in one `INLINE_STEP`
checkpoint (`_records.InlineRecord`) when it returns.

A replay that finds the record takes the outcome from it and skips the IDs the code
took (never running the code again); one that does not (the process died while the
code ran) runs the code again, and DBOS hands its completed durable calls and state
writes back from their records, as in a child workflow that re-executes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from dbos import DBOS
from dbos import error as dbos_error
from workflows.events import Event
from workflows.runtime.types.results import RetryAttempt, StepWorkerState

from . import _naming, _tracing
from ._context import Invocation
from ._records import InlineRecord
from ._run_state import RunState
from ._step_code import run_step_code
from ._step_workflows import StepOutcome

if TYPE_CHECKING:
    from workflows.workflow import Workflow


async def call_inline(
    run: RunState,
    workflow: Workflow,
    invocation_id: str,
    step_name: str,
    event: Event,
    state: StepWorkerState,
    bound_events: dict[str, Event] | None,
    retry: RetryAttempt,
) -> StepOutcome:
    """The outcome of a step invocation run in the run's own workflow: recorded, or
    run now and recorded. Awaited once the tasks started with it have taken their
    function IDs (`InlineSlot.gate`): its first ID is reserved synchronously here."""
    begin = DBOS.reserve_step()
    slot = run.inline_tasks[asyncio.current_task()]  # type: ignore[index]
    found = run.replay.inline_records.get(_naming.invocation_key(invocation_id))
    if found is not None:
        earlier, at = found
        if earlier.begin != begin.step_id:  # (the run's code is not deterministic)
            raise dbos_error.DBOSUnexpectedStepError(
                run.run_id, begin.step_id, f"{_naming.INLINE_STEP} {invocation_id}", "another"
            )
        for _ in range(at - begin.step_id):  # the IDs its code took, and the record's
            DBOS.reserve_step()
        slot.then = earlier.then
        replayed: StepOutcome = earlier.outcome
        return replayed
    started_ms = int(time.time() * 1000)
    invocation = Invocation(invocation_id, generation=run.generation)
    code = run_step_code(run, workflow, invocation, step_name, event, state, bound_events, retry)
    ran = await _tracing.traced_inline(run.run_id, invocation_id, code)

    def record() -> list[object]:
        then = slot.finished_others()  # (decided now, live)
        return InlineRecord(invocation_id, step_name, begin.step_id, started_ms, ran, then).record()

    recorded = InlineRecord.read(await DBOS.run_step_async({"name": _naming.INLINE_STEP}, record))
    slot.then = recorded.then
    outcome: StepOutcome = recorded.outcome
    return outcome
