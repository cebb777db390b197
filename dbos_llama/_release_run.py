"""The run's side of idle release: letting go of an idle run, and taking it back up."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dbos import DBOS, DBOSClient

from . import _registry, _release, _upstream
from ._context import outside_workflow
from ._handover import resume_cancelled_steps
from ._records import PENDING, dbos_statuses, step_rows
from ._run_state import RunState
from ._send import Outbox

logger = logging.getLogger("dbos_llama")


def _dbos_statuses(run_ids: list[str]) -> dict[str, str]:
    return dbos_statuses(DBOS.list_workflows, run_ids)


_local: list[tuple[str, _release.Releases, Outbox]] = []
_local_lock = threading.Lock()


def local() -> _release.Releases | None:
    """This worker's `Releases`, on its DBOS system database (None before launch)."""
    found = _local_parts()
    return found[0] if found is not None else None


def local_outbox() -> Outbox | None:
    """This worker's `Outbox`, for events its callers send to runs (``handler.send_event``)."""
    found = _local_parts()
    return found[1] if found is not None else None


def _local_parts() -> tuple[_release.Releases, Outbox] | None:
    if not _upstream.dbos_launched():
        return None
    url = _upstream.system_database_url()
    if url is None:
        return None
    with _local_lock:
        if _local and _local[0][0] == url:
            return _local[0][1], _local[0][2]
        # DBOS was launched anew on another database: that one's connections go.
        for _, previous, _outbox in _local:
            previous.table.dispose()
        releases = _release.Releases(url, DBOS.resume_workflow, _dbos_statuses)
        # DBOS's send in the outbox's own transactions, on the releases' engine.
        client = DBOSClient(
            system_database_engine=releases.table.engine,
            dbos_system_schema=_upstream.system_schema(),
            lazy=True,
        )
        _local[:] = [(url, releases, Outbox(client, releases))]
        return releases, _local[0][2]


class Sweeper:
    """One daemon thread per process that runs `_release.Releases.sweep` every
    `_release.SWEEP_SECONDS` while DBOS is launched."""

    def __init__(self, releases: Callable[[], _release.Releases | None]) -> None:
        self._releases = releases
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="dbos-llama-release-sweep", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(_release.SWEEP_SECONDS)
            releases = self._releases()
            if releases is None:
                continue
            try:
                releases.sweep()
            except Exception as error:  # the database may be briefly away
                logger.warning("The idle-release sweep failed (%s); it tries again.", error)


#: The process's sweep (started by the first run of a class with ``idle_release``).
sweeper = Sweeper(local)


class Released(BaseException):
    """Raised in a run's control loop once the run is released: its body ends here,
    and the run continues later from its checkpoints. A BaseException, so no
    ``except Exception`` on the way (upstream's or a step's) takes it for a failure."""


async def release(run: RunState, wake_in: float | None, sleeping: str | None = None) -> None:
    """Release ``run`` (idle in its mailbox, or with its one running step invocation
    ``sleeping`` in a durable sleep, `_asleep`): record it, cancel its DBOS workflow
    (and that step invocation's) and raise `Released`. Returns, the run staying in
    memory, if the release cannot be recorded (no launched DBOS, the database
    briefly away)."""
    releases = local()
    if releases is None:
        return
    run_id = run.run_id
    offset = run.release_offset()
    # The mailbox's receive has not returned (the caller looked): any receive
    # recorded beyond these completed while the run was being released.
    expected = run.receives
    try:
        status = await outside_workflow(functools.partial(DBOS.get_workflow_status, run_id))
        if status is None or status.status != PENDING:
            return  # cancelled meanwhile (the cancel watcher ends it) or not ours
        table = await outside_workflow(releases.table.ensure)
        await outside_workflow(
            functools.partial(
                table.begin, run_id, wake_in, offset, DBOS.executor_id, run.queue_name
            )
        )
    except Exception as error:
        logger.warning("Run %r could not be released (%s); it stays in memory.", run_id, error)
        return
    run.releasing = True
    # Nothing else of the run executes: its mailbox receive (and the sleeping step).
    cancelled = [run_id] if sleeping is None else [run_id, sleeping]
    if sleeping is not None:
        # DBOS's warning about the sleeping step's cancelled task is noise here.
        _registry.cancelled_runs.add(sleeping)
    try:
        # One transaction: both or neither.
        await outside_workflow(functools.partial(DBOS.cancel_workflows, cancelled))
    except Exception as error:
        run.releasing = False
        logger.warning("Run %r could not be released (%s); it stays in memory.", run_id, error)
        await outside_workflow(functools.partial(table.abandon, run_id))
        return
    # A receive that took its message before the cancel is recorded (after it, DBOS's
    # ownership check refuses the consume, and the message stays for the wake-up).
    try:
        steps = await outside_workflow(functools.partial(DBOS.list_workflow_steps, run_id))
        run.wake_after_release = sum(row.is_receive for row in step_rows(steps)) > expected
    except Exception:  # cannot tell: wake it (it then waits, and is released, again)
        run.wake_after_release = True
    # DBOS's own warning about the cancelled execution is noise here.
    _registry.cancelled_runs.add(run_id)
    raise Released()


async def finish_release(run: RunState) -> None:
    """After the released run's body ended: open it to wake-ups, and wake it at once
    if an event reached its mailbox during the release."""
    releases = local()
    if releases is None:
        return
    run_id = run.run_id
    try:
        if await outside_workflow(functools.partial(releases.table.released, run_id)):
            logger.info("Run %r is idle: released from memory until its event comes.", run_id)
            if run.wake_after_release:
                await outside_workflow(functools.partial(releases.wake, run_id))
            else:
                await outside_workflow(functools.partial(releases.wake_if_pending, run_id))
    except Exception as error:
        # The sweep finishes it (a `releasing` row of a CANCELLED run).
        logger.warning("Run %r: finishing its release failed (%s); the sweep will.", run_id, error)


async def take_up(run: RunState) -> bool:
    """At the start of a body that this process did not start: if the run was
    released, delete its record and continue its clock. Returns False if it was
    cancelled while released (the body then ends it CANCELLED)."""
    releases = local()
    if releases is None:
        return True
    for attempt in range(5):
        try:
            found = await outside_workflow(
                functools.partial(releases.table.ensure().take, run.run_id, _resume_steps)
            )
            break
        except Exception as error:  # the database briefly away
            if attempt == 4:
                logger.warning(
                    "Run %r: its release record cannot be read (%s); it goes on as if it "
                    "had not been released (its released time does not count).",
                    run.run_id,
                    error,
                )
                return True
            await asyncio.sleep(0.5 * 2**attempt)
    _registry.cancelled_runs.discard(run.run_id)  # its release's log noise is over
    if found is None or found["state"] == "releasing":
        return True  # not released (or cut before its workflow was cancelled)
    if found["state"] == "cancelled":
        return False
    if found["clock_offset"] is not None:
        run.continue_clock(float(found["clock_offset"]))
    return True


def _resume_steps(run_id: str, row: dict[str, Any]) -> None:
    """Before a released run's record with a wake time is deleted: resume the step
    invocations its release cancelled (one in a durable sleep, `_asleep`), so that
    its replay finds them running again. A crash before the delete does it again."""
    if row["state"] in ("released", "waking"):
        _registry.cancelled_runs.difference_update(resume_cancelled_steps(DBOS, run_id))
