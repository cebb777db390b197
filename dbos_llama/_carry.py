"""Events a step sends with ``ctx.send_event``: held, carried by the step's recorded
result, or sent as DBOS messages (see ARCHITECTURE, "How each kind of event travels")."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from dbos import DBOS
from workflows.runtime.types.results import SentEvent
from workflows.runtime.types.ticks import TickAddEvent, WorkflowTick

from . import _naming
from ._context import Invocation, outside_workflow

logger = logging.getLogger("dbos_llama")


async def send_outside_workflow(run_id: str, tick: WorkflowTick, key: str | None) -> None:
    """``DBOS.send`` of a tick to the run, outside any DBOS workflow context."""
    # Not a checkpoint of the sending step: the idempotency key makes a send that a
    # re-executed step repeats a no-op.
    await outside_workflow(
        functools.partial(DBOS.send, run_id, tick, _naming.TICK_TOPIC, idempotency_key=key)
    )


#: How long a step may go on running without sending before the events it holds go
#: out as DBOS messages (a step that returns sooner carries them with its result)...
CARRY_SECONDS = 0.05
#: ...and the longest an event is held while its step keeps sending (a step that
#: sends one event after another for longer still delivers them as it goes).
CARRY_MAX_SECONDS = 0.5
_flushing: set[asyncio.Task[None]] = set()


def hold(run_id: str, invocation: Invocation, tick: TickAddEvent, key: str) -> None:
    loop = asyncio.get_running_loop()
    invocation.held.append((tick, key))
    invocation.last_held = loop.time()
    if invocation.flush_timer is not None:
        return
    latest = invocation.last_held + CARRY_MAX_SECONDS

    def flush() -> None:
        # A step sending in a loop (the timer fires between its sends, or once a
        # loop that never awaits is over) holds on until it pauses or returns.
        due = min(invocation.last_held + CARRY_SECONDS, latest)
        if loop.time() < due:
            invocation.flush_timer = loop.call_at(due, flush)
            return
        invocation.flush_timer = None
        held, invocation.held = invocation.held, []
        task = loop.create_task(_send_held(run_id, held))
        _flushing.add(task)
        task.add_done_callback(_flushing.discard)

    invocation.flush_timer = loop.call_later(CARRY_SECONDS, flush)


async def _send_held(run_id: str, held: list[tuple[Any, str]]) -> None:
    for tick, key in held:
        try:
            await send_outside_workflow(run_id, tick, key)
        except Exception:  # the step's recorded result carries it all the same
            logger.debug("A held event of run %r was not sent early.", run_id, exc_info=True)


async def end_sends(run_id: str, invocation: Invocation, outputs: list[Any]) -> None:
    """The step returned: the events it still holds travel with its result; any its
    recorded result does not carry (it failed to record them) go as messages now."""
    invocation.returned = True
    if invocation.flush_timer is not None:
        invocation.flush_timer.cancel()
        invocation.flush_timer = None
    carried = {o.index for o in outputs if isinstance(o, SentEvent)}
    held, invocation.held = invocation.held, []
    await _send_held(run_id, [(t, k) for t, k in held if t.emission.index not in carried])


async def wake_mailbox(run_id: str, result_invocation: str) -> None:
    """Wake a mailbox waiting in its DBOS receive for the events a result carried."""
    message = {_naming.CARRIED_KEY: result_invocation}
    key = _naming.carried_idempotency_key(run_id, result_invocation)
    await outside_workflow(
        functools.partial(DBOS.send, run_id, message, _naming.TICK_TOPIC, idempotency_key=key)
    )
