"""The examples run as documented (each in a fresh process, on SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.test_cli import cli, cli_json


def run_example(name: str, cwd: Path, *args: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # A normal run prints nothing at WARNING or above (DBOS's or ours).
    for level in ("WARNING", "ERROR", "CRITICAL"):
        assert level not in proc.stderr, proc.stderr
    return proc.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert "a haiku about durable workflows -- dbos_llama" in out
    assert "haiku-1/draft/0" in out and "SUCCESS" in out
    # Its workflow is in examples.flows: the CLI, run from the project root, reads
    # every output (stored as JSON by JsonDataSerializer).
    db = f"sqlite:///{tmp_path / 'quickstart.sqlite'}"
    shown = cli_json(db, "runs", "show", "haiku-1", "--import", "examples.flows.haiku")
    assert shown["workflow"] == "examples.flows.haiku.Haiku"
    assert shown["steps"][0]["outputs"] == [
        {
            "type": "examples.flows.haiku.Drafted",
            "data": {"text": "a haiku about durable workflows"},
        }
    ]
    assert shown["steps"][0]["calls"][0]["output"] == "a haiku about durable workflows"
    table = cli(db, "runs", "show", "haiku-1", "--import", "examples.flows.haiku").stdout
    assert "Drafted {" in table and "not readable" not in table

    # DBOS's own command prints the JSON-stored values as JSON text (no pickles), and
    # its name filter takes the recorded name with its llama: prefix (README).
    def dbos_cli(*args: str) -> str:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "dbos"), "workflow", *args, "-s", db],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    (call,) = json.loads(dbos_cli("steps", "haiku-1/draft/0"))
    assert call["function_name"] == "examples.flows.haiku.call_model"
    assert json.loads(call["output"]) == "a haiku about durable workflows"
    named = json.loads(dbos_cli("list", "-n", "llama:examples.flows.haiku.Haiku"))
    assert [w["workflow_id"] for w in named] == ["haiku-1"]
    assert json.loads(dbos_cli("list", "-n", "examples.flows.haiku.Haiku")) == []


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


def test_answering_an_ended_run_says_why_without_a_traceback(tmp_path: Path) -> None:
    env = {"HITL_DB": f"sqlite:///{tmp_path / 'hitl.sqlite'}"}
    run_example("human_in_the_loop.py", tmp_path, "ask", **env)
    run_example("human_in_the_loop.py", tmp_path, "answer", "yes", **env)
    again = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "human_in_the_loop.py"), "answer", "yes"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "not sent: Run 'refund-7' has already ended (SUCCESS)" in again.stderr


def test_workers_on_postgres(tmp_path: Path, pg_database) -> None:
    db = pg_database()
    try:
        out = run_example("workers.py", tmp_path, DBOS_LLAMA_DB=db)
    except subprocess.TimeoutExpired as hung:
        # Its workers outlive it (they were its children): stop them, and say what
        # was left unfinished, for whoever looks at this failure.
        printed = _text(hung.stdout)
        for line in printed.splitlines():
            if " ready (pid " in line:
                _kill(int(line.rsplit("pid ", 1)[1].rstrip(")")))
        raise AssertionError(
            f"the demo did not end:\n{printed}\n{_text(hung.stderr)[-5000:]}\n"
            f"unfinished:\n{_unfinished(db)}"
        ) from None
    assert "worker w1 killed (SIGKILL) with runs in flight, for good" in out
    assert "took over" in out and "runs of dead worker w1: ['doc-" in out
    assert "30 runs finished, last step run by: {" in out  # the split varies
    assert "executed twice: " not in out or "in flight in w1 when it was killed" in out
    assert "some not started in w1" not in out
    for i in range(30):
        assert f"doc-{i}: 'summary of the text of doc-{i}' by " in out
    assert "external calls executed: " in out and " for 60 distinct calls" in out


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _unfinished(db: str) -> str:
    """The workflows of the database that did not succeed, and the fleet's leases."""
    import psycopg

    found: list[object] = []
    for sql in (
        "SELECT workflow_uuid, status, name, executor_id, queue_name, recovery_attempts "
        "FROM dbos.workflow_status WHERE status <> 'SUCCESS' ORDER BY created_at",
        "SELECT * FROM dbos_llama.workers",
    ):
        try:
            with psycopg.connect(db) as conn:
                found += [sql, *conn.execute(sql).fetchall()]
        except psycopg.Error as error:
            found += [sql, error]
    return "\n".join(map(str, found))


def test_durable_agent(tmp_path: Path) -> None:
    out = run_example("durable_agent.py", tmp_path)
    assert "process dies now (os._exit), between two tool calls" in out
    assert "answer: Sunny in Paris, and your table for 2 at Chez DBOS is booked" in out
    first, second = out.split("  pid ")[1:3]
    assert "LLM call, turn 0" in first and "tool get_weather('Paris')" in first
    assert "tool book_table('Chez DBOS', 2)" in second and "LLM call, turn 2" in second
    assert "get_weather" not in second and "turn 1" not in second
    # The restarted process streams the weather event again, marked as recorded.
    assert "tool get_weather -> Sunny, 24 C in Paris (recorded earlier, not run again)" in out
    assert "Calls executed twice: none" in out


def test_serve_over_http(tmp_path: Path) -> None:
    from tests.serving import free_port

    out = run_example("serve.py", tmp_path, PORT=str(free_port()))
    assert "question for a human: Approve 1200.00 EUR for ACME?" in out
    assert "server killed (SIGKILL) while the run waits" in out
    assert "is completed: approved: 1200.00 EUR for the quote" in out
    assert "paid calls made: 1 (the restarted server did not pay again)" in out
