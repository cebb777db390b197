"""Worker processes, fixtures and checks shared by the multi-worker tests on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS, DBOSClient

from tests.conftest import ROOT, dbos_config
from tests.queued_flows import APP_VERSION, Job


class Worker:
    """One ``tests.worker`` process with a fixed DBOS executor ID."""

    def __init__(self, db_url: str, executor_id: str, log: Path, **env: str) -> None:
        self.db_url = db_url
        self.executor_id = executor_id
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.pids: list[int] = []

    def start(self) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBOS_LLAMA_")}
        env.update(PYTHONPATH=str(ROOT), DBOS_LLAMA_TEST_LOG=str(self.log), **self.env)
        out = open(self.log.with_suffix(f".{self.executor_id}.out"), "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.worker", self.db_url, self.executor_id],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", f"worker {self.executor_id} did not start: {line!r}"
        self.pids.append(self.proc.pid)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def pg_url(pg_database) -> str:
    return pg_database()


@pytest.fixture
def workers(pg_url: str, tmp_path: Path):
    started: list[Worker] = []

    def start(executor_id: str, **env: str) -> Worker:
        worker = Worker(pg_url, executor_id, tmp_path / "log", **env).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
async def submitter(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DBOS in the test process, submitting runs but dequeuing none itself (it may
    still execute recovered step invocations, like any process with the code)."""
    monkeypatch.setenv("DBOS_LLAMA_TEST_LOG", str(tmp_path / "log"))
    DBOS(config=dbos_config(pg_url, application_version=APP_VERSION, sys_db_pool_size=8))
    DBOS.listen_queues([])
    DBOS.launch()
    try:
        yield pg_url
    finally:
        DBOS.destroy()


def calls_from_log(log: Path) -> dict[str, list[str]]:
    """Every execution of a tagged call, by call (``<run_id>/<label>``): its values."""
    calls: dict[str, list[str]] = defaultdict(list)
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("call "):
            _, key, value = line.split(" ")
            calls[key].append(value)
    return calls


def recorded_calls(client: DBOSClient, run_ids: list[str]) -> dict[str, list[Any]]:
    """The tagged calls DBOS recorded as completed, by call: their outputs."""
    recorded: dict[str, list[Any]] = defaultdict(list)
    for run_id in run_ids:
        for child in client.list_workflows(workflow_id_prefix=f"{run_id}/", load_input=False):
            for st in client.list_workflow_steps(child.workflow_id):
                if st["error"] is None and st["function_name"].endswith("tagged_call"):
                    label = child.workflow_id.split("/")[1]
                    recorded[f"{run_id}/{label}"].append(st["output"])
    return recorded


def check_exactly_once(
    log: Path, client: DBOSClient, run_ids: list[str], killed_pids: set[int]
) -> dict[str, int]:
    """Every call recorded once; a call executed more than once only because the
    process running it was killed before its result was recorded."""
    executed = calls_from_log(log)
    recorded = recorded_calls(client, run_ids)
    expected = {f"{r}/{label}" for r in run_ids for label in ("first", "second")}
    assert set(recorded) == expected
    repeats = 0
    for key, outputs in recorded.items():
        assert len(outputs) == 1, f"{key} recorded {len(outputs)} times"
        (kept,) = outputs
        runs = executed[key]
        assert kept in runs, f"{key}: recorded value {kept} was never executed"
        for value in runs:
            if value != kept:
                repeats += 1
                pid = int(value.split("-")[0])
                assert pid in killed_pids, f"{key} executed again after it completed: {runs}"
    return {"calls": len(recorded), "repeated_in_flight": repeats}


def wait_all_done(client: DBOSClient, run_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        statuses = client.list_workflows(workflow_ids=run_ids, load_input=False, load_output=False)
        done = [s for s in statuses if s.status in ("SUCCESS", "ERROR", "CANCELLED")]
        if len(done) == len(run_ids):
            return
        if time.monotonic() > deadline:
            left = sorted({s.status for s in statuses} - {"SUCCESS"})
            raise AssertionError(f"{len(run_ids) - len(done)} runs unfinished ({left})")
        time.sleep(0.2)


def check_results(client: DBOSClient, xs: dict[str, int]) -> dict[str, int]:
    """Every run SUCCESS with its right result; runs per executor."""
    per_executor: dict[str, int] = defaultdict(int)
    statuses = client.list_workflows(workflow_ids=list(xs), load_input=False)
    assert len(statuses) == len(xs)
    for status in statuses:
        assert status.status == "SUCCESS", (status.workflow_id, status.status, status.error)
        x = xs[status.workflow_id]
        assert status.output.result == {"x": x, "doubled": 2 * x}
        per_executor[status.executor_id] += 1
    left = client.list_workflows(status=["PENDING", "ENQUEUED"], load_input=False)
    assert not left, [(s.workflow_id, s.status) for s in left]
    return dict(per_executor)


def submit(count: int, prefix: str) -> tuple[dict[str, int], list[Any]]:
    """Submit ``count`` Job runs (from the running loop); their x values and handlers."""
    xs = {f"{prefix}-{i}": i for i in range(count)}
    job = Job(timeout=None)
    return xs, [job.run(run_id=run_id, x=x) for run_id, x in xs.items()]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def in_flight_on(log: Path, pid: int) -> int:
    """How many tagged calls process ``pid`` has started."""
    return sum(v.startswith(f"{pid}-") for vs in calls_from_log(log).values() for v in vs)


def _pg_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    bindir = Path(out.stdout.strip())
    return bindir if (bindir / "initdb").exists() else None


class ThrowawayCluster:
    """A PostgreSQL cluster of its own (``initdb`` on a free loopback port), so a
    test can restart it without touching the shared server."""

    def __init__(self, bindir: Path) -> None:
        import socket
        import tempfile

        self.bindir = bindir
        # Not under pytest's tmp_path: the server's user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="dbos-llama-pg-"))
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # The server refuses to run as root: run it as the postgres user if we are root.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            os.chmod(self.root, 0o777)

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
        )

    def create(self) -> str:
        subprocess.run(
            [*self.as_user, str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust"]
            + ["-U", "postgres"],
            check=True,
            capture_output=True,
        )
        self.start()
        import psycopg

        url = f"postgresql://postgres@127.0.0.1:{self.port}"
        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE dbos_fault")
        return f"{url}/dbos_fault"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.root / "server.log"), "start", "-w")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast", "-w")


@pytest.fixture
def throwaway_pg():
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries (pg_config --bindir) are required in CI")
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    cluster = ThrowawayCluster(bindir)
    try:
        yield cluster, cluster.create()
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(cluster.root, ignore_errors=True)
