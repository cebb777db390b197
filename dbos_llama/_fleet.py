"""A fleet of workers on one system database: leases, and fenced takeover of dead workers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from dbos import DBOS, DBOSClient

from . import _naming, _upstream
from ._handover import hand_over
from ._lease import lease
from ._sysdb import SystemTable
from .errors import FleetConfigError

logger = logging.getLogger("dbos_llama")

#: The part of the lease a worker counts on after a renewal is sent: it stops
#: starting work this much before any other worker can see its lease expire.
SAFE_SHARE = 0.8


@dataclass(frozen=True)
class Takeover:
    """One dead worker's runs, taken over by this worker."""

    executor_id: str
    epoch: int
    run_ids: list[str]
    at: float


class Fleet:
    """This worker's membership of a fleet sharing one DBOS system database.

    A member renews a lease every ``heartbeat_seconds`` in the system database
    (table ``dbos_llama.workers``, database time). When a member misses its lease
    (``lease_seconds``), a live member claims it (exactly one wins the claim) and
    hands its unfinished runs and step invocations back to their queues through
    DBOS's resume: live workers continue them from their checkpoints, with no
    operator action. A member that was only paused or cut off from the database
    stops starting calls before its lease can expire, and when it finds its runs
    taken over it stops them (a WARNING says so) and joins again.

    Join after ``DBOS.launch()``, with an ``executor_id`` of its own in the DBOS
    config; leave on a graceful shutdown to hand its runs over at once.

    Example:
        ```python
        DBOS(config={..., "executor_id": os.environ["POD_NAME"]})
        DBOS.launch()
        async with Fleet(lease_seconds=30):
            await serve_forever()
        ```
    """

    def __init__(
        self,
        *,
        lease_seconds: float = 30.0,
        heartbeat_seconds: float | None = None,
        system_database_url: str | None = None,
    ) -> None:
        if lease_seconds <= 0:
            raise FleetConfigError(f"lease_seconds must be positive, not {lease_seconds!r}")
        heartbeat = lease_seconds / 3 if heartbeat_seconds is None else heartbeat_seconds
        if not 0 < heartbeat <= lease_seconds / 2:
            raise FleetConfigError(
                f"heartbeat_seconds ({heartbeat!r}) must be positive and at most half of "
                f"lease_seconds ({lease_seconds!r}), so one late renewal does not lose the lease"
            )
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat
        self._url = system_database_url
        self.instance = uuid.uuid4().hex
        self.executor_id = ""
        self.epoch = 0
        #: The dead workers' runs this worker took over, oldest first.
        self.takeovers: list[Takeover] = []
        self._table: _LeaseTable | None = None
        self._client: DBOSClient | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_ok: float | None = None
        # Since when this worker has renewed its lease on time without a break: it
        # declares another worker dead only after watching it stay silent that long.
        self._watching_since: float | None = None
        self._failing = False

    # -- joining and leaving -------------------------------------------------------
    def join(self) -> Fleet:
        """Take this process's lease and start renewing it (after ``DBOS.launch()``)."""
        global _joined
        if _joined is not None:
            raise FleetConfigError("this process already joined a Fleet; join one per process")
        url = self._url or _upstream.system_database_url()
        if url is None:
            raise FleetConfigError(
                "DBOS is not configured in this process: call DBOS(config=...) and "
                "DBOS.launch() before Fleet.join(), or pass system_database_url"
            )
        executor_id = DBOS.executor_id
        if executor_id in ("", "local"):
            raise FleetConfigError(
                "give each worker its own DBOS executor_id (config key 'executor_id', e.g. "
                "the pod name) before joining a Fleet: 'local' is DBOS's default for all"
            )
        self.executor_id = executor_id
        self._table = _LeaseTable(url)
        self._client = DBOSClient(system_database_url=url)
        self._table.create()
        self._register()
        _joined = self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"dbos-llama-fleet-{executor_id}", daemon=True
        )
        self._thread.start()
        logger.info(
            "Worker %r joined the fleet (lease %.1f s, renewed every %.1f s).",
            executor_id,
            self.lease_seconds,
            self.heartbeat_seconds,
        )
        return self

    def leave(self, *, hand_over_runs: bool = True) -> None:
        """Stop renewing the lease. With ``hand_over_runs`` (a graceful shutdown),
        first stop this process's executions and hand its runs to the live workers;
        call it last, as the process ends: the runs it hands over may start again
        on any worker, and those it dequeues afterwards are taken over too. It
        blocks while this process's executions stop: from a running event loop, call
        it in a thread (``await asyncio.to_thread(fleet.leave)``; ``async with``
        does)."""
        global _joined
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        assert self._table is not None and self._client is not None
        if hand_over_runs:
            lease.deadline = 0.0  # nothing new starts here
            lease.fence()
            _wait_for(lambda: lease.stale_count() == 0, self.lease_seconds)
            try:
                runs = hand_over(self._client, self.executor_id, keep=lease.executing())
                # Expired now: a live worker also takes anything dequeued here since.
                self._table.expire(self.executor_id, self.instance, self.epoch)
                logger.info(
                    "Worker %r left the fleet, handing over %d runs.", self.executor_id, len(runs)
                )
            except Exception as error:
                logger.warning(
                    "Worker %r could not hand over its runs (%s); live workers take them "
                    "over when its lease expires.",
                    self.executor_id,
                    error,
                )
        self._client.destroy()
        self._table.dispose()
        if _joined is self:
            _joined = None
        # Outside a fleet again: work starts freely (a process that goes on after
        # leaving executes what it dequeues, like any worker outside a fleet).
        lease.deadline = None

    def __enter__(self) -> Fleet:
        return self.join()

    def __exit__(self, *exc: object) -> None:
        self.leave()

    async def __aenter__(self) -> Fleet:
        return self.join()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # In a thread: the executions it stops unwind on this event loop meanwhile.
        await asyncio.to_thread(self.leave)

    # -- the heartbeat thread ------------------------------------------------------
    def _register(self) -> None:
        assert self._table is not None
        sent = time.monotonic()
        self.epoch = self._table.register(self.executor_id, self.instance, self.lease_seconds)
        self._renewed(sent)

    def _renewed(self, sent: float) -> None:
        lease.deadline = sent + self.lease_seconds * SAFE_SHARE
        late = self._last_ok is None or sent - self._last_ok > 2 * self.heartbeat_seconds
        if late or self._watching_since is None:
            self._watching_since = sent
        self._last_ok = sent

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self._beat()
            except Exception:  # never let the thread die: the lease would lapse
                logger.exception("Worker %r: fleet heartbeat failed", self.executor_id)

    def _beat(self) -> None:
        assert self._table is not None
        sent = time.monotonic()
        try:
            renewed = self._table.renew(self.executor_id, self.instance, self.epoch)
        except Exception as error:
            self._unreachable(error)
            return
        if self._failing:
            logger.warning("Worker %r reaches the database again.", self.executor_id)
            self._failing = False
        if not renewed:
            self._lost_lease()
            return
        self._renewed(sent)
        self._take_over_dead(sent)

    def _unreachable(self, error: Exception) -> None:
        self._watching_since = None  # who is silent cannot be told from here
        if not self._failing:
            logger.warning(
                "Worker %r cannot renew its fleet lease (%s: %s): it starts no new calls "
                "until the database answers, and declares no other worker dead.",
                self.executor_id,
                type(error).__name__,
                error,
            )
            self._failing = True
        assert self._table is not None
        try:  # the table dropped: create it again (a failure here is the outage)
            self._table.create()
        except Exception:
            pass

    def _lost_lease(self) -> None:
        assert self._table is not None and self._client is not None
        row = self._table.row(self.executor_id)
        if row is None:
            # The table was emptied or made anew: nobody took this worker over.
            logger.warning("Worker %r's lease row is gone; taking it again.", self.executor_id)
            self._register()
            return
        lease.deadline = 0.0  # nothing new starts here until it joins again
        stopped = lease.fence()
        if row["state"] == "live" and row["instance"] != self.instance:
            logger.critical(
                "Another process took executor ID %r (pid %s on %s): this one stops its %d "
                "executions and terminates. Give every worker its own executor_id.",
                self.executor_id,
                row["pid"],
                row["host"],
                stopped,
            )
            os.kill(os.getpid(), signal.SIGTERM)
            return
        logger.warning(
            "Worker %r lost its fleet lease: %s took over its runs (it was paused or cut off "
            "from the database for longer than its %.1f s lease). Stopping the %d executions "
            "it had here; they continue on the worker that took them.",
            self.executor_id,
            row["taken_by"],
            self.lease_seconds,
            stopped,
        )
        _wait_for(lambda: lease.stale_count() == 0, self.lease_seconds)
        # Once the taker has handed over what it listed, hand over what this worker
        # dequeued after that listing (still its own, and now stopped).
        _wait_for(
            lambda: self._table is not None and self._table.handed_over(self.executor_id),
            2 * self.lease_seconds,
        )
        hand_over(self._client, self.executor_id, keep=lease.executing())
        self._register()
        logger.warning("Worker %r joined the fleet again (epoch %d).", self.executor_id, self.epoch)

    def _take_over_dead(self, sent: float) -> None:
        assert self._table is not None and self._client is not None
        assert self._watching_since is not None
        watched = sent - self._watching_since
        for executor_id, epoch, lease_ms in self._table.expired(self.executor_id):
            if watched * 1000 < lease_ms:
                continue  # not silent for a whole lease while this worker watched
            if not self._table.claim(executor_id, epoch, self.executor_id):
                continue  # another live worker took it
            # In a thread of its own: a row the dead worker left locked (paused in
            # a transaction) must not hold up this worker's own heartbeat.
            threading.Thread(
                target=self._hand_over_dead,
                args=(executor_id, epoch, lease_ms),
                name=f"dbos-llama-takeover-{executor_id}",
                daemon=True,
            ).start()

    def _hand_over_dead(self, executor_id: str, epoch: int, lease_ms: int) -> None:
        assert self._table is not None and self._client is not None
        try:
            runs = hand_over(self._client, executor_id)
            self._table.mark_handed_over(executor_id, epoch, self.executor_id, len(runs))
        except Exception as error:
            logger.warning(
                "Worker %r could not hand over the runs of %r (%s: %s); a live worker "
                "claims them again after %.1f s.",
                self.executor_id,
                executor_id,
                type(error).__name__,
                error,
                lease_ms / 1000,
            )
            return
        self.takeovers.append(Takeover(executor_id, epoch, runs, time.time()))
        logger.warning(
            "Worker %r missed its %.1f s lease; %r took over its %d runs: %s",
            executor_id,
            lease_ms / 1000,
            self.executor_id,
            len(runs),
            ", ".join(runs[:20]) + (" ..." if len(runs) > 20 else ""),
        )


