"""The DBOS `Runtime` of llama-index workflows: registration and run adapters."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workflows.context.serializers import BaseSerializer
from workflows.context.state_store import infer_state_type
from workflows.events import StartEvent
from workflows.runtime.types.plugin import (
    ExternalRunAdapter,
    InternalRunAdapter,
    RegisteredWorkflow,
    Runtime,
)
from workflows.runtime.types.step_function import (
    StepWorkerFunction,
    as_step_worker_functions,
    create_workflow_run_function,
)

from ._history import jsonable, summarize
from ._patches import seed_edit
from ._registry import DurableBinding, binding_of
from ._serialization import ensure_serializable
from ._snapshots import Attach, Continue, plan, recorded_state
from ._state import DurableStateStore, seed_payload
from ._upstream import (
    class_accepted_events,
    dbos_launched,
    runtime_chain,
    start_event_placeholder,
    step_functions_version,
)
from .errors import DBOSNotLaunchedError, RunInputConflictError

if TYPE_CHECKING:
    from workflows.runtime.types.internal_state import BrokerState
    from workflows.workflow import Workflow

from ._adapters import DBOSExternalAdapter, DBOSInternalAdapter
from ._context import attaching, run_id_var
from ._run_state import RunState, _runs, run_state

#: The start event each run this process started was given, while its state lives.
_start_events: dict[str, tuple[weakref.ref[RunState], StartEvent]] = {}


def _remember_start(run: RunState, start_event: StartEvent) -> None:
    run_id = run.run_id

    def forget(ref: weakref.ref[RunState]) -> None:
        entry = _start_events.get(run_id)
        if entry is not None and entry[0] is ref:
            del _start_events[run_id]

    _start_events[run_id] = (weakref.ref(run, forget), start_event)


def _started_with(run: RunState) -> StartEvent | None:
    entry = _start_events.get(run.run_id)
    return entry[1] if entry is not None and entry[0]() is run else None


def same_start_event(recorded: StartEvent, given: StartEvent) -> bool:
    """Whether two start events carry the same input: same class, same fields and
    free-form data (as JSON, so a value read back from JSON compares equal)."""
    if type(recorded) is not type(given):
        return False
    try:
        return bool(jsonable(recorded) == jsonable(given))
    except Exception:  # fields JSON cannot show: compare the models themselves
        return bool(recorded == given)


def input_conflict(
    run_id: str, workflow: str, recorded: StartEvent, given: StartEvent
) -> RunInputConflictError:
    """The error for starting the existing run ``run_id`` with other input."""
    return RunInputConflictError(
        f"Run {run_id!r} of durable workflow {workflow!r} already exists, started "
        f"with {summarize(recorded)}; this call gives {summarize(given)}. A run "
        "ID runs once: to attach to the existing run (its handler, result, stream), "
        f"call run(run_id={run_id!r}) with no start event and no fields; to run this "
        "input, use another run_id."
    )


#: Attribute of a workflow instance holding its `_Registration` with the DBOS runtime.
_REGISTRATION_ATTR = "_dbos_llama_registration"


@dataclass
class _Registration:
    """A workflow instance's registration, valid for one set of its class's steps."""

    #: The class's step-functions version it was made for (`Workflow.add_step`).
    version: int
    registered: RegisteredWorkflow
    #: The plain step workers a step invocation executes, by step name.
    inner: dict[str, StepWorkerFunction]


def _current_registration(workflow: Workflow) -> _Registration | None:
    """The instance's registration, unless a step was added to its class since."""
    registration = workflow.__dict__.get(_REGISTRATION_ATTR)
    if not isinstance(registration, _Registration):
        return None
    if registration.version != step_functions_version(type(workflow)):
        return None
    return registration


async def _start(
    binding: DurableBinding,
    run_id: str,
    start_event: StartEvent,
    attach: str | None,
    seed: dict[str, Any] | None,
    seed_from: str | None,
    store: DurableStateStore[Any],
) -> Any:
    """Start (or find) the run; a continuation of a run whose state this process did
    not hold is seeded with the state recorded by that run."""
    if seed_from is not None:
        seed = await recorded_state(seed_from, store.state_type)
        if seed is not None:
            store.apply_edits([seed_edit(seed)])
    return await binding.start_run(run_id, start_event, attach, seed)


