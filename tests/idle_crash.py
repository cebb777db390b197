"""Kill this process inside idle release: ``python -m tests.idle_crash WHERE ARGS...``.

``release DB FLOW RUN_ID JSON``: run a flow (as `tests.driver`) and die right after
the idle run's DBOS workflow was cancelled, before its release is recorded as done.
``wake DB RUN_ID RESPONSE``: send the answer (as `tests.sender`) and die right after
the send's transaction claimed the released run, before resuming it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from dbos_llama import _release


def _die(*args: object, **kwargs: object) -> bool:
    os._exit(137)


def _claimed_then_die(self: _release.Releases, run_id: str, queue_name: str | None) -> None:
    # Called once the send and its claim have committed, before the resume.
    print(f"CLAIMED {run_id}", flush=True)
    os._exit(137)


if __name__ == "__main__":
    where, args = sys.argv[1], sys.argv[2:]
    if where == "release":
        _release.ReleaseTable.released = _die  # type: ignore[method-assign]
        from tests import driver

        asyncio.run(driver.main(args[0], args[1], args[2], json.loads(args[3])))
    else:
        _release.Releases.resume_claimed = _claimed_then_die  # type: ignore[method-assign]
        from tests import sender

        asyncio.run(sender.main(*args))
