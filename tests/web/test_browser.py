"""The dashboard in real headless Chromium (Debian's, driven by Playwright; never a
downloaded browser): live updates without a reload, one bar per attempt with the wait
between, hostile text shown as text, the status filter, and no console error anywhere."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from runwatch.projections.slo import Slo
from runwatch.sinks.store import Store
from runwatch.stream.web.app import Dashboard
from runwatch.stream.web.server import WebServer
from webcorpus import HOSTILE_ERROR, HOSTILE_RUN, HOSTILE_TASK, RETRIED, commit_runs, run_row

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module (each launch costs about a second)."""
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (apt-get install chromium); `make test` does so")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; whatever it logs as an error or warning fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{message.type}: {message.text}")

    opened.on("console", console)
    opened.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    yield opened
    context.close()
    assert problems == []


def test_run_list_updates_live_without_reload(page: Page, served: WebServer, writer: Store) -> None:
    """A run that appears, then fails, shows in the open tab as it happens."""
    page.goto(served.url + "/")
    page.wait_for_selector(f'#runs tr[data-run="{RETRIED}"]')
    page.wait_for_selector('#live-state[data-state="live"]')
    page.evaluate("window.notReloaded = true")
    commit_runs(writer, run_row("R-new", status="running"))
    page.wait_for_selector('#runs tr[data-run="R-new"][data-status="running"]', timeout=5000)
    page.wait_for_selector('#active-runs tr[data-run="R-new"]')
    commit_runs(writer, run_row("R-new", status="failed", ended_at="2026-12-01T09:30:00+00:00"))
    page.wait_for_selector('#runs tr[data-run="R-new"][data-status="failed"]', timeout=5000)
    assert page.locator('#active-runs tr[data-run="R-new"]').count() == 0
    assert page.evaluate("window.notReloaded") is True


def test_status_filter_shows_only_that_status(page: Page, served: WebServer) -> None:
    page.goto(served.url + "/")
    page.wait_for_selector(f'#runs tr[data-run="{RETRIED}"]')
    page.select_option("#status-filter", "failed")
    page.wait_for_selector(f'#runs tr[data-run="{RETRIED}"]', state="detached")
    statuses = page.eval_on_selector_all(
        "#runs tbody tr", "rows => rows.map(r => r.dataset.status)"
    )
    assert statuses and set(statuses) == {"failed"}
    assert HOSTILE_RUN in page.eval_on_selector_all(
        "#runs tbody tr", "rows => rows.map(r => r.dataset.run)"
    )
    page.fill("#name-filter", "img src")
    expect(page.locator("#runs tbody tr")).to_have_count(1)


def test_run_page_draws_one_bar_per_attempt(page: Page, served: WebServer) -> None:
    """T1 failed, waited 29m 30s and succeeded: two bars and the wait between them."""
    page.goto(f"{served.url}/runs/{RETRIED}")
    page.wait_for_selector("rect.attempt")
    bars = page.eval_on_selector_all(
        "rect.attempt", "bars => bars.map(b => [b.dataset.task, b.dataset.status])"
    )
    assert sorted(bars) == [["T1", "failed"], ["T1", "succeeded"], ["T2", "succeeded"]]
    wait = page.locator('line.wait[data-task="T1"] title').text_content()
    assert wait is not None and "waited 29m 30s" in wait
    assert "31m 50s" in (page.locator("#run-header").text_content() or "")
    lanes = page.eval_on_selector_all("svg .lane", "ls => ls.map(l => l.textContent)")
    assert lanes == ["WS-A", "WS-B"]
    first_tick = page.locator(".axis text").first.text_content()
    page.click("text=zoom in")
    expect(page.locator(".axis text").first).not_to_have_text(first_tick or "")
    page.click("text=fit")
    expect(page.locator(".axis text").first).to_have_text(first_tick or "")
    page.click('rect.attempt[data-task="T2"]')
    expect(page.locator("#events-title")).to_contain_text("T2")
    tasks = page.eval_on_selector_all(
        "#event-table tbody tr td:nth-child(4)", "cells => cells.map(c => c.textContent)"
    )
    assert tasks and set(tasks) == {"T2"}


def test_hostile_text_shows_as_text(page: Page, served: WebServer) -> None:
    """Markup in run ids, task ids and error messages is displayed, never run or parsed."""
    page.goto(f"{served.url}/runs/{quote(HOSTILE_RUN, safe='')}")
    page.wait_for_selector("#failures-table")
    assert page.locator("#run-id").text_content() == HOSTILE_RUN
    assert page.locator("#failures-table td.msg").first.text_content() == HOSTILE_ERROR
    tasks = page.locator("rect.attempt").evaluate_all("bars => bars.map(b => b.dataset.task)")
    assert tasks == [HOSTILE_TASK]
    assert page.locator("main img, main script, main b, main i").count() == 0
    assert page.title() != "pwned"
    page.goto(served.url + "/")
    link = page.locator("#runs a.run-link", has_text="img src")
    assert link.text_content() == HOSTILE_RUN
    assert page.locator("main img").count() == 0


def test_other_pages_render_cleanly(page: Page, served: WebServer) -> None:
    page.goto(served.url + "/alerts")
    page.wait_for_selector("#alert-table")
    assert page.locator("#alert-table tbody tr").count() >= 1
    page.goto(served.url + "/tasks/T1")
    page.wait_for_selector("svg.history rect.bar")
    assert RETRIED in (page.locator("#history").text_content() or "")


def test_the_slo_panel_shows_each_objective_when_slos_are_configured(
    page: Page, served: WebServer, projection: Path
) -> None:
    """With `slos:` configured the front page leads with their level and budget; without,
    there is no empty panel."""
    page.goto(served.url + "/")
    page.wait_for_selector(f'#runs tr[data-run="{RETRIED}"]')
    assert page.locator("#panel-slo").count() == 0
    decade = 10 * 365 * 86400.0
    slos = (Slo("runs_succeed", "success", 0.999, decade, min_events=1),)
    server = WebServer("127.0.0.1", 0, Dashboard(projection, slos=slos))
    server.start()
    try:
        page.goto(server.url + "/")
        row = page.locator('#panel-slo tr[data-slo="runs_succeed"]')
        expect(row).to_have_count(1)
        cells = row.locator("td")
        expect(cells).to_have_count(14)  # name, objective, runs, bad, share, budget, 7 burns, alert
        expect(cells.nth(5)).to_have_class("warn")  # failures overspent a 0.1 % budget
        expect(cells.last).to_have_text("ok")  # long ago: no window burns now
        expect(page.locator("#panel-slo h2")).to_have_text("Service levels")
    finally:
        server.stop()
