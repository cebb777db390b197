"""Events from outside a run, in one transaction: the checks, DBOS's send, the wake-up claim.

A sender outside the run (`DurableClient.send_event` / ``send_events``,
``handler.send_event``, ``dbos-llama runs send``, the server's ``/events``) writes
each event's JSON envelope (`_envelope`) to the run's mailbox. `Outbox.deliver`
does it in a single database transaction on the system database:

1. DBOS's own send (`DBOSClient.send_bulk_in_transaction`), first, so that on
   SQLite the transaction takes the write lock at once instead of upgrading a read;
2. one read of each destination's DBOS status and workflow name, and of its
   release row (idle release), checked by the caller (unknown run, ended run,
   event its workflow does not accept): a failed check rolls everything back;
3. the claim of every destination that is released (``released`` → ``waking``);
   where runs may be released, the rows read in step 2 are locked until the commit,
   so a release in progress either sees this send's message (`_release_run`'s
   releaser looks for messages after its mark) or is claimed by it.

After the commit the claimed runs are resumed (DBOS ``resume_workflow``, back onto
their class's queue). A crash between the commit and the resume leaves a
``waking`` row that the sweep resumes (`_release`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from dbos import DBOSClient, SendMessage, WorkflowSerializationFormat, WorkflowStatus
from dbos import error as dbos_error
from workflows.events import Event, HumanResponseEvent

from . import _naming, _registry, _trace_calls, _upstream
from ._records import CANCELLED, TERMINAL
from ._release import RELEASED_STATES, Releases
from .errors import EventNotAcceptedError, RunFinishedError, RunNotFoundError

logger = logging.getLogger("dbos_llama")

#: Destinations read per statement (SQLite bounds a statement's parameters).
CHUNK = 500


@dataclass(frozen=True)
class Destination:
    """What the send's transaction read of one destination run."""

    run_id: str
    #: Its DBOS status (a released run is CANCELLED in DBOS: see `released`).
    status: str
    #: Its DBOS workflow name (``llama:<workflow>`` for a durable run).
    name: str
    #: Its idle-release state (`_release`), or None if it has no release row.
    release_state: str | None = None

    @property
    def released(self) -> bool:
        """Released while it waits: it reads as waiting, and this send wakes it."""
        return self.status == CANCELLED and self.release_state in RELEASED_STATES

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL and not self.released

    @property
    def workflow(self) -> str | None:
        """The durable workflow's name, or None if this is no durable run."""
        return _naming.parse_run_workflow_name(self.name)


#: A caller's checks of the destinations, inside the transaction: raising rolls the
#: send back. Called with the destinations in the order asked, None for a run ID
#: that has no workflow.
Check = Callable[[list[Destination | None]], None]


