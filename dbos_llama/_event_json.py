"""Turning JSON into an event, for senders without the workflow's code (the CLI)."""

from __future__ import annotations

import importlib
import json
from typing import Any

from pydantic import ValidationError
from workflows.events import Event

from .errors import EventDecodeError

#: Short names accepted for the event types of ``workflows.events``.
_BUILTIN_MODULE = "workflows.events"


def resolve_event_type(type_name: str) -> type[Event]:
    """The `Event` subclass named ``module.ClassName`` (or a ``workflows.events``
    class by its bare name, e.g. ``HumanResponseEvent``)."""
    module_name, _, class_name = type_name.rpartition(".")
    if not module_name:
        module_name = _BUILTIN_MODULE
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise EventDecodeError(
            f"Cannot import module {module_name!r} for event type {type_name!r} ({error}). "
            "Run from the project directory or set PYTHONPATH so the module is importable."
        ) from error
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        raise EventDecodeError(
            f"{type_name!r} is not an Event class. Give the event's class as "
            "module.ClassName, e.g. workflows.events.HumanResponseEvent."
        )
    return cls


def event_from_json(payload: str | dict[str, Any], type_name: str | None = None) -> Event:
    """Build an event from JSON: ``{"type": "module.ClassName", "data": {...}}``, or
    the ``data`` object alone with ``type_name`` given. The data is validated by the
    event class (pydantic).

    Example:
        ```python
        event_from_json('{"type": "HumanResponseEvent", "data": {"response": "yes"}}')
        ```
    """
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as error:
            raise EventDecodeError(f"The event is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise EventDecodeError(
            'An event is a JSON object: {"type": "module.ClassName", "data": {...}}.'
        )
    data: Any = payload
    if type_name is None:
        if "type" not in payload:
            raise EventDecodeError(
                'The event JSON names no type: give {"type": "module.ClassName", '
                '"data": {...}} or pass the type separately (--type module.ClassName).'
            )
        type_name = str(payload["type"])
        data = payload.get("data", {})
    cls = resolve_event_type(type_name)
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise EventDecodeError(f"The data does not make a valid {type_name}: {error}") from error
