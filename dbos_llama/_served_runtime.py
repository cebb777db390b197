"""The runtime under a `DurableWorkflowServer`: durable classes on DBOS, others in memory."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from workflows.context.serializers import BaseSerializer
from workflows.events import Event, StartEvent
from workflows.plugins.basic import BasicRuntime
from workflows.runtime.runtime_decorators import BaseInternalRunAdapterDecorator
from workflows.runtime.types.plugin import (
    ExternalRunAdapter,
    InternalRunAdapter,
    RegisteredWorkflow,
    Runtime,
)
from workflows.runtime.types.ticks import WorkflowTick

from . import _naming
from ._context import extra_run_attributes, invocation_var
from ._registry import is_durable
from ._runtime import dbos_runtime
from ._upstream import server_handler_id
from .errors import NotSerializableError

if TYPE_CHECKING:
    from workflows.runtime.types.internal_state import BrokerState
    from workflows.workflow import Workflow

logger = logging.getLogger("dbos_llama")


class RecordedRunAdapter(BaseInternalRunAdapterDecorator):
    """A durable run's internal adapter as the server sees it.

    ``is_replaying()`` is always true: dbos_llama records the run's events (once,
    also across crashes and re-run steps) and its outcome in DBOS, and the server's
    store reads them from there (`_served_store`), so the server must not record a
    second copy of what it is shown live.
    """

    def is_replaying(self) -> bool:
        return True

    # The server's adapter makes these calls later, in tasks whose errors upstream
    # gathers and drops: an event that cannot be stored would vanish silently. The
    # step fails with the error instead, as it does when not served.
    async def write_to_event_stream(self, event: Event) -> None:
        await _failing_the_step(lambda: self._decorated.write_to_event_stream(event))

    async def send_event(self, tick: WorkflowTick) -> None:
        await _failing_the_step(lambda: self._decorated.send_event(tick))


async def _failing_the_step(call: Callable[[], Awaitable[None]]) -> None:
    """Make ``call()`` (part of it may raise before it returns its awaitable); hand a
    `NotSerializableError` to the running step, which then fails with it."""
    try:
        await call()
    except NotSerializableError as error:
        _defer_to_step(error)
        raise


def _defer_to_step(error: NotSerializableError) -> None:
    invocation = invocation_var.get()
    if invocation is not None and invocation.deferred_error is None:
        invocation.deferred_error = error
    else:
        logger.error("%s (dropped: it cannot be stored)", error)


class ServedRuntime(Runtime):
    """Routes each workflow served by one `DurableWorkflowServer` to its runtime:
    `@durable` classes to `dbos_runtime`, any other to an in-memory `BasicRuntime`
    (served as a plain `WorkflowServer` would, with a warning that it is not durable).

    ``on_launch`` and ``on_destroy`` run when the server starts and stops (in the
    server's event loop: DBOS launches there).
    """

    #: Where `@durable` classes run (what `_runtime.runs_on_dbos` looks for).
    durable_runtime = dbos_runtime

    def __init__(
        self,
        on_launch: Callable[[], Awaitable[None]],
        on_destroy: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__()
        self._plain = BasicRuntime()
        self.plain_runs: set[str] = set()
        self._on_launch = on_launch
        self._on_destroy = on_destroy
        self._running = False

    def _for(self, workflow: Workflow) -> Runtime:
        return dbos_runtime if is_durable(workflow) else self._plain

    # -- registration ------------------------------------------------------------------
    def track_workflow(self, workflow: Workflow) -> None:
        if not is_durable(workflow):
            logger.warning(
                "%s is not @durable: it is served in memory, and its runs are lost if "
                "the server stops. Decorate the class with @durable to make them durable.",
                type(workflow).__qualname__,
            )
        self._for(workflow).track_workflow(workflow)

    def untrack_workflow(self, workflow: Workflow) -> None:
        self._for(workflow).untrack_workflow(workflow)

    def register(self, workflow: Workflow) -> RegisteredWorkflow:
        return self._for(workflow).register(workflow)

    def get_registered(self, workflow: Workflow) -> RegisteredWorkflow | None:
        return self._for(workflow).get_registered(workflow)

    def get_serializer(self, workflow: Workflow) -> BaseSerializer:
        return self._for(workflow).get_serializer(workflow)

    # -- runs ----------------------------------------------------------------------------
    def run_workflow(
        self,
        run_id: str,
        workflow: Workflow,
        init_state: BrokerState,
        start_event: StartEvent | None = None,
        serialized_state: dict[str, Any] | None = None,
        serializer: BaseSerializer | None = None,
    ) -> ExternalRunAdapter:
        if not is_durable(workflow):
            self.plain_runs.add(run_id)
            return self._plain.run_workflow(
                run_id, workflow, init_state, start_event, serialized_state, serializer
            )
        if serialized_state and serialized_state.get("state"):
            logger.warning(
                "Run %r of %s starts with an empty state: a durable run does not take "
                "over the state of an earlier handler with the same handler_id.",
                run_id,
                type(workflow).__qualname__,
            )
        handler_id = server_handler_id()
        token = extra_run_attributes.set(
            {_naming.HANDLER_ATTR: handler_id} if handler_id is not None else None
        )
        try:
            return dbos_runtime.run_workflow(run_id, workflow, init_state, start_event)
        finally:
            extra_run_attributes.reset(token)

    def get_internal_adapter(self, workflow: Workflow) -> InternalRunAdapter:
        if not is_durable(workflow):
            return self._plain.get_internal_adapter(workflow)
        return RecordedRunAdapter(dbos_runtime.get_internal_adapter(workflow))

    def get_external_adapter(self, run_id: str) -> ExternalRunAdapter:
        # An in-memory run exists only in the process that started it; any other run
        # ID is a durable run (possibly started by another replica).
        if run_id in self.plain_runs:
            return self._plain.get_external_adapter(run_id)
        return dbos_runtime.get_external_adapter(run_id)

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def is_launched(self) -> bool:
        return self._running

    async def launch(self) -> None:
        if self._running:
            return
        await self._on_launch()
        await self._plain.launch()
        self._running = True

    async def destroy(self) -> None:
        if not self._running:
            return
        self._running = False
        await self._plain.destroy()
        await self._on_destroy()
