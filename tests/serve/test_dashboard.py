"""The dashboard in a real browser: Playwright driving Debian's Chromium (``make browser``
installs it; never a downloaded browser) against the running Serve app.

One walk through every mode, as a user would: start a session in each of the four modes,
watch the metrics update, train manually, see a refused action's message, mark a trade on
the chart, train on the annotations, backtest the visible range. A screenshot is kept in
``$CANDLERAY_ARTIFACTS`` (default tests/artifacts/, not committed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_harness import RunningApp, running_app

pytestmark = [pytest.mark.ray]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CANDLERAY_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
MODES = ("none", "pivots_only", "every_candle", "manual")


@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory) -> Iterator[RunningApp]:
    with running_app(tmp_path_factory.mktemp("dash")) as a:
        yield a


@pytest.fixture(scope="module")
def browser_page(app) -> Iterator[tuple[object, list[str]]]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            pg = browser.new_page(viewport={"width": 1500, "height": 950})
            pg.set_default_timeout(30_000)
            errors: list[str] = []  # uncaught page errors: a broken script shows here
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            yield pg, errors
        finally:
            browser.close()


def rows(page) -> int:
    return page.locator("#sessions tbody tr").count()


def metric(page, key: str) -> str:
    return page.locator(f'#session-metrics dd[data-key="{key}"]').inner_text()


def test_every_mode_from_the_dashboard(app, browser_page):
    page, errors = browser_page
    page.goto(app.url + "/")
    page.wait_for_function("document.querySelector('#health').textContent === 'ok'")
    page.fill("#token", app.token)  # the app runs with serve.token: the page sends it

    # a session in each mode (the four buttons); replay as fast as the host predicts, so
    # the last one (manual) is whole on the chart before a trade is marked on it
    page.fill("#speed", "0")
    for i, mode in enumerate(MODES, start=1):
        page.click(f'button.start[data-mode="{mode}"]')
        page.wait_for_function(f"document.querySelectorAll('#sessions tbody tr').length >= {i}")
        page.wait_for_function(
            f"document.querySelector('#chart-title').textContent.endsWith('— {mode}')"
        )
    assert rows(page) == 4

    # metrics update (the selected session is the manual one)
    page.wait_for_function(
        "Number(document.querySelector('#session-metrics dd[data-key=\"predictions\"]')"
        ".textContent) > 100"
    )
    assert metric(page, "state") in ("running", "finished")

    # train manually, then a refused action shows the API's message
    page.click('button.train[data-action="BUY"]')
    page.wait_for_function("document.querySelector('#job').textContent.includes('queued')")
    page.select_option("#mode-select", "none")
    page.click("#switch-mode")
    page.wait_for_function("document.querySelector('#chart-title').textContent.endsWith('none')")
    page.click('button.train[data-action="SELL"]')
    toast = page.locator("#toast")
    toast.wait_for(state="visible")
    assert "409" not in toast.inner_text() and "manual training needs mode" in toast.inner_text()
    page.select_option("#mode-select", "manual")
    page.click("#switch-mode")

    # mark a trade: entry candle, exit candle, side -> saved and drawn
    page.wait_for_function("state.session && state.session.state === 'finished'")
    page.wait_for_timeout(1500)  # the last chart refresh drew every candle
    page.click("#mark-trade")
    # two closed candles near the end, where the chart shows them, in page pixels
    points = page.evaluate(
        """(() => {
          const t = [...state.candles.keys()].sort((a, b) => a - b);
          return [t[t.length - 12], t[t.length - 4]].map((x) => [
            chart.timeScale().timeToCoordinate(x),
            candleSeries.priceToCoordinate(state.candles.get(x).close),
          ]);
        })()"""
    )
    box = page.locator("#chart").bounding_box()
    assert all(0 < x < box["width"] and 0 < y < box["height"] for x, y in points), points
    for x, y in points:
        page.mouse.click(box["x"] + x, box["y"] + y)
        page.wait_for_timeout(700)  # two quick clicks would be a double click
    page.locator("#side-dialog").wait_for(state="visible")
    page.fill("#side-note", "from the browser test")
    page.click('#side-dialog button[value="long"]')
    page.wait_for_function("state.annotations.length === 1")
    saved = app.http().get(app.url + "/annotations").json()
    assert len(saved) == 1 and saved[0]["side"] == "long"
    assert saved[0]["note"] == "from the browser test"
    drawn = page.evaluate("markers.markers().filter((m) => (m.text || '').startsWith('A ')).length")
    assert drawn == 2  # entry and exit

    # train on annotations: progress, then done
    page.click("#train-annotations")
    page.wait_for_function(
        "document.querySelector('#job').textContent.startsWith('training on annotations: done')",
        timeout=90_000,
    )

    # backtest the visible range -> the results table
    page.click("#backtest-visible")
    page.locator("#backtest-panel").wait_for(state="visible", timeout=90_000)
    cells = page.locator("#backtest-table tbody tr").first.locator("td").all_inner_texts()
    assert cells[0].startswith("synthetic:SYN0") and not cells[1].startswith("error"), cells
    assert len(cells) == 7 and all(c not in ("", "–") for c in cells[1:4]), cells

    # the training stats show the steps the jobs made
    page.wait_for_function(
        "Number(document.querySelector('#train-metrics dd[data-key=\"steps\"]').textContent) > 0"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert not errors, errors
