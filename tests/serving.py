"""Real `DurableWorkflowServer` processes (uvicorn on 127.0.0.1) for the server tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ROOT, _driver_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """One server process serving `tests.served_app` on a database."""

    db_url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    _printed: tuple[str, str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Served:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.serve", self.db_url, str(self.port)],
            cwd=ROOT,
            env=_driver_env(self.log, self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited at start:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not answer /health:\n{self.output()}")

    def wait_killed(self, timeout: float = 60) -> int:
        """Wait for the server to die at its crash point; its return code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server now."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def output(self, whole: bool = False) -> str:
        """What the server printed (it is killed first if still running): the end of
        it, or all of it."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.kill()
        if self._printed is None:
            self._printed = self.proc.communicate(timeout=30)
        out, err = self._printed
        if not whole:
            out, err = out[-3000:], err[-6000:]
        return f"stdout:\n{out}\nstderr:\n{err}"

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def effect_counts(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.startswith("effect:"):
                counts[line] = counts.get(line, 0) + 1
    return counts
