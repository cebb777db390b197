"""Handing a worker's unfinished runs and step invocations back to their queues, and
a cancelled run's step invocations back to work."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from dbos import DBOSClient

from . import _naming
from ._records import CANCELLED, PENDING


def hand_over(client: DBOSClient, executor_id: str, *, keep: Collection[str] = ()) -> list[str]:
    """Put every PENDING dbos_llama workflow of ``executor_id`` back on its queue
    (runs submitted through a queue keep it and its limits; the others go to DBOS's
    internal queue), so live workers resume them from their checkpoints. Workflows
    whose IDs are in ``keep`` are left alone. Returns the run IDs handed over.

    Through DBOS's own resume: it hands the workflow a new owner token, so an
    execution that is still going on elsewhere records nothing more.
    """
    pending = client.list_workflows(
        status=PENDING, executor_id=executor_id, load_input=False, load_output=False
    )
    ours = [
        s
        for s in pending
        if (s.name or "").startswith(_naming.NAME_PREFIX) and s.workflow_id not in keep
    ]
    by_queue: dict[str | None, list[str]] = {}
    for status in ours:
        by_queue.setdefault(status.queue_name, []).append(status.workflow_id)
    for queue_name, workflow_ids in by_queue.items():
        client.resume_workflows(workflow_ids, queue_name=queue_name)
    return sorted(
        s.workflow_id for s in ours if _naming.parse_run_workflow_name(s.name or "") is not None
    )


def resume_cancelled_steps(api: Any, run_id: str) -> list[str]:
    """Resume the run's CANCELLED step invocations (DBOS's internal queue: any worker
    with the code runs them), so that the run's replay finds them running again: a
    cancel stops them with the run, and DBOS's resume of the run alone would leave
    its replay awaiting a cancelled one. ``api`` is `DBOS` or a `DBOSClient`.
    Returns their IDs."""
    cancelled = api.list_workflows(
        parent_workflow_id=run_id, status=CANCELLED, load_input=False, load_output=False
    )
    steps = [status.workflow_id for status in cancelled]
    if steps:
        api.resume_workflows(steps)
    return steps