class Outbox:
    """Sends events to runs on one system database (see the module docstring).

    ``client`` is a `DBOSClient` on that database (only its send is used: the
    transaction runs on ``releases``' engine); ``releases`` resumes claimed runs.
    """

    def __init__(self, client: DBOSClient, releases: Releases) -> None:
        self._client = client
        self._releases = releases
        table = releases.table
        status_table = _upstream.workflow_status_table(table.engine.dialect.name)
        self._read = sa.text(
            f"SELECT workflow_uuid, status, name FROM {status_table} WHERE workflow_uuid IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        # Where runs may be released, what is read stays locked until the commit
        # (PostgreSQL; on SQLite the send's write lock already orders whole
        # transactions). A release in progress then either finished first (this send
        # reads ``released`` and claims the run) or waits for this commit: its DBOS
        # cancel (a status update) waits for the shared lock on the status row, its
        # mark waits for the release row, and its look for a message that came
        # meanwhile, after its mark, sees this one.
        lock_row, lock_status = ("", "") if table.sqlite else (" FOR UPDATE", " FOR SHARE OF ws")
        self._read_released = sa.text(
            f"SELECT ws.workflow_uuid, ws.status, ws.name, r.state FROM {status_table} ws "
            f"LEFT JOIN (SELECT run_id, state FROM {table.name} WHERE run_id IN :ids "
            f"ORDER BY run_id{lock_row}) r ON r.run_id = ws.workflow_uuid "
            f"WHERE ws.workflow_uuid IN :ids ORDER BY ws.workflow_uuid{lock_status}"
        ).bindparams(sa.bindparam("ids", expanding=True))
        self._claim = sa.text(
            f"UPDATE {table.name} SET state = 'waking', claimed_ms = {table.now} "
            "WHERE run_id IN :ids AND state = 'released' RETURNING run_id, queue_name"
        ).bindparams(sa.bindparam("ids", expanding=True))

    def deliver(
        self, messages: Sequence[tuple[str, dict[str, Any]]], check: Check | None = None
    ) -> list[str]:
        """Send each ``(run_id, envelope)`` in one transaction; ``check`` may refuse
        the whole batch by raising (nothing is then written). Returns the IDs of the
        released runs this call woke up.

        A destination with no workflow raises DBOS's `DBOSNonExistentWorkflowError`
        unless ``check`` raised first.
        """
        ids = list(dict.fromkeys(run_id for run_id, _ in messages))
        start_ns = time.time_ns()
        table = self._releases.table
        with_releases = table.present()
        try:
            with table.engine.begin() as conn:
                self._client.send_bulk_in_transaction(
                    conn,
                    [SendMessage(run_id, body, _naming.TICK_TOPIC) for run_id, body in messages],
                    serialization_type=WorkflowSerializationFormat.PORTABLE,
                )
                found = (
                    self._destinations(conn, ids, with_releases)
                    if check is not None or with_releases
                    else {}  # nothing to check or to wake: DBOS's send alone
                )
                if check is not None:
                    check([found.get(i) for i in ids])
                released = [d.run_id for d in found.values() if d.release_state == "released"]
                claimed = [
                    dict(row)
                    for start in range(0, len(released), CHUNK)
                    for row in conn.execute(
                        self._claim, {"ids": released[start : start + CHUNK]}
                    ).mappings()
                ]
        except dbos_error.DBOSNonExistentWorkflowError:
            if check is not None:  # let the caller name the missing run
                with table.engine.connect() as conn:
                    found = self._destinations(conn, ids, with_releases)
                check([found.get(i) for i in ids])
            raise
        for row in claimed:
            self._releases.resume_claimed(str(row["run_id"]), row["queue_name"])
        _trace_calls.sent(ids, start_ns, self._status)
        return [str(row["run_id"]) for row in claimed]

    def _status(self, run_id: str) -> WorkflowStatus:
        return self._client.retrieve_workflow(run_id).get_status()

    def _destinations(
        self, conn: sa.Connection, ids: list[str], with_releases: bool
    ) -> dict[str, Destination]:
        query = self._read_released if with_releases else self._read
        found: dict[str, Destination] = {}
        for start in range(0, len(ids), CHUNK):
            for row in conn.execute(query, {"ids": ids[start : start + CHUNK]}):
                run_id = str(row[0])
                state = str(row[3]) if with_releases and row[3] is not None else None
                found[run_id] = Destination(run_id, str(row[1]), str(row[2] or ""), state)
        return found


def check_destinations(
    sent: list[tuple[str, Event]], destinations: list[Destination | None]
) -> None:
    """`Outbox.deliver`'s check of a `DurableClient` send (bind ``sent``, the
    ``(run_id, event)`` pairs, with `functools.partial`): each run exists, has not
    ended, and (if this process has its workflow's code) accepts the event."""
    found = {d.run_id: d for d in destinations if d is not None}
    for run_id, event in sent:
        destination = found.get(run_id)
        workflow = destination.workflow if destination is not None else None
        if destination is None or workflow is None:
            raise RunNotFoundError(
                f"No durable run with ID {run_id!r} in this system database. Check the "
                "ID and the database URL."
            )
        if destination.ended:
            raise RunFinishedError(
                f"Run {run_id!r} has already ended ({destination.status}): it accepts no "
                "more events. Start a new run instead."
            )
        binding = _registry.lookup(workflow)
        # A HumanResponseEvent may answer a `ctx.wait_for_event` inside a step (e.g. an
        # agent's approval tool), which no step signature declares.
        if binding is not None and not isinstance(event, HumanResponseEvent):
            accepted = _upstream.class_accepted_events(binding.cls)
            if not any(isinstance(event, t) for t in accepted):
                names = ", ".join(sorted(t.__name__ for t in accepted))
                raise EventNotAcceptedError(
                    f"No step of {workflow!r} accepts {type(event).__name__}; it accepts: {names}."
                )
