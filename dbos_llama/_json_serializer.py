"""`JsonDataSerializer`: a DBOS serializer that stores all run data as JSON, never pickles.

Put it in the DBOS config of every process of the deployment (workers, submitters,
`DurableClient(..., serializer=...)`) to store a run's inputs, results, step
outputs, messages, stream events and errors as tagged JSON::

    DBOS(config={..., "serializer": JsonDataSerializer()})

Values are plain JSON data, pydantic models (events, ticks), dataclasses, enums,
tuples, sets, bytes, datetimes, classes and exceptions. A value names its class as
``module.QualName``; reading it back only looks the class up among modules this
process has already imported (nothing is imported because a row says so) and builds
the object without calling its constructor (``model_construct`` / ``__new__``). A row
that names anything else cannot be read (`TypeError`).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import sys
from datetime import date, datetime, timedelta
from typing import Any

from dbos import Serializer
from pydantic import BaseModel

from ._lookup import imported_class

#: The key that marks a tagged (non-plain) JSON value.
TAG = "__dbos_llama__"


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _class(name: str) -> type:
    """The class ``module:QualName`` from an already imported module, never importing."""
    module_name, _, qualname = name.partition(":")
    if module_name not in sys.modules:
        raise TypeError(
            f"Cannot read a {qualname} value: module {module_name!r} is not imported in "
            "this process (JSON serialization never imports a module named by stored data)."
        )
    found = imported_class(module_name, qualname)
    if found is None:
        raise TypeError(f"Cannot read a value of {name!r}: it is not a class here.")
    return found


def encode(value: Any) -> Any:
    """``value`` as JSON-compatible data with tags for what JSON lacks."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):
            return {TAG: "enum", "cls": _class_name(type(value)), "value": encode(value.value)}
        return value
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and TAG not in value:
            return {k: encode(v) for k, v in value.items()}
        return {TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {TAG: type(value).__name__, "items": [encode(v) for v in value]}
    if isinstance(value, bytes):
        return {TAG: "bytes", "b64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return {TAG: "datetime", "iso": value.isoformat()}
    if isinstance(value, date):
        return {TAG: "date", "iso": value.isoformat()}
    if isinstance(value, timedelta):
        return {TAG: "timedelta", "seconds": value.total_seconds()}
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "cls": _class_name(type(value)), "value": encode(value.value)}
    if isinstance(value, type):
        return {TAG: "type", "cls": _class_name(value)}
    if isinstance(value, BaseModel):
        fields = {name: encode(getattr(value, name)) for name in type(value).model_fields}
        return {
            TAG: "model",
            "cls": _class_name(type(value)),
            "fields": fields,
            "private": encode(dict(value.__pydantic_private__ or {})),
            "extra": encode(dict(value.__pydantic_extra__ or {})),
        }
    if dataclasses.is_dataclass(value):
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {TAG: "dataclass", "cls": _class_name(type(value)), "fields": fields}
    if isinstance(value, BaseException):
        # An error is stored as well as it can be: arguments that are not data as
        # text, attributes that are not data left out.
        attrs = {}
        for key, item in vars(value).items():
            try:
                attrs[key] = encode(item)
            except TypeError:
                continue
        return {
            TAG: "exception",
            "cls": _class_name(type(value)),
            "args": [_encode_or_text(a) for a in value.args],
            "attrs": attrs,
        }
    raise TypeError(
        f"a {type(value).__module__}.{type(value).__qualname__} cannot be stored as JSON"
    )


def _encode_or_text(value: Any) -> Any:
    try:
        return encode(value)
    except TypeError:
        return str(value)


def decode(data: Any) -> Any:
    """The value `encode` made ``data`` from."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(TAG)
    if tag is None:
        return {k: decode(v) for k, v in data.items()}
    if tag == "dict":
        return {decode(k): decode(v) for k, v in data["items"]}
    if tag in ("tuple", "set", "frozenset"):
        items = [decode(v) for v in data["items"]]
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "bytes":
        return base64.b64decode(data["b64"])
    if tag == "datetime":
        return datetime.fromisoformat(data["iso"])
    if tag == "date":
        return date.fromisoformat(data["iso"])
    if tag == "timedelta":
        return timedelta(seconds=data["seconds"])
    cls = _class(data["cls"])
    if tag == "type":
        return cls
    if tag == "enum" and issubclass(cls, enum.Enum):
        return cls(decode(data["value"]))
    if tag == "model" and issubclass(cls, BaseModel):
        fields = {k: decode(v) for k, v in data["fields"].items()}
        model = cls.model_construct(**fields)
        for slot in ("private", "extra"):
            stored = decode(data.get(slot) or {})
            if stored:
                object.__setattr__(model, f"__pydantic_{slot}__", stored)
        return model
    if tag == "dataclass" and dataclasses.is_dataclass(cls):
        obj = object.__new__(cls)
        declared = {f.name for f in dataclasses.fields(cls)}
        for key, item in data["fields"].items():
            if key in declared:
                object.__setattr__(obj, key, decode(item))
        return obj
    if tag == "exception" and issubclass(cls, BaseException):
        args = tuple(decode(data["args"]))
        exc = cls.__new__(cls, *args)
        exc.args = args
        for key, item in data["attrs"].items():
            if not key.startswith("__"):
                object.__setattr__(exc, key, decode(item))
        return exc
    raise TypeError(f"Cannot read a stored {tag!r} value of {data['cls']!r}.")


class JsonDataSerializer(Serializer):
    """A DBOS `Serializer` storing dbos_llama's run data as tagged JSON (no pickle).

    Example:
        ```python
        DBOS(config={"name": "orders", "system_database_url": url,
                     "serializer": JsonDataSerializer()})
        async with DurableClient(url, serializer=JsonDataSerializer()) as client: ...
        ```
    """

    def name(self) -> str:
        return "dbos_llama_json"

    def serialize(self, data: Any) -> str:
        return json.dumps(encode(data), separators=(",", ":"))

    def deserialize(self, serialized_data: str) -> Any:
        return decode(json.loads(serialized_data))
