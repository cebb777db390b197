"""The run's side of idle release: letting go of an idle run, and taking it back up."""

from __future__ import annotations

import asyncio
import functools
import logging

from dbos import DBOS

from . import _registry, _release
from ._context import outside_workflow
from ._run_state import RunState

logger = logging.getLogger("dbos_llama")


class Released(BaseException):
    """Raised in a run's control loop once the run is released: its body ends here,
    and the run continues later from its checkpoints. A BaseException, so no
    ``except Exception`` on the way (upstream's or a step's) takes it for a failure."""


async def release(run: RunState, wake_in: float | None) -> None:
    """Release ``run`` (idle in its mailbox): record it, cancel its DBOS workflow and
    raise `Released`. Returns, the run staying in memory, if the release cannot be
    recorded (no launched DBOS, the database briefly away)."""
    releases = _release.local()
    if releases is None:
        return
    run_id = run.run_id
    offset = run.release_offset()
    try:
        table = await asyncio.to_thread(releases.table.ensure)
        await asyncio.to_thread(table.begin, run_id, wake_in, offset, DBOS.executor_id)
    except Exception as error:
        logger.warning("Run %r could not be released (%s); it waits in memory.", run_id, error)
        return
    run.releasing = True
    try:
        # Not the children: nothing of the run is executing but its mailbox receive.
        await outside_workflow(functools.partial(DBOS.cancel_workflow, run_id))
    except Exception as error:
        run.releasing = False
        logger.warning("Run %r could not be released (%s); it waits in memory.", run_id, error)
        await asyncio.to_thread(table.abandon, run_id)
        return
    # DBOS's own warning about the cancelled execution is noise here.
    _registry.cancelled_runs.add(run_id)
    raise Released()


async def finish_release(run_id: str) -> None:
    """After the released run's body ended: open it to wake-ups, and wake it at once
    if an event reached its mailbox during the release."""
    releases = _release.local()
    if releases is None:
        return
    try:
        if await asyncio.to_thread(releases.table.released, run_id):
            logger.info("Run %r is idle: released from memory until its event comes.", run_id)
            await asyncio.to_thread(releases.wake_if_pending, run_id)
    except Exception as error:
        # The sweep finishes it (a `releasing` row of a CANCELLED run).
        logger.warning("Run %r: finishing its release failed (%s); the sweep will.", run_id, error)


async def take_up(run: RunState) -> bool:
    """At the start of a body that this process did not start: if the run was
    released, delete its record and continue its clock. Returns False if it was
    cancelled while released (the body then ends it CANCELLED)."""
    releases = _release.local()
    if releases is None:
        return True
    found = await asyncio.to_thread(releases.table.ensure().take, run.run_id)
    if found is None or found["state"] == "releasing":
        return True  # not released (or cut before its workflow was cancelled)
    if found["state"] == "cancelled":
        return False
    if found["clock_offset"] is not None:
        run.continue_clock(float(found["clock_offset"]))
    return True