class DBOSRuntime(Runtime):
    """Runs workflows of `@durable` classes as DBOS workflows.

    You rarely build one: instances of a `@durable` class use `dbos_runtime` by
    default. Each run is one DBOS workflow whose ID is the run ID, and each step
    invocation is one child DBOS workflow of the step's registered name.
    """

    @property
    def is_launched(self) -> bool:
        return True

    def register(self, workflow: Workflow) -> RegisteredWorkflow:
        return self._registration(workflow).registered

    def get_registered(self, workflow: Workflow) -> RegisteredWorkflow | None:
        registration = _current_registration(workflow)
        return None if registration is None else registration.registered

    def inner_step(self, workflow: Workflow, step_name: str) -> StepWorkerFunction:
        """The plain (in-process) step worker that a step invocation executes."""
        return self._registration(workflow).inner[step_name]

    def _registration(self, workflow: Workflow) -> _Registration:
        registration = _current_registration(workflow)
        if registration is not None:
            return registration
        binding = binding_of(workflow)
        version = step_functions_version(type(workflow))
        inner = as_step_worker_functions(workflow)
        registered = RegisteredWorkflow(
            workflow=workflow,
            workflow_run_fn=create_workflow_run_function(workflow),
            steps={name: binding.step_caller(name) for name in inner},
        )
        registration = _Registration(version, registered, inner)
        # Kept on the instance, not in a table of the runtime: the registration
        # refers to the instance, so a table entry would keep every instance alive.
        setattr(workflow, _REGISTRATION_ATTR, registration)
        return registration

    def run_workflow(
        self,
        run_id: str,
        workflow: Workflow,
        init_state: BrokerState,
        start_event: StartEvent | None = None,
        serialized_state: dict[str, Any] | None = None,
        serializer: BaseSerializer | None = None,
    ) -> ExternalRunAdapter:
        binding = binding_of(workflow)
        attach = attaching.get()
        # A context snapshot (``Context.from_dict``): attach to its run, or continue
        # from its state (`_snapshots.plan`).
        decided = plan(serialized_state, start_event is None, binding.name)
        if isinstance(decided, Attach):
            run_id, attach = decided.run_id, "attach-only"
            start_event = start_event_placeholder(workflow)
        existing = _runs.get(run_id)
        if existing is not None and existing.start_task is not None:
            # Same run ID again in this process: attach, never a second execution
            # (with other input than this process started it with: an error).
            started = _started_with(existing)
            if start_event is not None and started is not None and attach is None:
                if not same_start_event(started, start_event):
                    raise input_conflict(run_id, binding.name, started, start_event)
            return DBOSExternalAdapter(existing, workflow)
        if start_event is None:
            raise binding.error_no_start_event()
        if not dbos_launched():
            raise DBOSNotLaunchedError(
                f"Cannot start run {run_id!r} of durable workflow {binding.name!r}: DBOS is "
                "not launched. Configure DBOS(config=...) and call DBOS.launch() first, "
                "inside the running event loop (in your async main), then run workflows."
            )
        seed, seed_from = None, None
        if isinstance(decided, Continue):
            seed, seed_from = decided.seed, decided.from_run
        elif attach != "attach-only":
            serializer = serializer or workflow.runtime.get_serializer(workflow)
            seed = seed_payload(serialized_state, serializer, infer_state_type(workflow))
        if attach != "attach-only":
            what = f"The start event of {binding.name} (run {run_id!r})"
            ensure_serializable(start_event, what)
        run = run_state(run_id)
        run.instance = workflow  # its body and steps run on this instance here
        # The run's store at once (``handler.ctx.store`` right after ``run()``), with
        # the state seeded before the run (recorded with the run's input).
        store = run.store_for(workflow)
        if seed is not None:
            store.apply_edits([seed_edit(seed)])
        run.start_task = asyncio.get_running_loop().create_task(
            _start(binding, run_id, start_event, attach, seed, seed_from, store)
        )
        if attach != "attach-only":
            _remember_start(run, start_event)
        return DBOSExternalAdapter(run, workflow)

    def get_internal_adapter(self, workflow: Workflow) -> InternalRunAdapter:
        run_id = run_id_var.get()
        if run_id is None:
            raise RuntimeError(
                "No durable run is executing here: the internal adapter of "
                f"{type(workflow).__name__} is only available inside a run."
            )
        run = run_state(run_id)
        run.store_for(workflow)
        if run.accepted is None:  # once per run: every step invocation asks again
            run.accepted = class_accepted_events(type(workflow))
        return DBOSInternalAdapter(run, run.accepted)

    def get_external_adapter(self, run_id: str) -> ExternalRunAdapter:
        return DBOSExternalAdapter(run_state(run_id))


#: The runtime every `@durable` class uses unless given ``runtime=``.
dbos_runtime = DBOSRuntime()


def runs_on_dbos(runtime: Runtime) -> bool:
    """Whether a runtime (or one it decorates, or routes durable classes to through
    its ``durable_runtime``) is a `DBOSRuntime`."""
    for link in runtime_chain(runtime):
        if isinstance(link, DBOSRuntime) or isinstance(
            getattr(link, "durable_runtime", None), DBOSRuntime
        ):
            return True
    return False
