"""`scale ui` in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (no browser download), on a database filled by the real CLI against the fake OpenAI
server — a finished run, a fork of it, an evaluation with a τ sweep, and a run still in progress.
It checks what a person sees against the CLI's JSON and saves screenshots.

A second test reads a PostgreSQL run database (tests/support/postgres.py) without a browser.

The browser test skips when chromium, chromedriver or selenium is missing, unless ``SCALE_REQUIRE_BROWSER=1``
(``scripts/test.sh`` sets it once it has installed them). ``SCALE_UI_SCREENSHOTS=DIR`` keeps the
screenshots there (default: the test's tmp folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from scale_graph.prompts import COT
from tests.support.datasets import DATASETS
from tests.support.fake_openai import answer_for
from tests.support.ports import free_port
from tests.support.postgres import PASSWORD, pg_url, postgres_server  # noqa: F401  (fixtures)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Read at import: the test's own environment is emptied of SCALE_* variables (tests/conftest.py).
SCREENSHOTS = os.environ.get("SCALE_UI_SCREENSHOTS")
#: LaTeX to typeset, and HTML a model or a person may paste: shown as text, never fetched or run.
PROBLEM = (r"What is $12^2 - 119$? Give the result as $\frac{a}{1}$ with $a$ an integer. "
           '<img src="http://example.invalid/x.png" onerror="window.pwned = 1">')


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None and os.environ.get("SCALE_REQUIRE_BROWSER") != "1",
                                   reason=_missing() or "")


def scale(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI in its own process (the environment points it at the fake server)."""
    return subprocess.run([sys.executable, "-m", "scale_graph.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def scale_json(*args: str) -> Any:
    done = scale(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def known_answers(folder: Path) -> None:
    """The amc23 preset's problems with the fake server's CoT answers as gold: CoT is right, SCALE wrong
    (charts and grid show both outcomes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**row, "answer": str(answer_for([{"role": "user", "content": COT.format(problem=row["problem"])}]))}
            for row in DATASETS["amc23"]]
    (folder / "amc23.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")




@contextlib.contextmanager
def serving(*args: str) -> Iterator[str]:
    """`scale ui ARGS` on a free port until the block ends; yields its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "scale_graph.cli", "ui", "--port", str(port), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/api/runs", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path) -> Iterator[Any]:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, css: str, timeout: float = 20) -> list[Any]:
    """The elements matching ``css`` once there is at least one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def texts(driver: Any, css: str) -> list[str]:
    """The texts of every element matching ``css``, read in one step (a page polling a live run
    re-draws itself between two WebDriver calls)."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", css)


def attributes(driver: Any, css: str, name: str) -> list[str]:
    """Attribute ``name`` of every element matching ``css``, read in one step."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]))", css, name)


def text_now(driver: Any, css: str) -> str | None:
    """The text of ``css`` read in one step (a live page re-draws itself between two WebDriver calls)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent", css)


def count_now(driver: Any, css: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", css)


def only_local_requests(driver: Any, base: str) -> list[str]:
    """Every resource the page loaded that did not come from the viewer itself."""
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [url for url in loaded if not url.startswith(base)]


@needs_browser
def test_a_person_sees_runs_forks_evaluations_and_a_live_run(fake_server, endpoint_env, browser, tmp_path):
    shots = Path(SCREENSHOTS or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    fake_server.configure(difficulties=(0.1, 0.8, 0.3, 0.9), subproblem_count=4)
    assert scale("solve", PROBLEM, "-t", "0.5", "-k", "3", "--thread-id", "finished").returncode == 0
    assert scale("runs", "fork", "finished", "--at", "2", "--system", "1", "--thread-id", "forked").returncode == 0
    known_answers(Path("data"))
    evaluated = scale("eval", "-d", "amc23", "--data-dir", "data", "-m", "scale,cot", "-t", "0.2,0.5,0.9", "-k", "2",
                      "-n", "2")
    assert evaluated.returncode == 0, evaluated.stderr

    with serving() as base:
        fake_server.configure(latency=1.5)  # the next run (≈ 10 calls) advances slowly enough to be watched
        live = subprocess.Popen([sys.executable, "-m", "scale_graph.cli", "solve", PROBLEM, "-k", "2",
                                 "--thread-id", "live"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not any(row["thread_id"] == "live" for row in scale_json("runs", "list")):
                assert time.monotonic() < deadline and live.poll() is None, live.stderr.read() if live.stderr else ""
                time.sleep(0.3)

            # the run list: its counts are those of `scale runs list`
            listed = scale_json("runs", "list")
            browser.get(base + "/runs")
            wait_for(browser, "#runs-table tbody tr[data-thread]")
            assert texts(browser, '#counts [data-count="all"]') == [f"{len(listed)} runs"]
            assert texts(browser, '#counts [data-count="done"]') == \
                   [f"{sum(row['status'] == 'done' for row in listed)} done"]
            assert sorted(attributes(browser, "#runs-table tbody tr", "data-thread")) == sorted(r["thread_id"] for r in listed)
            assert attributes(browser, '#runs-table tr[data-thread="live"]', "data-state") == ["running"]
            browser.save_screenshot(str(shots / "runs.png"))

            # a live run: the page updates itself (no reload) until the run is done
            browser.get(base + "/run?id=live")
            wait_for(browser, "#status .badge")
            seen_running = "running" in text_now(browser, "#status")
            solved_at_first = count_now(browser, "#timeline li.step:not(.pending)")
            marker = browser.execute_script("window.notReloaded = true; return window.notReloaded")
            deadline = time.monotonic() + 90
            while text_now(browser, "#status") != "done":
                assert time.monotonic() < deadline, "the live run page never showed the run done"
                time.sleep(0.3)
            assert live.wait(timeout=60) == 0, live.stderr.read() if live.stderr else ""
            assert seen_running and marker and browser.execute_script("return window.notReloaded") is True
            shown_live = scale_json("runs", "show", "live")
            assert count_now(browser, "#timeline li.step:not(.pending)") == len(shown_live["subproblems"]) > solved_at_first
        finally:
            if live.poll() is None:
                live.kill()
        fake_server.configure(latency=0.0)

        # a finished run: the timeline's systems and difficulties are those of `scale runs show --json`
        shown = scale_json("runs", "show", "finished")
        browser.get(base + "/run?id=finished")
        wait_for(browser, "#timeline li.step")
        assert attributes(browser, "#timeline li.step", "data-system") == [str(s["system"]) for s in shown["subproblems"]]
        assert [float(d) for d in attributes(browser, "#timeline li.step", "data-difficulty")] == \
               [s["difficulty"] for s in shown["subproblems"]]
        assert texts(browser, "#children li a.run-link") == ["forked"]
        assert browser.find_elements("css selector", ".problem .katex")  # LaTeX typeset by the vendored KaTeX
        assert not browser.find_elements("css selector", "main img") and "<img src=" in texts(browser, ".problem")[0]
        assert browser.execute_script("return window.pwned") is None
        assert len(browser.find_elements("css selector", "#candidates > li")) == len(shown["candidates"])
        browser.find_element("css selector", '#timeline li.step[data-system="2"] details:last-of-type summary').click()
        browser.save_screenshot(str(shots / "run.png"))
        assert only_local_requests(browser, base) == []

        # the fork against its parent, both ticked in the run list: the first divergence of `scale runs diff`
        expected = scale_json("runs", "diff", "finished", "forked")
        browser.get(base + "/runs")
        for thread in ("finished", "forked"):
            wait_for(browser, f'input.pick[data-thread="{thread}"]')[0].click()
        browser.find_element("css selector", "#compare").click()
        wait_for(browser, "#divergence")
        assert browser.current_url == base + "/diff?a=finished&b=forked"
        assert texts(browser, "#divergence") == [f"first divergence: sub-problem {expected['first_divergence']}"]
        assert attributes(browser, "#diff-table tr.first-divergence", "data-index") == [str(expected["first_divergence"])]
        changed = len(expected["subproblems"][expected["first_divergence"] - 1]["differs"])
        assert len(browser.find_elements("css selector", "#diff-table tr.first-divergence td.changed")) == 2 * changed
        browser.save_screenshot(str(shots / "diff.png"))

        # the evaluation: Table 2 rows, the τ chart drawn from the same numbers, the grid opens a sample's run
        browser.get(base + "/evaluations")
        wait_for(browser, 'svg.chart[data-chart="threshold"]')
        assert len(browser.find_elements("css selector", 'svg.chart[data-chart="threshold"] circle.point')) == 2 * 3
        assert len(browser.find_elements("css selector", 'svg.chart[data-chart="tokens"] circle.point')) == 3 + 1
        assert "100.00" in browser.find_element("css selector", "#report-1").text  # CoT's known answers, Table 1
        table2 = browser.find_element("css selector", "#report-2").text
        assert all(tau in table2 for tau in ("0.2", "0.5", "0.9"))
        browser.save_screenshot(str(shots / "evaluations.png"))
        browser.get(base + "/evaluation?name=scale-amc23-t0.5")
        cells = wait_for(browser, "#grid td.cell a")
        assert len(cells) == 2 * 2  # the amc23 preset's 2 problems × 2 samples
        cells[0].click()
        wait_for(browser, "#timeline li.step")
        assert browser.find_element("css selector", "#run-id").text.startswith("eval/scale-amc23-t0_5/")

        # a missing run is a 404 page, in words
        browser.get(base + "/run?id=no-such-run")
        assert "404" in browser.find_element("css selector", "h1").text
        assert "no run 'no-such-run'" in browser.find_element("css selector", ".error-line").text


def test_the_viewer_reads_a_postgresql_run_database_and_hides_its_password(pg_url, endpoint_env, fake_server):
    from starlette.testclient import TestClient

    from scale_graph.database import db_path
    from scale_graph.ui.app import create_app

    fake_server.configure(difficulties=(0.1, 0.8, 0.3), subproblem_count=3)
    assert scale("solve", "What is 2+3?", "-t", "0.5", "-k", "2", "--thread-id", "pg-run", "--db", pg_url).returncode == 0
    assert scale("runs", "fork", "pg-run", "--at", "2", "--system", "1", "--thread-id", "pg-fork",
                 "--db", pg_url).returncode == 0
    shown = scale_json("runs", "show", "pg-run", "--db", pg_url)
    listed = scale_json("runs", "list", "--db", pg_url)
    with TestClient(create_app(db_path(pg_url), db_shown=pg_url), raise_server_exceptions=False,
                    base_url="http://127.0.0.1:8300") as ui:
        page = ui.get("/api/runs", params={"state": "done", "sort": "thread_id", "order": "asc"})
        run = ui.get("/api/run", params={"id": "pg-run"})
        html = ui.get("/run", params={"id": "pg-run"})
        missing = ui.get("/run", params={"id": "nope"})
    assert [row["thread_id"] for row in page.json()["rows"]] == sorted(row["thread_id"] for row in listed) == \
           ["pg-fork", "pg-run"]
    assert [s["system"] for s in run.json()["subproblems"]] == [s["system"] for s in shown["subproblems"]]
    assert run.json()["children"] == [{"thread_id": "pg-fork", "at": 2, "change": "sub-problem 2 on System 1"}]
    assert missing.status_code == 404
    for reply in (page, run, html):
        assert PASSWORD not in reply.text
    assert "[redacted]" in run.json()["commands"]["resume"]
