"""Releasing a run while its only running step is in a long durable sleep."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable
from typing import Any

from dbos import DBOS

from ._context import outside_workflow
from ._records import step_rows
from ._release_run import Released, release
from ._run_state import RunState

#: The name DBOS records a durable sleep under (`dbos_llama.sleep` is one).
_SLEEP_RECORD = "DBOS.sleep"


async def wait_first(
    run: RunState,
    worker: asyncio.Task[Any],
    awaited: list[asyncio.Future[Any]],
    timeout: float | None,
    may_release: bool,
) -> set[asyncio.Future[Any]]:
    """`asyncio.wait` for the first of ``awaited`` (up to ``timeout`` seconds).

    Meanwhile, if ``may_release`` (the run's class has ``idle_release`` and the wait
    is live), a durable sleep of ``worker``'s step invocation that lasts past the
    idle threshold releases the run (`_release_run.release`, which raises
    `Released`) until the sleep ends: the sleeping invocation is cancelled with the
    run, and resumed when the run is woken (`_release_run.take_up`). Nothing is
    recorded: a replay waits for the same things again."""
    idle = run.idle_release
    invocation_id = run.task_invocations.get(worker)
    if not may_release or idle is None or invocation_id is None:
        return await _first(awaited, timeout)
    loop = asyncio.get_running_loop()
    end = None if timeout is None else loop.time() + timeout
    if run.sleep_began is None:
        run.sleep_began = asyncio.Event()
    while True:
        left = None if end is None else max(0.0, end - loop.time())
        if invocation_id in run.sleeping:
            # Asleep: idle unless something comes within the threshold.
            window = idle if left is None else min(idle, left)
            done = await _first(awaited, window)
            if done or (end is not None and loop.time() >= end):
                return done
            if invocation_id in run.sleeping:
                deadline_in = None if end is None else end - loop.time()
                await _release_asleep(run, worker, invocation_id, deadline_in)
            continue  # not released (its sleep ends soon, or not recorded): watch on
        run.sleep_began.clear()
        began = asyncio.ensure_future(run.sleep_began.wait())
        try:
            done = await _first([*awaited, began], left)
        finally:
            began.cancel()
        done.discard(began)
        if done or (end is not None and loop.time() >= end):
            return done


async def _first(
    awaited: list[asyncio.Future[Any]], timeout: float | None
) -> set[asyncio.Future[Any]]:
    done: set[asyncio.Future[Any]]
    done, _ = await asyncio.wait(awaited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    return done


async def _release_asleep(
    run: RunState, worker: asyncio.Task[Any], invocation_id: str, deadline_in: float | None
) -> None:
    """Release the run until the sleep of ``invocation_id`` ends (or the run's
    deadline, if sooner); returns if too little of either is left. Released, the
    step's code and the worker task awaiting it end here (cancelled): the control
    loop may not know the worker yet (started in the same wait)."""
    idle = run.idle_release
    assert idle is not None
    if deadline_in is not None and deadline_in <= idle:
        return  # its deadline comes first
    steps = await outside_workflow(functools.partial(DBOS.list_workflow_steps, invocation_id))
    left = sleep_left(step_rows(steps), time.time())
    if left is None or left <= idle:
        return
    wake_in = left if deadline_in is None else min(left, deadline_in)
    code = run.sleeping.get(invocation_id)
    try:
        await release(run, wake_in, sleeping=invocation_id)
    except Released:
        for task in (code, worker):
            if task is not None:
                task.cancel()
        raise


def sleep_left(rows: Iterable[Any], now: float) -> float | None:
    """Seconds left of the last durable sleep among a step invocation's recorded
    operations (DBOS records its end time when it begins); None if there is none."""
    sleeps = [row for row in rows if row.name == _SLEEP_RECORD and row.output is not None]
    if not sleeps:
        return None
    last = max(sleeps, key=lambda row: row.function_id)
    return float(last.output) - now
