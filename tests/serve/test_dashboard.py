"""The dashboard in a real browser: Playwright driving Debian's Chromium (``make browser``
installs it; never a downloaded browser) against the running Serve app.

One walk through every mode, as a user would: start a session in each of the four modes,
watch the metrics update, train manually, see a refused action's message, mark a trade on
the chart, train on the annotations, backtest the visible range. A screenshot is kept in
``$CANDLERAY_ARTIFACTS`` (default tests/artifacts/, not committed). Then what the page does
while it refreshes: a mode picked in the list stays until Switch, and a session stopped
elsewhere leaves the page with one message.

No sleeps: each wait is on something the page shows, or on the page's own refresh requests.
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


def open_dashboard(page, app) -> None:
    page.goto(app.url + "/")
    page.wait_for_function("document.querySelector('#health').textContent === 'ok'")
    page.fill("#token", app.token)  # the app runs with serve.token: the page sends it


def sessions_refreshed(page, times: int) -> None:
    """Return after the page's own GET /sessions refresh has answered ``times`` more times."""
    for _ in range(times):
        with page.expect_response(
            lambda r: r.request.method == "GET" and r.url.endswith("/sessions"), timeout=60_000
        ):
            pass


def stop_all(app) -> None:
    http = app.http()
    for s in http.get(app.url + "/sessions").json():
        http.delete(f"{app.url}/sessions/{s['id']}")


def test_every_mode_from_the_dashboard(app, browser_page):
    page, errors = browser_page
    open_dashboard(page, app)

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

    # the sessions table cuts nothing: every id whole (their ends tell them apart), every cell
    cut = page.evaluate(
        """[...document.querySelectorAll('#sessions td, #sessions th')]
          .filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.textContent)"""
    )
    assert not cut, cut
    ids = page.locator("#sessions tbody td.id").all_inner_texts()
    listed = [s["id"] for s in app.http().get(app.url + "/sessions").json()]
    assert sorted(i.replace("\n", "") for i in ids) == sorted(listed), (ids, listed)
    assert len(set(listed)) == 4

    # metrics update (the selected session is the manual one)
    page.wait_for_function(
        "Number(document.querySelector('#session-metrics dd[data-key=\"predictions\"]')"
        ".textContent) > 100"
    )
    assert metric(page, "state") in ("running", "finished")

    # train manually; BUY/SELL/HOLD are offered only in manual mode, where they can work
    page.click('button.train[data-action="BUY"]')
    page.wait_for_function("document.querySelector('#job').textContent.includes('queued')")
    page.select_option("#mode-select", "none")
    page.click("#switch-mode")
    page.wait_for_function("document.querySelector('#chart-title').textContent.endsWith('none')")
    assert not page.locator("#manual-row").is_visible()
    assert "needs mode manual" in page.locator("#manual-off").inner_text()

    # a refused action shows the API's message
    page.fill("#timeframe", "7x")
    page.click('button.start[data-mode="none"]')
    toast = page.locator("#toast")
    toast.wait_for(state="visible")
    assert "422" not in toast.inner_text() and "7x" in toast.inner_text(), toast.inner_text()
    page.fill("#timeframe", "1h")
    assert len(app.http().get(app.url + "/sessions").json()) == 4  # refused: nothing started

    page.select_option("#mode-select", "manual")
    page.click("#switch-mode")
    page.locator("#manual-row").wait_for(state="visible")

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
    drawn = page.evaluate(
        "markers.markers().filter((m) => (m.text || '').startsWith('A ')).map((m) => m.text)"
    )
    assert len(drawn) == 2, drawn  # entry and exit
    assert "from the browser test" in drawn[0] or "from the browser test" in drawn[1], drawn
    listed = page.locator("#annotations-table tbody tr").first.inner_text()
    assert "long" in listed and "from the browser test" in listed, listed

    # train on annotations: progress, then done
    page.click("#train-annotations")
    page.wait_for_function(
        "document.querySelector('#job').textContent.startsWith('training on annotations: done')",
        timeout=90_000,
    )

    # backtest the visible range -> the results table, and why it differs from the paper
    # trades the session made on the same candles
    page.click("#backtest-visible")
    page.locator("#backtest-panel").wait_for(state="visible", timeout=90_000)
    cells = page.locator("#backtest-table tbody tr").first.locator("td").all_inner_texts()
    assert cells[0].startswith("synthetic:SYN0") and not cells[1].startswith("error"), cells
    assert len(cells) == 8 and all(c not in ("", "–") for c in cells[1:4]), cells
    why = page.locator("#backtest-vs-live").inner_text()
    live_trades = page.evaluate("state.trades.filter((t) => t.exit_time).length")
    assert f"Live on these candles: {live_trades} paper trade(s)" in why, why
    assert f"Backtest: {cells[3]} trade(s)" in why, why
    (job,) = [j for j in app.http().get(app.url + "/jobs").json() if j["kind"] == "backtest"]
    result = app.http().get(f"{app.url}/jobs/{job['id']}")
    weights = result.json()["result"]["weights"]
    assert f"{weights['version']}, step {weights['step']}" in why, (why, weights)

    # the training stats show the steps the jobs made, as like-for-like figures: the mean of
    # the last N steps beside the best such mean, and the curve ends at that same mean
    page.wait_for_function(
        "Number(document.querySelector('#train-metrics dd[data-key=\"steps\"]').textContent) > 0"
    )
    shown = page.evaluate(
        """(() => {
          const m = state.training, n = m.recent_steps;
          const cell = (k, c) => document.querySelector(
            `#train-table tr[data-key="${k}"] td[data-col="${c}"]`).textContent;
          const acc = accSeries.data(), loss = lossSeries.data();
          return {n, heading: document.querySelector('#train-table thead').textContent,
            recent: cell('candle_accuracy', 'recent'), want: m.recent.candle_accuracy.toFixed(3),
            accLast: acc[acc.length - 1].value, accWant: m.recent.candle_accuracy,
            lossLast: loss[loss.length - 1].value, lossWant: m.recent.total_loss};
        })()"""
    )
    assert shown["n"] > 0 and f"last {shown['n']} steps" in shown["heading"], shown
    assert shown["recent"] == shown["want"], shown
    assert abs(shown["accLast"] - shown["accWant"]) < 1e-6, shown
    assert abs(shown["lossLast"] - shown["lossWant"]) < 1e-6, shown
    heldout = page.locator("#heldout-metrics").inner_text()
    assert "live direction accuracy" in heldout, heldout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert not errors, errors


