"""Rows of the README's bad-input table not covered elsewhere: database URLs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.conftest import ROOT, start_driver

# Each URL in a fresh DBOS: which call fails, with which exception.
PROBE = """
import json, sys
from dbos import DBOS
for url in sys.argv[1:]:
    stage = "DBOS()"
    try:
        DBOS(config={"name": "bad-url", "system_database_url": url})
        stage = "DBOS.launch()"
        DBOS.launch()
        stage = "none"
    except Exception as error:
        print(json.dumps([url, stage, type(error).__module__ + "." + type(error).__name__]))
    finally:
        DBOS.destroy()
"""


def test_invalid_database_urls_fail_at_dbos_or_launch(tmp_path: Path) -> None:
    urls = {
        "not a url": ("DBOS()", "sqlalchemy.exc.ArgumentError"),
        "postgresql://u:p@127.0.0.1:1/x": ("DBOS.launch()", "sqlalchemy.exc.OperationalError"),
        f"sqlite:///{tmp_path}/no/such/dir/x.sqlite": (
            "DBOS.launch()",
            "sqlalchemy.exc.OperationalError",
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *urls],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seen = {u: (s, e) for u, s, e in map(json.loads, proc.stdout.splitlines())}
    assert seen == urls, proc.stderr[-3000:]


def _pending(url: str, run_id: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = %s", (run_id,)
            ).fetchone()
    except psycopg.Error:
        return False  # not created yet
    return row is not None and row[0] == "PENDING"


def test_database_that_disappears_mid_run_is_retried_not_lost(
    pg_server: str, tmp_path: Path
) -> None:
    # The run's database stops taking connections (every open one is cut) while the
    # run sleeps durably; 4 s later it is back. The worker neither crashes nor gives
    # up in between, and then finishes the run from its checkpoints.
    import psycopg

    log = tmp_path / "log"
    name = f"dbos_llama_gone_{uuid.uuid4().hex[:8]}"
    url = f"{pg_server}/{name}"
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        worker = start_driver(url, "sleeper", "gone-1", {"seconds": 3}, log)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _pending(url, "gone-1"):
                time.sleep(0.2)  # until the run has started (it sleeps 3 s durably)
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            time.sleep(4)  # past the end of the run's sleep: it must wait for the database
            assert worker.poll() is None, "the worker gave up while the database was gone"
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            out, err = worker.communicate(timeout=120)
        finally:
            worker.kill()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert worker.returncode == 0, err[-3000:]
    assert "Database connection failed" in err, err[-3000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    # The step's code ran once: it waited for the database, it did not start over.
    assert sum(line.startswith("resume:") for line in log.read_text().splitlines()) == 1
    assert result["finished"] - result["started"] >= 3
