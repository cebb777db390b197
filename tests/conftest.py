"""Real DBOS on real databases: SQLite files in temp dirs, real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS, DBOSClient

ROOT = Path(__file__).resolve().parent.parent


def dbos_config(db_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "dbos-llama-tests",
        "system_database_url": db_url,
        "notification_listener_polling_interval_sec": 0.05,
        **extra,
    }


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dbos.sqlite'}"


@pytest.fixture
async def dbos_app(sqlite_url: str):
    """DBOS launched in the test's event loop on a fresh SQLite file."""
    DBOS(config=dbos_config(sqlite_url))
    DBOS.launch()
    try:
        yield sqlite_url
    finally:
        DBOS.destroy()


@dataclass
class DriverRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> Any:
        for line in self.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise AssertionError(
            f"no result (rc={self.returncode})\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


def run_driver(
    db_url: str,
    flow: str,
    run_id: str,
    kwargs: dict[str, Any],
    log: Path,
    crash_at: str | None = None,
    module: str = "tests.driver",
    extra_env: dict[str, str] | None = None,
    timeout: float = 120,
) -> DriverRun:
    """Run ``flow`` in a fresh Python process (it may kill itself at ``crash_at``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBOS_LLAMA_")}
    env["PYTHONPATH"] = str(ROOT)
    env["DBOS_LLAMA_TEST_LOG"] = str(log)
    if crash_at is not None:
        env["DBOS_LLAMA_CRASH_AT"] = crash_at
    env.update(extra_env or {})
    proc = subprocess.run(
        [sys.executable, "-m", module, db_url, flow, run_id, json.dumps(kwargs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return DriverRun(proc.returncode, proc.stdout, proc.stderr)


def read_log(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(path.read_text().splitlines())


@dataclass
class Snapshot:
    """What the database says a run had finished, read with DBOS's own client."""

    statuses: dict[str, str]  # workflow id -> status, for the run and its steps
    completed_calls: dict[str, list[Any]]  # step (call) name -> recorded outputs

    def succeeded_invocations(self) -> list[str]:
        return [w for w, s in self.statuses.items() if s == "SUCCESS" and "/" in w]


def snapshot(db_url: str, run_id: str) -> Snapshot:
    client = DBOSClient(system_database_url=db_url)
    try:
        workflows = client.list_workflows(
            workflow_id_prefix=run_id, load_input=False, load_output=False
        )
        statuses = {w.workflow_id: w.status for w in workflows}
        calls: dict[str, list[Any]] = {}
        for wid in statuses:
            for st in client.list_workflow_steps(wid):
                if st["error"] is None and st["child_workflow_id"] is None:
                    calls.setdefault(st["function_name"], []).append(st["output"])
        return Snapshot(statuses, calls)
    finally:
        client.destroy()
