"""`@durable` and `@durable_step` at definition time: names, errors, signatures."""

from __future__ import annotations

import inspect

import pytest
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

from dbos_llama import (
    DuplicateNameError,
    NotAWorkflowError,
    UnstableNameError,
    dbos_runtime,
    durable,
    durable_step,
)
from dbos_llama._naming import run_workflow_name, step_workflow_name
from dbos_llama._registry import binding_of, lookup
from dbos_llama._upstream import STEP_WORKER_PARAMETERS, upstream_step_worker_parameters


class Plain(Workflow):
    """A plain workflow, as a user (or a library) wrote it."""

    def __init__(self, greeting: str = "hi", **kwargs) -> None:
        super().__init__(**kwargs)
        self.greeting = greeting

    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=self.greeting)


@durable
class Bare(Workflow):
    @step
    async def a(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="a")


@durable(name="tests.named", version="7")
class Named(Workflow):
    @step
    async def b(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="b")


DurablePlain = durable(Plain, name="tests.durable-plain")


class SubOfBare(Bare):
    @step
    async def a(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="sub")


def test_bare_decorator_registers_run_and_steps_at_definition() -> None:
    binding = binding_of(Bare)
    assert binding.name == f"{__name__}.Bare"
    assert lookup(binding.name) is binding
    assert binding.run_function is not None
    assert set(binding.step_functions) == {"a"}
    assert run_workflow_name(binding.name) == f"llama:{__name__}.Bare"
    assert step_workflow_name(binding.name, "a") == f"llama:{__name__}.Bare/a"


def test_name_and_version_arguments() -> None:
    binding = binding_of(Named)
    assert (binding.name, binding.version) == ("tests.named", "7")


def test_default_version_follows_step_source() -> None:
    assert len(binding_of(Bare).version) == 16
    assert binding_of(Bare).version != binding_of(SubOfBare).version


def test_instances_use_the_dbos_runtime_without_runtime_argument() -> None:
    assert Bare().runtime is dbos_runtime
    assert DurablePlain(greeting="yo").runtime is dbos_runtime


def test_durable_as_function_leaves_the_original_class_alone() -> None:
    assert issubclass(DurablePlain, Plain)
    assert DurablePlain.__name__ == "Plain"
    assert Plain.__dict__.get("__dbos_llama_binding__") is None
    assert Plain().runtime is not dbos_runtime
    assert DurablePlain(greeting="yo").greeting == "yo"
    assert inspect.signature(DurablePlain) == inspect.signature(Plain)


def test_subclass_of_durable_class_is_registered_under_its_own_name() -> None:
    assert binding_of(SubOfBare).name == f"{__name__}.SubOfBare"
    assert SubOfBare().runtime is dbos_runtime


def test_durable_is_idempotent() -> None:
    assert durable(Bare) is Bare
    assert durable(Named, name="tests.named") is Named


def test_local_class_without_name_is_rejected() -> None:
    with pytest.raises(UnstableNameError, match=r"name="):

        @durable
        class Local(Workflow):
            @step
            async def s(self, ev: StartEvent) -> StopEvent:
                return StopEvent()


def test_local_class_with_name_is_accepted() -> None:
    @durable(name="tests.local-with-name")
    class Local(Workflow):
        @step
        async def s(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    assert binding_of(Local).name == "tests.local-with-name"


def test_duplicate_name_is_rejected() -> None:
    with pytest.raises(DuplicateNameError, match="tests.named"):
        durable(Plain, name="tests.named")


def test_class_name_colliding_with_a_step_name_is_rejected() -> None:
    # Named's step "b" is registered as llama:tests.named/b.
    with pytest.raises(DuplicateNameError, match="llama:tests.named/b"):
        durable(Plain, name="tests.named/b")


@pytest.mark.parametrize("target", [int, object(), lambda: None, Plain(greeting="x")])
def test_durable_on_a_non_workflow_is_rejected(target) -> None:
    with pytest.raises(NotAWorkflowError, match="Workflow"):
        durable(target)


@durable_step
async def async_call(x: int, *, scale: int = 2) -> int:
    """Doc of async_call."""
    return x * scale


@durable_step(name="sync-call", max_attempts=3)
def sync_call(x: int) -> int:
    return x + 1


class Service:
    @durable_step
    async def method(self, x: int) -> int:
        return x - 1


async def test_durable_step_keeps_signature_and_is_a_plain_call_outside_runs() -> None:
    assert inspect.iscoroutinefunction(async_call)
    assert not inspect.iscoroutinefunction(sync_call)
    assert str(inspect.signature(async_call)) == "(x: 'int', *, scale: 'int' = 2) -> 'int'"
    assert async_call.__doc__ == "Doc of async_call."
    assert await async_call(3) == 6
    assert sync_call(1) == 2
    assert await Service().method(5) == 4


def test_durable_step_rejects_bad_attempts() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        durable_step(max_attempts=0)(sync_call)


def test_upstream_step_worker_signature_is_unchanged() -> None:
    # runner.py calls step workers with these keywords; our wrapper keeps them.
    assert upstream_step_worker_parameters() == STEP_WORKER_PARAMETERS
    caller = binding_of(Bare).step_caller("a")
    assert tuple(inspect.signature(caller).parameters) == STEP_WORKER_PARAMETERS
