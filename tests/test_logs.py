"""Logs: quiet normal endings, and no database password in any log or message."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

from workflows.events import InputRequiredEvent

from dbos_llama import DurableClient
from tests.conftest import ROOT, run_driver, snapshot, start_driver

NOISE = ("Traceback", "ERROR]", "ERROR ")


def assert_quiet(stderr: str) -> None:
    noisy = [line for line in stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, stderr[-3000:]


def test_normal_endings_log_no_error(tmp_path: Path, sqlite_url: str) -> None:
    log = tmp_path / "log"
    # Runs ending with their StopEvent: a chain, and a fan-out with a collector.
    chain = run_driver(sqlite_url, "chain3", "quiet-1", {"x": "q"}, log)
    assert chain.returncode == 0 and chain.result == "<one:q><two-a><two-b><three>"
    assert_quiet(chain.stderr)
    fan = run_driver(sqlite_url, "fanout", "quiet-2", {"n": 3}, log)
    assert fan.returncode == 0 and fan.result == 5
    assert_quiet(fan.stderr)

    # A run cancelled by run ID from another process while a worker executes it.
    worker = start_driver(sqlite_url, "approval", "quiet-3", {"customer": "q"}, log)

    async def cancel_when_asked() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            asked = False
            try:
                async with DurableClient(sqlite_url) as client:
                    async for event in client.read_stream("quiet-3"):
                        if isinstance(event, InputRequiredEvent):
                            asked = True
                            break
            except Exception:  # the database or the run does not exist yet
                await asyncio.sleep(0.2)
                continue
            if asked:  # outside the retry: a failure here fails the test at once
                async with DurableClient(sqlite_url) as client:
                    assert await client.cancel("quiet-3") is True
                return
            await asyncio.sleep(0.2)
        raise AssertionError("the run never asked")

    asyncio.run(cancel_when_asked())
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0 and "CANCELLED" in out, err[-3000:]
    assert_quiet(err)
    assert snapshot(sqlite_url, "quiet-3").statuses["quiet-3"] == "CANCELLED"


def test_database_password_never_appears(tmp_path: Path, pg_server: str) -> None:
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    role, secret, name = f"dbos_llama_pw_{suffix}", f"sekret-{suffix}", f"dbos_llama_pw_{suffix}"
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
        conn.execute(f'CREATE DATABASE "{name}" OWNER {role}')
    host = pg_server.split("@", 1)[1]
    url = f"postgresql://{role}:{secret}@{host}/{name}"
    unreachable = f"postgresql://{role}:{secret}@127.0.0.1:1/{name}"
    log = tmp_path / "log"
    try:
        seen = []
        good = run_driver(url, "chain3", "pw-1", {"x": "p"}, log)
        assert good.result == "<one:p><two-a><two-b><three>", good.stderr[-2000:]
        seen += [good.stdout, good.stderr]
        # DBOS fails at launch (sqlalchemy OperationalError, logged with a traceback).
        bad = run_driver(unreachable, "chain3", "pw-2", {"x": "p"}, log, timeout=90)
        assert bad.returncode != 0 and "OperationalError" in bad.stderr
        seen += [bad.stdout, bad.stderr]
        for db in (url, unreachable):
            cli = subprocess.run(
                [sys.executable, "-m", "dbos_llama._cli", "runs", "list", "--db", db],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=90,
            )
            seen += [cli.stdout, cli.stderr]
        assert "pw-1" in seen[-4] and "Cannot" in seen[-1]

        async def client_error() -> str:
            try:
                async with DurableClient(unreachable) as client:
                    await client.get_run("pw-1")
            except Exception as error:
                return f"{type(error).__name__}: {error}"
            raise AssertionError("an unreachable database gave no error")

        seen.append(asyncio.run(client_error()))
        for text in seen:
            assert secret not in text, text[-3000:]
    finally:
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f"DROP ROLE IF EXISTS {role}")
