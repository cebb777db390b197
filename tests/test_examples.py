"""The examples run as documented (each in a fresh process, on SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def run_example(name: str, cwd: Path, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert "a haiku about durable workflows -- dbos_llama" in out
    assert "haiku-1/draft/0" in out and "SUCCESS" in out


def test_crash_and_recover(tmp_path: Path) -> None:
    out = run_example("crash_and_recover.py", tmp_path)
    assert "process dies now" in out
    assert "'receipt': 'receipt-order-42'" in out
    assert "Calls executed twice: none" in out


def test_human_in_the_loop_in_two_processes(tmp_path: Path) -> None:
    out = run_example("human_in_the_loop.py", tmp_path)
    assert "question for a human: Refund 42.00 EUR for order-7?" in out
    assert "run refund-7 is PENDING; answering 'yes'" in out
    assert "result: refund-7: refunded" in out
    assert out.count("computing the refund") == 1


def test_workers_on_postgres(tmp_path: Path, pg_database) -> None:
    out = run_example("workers.py", tmp_path, DBOS_LLAMA_DB=pg_database())
    assert "worker w1 killed (SIGKILL) with runs in flight, for good" in out
    assert "took over" in out and "runs of dead worker w1: ['doc-" in out
    assert "30 runs finished: {" in out  # how they split between the workers varies
    for i in range(30):
        assert f"doc-{i}: 'summary of the text of doc-{i}' by " in out
    assert "external calls executed: " in out and " for 60 distinct calls" in out


def test_durable_agent(tmp_path: Path) -> None:
    out = run_example("durable_agent.py", tmp_path)
    assert "process dies now (os._exit), between two tool calls" in out
    assert "answer: Sunny in Paris, and your table for 2 at Chez DBOS is booked" in out
    first, second = out.split("  pid ")[1:3]
    assert "LLM call, turn 0" in first and "tool get_weather('Paris')" in first
    assert "tool book_table('Chez DBOS', 2)" in second and "LLM call, turn 2" in second
    assert "get_weather" not in second and "turn 1" not in second
    assert "Calls executed twice: none" in out


def test_serve_over_http(tmp_path: Path) -> None:
    from tests.serving import free_port

    out = run_example("serve.py", tmp_path, PORT=str(free_port()))
    assert "question for a human: Approve 1200.00 EUR for ACME?" in out
    assert "server killed (SIGKILL) while the run waits" in out
    assert "is completed: approved: 1200.00 EUR for the quote" in out
    assert "paid calls made: 1 (the restarted server did not pay again)" in out
