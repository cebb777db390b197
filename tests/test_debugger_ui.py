"""The server's debugger UI in real headless Chromium, with its assets served locally.

`@llamaindex/workflow-debugger` is fetched from the npm registry (``npm pack``) into
a temp dir and its ``dist/`` served by the server (`debugger_assets=`), instead of
the CDN the stock page loads. The test starts a durable run from the page, sees its
events, answers its human-in-the-loop prompt from the page's "Send Event" form, and
checks the outcome in the page and in DBOS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dbos_llama import DurableClient
from dbos_llama.server import DEBUGGER_PACKAGE
from tests.serving import Served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="session")
def debugger_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The debugger UI's ``dist/``, from the npm registry."""
    npm = shutil.which("npm")
    if npm is None:
        _missing("npm")
    where = tmp_path_factory.mktemp("debugger")
    subprocess.run(
        [npm, "pack", DEBUGGER_PACKAGE, "--silent"],
        cwd=where,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (tarball,) = where.glob("*.tgz")
    with tarfile.open(tarball) as archive:
        archive.extractall(where, filter="data")
    return where / "package" / "dist"


def _missing(what: str) -> None:
    """CI must run this test (`.ci/run` installs what it needs); elsewhere it is skipped."""
    message = f"{what} needed for the debugger UI test (Debian: apt-get install chromium "
    message += "chromium-driver npm)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def headless_chrome(width: int, height: int) -> Any:
    """A Selenium driver of Debian's headless Chromium (skips, or fails on CI, if the
    browser or its driver is missing)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        _missing("chromium and chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # the element is not there (yet): the page is still rendering
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"the page never showed {what}")


@pytest.mark.slow
async def test_debugger_ui_starts_a_durable_run_and_answers_it(
    sqlite_url: str, tmp_path: Path, debugger_dist: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assets = {"DBOS_LLAMA_DEBUGGER_ASSETS": str(debugger_dist)}
    served = Served(sqlite_url, tmp_path / "log", env=assets)
    with served:
        browser = headless_chrome(1400, 1000)
        try:
            browser.get(served.base_url + "/")
            page = browser.page_source
            assert "/debugger-assets/app.js" in page and "cdn.jsdelivr.net" not in page

            def body() -> str:
                return str(browser.find_element(By.TAG_NAME, "body").text)

            def click(xpath: str) -> None:
                _until(lambda: browser.find_element(By.XPATH, xpath), xpath).click()

            def option(text: str) -> None:
                def pick() -> Any:
                    return next(
                        o
                        for o in browser.find_elements(By.XPATH, "//*[@role='option']")
                        if o.text.strip() == text
                    )

                _until(pick, f"option {text}").click()

            # Start a run of the durable "review" workflow from the page.
            click("//button[contains(., 'Select workflow')]")
            option("review")
            start = _until(lambda: browser.find_element(By.ID, "raw-input"), "the input box")
            start.send_keys(Keys.CONTROL, "a")
            start.send_keys(Keys.DELETE)
            start.send_keys('{"topic": "the launch"}')
            click("//button[contains(., 'Run Workflow')]")
            # Its events arrive in the page (the step's stream event).
            _until(lambda: "Event Stream (1)" in body() and "Progress" in body(), "the event")

            # Answer its prompt from the "Send Event" form.
            click("//button[contains(., 'Send Event')]")
            click("//*[@role='dialog']//button[@role='combobox']")
            option("ReviewDecision")
            answer = _until(lambda: browser.find_element(By.ID, "field-response"), "the form")
            answer.send_keys("approved in the browser")
            click("//*[@role='dialog']//button[normalize-space()='Send Event']")

            _until(lambda: "completed" in body(), "the completed status")
            _until(lambda: "reviewed: approved in the browser" in body(), "the final result")
            browser.save_screenshot(str(tmp_path / "debugger.png"))
            assert (tmp_path / "debugger.png").stat().st_size > 10_000
            assert "review" in body()
        finally:
            browser.quit()
    async with DurableClient(sqlite_url) as client:
        (run,) = [r for r in await client.list_runs() if r.workflow.endswith("ServedReview")]
        assert run.status == "SUCCESS" and run.handler_id is not None
        assert await client.get_result(run.run_id) == "reviewed: approved in the browser"
