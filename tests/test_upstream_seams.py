"""The private upstream names in `dbos_llama._upstream`: each fails loudly here when a
release of llama-index-workflows or DBOS changes it (instead of silently at runtime)."""

from __future__ import annotations

import typing

from dbos import DBOS
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent
from workflows.runtime.types.results import AddWaiter
from workflows.runtime.types.ticks import TickAddEvent, TickStepResult

from dbos_llama import JsonDataSerializer
from dbos_llama import _upstream as up
from tests.conftest import dbos_config


class Asked(Event):
    text: str


class _Plain(Workflow):
    @step
    async def first(self, ctx: Context, ev: StartEvent) -> Asked:
        return Asked(text="q")

    @step
    async def second(self, ev: Asked) -> StopEvent:
        return StopEvent(result=ev.text)


def test_class_step_names_and_accepted_events() -> None:
    assert up.class_step_names(_Plain) == ["first", "second"]
    accepted = up.class_accepted_events(_Plain)
    assert StartEvent in accepted and Asked in accepted


def test_step_source_is_the_step_code() -> None:
    assert "return Asked(text=" in up.step_source(_Plain, "first")


def test_tick_types_include_the_ticks_the_mailbox_takes() -> None:
    assert TickAddEvent in up.TICK_TYPES and TickStepResult in up.TICK_TYPES
    assert len(up.TICK_TYPES) == len(typing.get_args(typing.get_args(up.WorkflowTick)[0]))


def test_awaited_event_types_read_add_waiter() -> None:
    waiter = AddWaiter(waiter_id="w", requirements={}, timeout=None, event_type=Asked)
    assert up.awaited_event_types([waiter]) == [Asked]


def test_step_functions_of_a_class_are_copied() -> None:
    class Target(Workflow):
        pass

    up.copy_step_functions(_Plain, Target)
    assert Target._step_functions == _Plain._step_functions


def test_dbos_serializer_is_found(tmp_path) -> None:
    serializer = JsonDataSerializer()
    DBOS(config=dbos_config(f"sqlite:///{tmp_path / 'db.sqlite'}", serializer=serializer))
    try:
        assert up.dbos_serializer() is serializer
    finally:
        DBOS.destroy()