_joined: Fleet | None = None


def _wait_for(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class _LeaseTable(SystemTable):
    """The lease rows, in database time (immune to the workers' clock skew)."""

    def __init__(self, url: str) -> None:
        super().__init__(
            url,
            _naming.FLEET_TABLE,
            "executor_id TEXT PRIMARY KEY, instance TEXT NOT NULL, "
            "epoch BIGINT NOT NULL, state TEXT NOT NULL, "
            "heartbeat_ms BIGINT NOT NULL, lease_ms BIGINT NOT NULL, "
            "taken_by TEXT, taken_at_ms BIGINT, handed_over BIGINT, "
            "pid BIGINT, host TEXT, joined_ms BIGINT",
        )
        # Silent for longer than its lease (a live row), or claimed by a worker
        # that died before it handed the runs over (a dead row).
        self.lapsed = (
            f"((state = 'live' AND heartbeat_ms + lease_ms < {self.now}) OR "
            f"(state = 'dead' AND handed_over IS NULL AND taken_at_ms + lease_ms < {self.now}))"
        )

    def register(self, executor_id: str, instance: str, lease_seconds: float) -> int:
        rows = self.rows(
            f"INSERT INTO {self.name} (executor_id, instance, epoch, state, heartbeat_ms, "
            f"lease_ms, pid, host, joined_ms) VALUES (:id, :inst, 1, 'live', {self.now}, "
            f":lease, :pid, :host, {self.now}) ON CONFLICT (executor_id) DO UPDATE SET "
            f"instance = :inst, epoch = {self.bare}.epoch + 1, state = 'live', "
            f"heartbeat_ms = {self.now}, lease_ms = :lease, taken_by = NULL, "
            f"taken_at_ms = NULL, handed_over = NULL, pid = :pid, host = :host, "
            f"joined_ms = {self.now} RETURNING epoch",
            id=executor_id,
            inst=instance,
            lease=int(lease_seconds * 1000),
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        return int(rows[0]["epoch"])

    def renew(self, executor_id: str, instance: str, epoch: int) -> bool:
        changed = self.write(
            f"UPDATE {self.name} SET heartbeat_ms = {self.now} WHERE executor_id = :id "
            "AND instance = :inst AND epoch = :epoch AND state = 'live'",
            id=executor_id,
            inst=instance,
            epoch=epoch,
        )
        return changed == 1

    def expire(self, executor_id: str, instance: str, epoch: int) -> None:
        self.write(
            f"UPDATE {self.name} SET heartbeat_ms = 0 WHERE executor_id = :id "
            "AND instance = :inst AND epoch = :epoch AND state = 'live'",
            id=executor_id,
            inst=instance,
            epoch=epoch,
        )

    def row(self, executor_id: str) -> dict[str, Any] | None:
        found = self.rows(f"SELECT * FROM {self.name} WHERE executor_id = :id", id=executor_id)
        return found[0] if found else None

    def expired(self, me: str) -> list[tuple[str, int, int]]:
        rows = self.rows(
            f"SELECT executor_id, epoch, lease_ms FROM {self.name} "
            f"WHERE executor_id <> :me AND {self.lapsed}",
            me=me,
        )
        return [(str(r["executor_id"]), int(r["epoch"]), int(r["lease_ms"])) for r in rows]

    def claim(self, executor_id: str, epoch: int, me: str) -> bool:
        # One statement: of the live workers claiming at once, one row update wins.
        changed = self.write(
            f"UPDATE {self.name} SET state = 'dead', taken_by = :me, taken_at_ms = {self.now}, "
            f"handed_over = NULL WHERE executor_id = :id AND epoch = :epoch AND {self.lapsed}",
            me=me,
            id=executor_id,
            epoch=epoch,
        )
        return changed == 1

    def mark_handed_over(self, executor_id: str, epoch: int, me: str, count: int) -> None:
        self.write(
            f"UPDATE {self.name} SET handed_over = :n WHERE executor_id = :id "
            "AND epoch = :epoch AND taken_by = :me AND state = 'dead'",
            n=count,
            id=executor_id,
            epoch=epoch,
            me=me,
        )

    def handed_over(self, executor_id: str) -> bool:
        row = self.row(executor_id)
        return row is None or row["state"] != "dead" or row["handed_over"] is not None

    def members(self) -> list[dict[str, Any]]:
        return self.rows(f"SELECT *, {self.now} AS now_ms FROM {self.name} ORDER BY executor_id")
