"""The JSON storage option: a run's data stored with `JsonDataSerializer`, no pickles."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel
from workflows.events import StopEvent

from dbos_llama import JsonDataSerializer
from dbos_llama._json_serializer import decode, encode
from dbos_llama.errors import StepFailedError
from tests.fuzz_flow import ItemDone
from tests.test_fuzz_crashes import check_against, drive

PROGRAM = [
    {"kind": "chain", "calls": 2, "edit": True, "stream": 1},
    {"kind": "fan", "items": 2, "workers": 3, "calls": 1},
    {"kind": "ask"},
]


def test_a_run_stored_as_json_survives_a_kill(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        pickled = pool.submit(drive, tmp_path, "pickled", PROGRAM, [])
        stored_as_json = pool.submit(drive, tmp_path, "json", PROGRAM, [9], json_mode=True)
        reference, crashed = pickled.result(), stored_as_json.result()
    assert crashed.kills == [9]
    check_against(reference, crashed)
    # Nothing of the JSON run is a pickle: inputs, outputs, steps, messages, stream.
    with sqlite3.connect(tmp_path / "json.sqlite") as conn:
        formats = set()
        for table in ("workflow_status", "operation_outputs", "notifications", "streams"):
            formats |= {r[0] for r in conn.execute(f"SELECT DISTINCT serialization FROM {table}")}
    assert formats - {None} <= {"dbos_llama_json", "portable_json"}, formats


class Inner(BaseModel):
    when: tuple[int, ...]


def test_values_round_trip_and_foreign_classes_are_refused() -> None:
    serializer = JsonDataSerializer()
    values = [
        {"a": (1, 2), 3: {b"x"}, "m": Inner(when=(1,))},
        StopEvent(result={"k": [1.5, None]}),
        ItemDone(k=1, out="<x>", extra_field="kept"),
        StepFailedError("m.E", "boom", "tb"),
        ValueError("bad", 3),
    ]
    for value in values:
        back = serializer.deserialize(serializer.serialize(value))
        if isinstance(value, BaseException):
            assert type(back) is type(value) and back.args == value.args
        else:
            assert back == value
    assert decode(encode(ItemDone(k=2, out="y"))).out == "y"
    # A row naming a class of a module this process never imported is not read,
    # and the module is not imported because of it.
    crafted = '{"__dbos_llama__": "model", "cls": "tests.untrusted_marker:Boom", "fields": {}}'
    with pytest.raises(TypeError, match="not imported"):
        serializer.deserialize(crafted)
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        serializer.serialize(object())


def test_stored_class_names_run_no_module_code() -> None:
    import dbos_llama
    from dbos_llama._state import ImportedClassesSerializer

    # A name behind a module's lazy __getattr__ is not resolved (nothing is imported).
    with pytest.raises(TypeError):
        decode({"__dbos_llama__": "model", "cls": "dbos_llama:DurableLLM", "fields": {}})
    assert "DurableLLM" not in vars(dbos_llama)
    # State rebuilt from stored JSON resolves only classes of imported modules.
    with pytest.raises(ValueError, match="not imported"):
        ImportedClassesSerializer().resolve_class("some_module_never_imported.Evil")
    assert ImportedClassesSerializer().resolve_class("tests.fuzz_flow.ItemDone") is ItemDone
