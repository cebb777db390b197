"""Stable names: DBOS workflow names, child workflow IDs and message topics.

Everything recorded in the DBOS system database is found again by these names, so
they must essentially never change: a change here orphans every run in flight.
"""

from __future__ import annotations

from .errors import UnstableNameError

#: Prefix of every DBOS workflow name registered by dbos_llama.
NAME_PREFIX = "llama:"
#: DBOS message topic carrying workflow ticks (events) into a run.
TICK_TOPIC = "dbos_llama.tick"
#: Name of the checkpoint recording which running task finished first, and when.
NEXT_STEP = "dbos_llama.next"
#: Name of the checkpoint recording that, while one step ran, the mailbox or a
#: deadline came first (a step finishing first needs no checkpoint).
WAKE_STEP = "dbos_llama.wake"
#: Name of the checkpoint recording one committed write to a run's ``ctx.store``
#: (output: ``[seq, JSON Patch]``), inside the step invocation that made it.
STATE_STEP = "dbos_llama.state"
#: Name of the checkpoint recording a collecting step's invocation that ran in the
#: run's own workflow (`_inline`); output: `_records.InlineRecord`.
INLINE_STEP = "dbos_llama.inline"
#: Names of the checkpoints of `dbos_llama.now()`, `random()` and `uuid4()`.
NOW_STEP = "dbos_llama.now"
RANDOM_STEP = "dbos_llama.random"
UUID4_STEP = "dbos_llama.uuid4"
#: Key of the DBOS stream (on the run's workflow) holding the run's published events.
STREAM_KEY = "dbos_llama.events"
#: Workflow attribute (JSON, on the run's DBOS status) holding the run's code version.
#: A fork onto other code carries the version it runs under here.
VERSION_ATTR = "dbos_llama.version"
#: Workflow attribute set while a worker holds the run because its code version differs.
HELD_ATTR = "dbos_llama.held"
#: Workflow attribute of a run started through a `DurableWorkflowServer`: the
#: server's handler ID for it.
HANDLER_ATTR = "dbos_llama.server_handler_id"
#: Workflow attribute of a run started while OpenTelemetry tracing was on: its trace
#: (``{"traceparent": W3C trace context of the run's span, "parent": caller's span}``).
TRACE_ATTR = "dbos_llama.trace"
#: Workflow attribute of a fork: the step it re-executes from.
FORK_STEP_ATTR = "dbos_llama.forked_from_step"
#: DBOS queue no worker listens to: a fork waits there until its attributes are set.
FORK_PARKING_QUEUE = "dbos_llama.fork-parking"
#: Keyword argument of a run's DBOS workflow holding the state seeded before the run
#: (``Context(wf).store`` writes, or the state a continued context carries): a
#: state payload, recorded with the run's input only when there is one.
SEED_STATE_ARG = "seed_state"
#: Source key of the seed among a run's recorded state writes (no step invocation's
#: key: those are ``STEP/NUMBER``); applied first, as write number `SEED_SEQ`.
SEED_KEY = "seed"
SEED_SEQ = -1
#: ``store_type`` of the state of a durable run's context snapshot (``ctx.to_dict()``):
#: a handle naming the run, kept by applications (saved snapshots).
SNAPSHOT_STORE_TYPE = "dbos_llama"


def derive_name(cls: type) -> str:
    """The stable name of a workflow class: ``module.QualName``.

    Raises `UnstableNameError` for classes defined inside a function, whose
    qualified name does not identify them across processes.
    """
    qualname = cls.__qualname__
    if "<locals>" in qualname:
        raise UnstableNameError(
            f"{cls.__module__}.{qualname} is defined inside a function, so no other "
            "process can find it again after a crash. Define it at module level, or "
            "give it a stable name: @durable(name='my-workflow')."
        )
    return f"{cls.__module__}.{qualname}"


def run_workflow_name(name: str) -> str:
    """DBOS workflow name of the run of workflow ``name``."""
    return f"{NAME_PREFIX}{name}"


def step_workflow_name(name: str, step: str) -> str:
    """DBOS workflow name of one invocation of step ``step`` of workflow ``name``."""
    return f"{NAME_PREFIX}{name}/{step}"


def step_invocation_id(run_id: str, step: str, number: int) -> str:
    """Deterministic DBOS workflow ID of the ``number``-th step invocation of a run."""
    return f"{run_id}/{step}/{number}"


def invocation_key(invocation_id: str) -> str:
    """The part of a step invocation ID after its run ID: ``STEP/NUMBER``."""
    return "/".join(invocation_id.rsplit("/", 2)[-2:])


def parse_run_workflow_name(dbos_name: str) -> str | None:
    """The workflow name of a run's DBOS workflow name (``llama:<name>``), else None
    (a step invocation's, or no durable workflow's)."""
    if not dbos_name.startswith(NAME_PREFIX) or "/" in dbos_name[len(NAME_PREFIX) :]:
        return None
    return dbos_name[len(NAME_PREFIX) :]


def parse_step_workflow_name(dbos_name: str) -> tuple[str, str] | None:
    """``(workflow name, step)`` of a step invocation's DBOS workflow name, else None."""
    if not dbos_name.startswith(NAME_PREFIX):
        return None
    name, sep, step = dbos_name[len(NAME_PREFIX) :].rpartition("/")
    return (name, step) if sep and name and step else None


def invocation_number(invocation_id: str) -> int | None:
    """The ``n`` of a step invocation ID ``<run_id>/<step>/<n>``."""
    tail = invocation_id.rpartition("/")[2]
    return int(tail) if tail.isdigit() else None


def llm_call_name(method: str) -> str:
    """Checkpoint name of a `DurableLLM` call of ``method`` (e.g. ``achat``)."""
    return f"dbos_llama.llm.{method}"


def tool_call_name(tool: str) -> str:
    """Checkpoint name of a call of the agent tool named ``tool``."""
    return f"dbos_llama.tool.{tool}"


def send_idempotency_key(invocation_id: str, number: int) -> str:
    """Idempotency key of the ``number``-th event sent by one step invocation."""
    return f"{invocation_id}/send/{number}"


#: The key of the message that wakes a run's mailbox for the events a step's result
#: carried (`_mailbox`): ``{CARRIED_KEY: <upstream invocation ID of that result>}``.
CARRIED_KEY = "dbos_llama.carried"


def carried_idempotency_key(run_id: str, result_invocation: str) -> str:
    """Idempotency key of the wake-up message for one step result's carried events."""
    return f"{run_id}/carried/{result_invocation}"


#: The library's own tables live in the DBOS system database: in schema
#: ``dbos_llama`` on PostgreSQL, prefixed ``dbos_llama_`` on SQLite (`_sysdb`).
TABLE_SCHEMA = "dbos_llama"
#: Where the workers of a `Fleet` hold their leases.
FLEET_TABLE = "workers"
#: Runs released from memory while they wait (`_release`).
RELEASED_TABLE = "released"
