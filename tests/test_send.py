"""The send transaction (`_send.Outbox`) against a release in progress, on real DBOS."""

from __future__ import annotations

import threading
import time

import pytest
from dbos import DBOS, DBOSClient, SetWorkflowID
from workflows.events import HumanResponseEvent

from dbos_llama import _naming, _upstream
from dbos_llama._envelope import encode
from dbos_llama._release import Releases
from dbos_llama._send import Destination, Outbox


@DBOS.workflow(name="test-send-waiter")
async def waiter() -> object:
    return await DBOS.recv_async(_naming.TICK_TOPIC, timeout_seconds=300)


def _status(run_id: str) -> str | None:
    status = DBOS.get_workflow_status(run_id)
    return None if status is None else status.status


@pytest.mark.parametrize("begun", [True, False], ids=["release-begun", "release-not-begun"])
async def test_a_release_in_progress_sees_a_concurrent_send(dbos_app: str, begun: bool) -> None:
    """A send that reads a run while its release is being recorded holds what it read
    until its commit: the releaser's cancel (a status update) and its mark wait for
    it, so the releaser's look for a message (after its mark) finds the message and
    wakes the run, instead of leaving it to the sweep. Without the locks the releaser
    would finish while the send is still uncommitted and find nothing. ``begun``: the
    release row existed when the send read the run, or the releaser writes it after."""
    with SetWorkflowID("send-race"):
        await DBOS.start_workflow_async(waiter)
    releases = Releases(dbos_app, DBOS.resume_workflow, _status)
    client = DBOSClient(system_database_engine=releases.table.engine, lazy=True)
    outbox = Outbox(client, releases)
    releases.table.ensure()
    if begun:
        releases.table.begin("send-race", None, 0.0, "local")

    inside, gate = threading.Event(), threading.Event()
    seen: list[list[Destination | None]] = []

    def hold(destinations: list[Destination | None]) -> None:
        seen.append(destinations)
        inside.set()
        assert gate.wait(30)

    message = encode(HumanResponseEvent(response="yes"))
    sender = threading.Thread(target=outbox.deliver, args=([("send-race", message)], hold))
    sender.start()
    assert inside.wait(30), "the send never reached its check"
    finished_at: list[float] = []
    found: list[bool] = []

    def release() -> None:  # what the releaser does (`_release_run.release`)
        if not begun:
            releases.table.begin("send-race", None, 0.0, "local")
        DBOS.cancel_workflow("send-race")
        releases.table.released("send-race")
        found.append(
            _upstream.has_pending_message(releases.table.engine, "send-race", _naming.TICK_TOPIC)
        )
        finished_at.append(time.monotonic())

    releaser = threading.Thread(target=release)
    releaser.start()
    time.sleep(1.0)  # time enough for an unhindered releaser to finish
    opened_at = time.monotonic()
    gate.set()
    sender.join(30)
    releaser.join(30)
    state = seen[0][0]
    read = (state.status, state.release_state) if state is not None else None
    assert read == ("PENDING", "releasing" if begun else None)
    assert finished_at and finished_at[0] > opened_at, "the release did not wait for the send"
    assert found == [True], "the releaser's look for messages missed the send"
    releases.table.dispose()
    client.destroy()
