"""Which durable run and step invocation the executing code belongs to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from workflows.events import Event

from . import _naming
from ._patches import Patch

#: The run whose code is executing (the run's DBOS workflow and its step invocations).
run_id_var: ContextVar[str | None] = ContextVar("dbos_llama_run_id", default=None)
#: The step invocation whose code is executing, if any.
invocation_var: ContextVar[Invocation | None] = ContextVar("dbos_llama_invocation", default=None)
#: DBOS workflow attributes to record on the run being started (besides its version).
extra_run_attributes: ContextVar[dict[str, Any] | None] = ContextVar(
    "dbos_llama_extra_run_attributes", default=None
)

#: Set by a durable class's ``run(run_id=...)`` called with no start event and no
#: fields: "attach" (the run's default start event starts it if it does not exist)
#: or "attach-only" (the start event needs fields: the run must exist).
attaching: ContextVar[str | None] = ContextVar("dbos_llama_attaching", default=None)


@dataclass
class Invocation:
    """One step invocation (a child DBOS workflow) while its code runs in this process."""

    invocation_id: str
    sends: int = 0
    # Events the step wrote to the stream, appended to the run's durable stream
    # (exactly once) when the invocation's result is processed by the run.
    stream: list[Event] = field(default_factory=list)
    # State edits the step committed: (run-wide sequence number, JSON Patch).
    state: list[Patch] = field(default_factory=list)
    # Whether its state writes are checkpoints (not for an invocation recorded by a
    # version of dbos_llama that did not checkpoint them: it replays as recorded).
    checkpoint_edits: bool = True
    # Calls (durable steps, helpers) recorded by the earlier invocation of the same
    # work item that this one re-runs after ``ctx.wait_for_event``: (name, output).
    recorded: list[tuple[str, Any]] = field(default_factory=list)
    calls: int = 0
    # An error the step's code could not be handed at its call (a stream write or send
    # deferred by an adapter decorator, e.g. the HTTP server's): the step fails with it.
    deferred_error: Exception | None = None
    # The lease generation it executes in (`_lease`): its calls start only while
    # the worker holds that generation's lease.
    generation: int = 0
    # Events sent with ``ctx.send_event`` that travel with the invocation's result
    # unless it goes on running without sending (`_carry`): (tick, key), and when
    # the last of them was held (the loop's clock).
    held: list[tuple[Any, str]] = field(default_factory=list)
    last_held: float = 0.0
    flush_timer: asyncio.TimerHandle | None = None
    returned: bool = False
    # Told when the step's code begins a durable sleep of that many seconds; returns
    # what to call when the sleep ends (`RunState.sleep_hook`). None: nobody listens.
    on_sleep: Callable[[float], Callable[[], None]] | None = None

    def next_send_key(self) -> str:
        key = _naming.send_idempotency_key(self.invocation_id, self.sends)
        self.sends += 1
        return key

    def recorded_result(self, name: str) -> tuple[bool, Any]:
        """The next call's result as the earlier invocation recorded it, if any."""
        index = self.calls
        self.calls += 1
        if index < len(self.recorded) and self.recorded[index][0] == name:
            return True, self.recorded[index][1]
        self.recorded = []  # the code took another path: stop replaying
        return False, None


@dataclass
class InlineSlot:
    """A collecting step's worker task that runs in the run's own workflow (`_inline`):
    what the decision engine and the invocation hand each other."""

    #: The keys of the run's other worker tasks that have finished, in the order the
    #: run takes them (asked when the invocation records its outcome).
    finished_others: Callable[[], tuple[str, ...]]
    #: Those keys as the invocation's record holds them, once recorded or replayed.
    then: tuple[str, ...] = ()
    #: Set once every task started with it has taken its DBOS function IDs: only then
    #: does the invocation take its own (the same order, live or replayed).
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def current_run_id() -> str | None:
    """The ID of the durable run whose code is executing, or None outside one."""
    return run_id_var.get()


async def outside_workflow(call: Callable[[], Any]) -> Any:
    """Run a DBOS call in an executor thread: it carries no DBOS context, so the
    call is not a checkpoint of the calling workflow and takes none of its IDs."""
    return await asyncio.get_running_loop().run_in_executor(None, call)
