"""Real DBOS on real databases: SQLite files in temp dirs, real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS, DBOSClient

from dbos_llama import _naming
from dbos_llama._records import InlineRecord

ROOT = Path(__file__).resolve().parent.parent


def dbos_config(db_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "dbos-llama-tests",
        "system_database_url": db_url,
        "notification_listener_polling_interval_sec": 0.05,
        **extra,
    }


PG_SERVER = os.environ.get("DBOS_LLAMA_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")


def _pg_unreachable_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3):
            return None
    except Exception as error:  # any failure to connect means: no server here
        return f"{type(error).__name__}: {error}".strip()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server on 127.0.0.1:5432; CI fails (not skips) without it."""
    reason = _pg_unreachable_reason()
    if reason is not None:
        message = f"PostgreSQL is not reachable at {PG_SERVER}: {reason}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the PostgreSQL tests)")
        pytest.skip(message)
    return PG_SERVER


@pytest.fixture(scope="session")
def pg_database(pg_server: str):
    """Create a fresh PostgreSQL database by name; every one is dropped at session end."""
    import psycopg

    created: list[str] = []

    def create() -> str:
        name = f"dbos_llama_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{pg_server}/{name}"

    yield create
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dbos.sqlite'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh system database on each backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dbos.sqlite'}"
    return request.getfixturevalue("pg_database")()


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
    extra = dict(extra_env or {})
    if crash_at is not None:
        extra["DBOS_LLAMA_CRASH_AT"] = crash_at
    proc = subprocess.run(
        [sys.executable, "-m", module, db_url, flow, run_id, json.dumps(kwargs)],
        cwd=ROOT,
        env=_driver_env(log, extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return DriverRun(proc.returncode, proc.stdout, proc.stderr)


def _driver_env(log: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBOS_LLAMA_")}
    env["PYTHONPATH"] = str(ROOT)
    env["DBOS_LLAMA_TEST_LOG"] = str(log)
    env.update(extra)
    return env


def start_driver(
    db_url: str, flow: str, run_id: str, kwargs: dict[str, Any], log: Path
) -> subprocess.Popen[str]:
    """Like `run_driver`, without waiting: the process, to stop or `communicate` with."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.driver", db_url, flow, run_id, json.dumps(kwargs)],
        cwd=ROOT,
        env=_driver_env(log, {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_then_finish(
    db_url: str,
    flow: str,
    run_id: str,
    kwargs: dict[str, Any],
    log: Path,
    crash_at: str | None,
) -> DriverRun:
    """Run ``flow`` in a process killed at ``crash_at`` (if given), then in a new
    process that recovers and finishes it; returns the second run."""
    if crash_at is not None:
        first = run_driver(db_url, flow, run_id, kwargs, log, crash_at=crash_at)
        assert first.returncode == 137, first.stderr
    return run_driver(db_url, flow, run_id, kwargs, log)


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
        for wid in list(statuses):
            for st in client.list_workflow_steps(wid):
                if st["error"] is None and st["child_workflow_id"] is None:
                    calls.setdefault(st["function_name"], []).append(st["output"])
                if st["function_name"] == _naming.INLINE_STEP and st["error"] is None:
                    # A collecting step's invocation recorded in the run (rules 4); a
                    # record stored as JSON reads back as its text with this client.
                    output = st["output"]
                    record = json.loads(output) if isinstance(output, str) else output
                    statuses[InlineRecord.read(record).invocation_id] = "SUCCESS"
        return Snapshot(statuses, calls)
    finally:
        client.destroy()


@pytest.fixture
async def dbos_app(db_url: str):
    """DBOS launched in the test's event loop on a fresh database (each backend)."""
    DBOS(config=dbos_config(db_url))
    DBOS.launch()
    try:
        yield db_url
    finally:
        DBOS.destroy()


# The multi-worker fixtures (pg_url, workers, submitter, throwaway_pg), shared by
# test_workers and test_fleet. Imported last: the module imports this one.
from tests.workers_support import pg_url, submitter, throwaway_pg, workers  # noqa: E402, F401
