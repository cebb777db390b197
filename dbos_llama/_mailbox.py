"""The run's mailbox: DBOS receives of ticks and outside events, and their decoding."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from dbos import DBOS
from workflows.runtime.types.plugin import (
    WaitResult,
    WaitResultTick,
    WaitResultTimeout,
)
from workflows.runtime.types.ticks import TickCancelRun

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

    async def receive(self, timeout_seconds: float | None = None) -> WaitResult:
        # The mailbox receive races the run's cancellation. A cancel is never
        # recorded in the run's history, so a cancelled run that is resumed waits
        # for its events again.
        result = await self._receive_one(timeout_seconds)
        if not isinstance(result, WaitResultTick) or not envelope.is_envelope(result.tick):
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
            watcher.remove_done_callback(interrupt)
            watcher.cancel()
        self._run.receives += 1
        if message is None:
            return WaitResultTimeout()
        if not isinstance(message, TICK_TYPES) and not envelope.is_envelope(message):
            # Not a tick of this run's steps nor an envelope: rejected on decoding.
            message = {envelope.ENVELOPE_KEY: None, "type": type(message).__name__}
        return WaitResultTick(tick=message)
