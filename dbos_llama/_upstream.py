"""The few private names of llama-index-workflows and DBOS that dbos_llama relies on.

Each is used here only, where no public route exists; `tests/test_upstream_seams.py`
fails loudly when an upstream release changes one.
"""

from __future__ import annotations

import inspect
import typing
from types import SimpleNamespace
from typing import Any, cast

from pydantic import BaseModel
from workflows.context.state_store import infer_state_type
from workflows.runtime.types.results import AddWaiter
from workflows.runtime.types.step_function import StepWorkerFunction
from workflows.runtime.types.ticks import WorkflowTick
from workflows.workflow import Workflow

#: The step name DBOS records in a workflow when it takes a child workflow's result
#: (the row after the child's call, with its ``child_workflow_id``).
GET_RESULT_STEP = "DBOS.getResult"
#: Keyword names the control loop passes to a step worker (``runner.py`` calls it
#: with keywords, so a wrapper must keep them exactly).
STEP_WORKER_PARAMETERS = ("state", "step_name", "event", "workflow", "bound_events", "retry")


def class_step_names(cls: type[Workflow]) -> list[str]:
    """Names of the steps a workflow class declares (methods and free functions)."""
    # No public class-level accessor exists; `Workflow._get_steps_from_class` is it.
    return sorted(cls._get_steps_from_class())


def class_state_type(cls: type[Workflow]) -> type[BaseModel]:
    """The state type of a workflow class (its steps' ``Context[T]``; `DictState` if
    none): upstream's `infer_state_type`, which reads an instance's steps
    (``_get_steps``), given the class's own (no instance may be alive)."""
    steps = cls._get_steps_from_class()
    return infer_state_type(cast(Any, SimpleNamespace(_get_steps=lambda: steps)))


def class_accepted_events(cls: type[Workflow]) -> list[type[Any]]:
    """Event types that some step of ``cls`` accepts (what a sender may deliver)."""
    accepted: list[type[Any]] = []
    for func in cls._get_steps_from_class().values():
        config = getattr(func, "_step_config", None)
        for event_type in getattr(config, "accepted_events", ()):
            if event_type not in accepted:
                accepted.append(event_type)
    return accepted


def step_functions_version(cls: type[Workflow]) -> int:
    """A counter that ``Workflow.add_step`` bumps on the class: a registration of an
    instance made before a step was added is stale (``_step_functions_version``)."""
    return int(getattr(cls, "_step_functions_version", 0))


def start_event_placeholder(workflow: Workflow) -> Any:
    """An unvalidated instance of the workflow's start event class, for a call that
    only attaches to an existing run (``Workflow._start_event_class``)."""
    return workflow._start_event_class.model_construct()


def step_source(cls: type[Workflow], step_name: str) -> str:
    """Source text of one step function, for the class's code version."""
    func: Any = cls._get_steps_from_class()[step_name]
    func = getattr(func, "__func__", func)
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        return repr(code.co_code) if code is not None else step_name


def upstream_step_worker_parameters() -> tuple[str, ...]:
    """The parameter names upstream's `StepWorkerFunction` protocol declares today."""
    params = inspect.signature(StepWorkerFunction.__call__).parameters
    return tuple(name for name in params if name != "self")


#: The tick classes of the control loop (``WorkflowTick`` is an annotated union).
TICK_TYPES: tuple[type[Any], ...] = typing.get_args(typing.get_args(WorkflowTick)[0])


def awaited_event_types(outputs: list[Any]) -> list[type[Any]]:
    """Event types a step's outputs say it now waits for (``ctx.wait_for_event``)."""
    return [o.event_type for o in outputs if isinstance(o, AddWaiter)]


#: The `Workflow` method that moves an instance onto another runtime (what
#: `WorkflowServer.add_workflow` calls; there is no public one).
SWITCH_RUNTIME = "_switch_runtime"


def copy_step_functions(source: type[Workflow], target: type[Workflow]) -> None:
    """Give ``target`` the free-function steps added to ``source`` with ``add_step``
    (upstream keeps them in the class attribute ``_step_functions``)."""
    target._step_functions = dict(source._step_functions)


def dbos_serializer() -> Any:
    """The serializer of this process's DBOS instance, if one is configured (DBOS has
    no public accessor: it is ``_dbos_global_instance._serializer``)."""
    from dbos import _dbos

    return getattr(_dbos._dbos_global_instance, "_serializer", None)


