"""The web run viewer (``dbos-llama ui``) as a real uvicorn process, in real headless
Chromium (Selenium), over runs made by real durable workflows: one killed mid-step and
recovered, runs waiting for a human (one with a live worker that finishes it once
answered). One viewer and one browser serve the module's tests."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, _driver_env, kill_then_finish, run_driver, start_driver
from tests.serving import free_port
from tests.test_debugger_ui import _until, headless_chrome

DBOS_LLAMA = str(Path(sys.executable).parent / "dbos-llama")


@dataclass
class Viewer:
    """A ``dbos-llama ui`` process."""

    proc: subprocess.Popen[str]
    base_url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def start_viewer(db: str, log: Path, *extra: str, cwd: Path = ROOT, env: Any = None) -> Viewer:
    """``dbos-llama ui --db DB --port P`` started and answering ``/health``."""
    port = free_port()
    proc = subprocess.Popen(
        [DBOS_LLAMA, "ui", "--db", db, "--port", str(port), *extra],
        cwd=cwd,
        env=env if env is not None else _driver_env(log, {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    viewer = Viewer(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"viewer exited: {proc.communicate()}")
        try:
            if httpx.get(viewer.base_url + "/health", timeout=1).status_code == 200:
                return viewer
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    viewer.stop()
    raise AssertionError(f"viewer did not start: {proc.communicate()}")


@dataclass
class World:
    db: str
    viewer: Viewer
    worker: subprocess.Popen[str]
    shots: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Runs in a SQLite database, and the viewer serving it."""
    where = tmp_path_factory.mktemp("viewer")
    db, log = f"sqlite:///{where / 'dbos.sqlite'}", where / "effects.log"
    done = kill_then_finish(db, "chain3", "order-1", {"x": "a"}, log, crash_at="two:between")
    assert done.result == "<one:a><two-a><two-b><three>"
    asked = run_driver(
        db,
        "approval",
        "refund-8",
        {"customer": "bo"},
        log,
        extra_env={"DBOS_LLAMA_EXIT_ON_INPUT": "1"},
    )
    assert asked.returncode == 0, asked.stderr
    assert "ok after" in run_driver(db, "flaky", "f-1", {}, log).result  # 2 failures, retried
    assert run_driver(db, "tally", "t-1", {"customer": "cy"}, log).result["count"] == 11
    worker = start_driver(db, "approval", "refund-7", {"customer": "ada"}, log)
    viewer = start_viewer(db, log)
    try:
        yield World(db, viewer, worker, where)
    finally:
        viewer.stop()
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = headless_chrome(1280, 1000)
    try:
        yield driver
    finally:
        driver.quit()


def _body(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.TAG_NAME, "body").text)


