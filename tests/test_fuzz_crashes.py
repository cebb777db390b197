"""Crash fuzzing: generated workflow programs, killed at generated points, recovered.

Each example is a program for `tests.fuzz_flow.Program` (chains of `@durable_step`
calls, state edits and stream writes, fan-outs to steps with ``num_workers`` 1 or 3
and a collector, human-in-the-loop waits answered by run ID from this process). It
runs once uninterrupted on a fresh SQLite database (the reference) and, at the same
time, on other fresh databases with one and with two kills (``os._exit(137)`` at the
Nth kill point a process passes), and with two SIGKILLs sent from this process at
drawn moments (0-3 s after a process launched DBOS, wherever its code is then), each
followed by recovery in a new process; the run with two kills at kill points stores
its data as pickles or (drawn) with `JsonDataSerializer`. Concurrent fan-out workers
edit the same state keys.
The recovered run must equal the reference: result, state, stream (no duplicates,
no gaps), every `@durable_step` call that had completed before a kill never executed
again, nothing PENDING, no traceback, ERROR log line or DBOS determinism error.

``FUZZ_EXAMPLES`` sets the number of generated programs (default 3, 15-30 s each on
2 CPUs); the examples are derandomized, so CI runs the same ones (``FUZZ_RANDOM=1``
draws new ones, for longer campaigns).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from workflows.events import HumanResponseEvent

from dbos_llama import DurableClient
from tests.conftest import ROOT, read_log, snapshot

FX = "tests.fuzz_flow.fx"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3"))
#: Totals over the session, printed at its end (see the closing note of issue #8).
FIGURES: Counter[str] = Counter()

chain = st.fixed_dictionaries(
    {
        "kind": st.just("chain"),
        "calls": st.integers(0, 3),
        "edit": st.booleans(),
        "stream": st.integers(0, 2),
    }
)
fan = st.fixed_dictionaries(
    {
        "kind": st.just("fan"),
        "items": st.integers(1, 4),
        "workers": st.sampled_from([1, 3]),
        "calls": st.integers(0, 2),
    }
)
ask = st.just({"kind": "ask"})
programs = st.lists(st.one_of(chain, fan, ask), min_size=1, max_size=4)


@dataclass
class Outcome:
    result: Any = None
    state: Any = None
    stream: list[str] = field(default_factory=list)
    points: int = 0  # kill points the processes passed in all
    kills: list[int] = field(default_factory=list)  # the kill points that fired
    stderr: str = ""
    log: Counter[str] = field(default_factory=Counter)
    # After each kill: the log so far, and the calls the database had completed.
    at_kills: list[tuple[Counter[str], list[str]]] = field(default_factory=list)


def _process(
    db: str,
    run_id: str,
    program: str,
    log: Path,
    env: dict[str, str],
    sigkill_after: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """One driver process; with ``sigkill_after``, SIGKILLed from here that many
    seconds after it launched DBOS, if it is still running (its return code is
    then 137)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DBOS_LLAMA_", "FUZZ_"))}
    full.update(PYTHONPATH=str(ROOT), DBOS_LLAMA_TEST_LOG=str(log), **env)
    args = [sys.executable, "-m", "tests.fuzz_driver", db, run_id, program]
    with subprocess.Popen(
        args, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        launched = proc.stdout.readline()  # "LAUNCHED" (or "" if it died first)
        try:
            out, err = proc.communicate(timeout=120 if sigkill_after is None else sigkill_after)
        except subprocess.TimeoutExpired:
            if sigkill_after is None:
                raise
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(args, 137, launched + out, err)
        return subprocess.CompletedProcess(args, proc.returncode, launched + out, err)


async def _answer(db: str, run_id: str, number: int) -> None:
    async with DurableClient(db) as client:
        await client.send_event(run_id, HumanResponseEvent(response=f"a{number}"))


async def _read(db: str, run_id: str) -> tuple[Any, list[str]]:
    async with DurableClient(db) as client:
        state = await client.get_state(run_id)
        stream = [
            f"{type(e).__name__} {json.dumps(e.model_dump(mode='json'), sort_keys=True)}"
            async for e in client.read_stream(run_id, follow=False)
        ]
    return state, stream


def drive(
    tmp: Path,
    name: str,
    program: list[dict],
    kills: list[int],
    json_mode: bool = False,
    sigkills: list[float] | None = None,
) -> Outcome:
    """Run ``program`` to its end on a fresh database, killing the processes at
    ``kills`` (the Nth kill point of the process each is given to) on the way, or
    (``sigkills``) with SIGKILL from here that many seconds after each started."""
    db, log, run_id = f"sqlite:///{tmp / name}.sqlite", tmp / f"{name}.log", "fuzz-1"
    text = json.dumps(program)
    out, pending, answered = Outcome(), list(kills), 0
    timed = list(sigkills or [])
    for _ in range(4 * len(program) + len(kills) + len(timed) + 2):
        env = {"FUZZ_ANSWERED": str(answered), **({"FUZZ_JSON": "1"} if json_mode else {})}
        if pending:
            env["FUZZ_KILL_AT"] = str(pending[0])
        proc = _process(db, run_id, text, log, env, timed[0] if timed else None)
        out.stderr += proc.stderr
        if proc.returncode == 137:
            out.kills.append(pending.pop(0) if pending else -1)
            if not pending and timed:
                timed.pop(0)
            done = snapshot(db, run_id).completed_calls.get(FX, [])
            out.at_kills.append((read_log(log), [o.strip("<>") for o in done]))
            continue
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
        out.points += int(lines["POINTS"])
        if "ASKED" in lines:
            answered = int(lines["ASKED"])
            asyncio.run(_answer(db, run_id, answered))
            continue
        out.result = json.loads(lines["RESULT"])
        break
    else:
        raise AssertionError(f"the run did not finish: {out.stderr[-3000:]}")
    out.state, out.stream = asyncio.run(_read(db, run_id))
    out.log = read_log(log)
    statuses = snapshot(db, run_id).statuses
    assert statuses[run_id] == "SUCCESS", statuses
    assert "PENDING" not in statuses.values(), statuses
    return out


def check_against(reference: Outcome, crashed: Outcome) -> None:
    assert crashed.result == reference.result
    assert crashed.state == reference.state
    # Concurrent steps store their events in completion order: compare as sets,
    # and require every event exactly once (no duplicates, no gaps).
    assert len(crashed.stream) == len(set(crashed.stream))
    assert sorted(crashed.stream) == sorted(reference.stream)
    calls = {line[3:] for line in reference.log if line.startswith("fx:")}
    for tag in calls:
        executed = crashed.log[f"fx:{tag}"]
        assert 1 <= executed <= 1 + len(crashed.kills), (tag, executed)
    for seen, completed in crashed.at_kills:
        for tag in completed:
            # Completed before a kill: never executed again.
            assert crashed.log[f"fx:{tag}"] == seen[f"fx:{tag}"], tag
    for bad in ("Traceback", "DBOSUnexpectedStepError", "ERROR]"):
        assert bad not in crashed.stderr, crashed.stderr[-3000:]


def expected_points(program: list[dict]) -> int:
    """Kill points an uninterrupted run passes (see `tests.fuzz_flow`)."""
    total = 0
    for spec in program:
        if spec["kind"] == "chain":
            total += 2 + 2 * spec["calls"] + spec["edit"] + spec["stream"]
        elif spec["kind"] == "fan":
            total += 2 + spec["items"] * (4 + 2 * spec["calls"])
        else:
            total += 2
    return total


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    database=None,
    phases=[Phase.explicit, Phase.generate]
    + ([Phase.shrink] if os.environ.get("FUZZ_SHRINK") else []),
    suppress_health_check=list(HealthCheck),
)
@given(program=programs, data=st.data())
def test_generated_programs_survive_kills(
    tmp_path_factory: pytest.TempPathFactory, program: list[dict], data: st.DataObject
) -> None:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("fuzz")
    top = expected_points(program)
    one = [data.draw(st.integers(1, top), label="kill")]
    two = [data.draw(st.integers(1, top), label="first kill")]
    two.append(data.draw(st.integers(1, max(1, top // 2)), label="second kill"))
    # The reference and both crashed runs at once, each on its own database.
    # The run with two kills stores its data as JSON (`JsonDataSerializer`) or pickles.
    json_mode = data.draw(st.booleans(), label="two-kill run stored as JSON")
    # And SIGKILL from outside at a random moment (not at a kill point), twice.
    moments = [
        data.draw(st.floats(0.0, 3.0), label="first SIGKILL, s after launch"),
        data.draw(st.floats(0.0, 3.0), label="second SIGKILL, s after launch"),
    ]
    scenarios = {
        "reference": ([], False, None),
        "one-kill": (one, False, None),
        "two-kills": (two, json_mode, None),
        "sigkills": ([], False, moments),
    }
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {
            n: pool.submit(drive, tmp, n, program, kills, as_json, timed)
            for n, (kills, as_json, timed) in scenarios.items()
        }
        outcomes = {n: f.result() for n, f in futures.items()}
    reference = outcomes.pop("reference")
    assert reference.kills == [] and reference.points == top
    for bad in ("Traceback", "ERROR]"):
        assert bad not in reference.stderr, reference.stderr[-3000:]
    for crashed in outcomes.values():
        check_against(reference, crashed)
        FIGURES["crashed runs"] += 1
        FIGURES["kills fired"] += len(crashed.kills)
    FIGURES["json runs"] += json_mode
    FIGURES["programs"] += 1
    FIGURES["kills asked"] += len(one) + len(two)
    FIGURES["seconds"] += round(time.monotonic() - started)
    print(f"fuzz figures so far: {dict(FIGURES)}")
