"""The HTML reports as a real browser renders them: headless Chromium, no mocks.

Chromium (this is 156) prints every console message of a page to stderr, whatever its level,
as `[pid:tid:time:INFO:CONSOLE:<line>] "<text>", source: <url> (<line>)`, uncaught exceptions
included ("Uncaught Error: …"). Reports have no script at all, so any console line is a
failure; `test_console_detection_works` proves the check sees messages when there are some.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import pytest
from test_reports import (
    HOSTILE_ERROR,
    HOSTILE_RUN,
    Elements,
    bars_per_attempt,
    load_inputs,
    make_corpus,
    reports_for,
    run_rows,
)

from runwatch.sinks.naming import safe_filename
from runwatch.sinks.reports import build_index, write_reports

CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
    "--dump-dom",
)


def chromium() -> str:
    """The browser; `make test` installs Debian's chromium, so its absence is a failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed (apt-get install chromium); `make test` does so")
    return found


def render(page: Path, profile: Path) -> tuple[str, list[str]]:
    """Load `page` from disk in headless Chromium: the DOM after scripts ran, and every
    console message the page produced."""
    done = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [m.group(1) for m in CONSOLE.finditer(done.stderr)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run's reports and the index, written from a real projection into reports/."""
    root = make_corpus(tmp_path_factory.mktemp("corpus"))
    runs = run_rows(root / "db.sqlite")
    for run in runs:
        write_reports(root / "reports", reports_for(root, run["run_id"]))
    write_reports(root / "reports", {"index.html": build_index(runs)})
    return root


def test_console_detection_works(tmp_path: Path) -> None:
    """The no-console-errors checks below are only worth something if errors do show up."""
    page = tmp_path / "noisy.html"
    page.write_text(
        "<!DOCTYPE html><title>t</title><script>console.error('sanity-x');"
        "throw new Error('kaboom')</script>"
    )
    dom, console = render(page, tmp_path / "profile")
    assert "<title>t</title>" in dom
    assert any("sanity-x" in line for line in console)
    assert any("Uncaught Error: kaboom" in line for line in console)


@pytest.fixture(scope="module")
def hostile(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """The hostile run's page as Chromium rendered it (once: each launch costs a second)."""
    page = corpus / "reports" / f"{safe_filename(HOSTILE_RUN)}.html"
    return render(page, tmp_path_factory.mktemp("profile"))


def test_hostile_error_is_shown_as_text(hostile: tuple[str, list[str]]) -> None:
    """An error message holding markup is displayed, not executed (title untouched, no img)."""
    dom, console = hostile
    assert console == []
    assert escape(HOSTILE_ERROR, quote=False) in dom
    assert Elements(dom).title == f"Run {HOSTILE_RUN}"
    assert "<img" not in dom and "<script" not in dom


def test_hostile_page_has_one_bar_per_attempt(corpus: Path, hostile: tuple[str, list[str]]) -> None:
    """Hostile task ids still get exactly their own bars, with the id intact as data."""
    tasks = load_inputs(corpus / "db.sqlite", corpus / "events", HOSTILE_RUN)["tasks"]
    assert sorted(map(str, Elements(hostile[0]).bars())) == bars_per_attempt(tasks)


def test_simulated_run_page_renders_cleanly(corpus: Path, tmp_path: Path) -> None:
    """A real run with open tasks shows one bar per attempt, runs nothing and logs no error."""
    runs = [r for r in run_rows(corpus / "db.sqlite") if r["run_id"] != HOSTILE_RUN]
    run = max(runs, key=lambda r: (r["tasks_pending"] + r["tasks_running"], r["run_id"]))
    assert run["tasks_pending"] + run["tasks_running"] > 0
    inputs = load_inputs(corpus / "db.sqlite", corpus / "events", run["run_id"])
    page = corpus / "reports" / f"{safe_filename(run['run_id'])}.html"
    dom, console = render(page, tmp_path / "profile")
    assert console == []
    rendered = Elements(dom)
    assert sorted(map(str, rendered.bars())) == bars_per_attempt(inputs["tasks"])
    assert rendered.title == f"Run {run['run_id']}"
    assert not rendered.named("script") and not rendered.named("img")


def test_index_renders_and_links_every_run(corpus: Path, tmp_path: Path) -> None:
    """The index opens cleanly in a browser and links each run's page that exists."""
    dom, console = render(corpus / "reports" / "index.html", tmp_path / "profile")
    assert console == []
    links = [str(a["href"]) for a in Elements(dom).named("a")]
    assert len(links) == len(run_rows(corpus / "db.sqlite"))
    assert all((corpus / "reports" / link).is_file() for link in links)
