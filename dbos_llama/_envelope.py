"""Events from outside a run: the JSON envelope senders write, and its checks on receipt.

A sender outside the run (`DurableClient.send_event`, ``handler.send_event``, the CLI
``runs send``) writes the event to the run's mailbox as a JSON object stored with
DBOS's portable JSON serialization, never as a pickle::

    {"dbos_llama": 1, "type": "module.ClassName", "data": {...}, "step": null}

The run accepts it only if ``type`` names an event class its workflow declares (an
event some step accepts, or a subclass of one, as already imported by the worker);
the data is then validated by that class (pydantic ``model_validate``). Nothing is
imported or executed because of what an envelope says.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from workflows.events import Event, StartEvent, StopEvent
from workflows.runtime.types.step_id import StepId
from workflows.runtime.types.ticks import TickAddEvent

from .errors import NotSerializableError, RejectedEventError

#: Marker key (and format version) of an envelope.
ENVELOPE_KEY = "dbos_llama"
ENVELOPE_VERSION = 1


def type_name(cls: type) -> str:
    """``module.QualName`` of a class, as envelopes name event types."""
    return f"{cls.__module__}.{cls.__qualname__}"


def encode(event: Event, step: str | None = None) -> dict[str, Any]:
    """The JSON envelope carrying ``event`` (optionally for one step) to a run.

    Raises `NotSerializableError` if the event's data is not JSON, or does not
    validate back into the same event.
    """
    what = f"Event {type(event).__name__}"
    try:
        data = event.model_dump(mode="json")
        json.dumps(data)
        same = type(event).model_validate(data) == event
    except Exception as error:
        raise NotSerializableError(
            f"{what} cannot be sent to a run as JSON: {type(error).__name__}: {error}. "
            "Events sent from outside a run travel as JSON: keep their fields to JSON "
            "data (str, numbers, bools, lists, dicts, nested pydantic models)."
        ) from error
    if not same:
        raise NotSerializableError(
            f"{what} does not survive a JSON round trip (model_dump / model_validate "
            "gives a different event). Events sent from outside a run travel as JSON: "
            "keep their fields to JSON data."
        )
    return {
        ENVELOPE_KEY: ENVELOPE_VERSION,
        "type": type_name(type(event)),
        "data": data,
        "step": step,
    }


def is_envelope(message: Any) -> bool:
    return isinstance(message, dict) and ENVELOPE_KEY in message


def declared_types(accepted: list[type[Any]]) -> dict[str, type[Event]]:
    """Event classes a run takes from outside, by name: the accepted events of its
    steps and their subclasses already imported in this process."""
    found: dict[str, type[Event]] = {}
    todo = [t for t in accepted if isinstance(t, type) and issubclass(t, Event)]
    while todo:
        cls = todo.pop()
        name = type_name(cls)
        if name not in found:
            found[name] = cls
            todo.extend(cls.__subclasses__())
    # Starting and ending a run are the run's own business, never an outside sender's.
    return {n: c for n, c in found.items() if not issubclass(c, (StartEvent, StopEvent))}


def decode(message: Any, accepted: list[type[Any]], run_id: str) -> TickAddEvent:
    """The event an outside message delivers, or `RejectedEventError` saying why not."""
    if not is_envelope(message):
        raise RejectedEventError(
            f"Run {run_id!r} received a message that is not a dbos_llama event envelope "
            f"(a {type(message).__name__}); it was dropped."
        )
    if message.get(ENVELOPE_KEY) is None:
        raise RejectedEventError(
            f"Run {run_id!r} received a message ({message.get('type')}) that is neither "
            "a tick of its own steps nor a dbos_llama event envelope; it was dropped."
        )
    if message.get(ENVELOPE_KEY) != ENVELOPE_VERSION:
        raise RejectedEventError(
            f"Run {run_id!r} received an event envelope of unknown format "
            f"{message.get(ENVELOPE_KEY)!r}; it was dropped."
        )
    name = message.get("type")
    known = declared_types(accepted)
    cls = known.get(name) if isinstance(name, str) else None
    if cls is None:
        raise RejectedEventError(
            f"Run {run_id!r} received an event of type {name!r}, which no step of its "
            f"workflow accepts (it accepts: {', '.join(sorted(known)) or 'nothing'}); "
            "it was dropped."
        )
    step = message.get("step")
    if step is not None and (not isinstance(step, str) or not step):
        raise RejectedEventError(
            f"Run {run_id!r} received an event for step {step!r}, which is not a step "
            "name; it was dropped."
        )
    try:
        event = cls.model_validate(message.get("data", {}))
        step_id = StepId.from_str(step) if step is not None else None
    except (ValidationError, ValueError) as error:
        raise RejectedEventError(
            f"Run {run_id!r} received {name} data that does not validate: {error}; it was dropped."
        ) from error
    return TickAddEvent(event=event, step_id=step_id)
