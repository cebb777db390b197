"""`@durable_step` and the deterministic helpers (time, randomness, sleep) for step code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import random as _random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, overload

import wrapt
from dbos import DBOS, StepOptions

from . import _naming, _trace_calls
from ._context import invocation_var
from ._lease import lease
from ._serialization import ensure_serializable

F = TypeVar("F", bound=Callable[..., Any])


def _in_durable_step_code() -> bool:
    """True inside the code of a step invocation (and not inside a DBOS step)."""
    return invocation_var.get() is not None and DBOS.step_status is None


@overload
def durable_step(func: F) -> F: ...


@overload
def durable_step(
    func: None = None,
    *,
    name: str | None = None,
    max_attempts: int = 1,
    interval_seconds: float = 1.0,
    backoff_rate: float = 2.0,
) -> Callable[[F], F]: ...


def durable_step(
    func: F | None = None,
    *,
    name: str | None = None,
    max_attempts: int = 1,
    interval_seconds: float = 1.0,
    backoff_rate: float = 2.0,
) -> F | Callable[[F], F]:
    """Declare a durable external call: its result is checkpointed in the running step.

    Called from a step of a `@durable` workflow, the call runs as a DBOS step of
    that step's invocation: once it has returned, a restarted process gets the
    recorded result instead of calling again. A call in flight when the process
    died runs again (at-least-once for it, exactly-once for completed calls).
    Anywhere else it is a plain call. Works on sync and async functions and
    methods, and keeps their signature.

    Args:
        name: Name recorded for the call (default ``module.QualName``).
        max_attempts: Attempts before the error propagates (1 = no retries).
        interval_seconds: Delay before the first retry.
        backoff_rate: Factor applied to the delay after each retry.

    Example:
        ```python
        @durable_step(max_attempts=3)
        async def call_model(prompt: str) -> str:
            return (await llm.acomplete(prompt)).text
        ```
    """
    if func is None:

        def decorate(f: F) -> F:
            return _declare(f, name, max_attempts, interval_seconds, backoff_rate)

        return decorate
    return _declare(func, name, max_attempts, interval_seconds, backoff_rate)


def _declare(
    func: F, name: str | None, max_attempts: int, interval_seconds: float, backoff_rate: float
) -> F:
    """`durable_step` applied to ``func``."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    step_name = name or f"{func.__module__}.{func.__qualname__}"
    options: dict[str, Any] = {
        "name": step_name,
        "retries_allowed": max_attempts > 1,
        "max_attempts": max_attempts,
        "interval_seconds": interval_seconds,
        "backoff_rate": backoff_rate,
    }
    what = f"The result of durable step {step_name!r}"

    if inspect.iscoroutinefunction(func):

        @wrapt.decorator
        async def async_wrapper(
            wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
        ) -> Any:
            if not _in_durable_step_code():
                return await wrapped(*args, **kwargs)
            return await checkpoint_checked(options, lambda: wrapped(*args, **kwargs), what)

        return cast(F, async_wrapper(func))

    @wrapt.decorator
    def sync_wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not _in_durable_step_code():
            return wrapped(*args, **kwargs)

        def checked() -> Any:
            result = wrapped(*args, **kwargs)
            ensure_serializable(result, what)
            return result

        return _run_sync_step(options, checked)

    return cast(F, sync_wrapper(func))


def _replayed(name: str) -> tuple[bool, Any]:
    invocation = invocation_var.get()
    assert invocation is not None
    return invocation.recorded_result(name)


async def checkpoint_checked(
    options: dict[str, Any], produce: Callable[[], Awaitable[Any]], what: str
) -> Any:
    """Await ``produce()`` as a checkpoint of the running step invocation, after
    checking its result can be stored (`NotSerializableError` naming ``what``)."""

    async def checked() -> Any:
        result = await produce()
        ensure_serializable(result, what)
        return result

    return await _checkpoint(options, checked)


async def _checkpoint(options: dict[str, Any], fn: Callable[[], Any]) -> Any:
    """Run ``fn`` as a DBOS step of the running invocation; in a step re-run after
    ``ctx.wait_for_event``, return (and record) the earlier run's result instead."""
    hit, value = _replayed(options["name"])
    with _trace_calls.call(options["name"]) as traced:
        if hit:
            return await DBOS.run_step_async({"name": options["name"]}, lambda: value)
        generation = _generation()

        async def admitted() -> Any:
            # Inside the DBOS step: its function ID is taken, and a recorded call
            # never gets here. A worker unsure of its lease starts no call.
            await lease.admit(generation)
            traced.ran()
            result = fn()
            return await result if inspect.isawaitable(result) else result

        return await DBOS.run_step_async(cast(StepOptions, options), admitted)


def _generation() -> int:
    invocation = invocation_var.get()
    assert invocation is not None
    return invocation.generation


def _run_sync_step(options: dict[str, Any], fn: Callable[[], Any]) -> Any:
    with _trace_calls.call(options["name"]) as traced:
        return _run_sync_step_traced(options, fn, traced)


def _run_sync_step_traced(
    options: dict[str, Any], fn: Callable[[], Any], traced: _trace_calls.Call
) -> Any:
    hit, value = _replayed(options["name"])
    if hit:
        options, fn = {"name": options["name"]}, lambda: value
    else:
        generation, call = _generation(), fn

        def admitted() -> Any:
            lease.admit_blocking(generation)
            traced.ran()
            return call()

        fn = admitted
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return DBOS.run_step(cast(StepOptions, options), fn)
    # A sync call from async step code: DBOS's sync API refuses a running loop, so
    # run it in a helper thread with this context (the step's DBOS context) and
    # block, as the plain sync call would have.
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        step_options = cast(StepOptions, options)
        return pool.submit(ctx.run, lambda: DBOS.run_step(step_options, fn)).result()


async def now() -> float:
    """Current time (seconds since the epoch), recorded once per call and replayed.

    Example: ``deadline = await now() + 3600``.
    """
    if not _in_durable_step_code():
        return time.time()
    return cast(float, await _checkpoint({"name": _naming.NOW_STEP}, time.time))


async def random() -> float:
    """A random float in [0, 1), recorded once per call and replayed after a crash."""
    if not _in_durable_step_code():
        return _random.random()
    return cast(float, await _checkpoint({"name": _naming.RANDOM_STEP}, _random.random))


async def uuid4() -> str:
    """A random UUID string, recorded once per call and replayed after a crash."""

    def make() -> str:
        return str(uuid.uuid4())

    if not _in_durable_step_code():
        return make()
    return cast(str, await _checkpoint({"name": _naming.UUID4_STEP}, make))


async def sleep(seconds: float) -> None:
    """Durable sleep: the wake-up time is recorded, so after a restart the step
    sleeps only what remains (an hour's sleep that crashed after ten minutes
    sleeps fifty more).

    In a class with ``@durable(idle_release=...)``, a sleep longer than that threshold
    in the run's only running step releases the run from memory until it ends.

    Example: ``await sleep(3600)``.
    """
    if not _in_durable_step_code():
        await asyncio.sleep(seconds)
        return
    invocation = invocation_var.get()
    hook = invocation.on_sleep if invocation is not None else None
    ended = hook(seconds) if hook is not None else None
    try:
        await DBOS.sleep_async(seconds)
    finally:
        if ended is not None:
            ended()
