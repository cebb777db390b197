"""The examples run as documented (each in a fresh process, on SQLite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def run_example(name: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=cwd,
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
