"""A durable run's trace in a real trace backend: Arize Phoenix, started by the test.

`examples/traced_run.py` (the README's example) exports over OTLP/HTTP to a `phoenix
serve` on 127.0.0.1 from its own virtualenv (`.ci/run` makes `.venv-phoenix`; or set
DBOS_LLAMA_PHOENIX to a ``phoenix`` executable); the test reads the trace back from
Phoenix's REST API and takes a screenshot of its trace page in headless Chromium
(with $PHOENIX_SCREENSHOTS set, copied there: how docs/phoenix-trace.png is made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.test_debugger_ui import _until, headless_chrome

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs the otel extra")

PHOENIX = Path(os.environ.get("DBOS_LLAMA_PHOENIX", ROOT / ".venv-phoenix" / "bin" / "phoenix"))
#: Phoenix's GraphQL ID of its first project ("default"), as its UI's routes use it.
DEFAULT_PROJECT = "UHJvamVjdDox"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def phoenix(tmp_path: Path) -> Iterator[str]:
    """A `phoenix serve` on 127.0.0.1 with a fresh working directory: its base URL."""
    if not PHOENIX.exists():
        message = f"Arize Phoenix not found at {PHOENIX} (.ci/run installs it in .venv-phoenix)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(_free_port()),
    }
    log = (tmp_path / "phoenix.log").open("w")
    server = subprocess.Popen([str(PHOENIX), "serve"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # its first start migrates its database
        while True:
            assert server.poll() is None, (tmp_path / "phoenix.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Phoenix did not start"
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _spans(base: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/v1/projects/default/spans", params={"limit": 1000}, timeout=10)
    answer.raise_for_status()
    return list(answer.json()["data"])


@pytest.mark.slow
def test_a_run_killed_and_restarted_is_one_trace_in_phoenix(phoenix: str, tmp_path: Path) -> None:
    env = {**os.environ, "OTLP_TRACES_URL": f"{phoenix}/v1/traces", "PYTHONPATH": str(ROOT)}
    example = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "traced_run.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert example.returncode == 0, example.stderr
    assert "Calls executed twice: none" in example.stdout

    def complete() -> list[dict[str, Any]] | None:
        spans = _spans(phoenix)
        names = [s["name"] for s in spans]
        done = "run examples.flows.orders.Orders" in names and "step charge" in names
        return spans if done else None

    spans = _until(complete, "the run's spans in Phoenix")
    assert len({s["context"]["trace_id"] for s in spans}) == 1  # both processes, one trace
    ids = {s["context"]["span_id"] for s in spans}
    assert all(s["parent_id"] in ids for s in spans if s["parent_id"]), "a parent is missing"
    (root,) = [s for s in spans if not s["parent_id"]]
    assert root["name"] == "run examples.flows.orders.Orders"
    assert root["attributes"]["dbos_llama.outcome"] == "success"
    assert [e["name"] for e in root["events"]] == ["dbos_llama.recovered"]

    def step(name: str, replayed: bool) -> list[dict[str, Any]]:
        return [
            s
            for s in spans
            if s["name"] == f"step {name}" and s["attributes"]["dbos_llama.replayed"] == replayed
        ]

    # draft: executed by the first process, a replayed marker from the restart.
    assert [s["attributes"]["dbos_llama.attempt"] for s in step("draft", False)] == [1]
    assert len(step("draft", True)) == 1
    # review: killed mid-step, completed by the restart (its second attempt).
    (review,) = step("review", False)
    assert review["attributes"]["dbos_llama.attempt"] == 2
    assert [e["name"] for e in review["events"]] == ["dbos_llama.recovered"]
    review_calls = [s for s in spans if s["parent_id"] == review["context"]["span_id"]]
    replayed = [s for s in review_calls if s["attributes"].get("dbos_llama.replayed") is True]
    assert len(replayed) == 1 and replayed[0]["start_time"] == replayed[0]["end_time"]
    assert replayed[0]["span_kind"] == "CHAIN"
    assert len([s for s in review_calls if s["name"].startswith("call ")]) == 3

    trace_id = root["context"]["trace_id"]
    browser = headless_chrome(1600, 1000)
    try:
        from selenium.webdriver.common.by import By

        browser.get(f"{phoenix}/projects/{DEFAULT_PROJECT}/traces/{trace_id}")

        def shows_the_steps() -> bool:
            text = str(browser.find_element(By.TAG_NAME, "body").text)
            return all(f"step {s}" in text for s in ("draft", "review", "charge"))

        _until(shows_the_steps, "the run's steps in Phoenix's trace page")
        time.sleep(1)  # the page's last layout pass
        shot = tmp_path / "phoenix-trace.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        if os.environ.get("PHOENIX_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["PHOENIX_SCREENSHOTS"]) / shot.name)
    finally:
        browser.quit()
