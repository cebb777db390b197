"""Starting a run ID that exists (#20): same input attaches, other input is an error,
no input attaches; a run started before ``DBOS.launch()`` says to launch first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

from dbos_llama import (
    RunConflictError,
    RunInputConflictError,
    RunNotFoundError,
    durable,
)
from tests.conftest import ROOT

started: list[object] = []


@durable
class Greet(Workflow):
    @step
    async def greet(self, ev: StartEvent) -> StopEvent:
        started.append(ev.get("names"))
        return StopEvent(result=f"hello {', '.join(ev.get('names', ['nobody']))}")


class OrderStart(StartEvent):
    order: str  # required: run(run_id=...) alone cannot build this event


@durable
class Ship(Workflow):
    @step
    async def ship(self, ev: OrderStart) -> StopEvent:
        return StopEvent(result=f"shipped {ev.order}")


async def test_same_input_returns_the_existing_run(dbos_app: str) -> None:
    started.clear()
    assert await Greet(timeout=None).run(run_id="ref-1", names=["ada"]) == "hello ada"
    assert await Greet(timeout=None).run(run_id="ref-1", names=["ada"]) == "hello ada"
    assert started == [["ada"]]


async def test_other_input_raises_and_says_how_to_attach(dbos_app: str) -> None:
    started.clear()
    assert await Greet(timeout=None).run(run_id="ref-2", names=["ada"]) == "hello ada"
    with pytest.raises(RunInputConflictError) as info:
        await Greet(timeout=None).run(run_id="ref-2", names=["zz"])
    assert isinstance(info.value, RunConflictError)
    message = str(info.value)
    assert "'ref-2'" in message and "ada" in message and "zz" in message
    assert "run(run_id='ref-2') with no start event and no fields" in message
    assert started == [["ada"]]  # nothing ran for the conflicting call


async def test_other_input_while_the_run_is_live_in_this_process(dbos_app: str) -> None:
    started.clear()
    handler = Greet(timeout=None).run(run_id="ref-5", names=["ada"])
    with pytest.raises(RunInputConflictError, match="run\\(run_id='ref-5'\\) with no start"):
        Greet(timeout=None).run(run_id="ref-5", names=["zz"])  # raises at the call
    same = Greet(timeout=None).run(run_id="ref-5", names=["ada"])
    attached = Greet(timeout=None).run(run_id="ref-5")
    assert await handler == await same == await attached == "hello ada"
    assert started == [["ada"]]


async def test_no_input_attaches_to_the_existing_run(dbos_app: str) -> None:
    started.clear()
    assert await Greet(timeout=None).run(run_id="ref-3", names=["ada"]) == "hello ada"
    assert await Greet(timeout=None).run(run_id="ref-3") == "hello ada"
    assert started == [["ada"]]
    # A run that does not exist yet is started by run(run_id=...) when its start
    # event needs no fields (as before).
    assert await Greet(timeout=None).run(run_id="ref-4") == "hello nobody"


async def test_no_input_attaches_even_when_the_start_event_needs_fields(dbos_app: str) -> None:
    assert await Ship(timeout=None).run(run_id="ship-1", order="o-1") == "shipped o-1"
    assert await Ship(timeout=None).run(run_id="ship-1") == "shipped o-1"
    with pytest.raises(RunInputConflictError, match="o-2"):
        await Ship(timeout=None).run(run_id="ship-1", order="o-2")
    with pytest.raises(RunNotFoundError, match="Give the start event's fields"):
        await Ship(timeout=None).run(run_id="ship-none")


BEFORE_LAUNCH = """
import asyncio
from dbos import DBOS
from tests.test_run_ids import Greet
from dbos_llama import DBOSNotLaunchedError

async def main():
    DBOS(config={"name": "early", "system_database_url": "sqlite:///early.sqlite"})
    try:
        await Greet(timeout=None).run(run_id="early-1", names=["ada"])
    except DBOSNotLaunchedError as error:
        print("raised:", error)

asyncio.run(main())
"""


def test_run_before_launch_says_to_launch_first(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BEFORE_LAUNCH],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "raised: Cannot start run 'early-1'" in proc.stdout
    assert "call DBOS.launch() first, inside the running event loop" in proc.stdout
