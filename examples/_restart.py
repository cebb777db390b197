"""Helper of the crash examples: run a script twice (killed, then restarted), show its ledger."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_killed_then_restarted(script: str, database: str, first: str, second: str) -> Path:
    """Run ``script`` as a child process that is killed (``EXAMPLE_CRASH=1``), then
    again as the restarted application, both on one SQLite file; returns the ledger.

    The children find the database in ``EXAMPLE_APP`` and the ledger in
    ``EXAMPLE_LEDGER``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="dbos-llama-example-"))
    db_url = f"sqlite:///{workdir / database}"
    ledger = workdir / "ledger.txt"
    env = {**os.environ, "EXAMPLE_LEDGER": str(ledger), "EXAMPLE_APP": db_url}
    print(f"System database: {db_url}")
    print(f"1) first process: {first}")
    subprocess.run([sys.executable, script], env={**env, "EXAMPLE_CRASH": "1"}, check=False)
    print(f"2) restarted process: {second}")
    subprocess.run([sys.executable, script], env=env, check=True)
    return ledger


def print_ledger(ledger: Path, title: str) -> None:
    """The calls each process executed, and which ones (if any) ran twice."""
    lines = ledger.read_text().splitlines()
    pids = list(dict.fromkeys(line.split(":")[0] for line in lines))
    print(f"\n{title}, per process:")
    for pid in pids:
        print(f"  {pid}")
        for line in lines:
            if line.startswith(pid + ":"):
                print(f"    {line.split(': ', 1)[1]}")
    calls = [line.split(": ", 1)[1] for line in lines]
    repeated = sorted({c for c in calls if calls.count(c) > 1})
    print(f"\nCalls executed twice: {repeated or 'none'}")
