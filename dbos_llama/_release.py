"""Idle release: the record of runs let go from memory while they wait, and their wake-up.

A run that waits for its next event longer than its class's ``idle_release``
leaves its worker's memory: its row here says so (state ``releasing``, then
``released``), and its DBOS workflow is cancelled, which DBOS continues later from
its checkpoints (``resume_workflow``). A sender, a due timeout (`Sweeper`) or an
operator's resume wakes it: one of them *claims* the row (``released`` →
``waking``, one conditional update, so exactly one resumes it), and the run's
body deletes the row when it starts again. A cancel while released marks the row
``cancelled``; the body that a racing wake-up starts then ends the run cancelled.

Every step that could be cut by a crash leaves a row the sweep finishes: a
``releasing`` row whose run is CANCELLED becomes ``released`` (and is woken if a
message came meanwhile); a ``waking`` row whose run is still CANCELLED a while
after its claim is claimed again and resumed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from . import _naming, _upstream
from ._context import outside_workflow
from ._records import CANCELLED, DELAYED, ENQUEUED, PENDING, TERMINAL
from ._sysdb import SystemTable

logger = logging.getLogger("dbos_llama")

#: A row left ``releasing`` or ``waking`` this long (a crash cut its step) is
#: finished by the sweep.
STUCK_MS = 10_000
#: A released run with an unread event this long after its release (its sender
#: died before waking it, or could not) is woken by the sweep.
UNREAD_MS = 5_000
#: How often each worker's sweep looks for released runs whose timeout is due.
SWEEP_SECONDS = 2.0
#: How often a caller awaiting a released run's result looks whether it woke up.
RELEASED_POLL_SECONDS = 1.0
#: DBOS statuses of a workflow that is executing or about to.
ACTIVE = frozenset({PENDING, ENQUEUED, DELAYED})
#: States in which a run is released (it reads as waiting, not CANCELLED).
RELEASED_STATES = ("releasing", "released", "waking")


class ReleaseTable(SystemTable):
    """The rows of released runs, in database time."""

    def __init__(self, url: str) -> None:
        super().__init__(
            url,
            _naming.RELEASED_TABLE,
            "run_id TEXT PRIMARY KEY, state TEXT NOT NULL, released_ms BIGINT NOT NULL, "
            "wake_ms BIGINT, claimed_ms BIGINT, clock_offset DOUBLE PRECISION, "
            "executor_id TEXT, queue_name TEXT",
            indexes={"state_wake": "state, wake_ms"},
        )
        self._created = False
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def ensure(self) -> ReleaseTable:
        """The table, created on first use (by a process that releases runs)."""
        with self._lock:
            if not self._created:
                self.create()
                self._created = True
        return self

    def present(self) -> bool:
        """Whether the table exists (no run was ever released without it). Senders
        and readers ask this instead of creating it; a missing table is looked for
        again at most once per `SWEEP_SECONDS`."""
        with self._lock:
            if self._created:
                return True
            if time.monotonic() - self._checked_at < SWEEP_SECONDS:
                return False
            self._checked_at = time.monotonic()
            self._created = sa.inspect(self.engine).has_table(
                self.bare, schema=None if self.sqlite else _naming.TABLE_SCHEMA
            )
            return self._created

    # -- the released run's own process ------------------------------------------------
    def begin(
        self,
        run_id: str,
        wake_in: float | None,
        clock_offset: float,
        executor_id: str,
        queue_name: str | None = None,
    ) -> None:
        """Record that the run is being released; its timeout ends ``wake_in`` from now;
        it goes back to ``queue_name`` when woken (DBOS's cancel takes it off)."""
        wake = "NULL" if wake_in is None else f"{self.now} + :wake_in"
        self.write(
            f"INSERT INTO {self.name} (run_id, state, released_ms, wake_ms, claimed_ms, "
            f"clock_offset, executor_id, queue_name) VALUES (:id, 'releasing', {self.now}, "
            f"{wake}, NULL, :offset, :executor, :queue) ON CONFLICT (run_id) DO UPDATE SET "
            f"state = 'releasing', released_ms = {self.now}, wake_ms = {wake}, "
            "claimed_ms = NULL, clock_offset = :offset, executor_id = :executor, "
            "queue_name = :queue",
            id=run_id,
            wake_in=None if wake_in is None else int(wake_in * 1000),
            offset=clock_offset,
            executor=executor_id,
            queue=queue_name,
        )

    def abandon(self, run_id: str) -> None:
        """The release did not happen: the run goes on waiting in memory."""
        self.write(f"DELETE FROM {self.name} WHERE run_id = :id AND state = 'releasing'", id=run_id)

    def released(self, run_id: str) -> bool:
        """The run's workflow has ended in memory: senders may now wake it."""
        changed = self.write(
            f"UPDATE {self.name} SET state = 'released' WHERE run_id = :id AND state = 'releasing'",
            id=run_id,
        )
        return changed == 1

    def take(
        self, run_id: str, settle: Callable[[str, dict[str, Any]], None] | None = None
    ) -> dict[str, Any] | None:
        """At the start of the run's body: its row (state, clock offset), deleted. A
        row with a wake time is first handed to ``settle`` (one statement for the
        others)."""
        found = self.rows(
            f"DELETE FROM {self.name} WHERE run_id = :id AND wake_ms IS NULL "
            "RETURNING state, clock_offset",
            id=run_id,
        )
        if found:
            return found[0]
        found = self.rows(
            f"SELECT state, clock_offset FROM {self.name} WHERE run_id = :id", id=run_id
        )
        if not found:
            return None
        if settle is not None:
            settle(run_id, found[0])
        self.write(f"DELETE FROM {self.name} WHERE run_id = :id", id=run_id)
        return found[0]

    # -- wakers ---------------------------------------------------------------------------
    def claim(self, run_id: str) -> bool:
        """Take the right to resume the run (exactly one claimer wins)."""
        changed = self.write(
            f"UPDATE {self.name} SET state = 'waking', claimed_ms = {self.now} "
            "WHERE run_id = :id AND state = 'released'",
            id=run_id,
        )
        return changed == 1

    def queue_of(self, run_id: str) -> str | None:
        """The queue the run goes back to when it is resumed (None: DBOS's own)."""
        found = self.rows(f"SELECT queue_name FROM {self.name} WHERE run_id = :id", id=run_id)
        return found[0]["queue_name"] if found else None

    def reclaim(self, run_id: str, claimed_ms: int) -> bool:
        """Take over a claim whose claimer died before it resumed the run."""
        changed = self.write(
            f"UPDATE {self.name} SET claimed_ms = {self.now} WHERE run_id = :id "
            "AND state = 'waking' AND claimed_ms = :claimed",
            id=run_id,
            claimed=claimed_ms,
        )
        return changed == 1

    def cancel(self, run_id: str) -> bool:
        """A cancel while released: the run is to end CANCELLED (True if it was released)."""
        changed = self.write(
            f"UPDATE {self.name} SET state = 'cancelled' WHERE run_id = :id",
            id=run_id,
        )
        return changed == 1

    def delete(self, run_id: str) -> None:
        self.write(f"DELETE FROM {self.name} WHERE run_id = :id", id=run_id)

    # -- readers --------------------------------------------------------------------------
    def states(self, run_ids: Iterable[str]) -> dict[str, str]:
        """The release state of each of ``run_ids`` that has a row."""
        ids = list(dict.fromkeys(run_ids))
        # One statement for any number of IDs (an "expanding" parameter), so the
        # engine caches one compiled form, not one per count.
        query = sa.text(f"SELECT run_id, state FROM {self.name} WHERE run_id IN :ids")
        query = query.bindparams(sa.bindparam("ids", expanding=True))
        found: dict[str, str] = {}
        with self.engine.begin() as c:
            for start in range(0, len(ids), 500):
                for row in c.execute(query, {"ids": ids[start : start + 500]}).mappings():
                    found[str(row["run_id"])] = str(row["state"])
        return found

    def due(self, limit: int = 200) -> list[dict[str, Any]]:
        """Rows the sweep acts on: a timeout that has ended, an event whose sender did
        not wake the run (it died, or the database failed it), or a step a crash cut.
        Released runs come first."""
        notifications = _upstream.notifications_table("sqlite" if self.sqlite else "pg")
        unread = (
            f"EXISTS (SELECT 1 FROM {notifications} n WHERE n.destination_uuid = "
            f"{self.bare}.run_id AND n.topic = :topic AND NOT n.consumed)"
        )
        return self.rows(
            f"SELECT run_id, state, claimed_ms FROM {self.name} WHERE "
            f"(state = 'released' AND wake_ms IS NOT NULL AND wake_ms <= {self.now}) OR "
            f"(state = 'released' AND released_ms + {UNREAD_MS} < {self.now} AND {unread}) OR "
            f"(state = 'releasing' AND released_ms + {STUCK_MS} < {self.now}) OR "
            f"(state = 'waking' AND claimed_ms + {STUCK_MS} < {self.now}) OR "
            f"(state = 'cancelled' AND released_ms + {STUCK_MS} < {self.now}) "
            f"ORDER BY CASE WHEN state = 'released' THEN 0 ELSE 1 END, "
            f"COALESCE(wake_ms, 0) LIMIT {int(limit)}",
            topic=_naming.TICK_TOPIC,
        )


class Releases:
    """Release and wake-up of runs on one system database: ``resume`` is the DBOS
    call that continues a workflow (`DBOS.resume_workflow` in a worker, the
    `DBOSClient`'s in a client), ``statuses`` reads workflows' DBOS statuses in one
    query (`dbos_statuses`)."""

    def __init__(
        self,
        url: str,
        resume: Callable[..., Any],
        statuses: Callable[[list[str]], dict[str, str]],
    ) -> None:
        self.table = ReleaseTable(url)
        self._resume = resume
        #: The DBOS statuses of workflows by ID (those that exist).
        self.statuses = statuses
        #: Callers awaiting released runs until they wake up.
        self.watch = WakeWatch(self)

    def status(self, run_id: str) -> str | None:
        """The DBOS status of a workflow (None if there is none)."""
        return self.statuses([run_id]).get(run_id)

    def wake(self, run_id: str) -> bool:
        """Resume the run if it is released and this call claims it (True then)."""
        table = self.table
        if not table.present() or not table.claim(run_id):
            return False
        self.resume_claimed(run_id, table.queue_of(run_id))
        return True

    def resume_claimed(self, run_id: str, queue_name: str | None) -> None:
        """Resume a run whose wake-up this process claimed; a run of a queued class
        goes back to its queue (``queue_name``) and its limits."""
        self._resume(run_id, queue_name=queue_name)
        logger.info("Run %r woke up: it continues from its checkpoints.", run_id)

    def wake_if_pending(self, run_id: str) -> bool:
        """After a release: wake the run at once if an event reached it meanwhile."""
        if _upstream.has_pending_message(self.table.engine, run_id, _naming.TICK_TOPIC):
            return self.wake(run_id)
        return False

    def states(self, run_ids: Iterable[str]) -> dict[str, str]:
        return self.table.states(run_ids) if self.table.present() else {}

    def is_released(self, run_id: str) -> bool:
        return self.states([run_id]).get(run_id) in RELEASED_STATES

    def cancel(self, run_id: str, cancel_workflow: Callable[[str], Any]) -> None:
        """Cancel the run with ``cancel_workflow`` (DBOS's cancel, children included).
        Its release row, if any, is marked before the cancel, so a racing wake-up's
        body ends it CANCELLED, and after it, so a release that began before the
        cancel reached the run ends cancelled too."""
        if self.table.present():
            self.table.cancel(run_id)
        cancel_workflow(run_id)
        if self.table.present():
            self.table.cancel(run_id)

    def resume(self, run_id: str) -> None:
        """An operator's resume: wake the run if released; else drop a cancel mark
        left from its release (the resume supersedes it) and resume its workflow."""
        if self.wake(run_id):
            return
        if self.table.present():
            self.table.write(
                f"DELETE FROM {self.table.name} WHERE run_id = :id AND state = 'cancelled'",
                id=run_id,
            )
        self._resume(run_id)

    def sweep(self) -> int:
        """One pass: wake the runs whose timeout ended, finish steps a crash cut.
        Returns how many runs it woke."""
        woken = 0
        table = self.table
        if not table.present():
            return 0
        rows = table.due()
        # One query for every row's status (a backlog of woken runs waiting in their
        # queue keeps up to `due`'s limit of rows due at each pass).
        statuses = self.statuses([str(row["run_id"]) for row in rows]) if rows else {}
        for row in rows:
            run_id, state = str(row["run_id"]), str(row["state"])
            status = statuses.get(run_id)
            if status == CANCELLED and state in ("releasing", "waking"):
                status = self.status(run_id)  # read again just before acting on it
            if state == "released":
                woken += self.wake(run_id)
            elif status is None or status in TERMINAL and status != CANCELLED:
                table.delete(run_id)  # the run has ended (or is gone): nothing to wake
            elif status != CANCELLED:
                continue  # executing or queued: its body deletes the row when it starts
            elif state == "releasing":
                # Cut after its workflow was cancelled (the releaser died, or could
                # not finish): released now, and woken, since a receive may have
                # taken its event during the release (it then waits, and is
                # released, again).
                if table.released(run_id):
                    woken += self.wake(run_id)
            elif state == "waking" and table.reclaim(run_id, int(row["claimed_ms"])):
                self.resume_claimed(run_id, table.queue_of(run_id))
                woken += 1
            elif state == "cancelled":
                table.delete(run_id)
        return woken


class WakeWatch:
    """Callers awaiting released runs (their result, their stream) until the runs
    wake up: one thread, one query every `RELEASED_POLL_SECONDS` for all of them."""

    def __init__(self, releases: Releases) -> None:
        self._releases = releases
        self._lock = threading.Lock()
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._thread: threading.Thread | None = None

    async def until_woken(self, run_id: str) -> None:
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(run_id, []).append(entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._poll, name="dbos-llama-wake-watch", daemon=True
                )
                self._thread.start()
        try:
            await entry[1].wait()
        finally:
            with self._lock:
                waiters = self._waiting.get(run_id, [])
                if entry in waiters:
                    waiters.remove(entry)
                if not waiters:
                    self._waiting.pop(run_id, None)

    def _poll(self) -> None:
        while True:
            time.sleep(RELEASED_POLL_SECONDS)
            with self._lock:
                if not self._waiting:
                    self._thread = None  # a later wait starts a new one
                    return
                run_ids = list(self._waiting)
            try:
                woken = self._woken(run_ids)
            except Exception:  # the database briefly away: look again next time
                continue
            with self._lock:
                entries = [e for run_id in woken for e in self._waiting.get(run_id, [])]
            for loop, event in entries:
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # its event loop has closed: nobody waits there
                    pass

    def _woken(self, run_ids: list[str]) -> list[str]:
        states = self._releases.table.states(run_ids)
        claimed = [run_id for run_id in run_ids if states.get(run_id) == "waking"]
        statuses = self._releases.statuses(claimed) if claimed else {}
        # Not woken: released, or claimed and not resumed yet (or its claimer died:
        # the sweep resumes it).
        return [
            run_id
            for run_id in run_ids
            if states.get(run_id) not in ("releasing", "released")
            and statuses.get(run_id) != CANCELLED
        ]


async def wait_while_released(releases: Releases | None, run_id: str) -> bool:
    """For a caller awaiting a CANCELLED run's result: wait while the run is
    released, until something wakes it. False if it was not released (it was
    really cancelled)."""
    if releases is None or not await outside_workflow(
        functools.partial(releases.is_released, run_id)
    ):
        return False
    await releases.watch.until_woken(run_id)
    return True


async def keep_following(releases: Releases | None, run_id: str) -> bool:
    """For a reader of a run's live stream whose DBOS reader ended (DBOS ends it
    when the workflow stops executing): whether to read on. Yes if the run is
    executing again, or once it wakes up if it is released; no if it has ended."""
    if releases is None:
        return False
    status = await outside_workflow(functools.partial(releases.status, run_id))
    if status in ACTIVE:
        return True
    return await wait_while_released(releases, run_id)
