"""What may cross the DBOS boundary: serializability checks and storable errors."""

from __future__ import annotations

import dataclasses
import pickle
import traceback
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel
from workflows.runtime.types.results import RetryAttempt, StepWorkerFailed, StepWorkerOutput

from ._upstream import dbos_serializer
from .errors import NotSerializableError, StepFailedError

M = TypeVar("M", bound=BaseModel)

#: What deserializing a recorded value raises when the value cannot be read in this
#: process: its class is not importable (pickle: ImportError, AttributeError), not a
#: class here or not readable as stored (`JsonDataSerializer`: TypeError), or its data
#: no longer validates (pydantic's ValidationError is a ValueError).
UNREADABLE_VALUE_ERRORS: tuple[type[Exception], ...] = (
    ImportError,
    AttributeError,
    TypeError,
    ValueError,
    pickle.UnpicklingError,
)


def _fields(value: Any) -> Iterator[tuple[str, Any]]:
    """Named parts of an event or model, to point at the one that fails."""
    data = getattr(value, "__dict__", None)
    if isinstance(data, dict):
        yield from data.items()
    private = getattr(value, "__pydantic_private__", None) or {}
    for key, item in private.items():
        if key == "_data" and isinstance(item, dict):
            yield from item.items()
        else:
            yield key, item


def _active_serializer() -> Any:
    """The serializer of this process's DBOS instance if it is not DBOS's pickle
    default (e.g. `JsonDataSerializer`), else None."""
    serializer = dbos_serializer()
    name = getattr(serializer, "name", None)
    return serializer if name is not None and name() != "py_pickle" else None


def _dumps_ok(value: Any) -> bool:
    serializer = _active_serializer()
    try:
        if serializer is not None:
            serializer.deserialize(serializer.serialize(value))
        else:
            pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True


def _culprit(value: Any, path: str, depth: int = 0) -> str:
    """Dotted path and type of the innermost part of ``value`` that fails to serialize."""
    if depth < 4:
        for name, item in _fields(value):
            if not _dumps_ok(item):
                return _culprit(item, f"{path}.{name}", depth + 1)
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if not _dumps_ok(item):
                    return _culprit(item, f"{path}[{index}]", depth + 1)
        if isinstance(value, dict):
            for key, item in value.items():
                if not _dumps_ok(item):
                    return _culprit(item, f"{path}[{key!r}]", depth + 1)
    return f"{path} (type {type(value).__module__}.{type(value).__qualname__})"


def ensure_serializable(value: Any, what: str) -> None:
    """Raise `NotSerializableError` naming the field of ``value`` that DBOS cannot store.

    ``what`` says where the value comes from, e.g. ``"the start event of Orders"``.
    The check round-trips the value, so a value that pickles but cannot be loaded
    again (an exception with a custom ``__init__``) is caught here too.
    """
    if _dumps_ok(value):
        return
    culprit = _culprit(value, type(value).__name__)
    raise NotSerializableError(
        f"{what} cannot be stored durably: {culprit} cannot be serialized (pickled "
        "and loaded again). Keep events and results to plain data (str, numbers, "
        "lists, dicts, pydantic models defined at module level), and keep clients, "
        "locks and connections in resources or module globals instead."
    )


def storable_exception(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives a round trip, else a `StepFailedError` record of it."""
    if _dumps_ok(exc):
        return exc
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return StepFailedError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), text)


def with_storable_exception(model: M, field: str) -> M:
    """``model`` (a pydantic model) with the exception in ``field`` made storable
    (`storable_exception`): a copy if it had to change, else ``model`` itself."""
    exc = getattr(model, field)
    storable = storable_exception(exc)
    return model if storable is exc else model.model_copy(update={field: storable})


def storable_retry(retry: RetryAttempt) -> RetryAttempt:
    """A retry attempt whose last exception can be recorded."""
    if retry.last_exception is None:
        return retry
    exc = storable_exception(retry.last_exception)
    if exc is retry.last_exception:
        return retry
    assert isinstance(exc, Exception)
    return dataclasses.replace(retry, last_exception=exc)


def storable_outputs(step_name: str, outputs: list[StepWorkerOutput]) -> list[StepWorkerOutput]:
    """The step's outputs, made safe to record: failures as storable exceptions, and
    a result DBOS cannot serialize turned into a clear failure of the step."""
    safe: list[StepWorkerOutput] = []
    for output in outputs:
        if isinstance(output, StepWorkerFailed):
            output = with_storable_exception(output, "exception")
        safe.append(output)
    try:
        ensure_serializable(safe, f"The output of step {step_name!r}")
    except NotSerializableError as whole:
        failure = whole
        # Prefer the precise culprit: the step's own serialization error (e.g. from
        # ctx.send_event), else the event the step returned.
        raised = [
            o.exception
            for o in safe
            if isinstance(o, StepWorkerFailed) and isinstance(o.exception, NotSerializableError)
        ]
        for output in [] if raised else outputs:
            result = getattr(output, "result", None)
            if result is None:
                continue
            try:
                ensure_serializable(
                    result, f"Step {step_name!r} returned {type(result).__name__}, which"
                )
            except NotSerializableError as precise:
                failure = precise
                break
        failed_at = next((o.failed_at for o in safe if isinstance(o, StepWorkerFailed)), 0.0)
        return [StepWorkerFailed(exception=raised[0] if raised else failure, failed_at=failed_at)]
    return safe