def _shot(browser: Any, world: World, name: str) -> Path:
    """A screenshot in the test's tmp dir (and, with $VIEWER_SCREENSHOTS set, copied
    there: how docs/viewer.png is made)."""
    path = world.shots / f"{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 5_000
    if os.environ.get("VIEWER_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["VIEWER_SCREENSHOTS"]) / path.name)
    return path


def _wait_waiting(world: World, run_id: str) -> None:
    """Until the page lists ``run_id`` as waiting for a human."""
    url = f"{world.viewer.base_url}/fragments/runs?status=waiting-human"
    _until(lambda: f'data-run="{run_id}"' in httpx.get(url).text, f"{run_id} waiting")


def test_runs_page_lists_runs_and_filters(world: World, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _wait_waiting(world, "refund-7")
    _wait_waiting(world, "refund-8")  # the worker recovers it too (ENQUEUED a moment)
    browser.get(world.viewer.base_url + "/")
    rows = {
        r.get_attribute("data-run"): r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.run")
    }
    assert "SUCCESS" in rows["order-1"]
    assert " UTC" in rows["order-1"]  # times say their zone, as the CLI's do
    assert "waiting for a human" in rows["refund-8"]
    names = list(rows)
    assert names.index("refund-7") < names.index("order-1")  # newest first
    Select(browser.find_element(By.NAME, "status")).select_by_value("waiting-human")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    _until(lambda: "status=waiting-human" in browser.current_url, "the filtered page")
    shown = [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "tr.run")]
    assert "order-1" not in shown and "refund-8" in shown
    _shot(browser, world, "runs")


def test_crash_marker_is_on_the_reexecuted_invocation(world: World, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(world.viewer.base_url + "/runs/order-1")
    marked = {
        g.get_attribute("data-invocation")
        for g in browser.find_elements(By.CSS_SELECTOR, "svg.timeline g.inv")
        if g.find_elements(By.CSS_SELECTOR, "text.crash")
    }
    assert marked == {"order-1/two/1"}  # killed between its two calls, re-executed
    two = browser.find_element(By.CSS_SELECTOR, "g.inv[data-invocation='order-1/two/1']")
    assert "2 executions" in two.text
    downtime = two.find_element(By.CSS_SELECTOR, "rect.downtime")
    assert float(downtime.get_attribute("width")) > 10  # the gap no process ran
    assert "recovered 1×" in _body(browser)
    calls = browser.find_elements(By.CSS_SELECTOR, "svg.timeline g.call")
    (restarted,) = [c.text for c in calls if "↻" in c.text]  # the first call after it
    assert restarted.startswith("└ tests.flows.effect ↻") and "<two-b>" in restarted
    graph = browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node.step.success")
    assert {g.get_attribute("data-node") for g in graph} == {"one", "two", "three"}
    assert '"<one:a><two-a><two-b><three>"' in browser.find_element(By.ID, "result").text
    _shot(browser, world, "run")


def test_retries_are_marked_with_their_delay(world: World) -> None:
    page = httpx.get(world.viewer.base_url + "/runs/f-1").text
    # Two failed invocations of "shaky", each retried (the retry policy's delay).
    assert page.count('class="inv error"') == page.count('class="retry"') == 2
    assert "after the failure" in page


def test_state_and_its_edits(world: World) -> None:
    page = httpx.get(world.viewer.base_url + "/runs/t-1").text
    state = page.split('<div id="state">', 1)[1].split("</div>", 1)[0]
    assert "&quot;count&quot;: 11" in state and "&quot;customer&quot;: &quot;cy&quot;" in state
    edits = page.split('<table id="edits">', 1)[1].split("</table>", 1)[0]
    assert edits.count(">one/0<") >= 2 and ">two/1<" in edits  # JSON Patches, by invocation


def test_a_page_asked_by_get_imports_nothing(world: World) -> None:
    page = httpx.get(world.viewer.base_url + "/runs/refund-8?type=antigravity.Nothing").text
    assert "is not imported in the viewer&#x27;s process" in page


def test_paging_and_time_filters(world: World) -> None:
    base = world.viewer.base_url
    first = httpx.get(base + "/?limit=1").text
    assert first.count('<tr class="run"') == 1 and 'id="older"' in first
    second = httpx.get(base + "/?limit=1&offset=1").text
    assert second.count('<tr class="run"') == 1 and "newer" in second
    assert first.split('data-run="')[1][:10] != second.split('data-run="')[1][:10]
    assert 'data-run="order-1"' in httpx.get(base + "/?since=1h").text
    assert '<tr class="run"' not in httpx.get(base + "/?until=2000-01-01").text
    assert httpx.get(base + "/?since=yesterday").status_code == 400
    assert httpx.get(base + "/?workflow=tests.flows.Chain3").text.count('<tr class="run"') >= 1


def test_invalid_answer_shows_the_error_and_sends_nothing(world: World, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(world.viewer.base_url + "/runs/refund-8")
    kind = browser.find_element(By.NAME, "event_type")
    kind.clear()
    kind.send_keys("tests.flows.OneDone")  # a class with a required field
    browser.find_element(By.ID, "load-form").click()  # a POST: its module is imported
    _until(lambda: browser.find_element(By.ID, "field-acc"), "the OneDone form")
    send = "form.answer button[value=answer]"
    browser.find_element(By.CSS_SELECTOR, send).click()  # "acc" left empty
    error = _until(lambda: browser.find_element(By.CSS_SELECTOR, "form.answer p.error"), "error")
    assert "not a valid OneDone" in error.text and "acc" in error.text
    _shot(browser, world, "invalid-answer")
    path = world.db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        (sent,) = conn.execute(
            "SELECT count(*) FROM notifications WHERE destination_uuid = 'refund-8'"
        ).fetchone()
    assert sent == 0
    # The page's forms carry a CSRF token: a post without it is refused.
    refused = httpx.post(f"{world.viewer.base_url}/runs/refund-8/cancel", data={})
    assert refused.status_code == 403


def test_answer_form_delivers_the_answer_and_the_run_finishes(world: World, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _wait_waiting(world, "refund-7")
    browser.get(world.viewer.base_url + "/runs/refund-7")
    assert "approve <quote> for ada?" in _body(browser)
    browser.find_element(By.ID, "field-response").send_keys("approved in the browser")
    browser.find_element(By.CSS_SELECTOR, "form.answer button[value=answer]").click()
    _until(lambda: "Sent workflows.events.HumanResponseEvent" in _body(browser), "the notice")
    out, err = world.worker.communicate(timeout=60)
    assert 'RESULT "answer=approved in the browser"' in out, err
    _until(lambda: "answer=approved in the browser" in _body(browser), "the result (polled)")
    # The page reloads once the run has ended: no more answer form or cancel button.
    _until(lambda: not browser.find_elements(By.CSS_SELECTOR, "form.answer"), "no form")
    assert "SUCCESS" in _body(browser)
    _shot(browser, world, "answered")


def test_fork_appears_as_a_new_run(world: World, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(world.viewer.base_url + "/runs/order-1")
    Select(browser.find_element(By.ID, "from-step")).select_by_value("two/1")
    browser.find_element(By.ID, "fork").click()
    _until(lambda: "Forked from order-1 at step two/1" in _body(browser), "the fork's page")
    title = browser.find_element(By.TAG_NAME, "h1").text
    new_id = title.removeprefix("Run ")
    assert new_id.startswith("order-1-fork-")
    assert "forked from\norder-1 at step two/1" in _body(
        browser
    ) or "order-1 at step two/1" in _body(browser)
    browser.get(world.viewer.base_url + "/")
    rows = [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "tr.run")]
    assert rows[0] == new_id


def test_cancel_then_resume(world: World, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(world.viewer.base_url + "/runs/refund-8")
    browser.find_element(By.ID, "cancel").click()
    _until(lambda: "Cancelled." in _body(browser), "the cancel's notice")
    assert "CANCELLED" in browser.find_element(By.CSS_SELECTOR, "table.facts").text
    browser.find_element(By.ID, "resume").click()
    _until(lambda: "Resumed" in _body(browser), "the resume's notice")
    status = browser.find_element(By.CSS_SELECTOR, "table.facts").text
    assert "CANCELLED" not in status and ("ENQUEUED" in status or "PENDING" in status)


def test_unknown_run_is_a_404_page(world: World, browser: Any) -> None:
    response = httpx.get(world.viewer.base_url + "/runs/no-such-run")
    assert response.status_code == 404 and "No durable run" in response.text
    browser.get(world.viewer.base_url + "/runs/no-such-run")
    assert "Run not found" in _body(browser)


def test_cli_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    env = _driver_env(tmp_path / "log", {})
    missing = f"sqlite:///{tmp_path / 'none.sqlite'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DBOS_LLAMA, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    ui, listed = run("ui", "--db", missing), run("runs", "list", "--db", missing)
    assert ui.returncode == listed.returncode == 1
    assert ui.stderr == listed.stderr and "No SQLite database" in ui.stderr
    open_bind = run("ui", "--db", missing, "--host", "0.0.0.0")
    assert open_bind.returncode == 1 and "--token" in open_bind.stderr
    # Without the server extra (uvicorn cannot be imported): what to install.
    db = f"sqlite:///{tmp_path / 'dbos.sqlite'}"
    assert run_driver(db, "chain3", "c-1", {"x": "c"}, tmp_path / "log").returncode == 0
    blocked = (
        "import sys; sys.modules['uvicorn'] = None; from dbos_llama._cli import main; "
        f"sys.argv = ['dbos-llama', 'ui', '--db', {db!r}]; main()"
    )
    no_extra = subprocess.run(
        [sys.executable, "-c", blocked], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert no_extra.returncode == 1 and 'pip install "dbos-llama[server]"' in no_extra.stderr


def test_token_password_and_unreadable_values_on_postgres(pg_database: Any, tmp_path: Path) -> None:
    """A viewer without the workflow code, on PostgreSQL with a password in its URL,
    requiring a token."""
    db = pg_database()
    log = tmp_path / "log"
    assert run_driver(db, "chain3", "pg-1", {"x": "b"}, log).returncode == 0
    secret_db = db.replace("postgres@", "postgres:s3cret-pw@")
    bare = _driver_env(log, {})
    bare.pop("PYTHONPATH")  # tests.flows cannot be imported: values are unreadable
    viewer = start_viewer(secret_db, log, "--token", "tok-123", cwd=tmp_path, env=bare)
    try:
        base = viewer.base_url
        assert httpx.get(base + "/").status_code == 401
        with httpx.Client(base_url=base) as client:
            entered = client.get("/runs/pg-1?token=tok-123")
            assert (
                entered.status_code == 303 and "dbos_llama_token" in entered.headers["set-cookie"]
            )
            page = client.get("/runs/pg-1")
            assert page.status_code == 200
            assert "not readable here" in page.text and "s3cret-pw" not in page.text
            listing = client.get("/")
            assert "pg-1" in listing.text and "s3cret-pw" not in listing.text
    finally:
        viewer.stop()