def system_database_url() -> str | None:
    """The system database URL of this process's DBOS instance (no public accessor:
    ``_dbos_global_instance._config["system_database_url"]``)."""
    from dbos import _dbos

    config = getattr(_dbos._dbos_global_instance, "_config", None)
    return config.get("system_database_url") if isinstance(config, dict) else None


def dbos_launched() -> bool:
    """Whether this process's DBOS instance is launched (no public accessor:
    ``_dbos_global_instance._launched``)."""
    from dbos import _dbos

    return bool(getattr(_dbos._dbos_global_instance, "_launched", False))


def current_function_id() -> int | None:
    """The last DBOS function ID the executing workflow has taken (DBOS has no public
    accessor: ``dbos._context.get_local_dbos_context().function_id``)."""
    from dbos._context import get_local_dbos_context

    ctx = get_local_dbos_context()
    return None if ctx is None else int(ctx.function_id)


def _system_table(dialect: str, table: str) -> str:
    """One of DBOS's system tables as SQL names it: in the system schema on
    PostgreSQL (``dbos_system_schema``, ``dbos`` by default)."""
    return table if dialect == "sqlite" else f'"{system_schema()}".{table}'


def system_schema() -> str:
    """The PostgreSQL schema of DBOS's system tables in this process's DBOS
    configuration (``dbos_system_schema``, ``dbos`` by default; no public accessor:
    ``_dbos_global_instance._config``)."""
    from dbos import _dbos

    config = getattr(_dbos._dbos_global_instance, "_config", None)
    schema = config.get("dbos_system_schema") if isinstance(config, dict) else None
    return str(schema or "dbos")


def notifications_table(dialect: str) -> str:
    """DBOS's messages table (columns ``destination_uuid``, ``topic``, ``consumed``)."""
    return _system_table(dialect, "notifications")


def workflow_status_table(dialect: str) -> str:
    """DBOS's table of workflows (columns ``workflow_uuid``, ``status``, ``name``):
    a sender reads its destinations there in the transaction of its send, where
    DBOS's public ``list_workflows`` would need a connection and a round trip of
    its own."""
    return _system_table(dialect, "workflow_status")


def has_pending_message(engine: Any, workflow_id: str, topic: str) -> bool:
    """Whether a message on ``topic`` waits, unconsumed, for ``workflow_id``. DBOS has
    no public peek: this reads its ``notifications`` table (columns
    ``destination_uuid``, ``topic``, ``consumed``), in the system schema on PostgreSQL
    (``dbos_system_schema``, ``dbos`` by default)."""
    import sqlalchemy as sa

    table = notifications_table(engine.dialect.name)
    with engine.begin() as c:
        row = c.execute(
            sa.text(
                f"SELECT 1 FROM {table} WHERE destination_uuid = :id AND topic = :topic "
                "AND NOT consumed LIMIT 1"
            ),
            {"id": workflow_id, "topic": topic},
        ).first()
    return row is not None


# -- llama-agents-server (the `server` extra; imported only when it is used) -------------
def server_handler_id() -> str | None:
    """The handler ID a `WorkflowServer` is starting a run for: the server tags the
    start with ``llamaindex.handler_id`` (`llama_index_instrumentation`'s active tags)
    and does not pass it to the runtime otherwise."""
    from llama_index_instrumentation.dispatcher import active_instrument_tags

    handler_id = active_instrument_tags.get().get("llamaindex.handler_id")
    return str(handler_id) if handler_id is not None else None


def runtime_chain(runtime: Any) -> list[Any]:
    """``runtime`` and every runtime it decorates, outermost first (upstream's
    `BaseRuntimeDecorator` keeps the decorated runtime in ``_decorated``)."""
    chain = [runtime]
    while getattr(chain[-1], "_decorated", None) is not None:
        chain.append(chain[-1]._decorated)
    return chain


def postgres_workflow_store_class() -> Any:
    """llama-agents-server's PostgreSQL store (not exported by ``llama_agents.server``)."""
    from llama_agents.server._store.postgres_workflow_store import PostgresWorkflowStore

    return PostgresWorkflowStore


def stored_event_class() -> Any:
    """The event record a llama-agents-server store returns (not exported)."""
    from llama_agents.server._store.abstract_workflow_store import StoredEvent

    return StoredEvent
