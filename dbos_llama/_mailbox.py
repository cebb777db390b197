"""The run's mailbox: DBOS receives of ticks and outside events, and their decoding."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, cast

from dbos import DBOS
from workflows.runtime.types.plugin import (
    WaitResult,
    WaitResultTick,
    WaitResultTimeout,
)
from workflows.runtime.types.results import EmissionKey, SentEvent
from workflows.runtime.types.ticks import TickAddEvent, TickCancelRun

from . import _envelope as envelope
from . import _naming
from ._run_state import RunState
from ._upstream import TICK_TYPES
from .errors import RejectedEventError

logger = logging.getLogger("dbos_llama")

#: How long the run's mailbox receive waits before it is re-armed (ten years).
RECV_FOREVER_SECONDS = 10 * 365 * 24 * 3600.0


class Mailbox:
    """The run's mailbox: one DBOS ``recv`` at a time, raced with the run's cancel.

    Events from the run's own steps arrive as pickled ticks; events from outside as
    JSON envelopes, decoded only when the control loop takes the pull's result
    (`settle`), a point that comes in the same order in every replay.
    """

    def __init__(self, run: RunState, accepted: list[type[Any]]) -> None:
        self._run = run
        # Event types the run takes from outside senders (JSON envelopes).
        self._accepted = accepted
        # An outside event the mailbox pull received, waiting for its decision.
        self._arrival: tuple[dict[str, Any], asyncio.Future[WaitResult]] | None = None
        #: Set while an outside event waits for its decision.
        self.arrived = asyncio.Event()
        # Events the run's steps sent, carried by their results (`carry`), in order;
        # the pull that took one at its start, without a receive.
        self._carried: deque[TickAddEvent] = deque()
        self._took_carried: asyncio.Task[Any] | None = None
        # Whether a pull waits in its DBOS receive.
        self._receiving = False

    def carry(self, result_invocation: str, sends: list[SentEvent]) -> bool:
        """Queue the events a step result carried, for the next pulls; True if a pull
        waits in its DBOS receive (it must be woken with a message)."""
        for sent in sends:
            self._carried.append(
                TickAddEvent(
                    event=sent.event,
                    step_id=sent.step_id,
                    recovery_counts=dict(sent.recovery_counts),
                    emission=EmissionKey(invocation_id=result_invocation, index=sent.index),
                )
            )
        return self._receiving

    def holds_carried(self, pull: asyncio.Task[Any]) -> bool:
        """Whether ``pull`` took a carried event at its start: it is taken next, with
        no decision recorded (it started with the same events queued in a replay)."""
        return pull is self._took_carried and pull.done()

    async def receive(self, timeout_seconds: float | None = None) -> WaitResult:
        if self._carried:
            # Synchronous: the pull finishes at its first step.
            self._took_carried = asyncio.current_task()
            return WaitResultTick(tick=self._carried.popleft())
        # The mailbox receive races the run's cancellation. A cancel is never
        # recorded in the run's history, so a cancelled run that is resumed waits
        # for its events again.
        result = await self._receive_one(timeout_seconds)
        if not isinstance(result, WaitResultTick) or not (
            envelope.is_envelope(result.tick) or _wakes_for_carried(result.tick)
        ):
            return result
        # An event from outside the run, as JSON. It is decoded when the control loop
        # takes this pull's result (`_settle_pull`), not when it arrives: that point
        # comes in the same order in every replay, so the run accepts the same events
        # (a replay receives its messages at once, while its steps still replay).
        decided: asyncio.Future[WaitResult] = asyncio.get_running_loop().create_future()
        self._arrival = (cast(dict[str, Any], result.tick), decided)
        self.arrived.set()
        return await decided

    async def settle(self, pull: asyncio.Task[Any]) -> None:
        """Let the mailbox pull finish, deciding on an outside event it holds."""
        arrived = asyncio.ensure_future(self.arrived.wait())
        try:
            await asyncio.wait([pull, arrived], return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
        if self._arrival is not None:
            message, decided = self._arrival
            self._arrival = None
            self.arrived.clear()
            if not decided.done():
                decided.set_result(self._decode(message))
        await asyncio.wait([pull])

    def _decode(self, message: dict[str, Any]) -> WaitResult:
        if _wakes_for_carried(message):
            # Woken for carried events (queued by now, also in a replay, whose
            # receive returns before the result that carried them is processed).
            if not self._carried:
                return WaitResultTimeout()
            return WaitResultTick(tick=self._carried.popleft())
        # Delivered only if it is an event the workflow declares, or one its steps
        # wait for (as far as the control loop has processed their results).
        try:
            accepted = [*self._accepted, *self._run.awaited_types]
            return WaitResultTick(tick=envelope.decode(message, accepted, self._run.run_id))
        except RejectedEventError as rejected:
            logger.error("%s The run keeps waiting for its events.", rejected)
            # The pull ends empty; the control loop starts the next one.
            return WaitResultTimeout()

    async def _receive_one(self, timeout_seconds: float | None) -> WaitResult:
        receiving = asyncio.current_task()
        watcher = asyncio.ensure_future(self._run.wait_cancelled())

        def interrupt(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and receiving is not None:
                receiving.cancel()

        watcher.add_done_callback(interrupt)
        self._receiving = True
        try:
            # Awaited directly: the receive takes its function ID synchronously.
            message = await DBOS.recv_async(
                _naming.TICK_TOPIC,
                timeout_seconds=RECV_FOREVER_SECONDS
                if timeout_seconds is None
                else timeout_seconds,
            )
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():
                return WaitResultTick(tick=TickCancelRun())
            raise
        finally:
            self._receiving = False
            watcher.remove_done_callback(interrupt)
            watcher.cancel()
        self._run.receives += 1
        if message is None:
            return WaitResultTimeout()
        if (
            not isinstance(message, TICK_TYPES)
            and not envelope.is_envelope(message)
            and not _wakes_for_carried(message)
        ):
            # Not a tick of this run's steps nor an envelope: rejected on decoding.
            message = {envelope.ENVELOPE_KEY: None, "type": type(message).__name__}
        return WaitResultTick(tick=message)


def _wakes_for_carried(message: Any) -> bool:
    """Whether a received message wakes the mailbox for carried events."""
    return isinstance(message, dict) and _naming.CARRIED_KEY in message