def test_a_picked_mode_stays_until_switch(app, browser_page):
    """The refresh (every 2 s) shows the running mode, but never undoes the user's choice."""
    page, errors = browser_page
    stop_all(app)
    open_dashboard(page, app)
    page.click('button.start[data-mode="none"]')
    page.locator("#session-panel").wait_for(state="visible")
    page.select_option("#mode-select", "manual")
    sessions_refreshed(page, 2)  # a user reading the page while it refreshes
    assert page.eval_on_selector("#mode-select", "e => e.value") == "manual"
    assert "Switch to apply manual" in page.locator("#mode-note").inner_text()
    page.click("#switch-mode")
    page.locator("#manual-row").wait_for(state="visible")
    (session,) = app.http().get(app.url + "/sessions").json()
    assert session["mode"] == "manual"
    stop_all(app)
    assert not errors, errors


def test_a_session_stopped_elsewhere_leaves_the_page_once(app, browser_page):
    """Stopped by another client: the panel closes with one message, its chart is no longer polled."""
    page, errors = browser_page
    stop_all(app)
    open_dashboard(page, app)
    page.click('button.start[data-mode="none"]')
    page.locator("#session-panel").wait_for(state="visible")
    sid = page.locator("#sel-id").inner_text()
    # every message the page shows, and every chart request it makes for the session
    page.evaluate(
        """window.shownToasts = [];
        new MutationObserver(() => window.shownToasts.push(document.querySelector('#toast').textContent))
          .observe(document.querySelector('#toast'), {childList: true, characterData: true, subtree: true})"""
    )
    charts: list[str] = []
    page.on(
        "request", lambda r: charts.append(r.url) if f"/sessions/{sid}/chart" in r.url else None
    )
    app.http().delete(f"{app.url}/sessions/{sid}").raise_for_status()  # another client

    page.locator("#session-panel").wait_for(state="hidden", timeout=60_000)
    asked = len(charts)
    sessions_refreshed(page, 3)  # at least 4 s: four chart polls, had they gone on
    assert len(charts) == asked, charts[asked:]
    toasts = page.evaluate("window.shownToasts")
    assert len(toasts) == 1 and sid in toasts[0] and "no longer running" in toasts[0], toasts
    assert page.locator("#chart-title").inner_text() == f"No session selected ({sid} was stopped)"
    assert page.evaluate("candleSeries.data().length") == 0  # its candles went with it
    assert not errors, errors
