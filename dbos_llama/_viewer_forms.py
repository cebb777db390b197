"""The viewer's answer form: fields generated from an event class's JSON schema, and
the posted fields read back into a validated event (nothing is sent if they do not
validate)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Any

from pydantic import ValidationError
from workflows.events import Event, HumanResponseEvent

from ._event_json import resolve_event_type
from ._lookup import imported_class
from .errors import DurableError, EventDecodeError

#: The event a human answers an ``InputRequiredEvent`` with, by default.
DEFAULT_ANSWER = "workflows.events.HumanResponseEvent"
#: Fields of `Event` itself, never asked for.
_HIDDEN = {"_data", "_cancel_flag", "_retry_flag"}
#: The form's input for fields the schema does not declare (a JSON object): events
#: keep undeclared fields.
RAW_FIELD = "__json__"


class AnswerInvalidError(DurableError):
    """The answer does not make a valid event: the form shows why; nothing was sent."""


@dataclass
class AnswerForm:
    """The form for one event class, with the values and error of a rejected post."""

    type_name: str
    cls: type[Event] | None
    values: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def schema(self) -> dict[str, Any]:
        return self.cls.model_json_schema() if self.cls is not None else {}


def answer_form(type_name: str | None, may_import: bool = False) -> AnswerForm:
    """The form for ``type_name`` (default `DEFAULT_ANSWER`). Only with ``may_import``
    (a CSRF-checked POST) is its module imported, as the CLI's ``runs send`` does; a
    page asked for with a GET looks among the modules already imported."""
    name = type_name or DEFAULT_ANSWER
    module, _, qualname = name.rpartition(".")
    if not may_import:
        found = imported_class(module or "workflows.events", qualname)
        if found is not None and issubclass(found, Event):
            return AnswerForm(name, found)
        return AnswerForm(
            name,
            None,
            error=f"{name} is not imported in the viewer's process: press Load form to "
            "import its module (from the directory the viewer runs in, or PYTHONPATH).",
        )
    try:
        return AnswerForm(name, resolve_event_type(name))
    except EventDecodeError as error:
        return AnswerForm(name, None, error=str(error))


def _properties(form: AnswerForm) -> dict[str, dict[str, Any]]:
    props = dict(form.schema.get("properties", {}))
    if form.cls is not None and issubclass(form.cls, HumanResponseEvent):
        # Its ``response`` is a free-form field (kept in ``_data``), not in the schema.
        props.setdefault("response", {"title": "response", "type": "string"})
    return {k: v for k, v in props.items() if k not in _HIDDEN and isinstance(v, dict)}


def _kind(spec: dict[str, Any]) -> str:
    kind = spec.get("type")
    if kind is None:  # Optional[X] is anyOf [X, null]
        kinds = [s.get("type") for s in spec.get("anyOf", []) if isinstance(s, dict)]
        kind = next((k for k in kinds if k != "null"), None)
    return kind if kind in ("string", "integer", "number", "boolean") else "json"


def render_form(form: AnswerForm, action: str, csrf: str) -> str:
    """The form's HTML: one input per property of the schema (JSON for nested ones)."""
    required = set(form.schema.get("required", []))
    rows = []
    for name, spec in _properties(form).items():
        kind = _kind(spec)
        value = form.values.get(name, "")
        if value == "" and "default" in spec and spec["default"] is not None:
            value = spec["default"] if kind != "json" else json.dumps(spec["default"])
        star = " *" if name in required else ""
        label = escape(str(spec.get("title", name))) + star
        if kind == "boolean":
            checked = " checked" if str(value).lower() in ("true", "on", "1") else ""
            control = f'<input type="checkbox" name="{escape(name)}"{checked}>'
        elif kind == "json":
            control = (
                f'<textarea name="{escape(name)}" rows="3" placeholder="JSON">'
                f"{escape(str(value))}</textarea>"
            )
        else:
            html_type = "number" if kind in ("integer", "number") else "text"
            step = ' step="any"' if kind == "number" else ""
            control = (
                f'<input type="{html_type}"{step} name="{escape(name)}" '
                f'id="field-{escape(name)}" value="{escape(str(value))}">'
            )
        rows.append(f"<label>{label} <small>({kind})</small> {control}</label>")
    value = form.values.get(RAW_FIELD, "")
    rows.append(
        f'<label>other fields <small>(JSON object, optional)</small><textarea name="{RAW_FIELD}" '
        f'rows="2" placeholder="{{}}">{escape(value)}</textarea></label>'
    )
    error = f'<p class="error" role="alert">{escape(form.error)}</p>' if form.error else ""
    return (
        f'<form method="post" action="{escape(action)}" class="answer">{error}'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<label>event type <input name="event_type" value="{escape(form.type_name)}"></label>'
        + "".join(rows)
        + '<button type="submit" name="do" value="answer">Send answer</button> '
        '<button type="submit" name="do" value="load" id="load-form">Load form</button></form>'
    )


def read_answer(form: AnswerForm, posted: dict[str, str]) -> Event:
    """The event the posted fields make, validated by its class; `AnswerInvalidError`
    (with the fields kept in ``form.values`` for the re-rendered form) if they do not."""
    form.values = dict(posted)
    if form.cls is None:
        raise AnswerInvalidError(
            form.error or f"The event type {form.type_name!r} cannot be imported here."
        )
    data: dict[str, Any] = {}
    extra = posted.get(RAW_FIELD, "").strip()
    if extra:
        more = _convert("other fields", "json", extra)
        if not isinstance(more, dict):
            raise AnswerInvalidError('"other fields" must be a JSON object, e.g. {"note": "ok"}.')
        data.update(more)
    for name, spec in _properties(form).items():
        kind = _kind(spec)
        text = posted.get(name)
        if kind == "boolean":
            data[name] = text is not None and text.lower() in ("on", "true", "1")
            continue
        if text is None or text == "":
            continue  # absent: the schema decides whether it is required
        data[name] = _convert(name, kind, text)
    try:
        return form.cls.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in error.errors()
        )
        raise AnswerInvalidError(
            f"The answer is not a valid {form.cls.__name__}: {problems}. Correct it and send again."
        ) from error


def _convert(name: str, kind: str, text: str) -> Any:
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
        if kind == "json":
            return json.loads(text)
    except ValueError as error:
        raise AnswerInvalidError(f"{name}: {text!r} is not a valid {kind} ({error}).") from error
    return text
