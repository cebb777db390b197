"""The watcher of cancels asked from other processes for the runs waiting here."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from dbos import DBOS

from ._records import CANCELLED

logger = logging.getLogger("dbos_llama")

#: How often a waiting run checks whether another process cancelled it.
CANCEL_POLL_SECONDS = 2.0


class Watched(Protocol):
    """A run waiting in this process (`_run_state.RunState`)."""

    run_id: str

    def request_cancel(self) -> None: ...


class CancelWatcher:
    """Finds the runs waiting in this process that another process cancelled: one
    thread, one database query every `CANCEL_POLL_SECONDS` for all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, Watched] = {}
        self._thread: threading.Thread | None = None
        # True while the database cannot be read (warned about once).
        self._failing = False

    def watch(self, run: Watched) -> None:
        with self._lock:
            self._runs[run.run_id] = run
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._poll, name="dbos-llama-cancel-watcher", daemon=True
                )
                self._thread.start()

    def unwatch(self, run: Watched) -> None:
        with self._lock:
            if self._runs.get(run.run_id) is run:
                del self._runs[run.run_id]

    def _poll(self) -> None:
        while True:
            time.sleep(CANCEL_POLL_SECONDS)
            with self._lock:
                if not self._runs:
                    self._thread = None  # a later watch() starts a new one
                    return
                run_ids = list(self._runs)
            try:
                cancelled = DBOS.list_workflows(
                    workflow_ids=run_ids, status=CANCELLED, load_input=False, load_output=False
                )
            except Exception as error:  # DBOS shut down or the database unreachable
                if not self._failing:
                    logger.warning(
                        "Cannot read cancellations from the database (%s: %s); cancels "
                        "from other processes are noticed once it is reachable again.",
                        type(error).__name__,
                        error,
                    )
                self._failing = True
                continue
            self._failing = False
            for status in cancelled:
                with self._lock:
                    run = self._runs.get(status.workflow_id)
                if run is not None:
                    try:
                        run.request_cancel()
                    except RuntimeError:  # its event loop has closed
                        self.unwatch(run)


#: The process's `CancelWatcher`.
cancel_watcher = CancelWatcher()
