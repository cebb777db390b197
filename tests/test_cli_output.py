"""What the real ``dbos-llama`` console script prints (#20): full JSON values, a
re-executed step marked with its attempts and downtime, tables within 80 columns,
clear database-URL errors printed once, help without type tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import read_log, run_driver
from tests.test_cli import cli, cli_json

LONG = "[red]" + "x" * 150  # longer than any table column, and not rich markup


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A chain run killed inside step two's first external call, then finished by a
    restarted process; its values are longer than a table shows."""
    tmp = tmp_path_factory.mktemp("cli-output")
    db, log = f"sqlite:///{tmp / 'db.sqlite'}", tmp / "log"
    first = run_driver(db, "chain3", "long-1", {"x": LONG}, log, crash_at="effect:two-a")
    assert first.returncode == 137, first.stderr
    second = run_driver(db, "chain3", "long-1", {"x": LONG}, log)
    assert second.result == f"<one:{LONG}><two-a><two-b><three>"
    assert read_log(log)["effect:two-a"] == 2  # in flight at the kill: it ran again
    return db


def test_json_values_are_full_json(crashed: str) -> None:
    shown = cli_json(crashed, "runs", "show", "long-1")
    one, _, three = shown["steps"]
    assert one["outputs"] == [{"type": "tests.flows.OneDone", "data": {"acc": f"<one:{LONG}>"}}]
    assert one["calls"][0]["output"] == f"<one:{LONG}>"  # the string, not its repr
    stop = three["outputs"][0]
    assert stop["type"] == "workflows.events.StopEvent"
    assert stop["data"]["result"] == f"<one:{LONG}><two-a><two-b><three>"
    events = cli_json(crashed, "runs", "list")
    assert events[0]["run_id"] == "long-1" and events[0]["attempts"] == 2


def test_show_marks_the_reexecuted_step_and_its_downtime(crashed: str) -> None:
    shown = cli_json(crashed, "runs", "show", "long-1")
    assert shown["attempts"] == 2
    one, two, three = shown["steps"]
    assert (one["attempts"], one["reexecuted"], one["gap"]) == (1, False, None)
    assert three["attempts"] == 1 and not three["reexecuted"]
    assert two["attempts"] == 2 and two["reexecuted"]
    # The downtime (the killed process, then the restart) is apart from the step's
    # own time; both make up its duration.
    assert two["gap"] > 0.3
    assert two["own_duration"] == pytest.approx(two["duration"] - two["gap"], abs=0.002)
    assert two["own_duration"] < two["duration"]
    # The call in flight at the kill is the first recorded after the restart.
    assert [(c["output"], c["after_restart"]) for c in two["calls"]] == [
        ("<two-a>", True),
        ("<two-b>", False),
    ]

    table = cli(crashed, "runs", "show", "long-1").stdout
    assert "two ↻" in table and "↻ attempt 2" in table and "downtime" in table
    assert "└ tests.flows.effect ↻" in table
    assert "Attempts 2 (resumed after a crash" in table
    assert "Created " in table and " UTC" in table and "START (UTC)" in table
    assert "<one:[red]xxx" in table  # a value is printed as text, never as markup


def test_tables_fit_80_columns(crashed: str) -> None:
    for command in (["runs", "show", "long-1"], ["runs", "list"]):
        lines = cli(crashed, *command, columns=80).stdout.splitlines()
        assert lines and all(len(line.rstrip()) <= 80 for line in lines), "\n".join(lines)
    table = cli(crashed, "runs", "show", "long-1", columns=80).stdout
    assert "…" in table  # long outputs are shortened in the table (not in --json)
    assert "└ flows.effect" in table and "three" in table  # module path shortened


def test_database_url_errors_say_what_to_write(tmp_path: Path) -> None:
    missing = cli("", "runs", "list", check=False, cwd=tmp_path)
    assert missing.returncode == 1
    assert "set DBOS_LLAMA_DB (or DBOS_SYSTEM_DATABASE_URL)" in missing.stderr
    assert "[" not in missing.stderr  # not a Python list

    bare = cli("orders.sqlite", "runs", "list", check=False, cwd=tmp_path)
    assert bare.returncode == 1
    assert "write sqlite:///orders.sqlite" in bare.stderr

    mysql = cli("mysql://u@localhost/db", "runs", "list", check=False, cwd=tmp_path)
    assert mysql.returncode == 1 and "psycopg" not in mysql.stderr
    assert "mysql:// databases are not supported" in mysql.stderr
    assert "sqlite:///" in mysql.stderr and "postgresql://" in mysql.stderr

    refused = cli("postgresql://postgres@127.0.0.1:1/none", "runs", "list", check=False)
    assert refused.returncode == 1
    assert refused.stderr.count("Connection refused") == 1, refused.stderr
    assert "Error connecting to the DBOS system database" not in refused.stderr
    assert "Background on this error" not in refused.stderr
    for result in (missing, bare, mysql, refused):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_help_has_no_type_tags_or_rst_quoting() -> None:
    commands = ["list", "show", "events", "send", "cancel", "resume", "fork"]
    for command in commands:
        text = cli("", "runs", command, "--help", columns=80).stdout
        assert "--db URL" in text and "``" not in text
        # No <bool>, <str>, <int>, <list[str]> tags, no {RUN_ID} braces.
        assert "<" not in text and "{RUN_ID}" not in text, text
        assert all(len(line) <= 80 for line in text.splitlines()), text
