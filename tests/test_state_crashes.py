"""State edits exactly once when concurrent steps crash (guarantee 6, issue #21).

Concurrent workers of a fan-out edit the same keys; the process is SIGKILLed from
outside at a seeded random moment and recovered in a new one. Every run's state
must equal an uninterrupted run's (for the list, in *some* order), even when a
step had read another running step's write before the kill. ``STATE_SEEDS`` sets
the number of seeds (default 10).

Also: runs recorded by dbos_llama 0.1.0 (before writes were checkpoints), left
PENDING by a kill, finish under this version (fixture databases recorded by it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, read_log, run_driver, snapshot

SEEDS = int(os.environ.get("STATE_SEEDS", "10"))
RUNS = 12
FIXTURES = ROOT / "tests" / "fixtures"
#: The DBOS application version the fixture databases were recorded with.
FIXTURE_APP_VERSION = "fixture-1"


def _env(log: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBOS_LLAMA_")}
    env.update(PYTHONPATH=str(ROOT), DBOS_LLAMA_TEST_LOG=str(log), **extra)
    return env


def _command(db_url: str, runs: int) -> list[str]:
    return [sys.executable, "-m", "tests.shared_state_driver", db_url, str(runs)]


def _finish(db_url: str, log: Path, runs: int, **env: str) -> dict[str, Any]:
    """Run (or recover) the runs in a new process to their end; their results."""
    proc = subprocess.run(
        _command(db_url, runs),
        cwd=ROOT,
        env=_env(log, **env),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for bad in ("Traceback", "DBOSUnexpectedStepError", "ERROR]"):
        assert bad not in proc.stderr, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line[len("RESULTS ") :])


def _completed_calls(db_url: str) -> set[str]:
    """The `slow_call`s the database holds as completed, as their log lines."""
    outputs = snapshot(db_url, "").completed_calls.get("tests.shared_state_flows.slow_call", [])
    return {f"call:{output.strip('<>')}" for output in outputs}


def _assert_exact(results: dict[str, Any]) -> None:
    for run_id, out in results.items():
        if run_id.startswith("shared-"):
            assert out["result"] == [0, 1, 2, 3], run_id
            # Each item counted once and collected once; any order is an order the
            # workflow allows.
            assert out["state"]["count"] == 4, (run_id, out["state"])
            assert sorted(out["state"]["done"]) == [0, 1, 2, 3], (run_id, out["state"])
            assert sorted(out["stream"]) == [0, 1, 2, 3], (run_id, out["stream"])
        elif run_id.startswith("gather-"):
            # Writes beside durable calls in two concurrent steps: 6 counted.
            assert out["result"] == 6 and out["state"]["writes"] == 6, (run_id, out)
        else:
            # A `set` and an `edit_state` of one key from two concurrent steps.
            assert out["result"] == ["edit", "set"], run_id
            assert sorted(out["state"]["log"]) == ["edit", "set"], (run_id, out["state"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SEEDS))
def test_concurrent_edits_exactly_once_after_sigkill(
    tmp_path: Path, db_url: str, seed: int
) -> None:
    log = tmp_path / "log"
    rng = random.Random(seed)
    proc = subprocess.Popen(
        _command(db_url, RUNS),
        cwd=ROOT,
        env=_env(log),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not read_log(log):  # the first call started
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no call started"
            time.sleep(0.01)
        time.sleep(rng.uniform(1.0, 3.0))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    before = read_log(log)
    completed = _completed_calls(db_url)
    results = _finish(db_url, log, RUNS)
    assert set(results) == {f"shared-{n}" for n in range(RUNS)} | {"set-edit-0", "gather-0"}
    _assert_exact(results)
    after = read_log(log)
    assert completed, "the kill came before any call completed"
    for line in completed:  # completed before the kill: never executed again
        assert after[line] == before[line] == 1, line
    for line, count in after.items():  # one in flight at the kill: at most once more
        assert count - before[line] <= 1, line


@pytest.mark.parametrize("fixture", ["tally", "shared"])
def test_runs_recorded_by_0_1_0_finish(tmp_path: Path, fixture: str) -> None:
    """A database written by dbos_llama 0.1.0 (state writes not yet checkpoints),
    killed mid-run, recovers under this version: its unfinished steps replay as
    recorded (a checkpoint where 0.1.0 recorded none would be a determinism error)."""
    db = tmp_path / "recorded.sqlite"
    shutil.copy(FIXTURES / f"recorded-0.1.0-{fixture}.sqlite", db)
    url, log = f"sqlite:///{db}", tmp_path / "log"
    if fixture == "tally":
        # Killed at "tally:two-end": step one completed, step two had edited the
        # state and completed its external call.
        done = run_driver(
            url,
            "tally",
            "t-old",
            {"customer": "ada"},
            log,
            extra_env={"DBOS_LLAMA_APP_VERSION": FIXTURE_APP_VERSION},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "DBOSUnexpectedStepError" not in done.stderr
        assert done.result == {"customer": "ada", "count": 11, "last": "<tally-two>"}
        assert read_log(log)["effect:tally-two"] == 0  # replayed, not executed
        return
    # Killed at a moment: three fan-outs with steps PENDING, one set-and-edit run.
    results = _finish(url, log, 3, DBOS_LLAMA_APP_VERSION=FIXTURE_APP_VERSION)
    _assert_exact(results)
    assert "PENDING" not in snapshot(url, "shared-0").statuses.values()
