"""The dashboard in a real browser: Debian's headless Chromium driven by selenium against a training coordinator.

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian's `chromium` and
`chromium-driver`; `.ci/run` installs them) and the `selenium` package; nothing is
downloaded at run time (both paths are given, so selenium-manager never runs).
Without them the module is skipped, unless LENET_REQUIRE_SYSTEM=1 (set by CI),
where that is a failure.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from procs import coordinator, free_port, scrape, worker

pytestmark = pytest.mark.system

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1800")
CHARTS = ("chart-loss", "chart-epoch-loss", "chart-accuracy", "chart-rate", "chart-lr")

# One consistent read of what the page shows (JavaScript runs one thing at a time, so no render interleaves).
READ_PAGE = """
const shown = {};
for (const el of document.querySelectorAll("[id^='m-']")) shown[el.id.slice(2)] = el.dataset.value;
const charts = {};
for (const svg of document.querySelectorAll("svg[id^='chart-']"))
  charts[svg.id] = [...svg.querySelectorAll("polyline")].map(p => p.getAttribute("points"));
const workers = [...document.querySelectorAll("#workers tr.worker")].map(
  tr => [...tr.querySelectorAll("td")].map(td => td.textContent));
return {time: parseFloat(document.getElementById("conn").dataset.time || "0"), shown, charts, workers};
"""


@pytest.fixture
def browser(tmp_path, monkeypatch):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        if os.environ.get("LENET_REQUIRE_SYSTEM") == "1":
            pytest.fail(f"{', '.join(missing)} missing, but LENET_REQUIRE_SYSTEM=1")
        pytest.skip(f"{', '.join(missing)} missing (apt-get install chromium chromium-driver; pip install selenium)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager, should anything reach it, may not download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    yield driver
    driver.quit()


def page_after(driver, moment: float, timeout: float = 20.0) -> dict:
    """What the page shows, once it has rendered a status fetched after `moment` (Unix time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = driver.execute_script(READ_PAGE)
        if page["time"] > moment:
            return page
        time.sleep(0.1)
    raise AssertionError(f"the page rendered nothing newer than {moment} within {timeout} s")


def points(page: dict, chart: str) -> int:
    return sum(len(p.split()) for p in page["charts"][chart])


def wait_for(driver, what: str, predicate, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = page_after(driver, 0)
        if predicate(page):
            return page
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what} within {timeout} s")


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_dashboard_draws_live_curves_that_agree_with_metrics(browser, tmp_path, procs):
    port, zmq_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--min-workers", "2", "--train-subset",
                        "12800", "--epochs", "30", "--metrics-port", str(port), "--checkpoint-dir",
                        str(tmp_path / "ck"), "--checkpoint-every", "40", "--output", str(tmp_path / "m.npz"),
                        "--heartbeat-timeout", "30")  # the workers are stopped for ~5 s: far from being declared dead
    procs.append(coord)
    workers = [worker(tmp_path, endpoint, f"w{i}") for i in range(2)]
    procs.extend(workers)
    coord.wait_for(f"metrics on http://127.0.0.1:{port}/metrics, dashboard on http://127.0.0.1:{port}/")

    browser.get(f"http://127.0.0.1:{port}/")
    assert browser.title == "LeNet-5 training"
    first = wait_for(browser, "two finished epochs", lambda p: points(p, "chart-accuracy") >= 4)  # 2 series x 2
    assert all(points(first, chart) > 0 for chart in CHARTS), first["charts"]

    # Freeze training (stop both workers) so that the page and /metrics describe the same moment.
    for w in workers:
        w.signal(signal.SIGSTOP)
    try:
        time.sleep(1.0)  # a result already on its way may still complete one step
        metrics = scrape(port)
        page = page_after(browser, time.time() + 3.5)  # both workers have been silent > 3 s by then
        after = scrape(port)
        assert after["lenet_steps_total"] == metrics["lenet_steps_total"]  # frozen all along
    finally:
        for w in workers:
            w.signal(signal.SIGCONT)
    shown = {name: float(value) for name, value in page["shown"].items()}
    # The page's moment lies between the two scrapes.  Training is frozen, but the coordinator is
    # not: the stopped workers' units pass their deadline (3 s) and are re-dispatched meanwhile.
    for name in ("lenet_steps_total", "lenet_samples_total", "lenet_epoch", "lenet_epoch_samples",
                 "lenet_learning_rate", "lenet_train_loss", "lenet_train_accuracy", "lenet_test_accuracy",
                 "lenet_workers_alive", "lenet_workers_lost_total", "lenet_shards_redispatched_total",
                 "lenet_checkpoint_duration_seconds_count", "lenet_checkpoint_failures_total",
                 "lenet_sent_bytes_total", "lenet_received_bytes_total"):
        assert metrics[name] <= shown[name] <= after[name], (name, metrics[name], shown[name], after[name])
    assert shown["lenet_workers_alive"] == 2 and shown["lenet_checkpoint_duration_seconds_count"] >= 2
    assert [[row[0], row[1], row[2].replace(",", "")] for row in page["workers"]] == [
        [f"w{i}", "silent", f"{metrics[f'lenet_worker_accepted_shards_total{{worker=w{i}}}']:.0f}"] for i in range(2)]
    assert all(float(row[3]) == round(metrics[f"lenet_worker_compute_seconds_total{{worker=w{i}}}"], 1)
               for i, row in enumerate(page["workers"]))

    # Training goes on: the curves grow and the workers are live again.
    later = wait_for(browser, "more steps and epochs", lambda p: points(p, "chart-loss") > points(page, "chart-loss")
                     and points(p, "chart-accuracy") > points(page, "chart-accuracy")
                     and all(row[1] == "live" for row in p["workers"]))
    assert later["charts"] != page["charts"]
    assert float(later["shown"]["lenet_steps_total"]) > shown["lenet_steps_total"]
    assert severe(browser) == []
