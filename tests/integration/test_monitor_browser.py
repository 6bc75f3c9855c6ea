"""The Failover Monitor in a real browser: headless Chromium driven by Selenium against a real
pair (two node processes with the HTTP API on loopback).

Both nodes' pages are open (one browser each: each keeps its own session), both show their
roles and states; the operator presses Failover on the active node's page and confirms; both
pages follow the swap live (no reload: a mark put into each page before is still there after),
the page of the node that became inactive shows the banner with the link to the active node's
page, the failover is in the table of the last failovers and on the timeline.  A read-only
operator sees the buttons disabled, and a POST made from that page is refused.

Screenshots (before and after, both nodes) go to ``$VMHA_ARTEFACTS`` (default
``<repo>/artefacts/screenshots``).  Chromium, chromedriver and selenium are required: a
missing one fails the test with a message naming it (never a skip).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab.pair import Pair

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0  # seconds: a guard against a hang, never a speed limit


def artefacts() -> Path:
    d = Path(os.environ.get("VMHA_ARTEFACTS") or ROOT / "artefacts" / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def need_browser():
    """selenium's webdriver module, or a failure naming what is missing and how to get it."""
    missing = []
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        missing.append("the Python package selenium (pip install -e '.[test]')")
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            found = shutil.which(Path(path).name)
            missing.append(f"{path} (Debian package {pkg}: apt-get install {pkg}; bash .ci/setup test "
                           "installs it)" + (f"; {found} exists but is not the one used" if found else ""))
    if missing:
        pytest.fail("the browser test needs " + " and ".join(missing), pytrace=False)
    return webdriver


def new_driver(webdriver):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_window_size(1400, 1000)
    driver.set_page_load_timeout(WAIT)
    return driver


def wait(driver, what: str, cond):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(lambda d: cond(d))
    except TimeoutException:
        raise AssertionError(f"{what} not seen within {WAIT:g} s on {driver.current_url}:\n"
                             + text_of(driver, "message") + "\n" + driver.page_source[:3000]) from None


def text_of(driver, ident: str) -> str:
    from selenium.webdriver.common.by import By

    els = driver.find_elements(By.ID, ident)
    return els[0].text if els else ""


def login(driver, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    wait(driver, "the login page", lambda d: d.current_url.rstrip("/").endswith("/login"))
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-submit").click()
    wait(driver, "the monitor page", lambda d: d.find_elements(By.ID, "node-name")
         and text_of(d, "node-name") not in ("", "?"))


def shows(driver, node: str, state: str, peer_state: str) -> bool:
    return (text_of(driver, "node-name") == node and text_of(driver, "node-state") == state
            and text_of(driver, "peer-state") == peer_state and text_of(driver, "live") == "live")


def banner(driver) -> tuple[bool, str, str]:
    from selenium.webdriver.common.by import By

    b = driver.find_element(By.ID, "active-banner")
    link = driver.find_element(By.ID, "active-link")
    return b.is_displayed(), b.text, link.get_attribute("href") or ""


def test_failover_from_the_page_seen_live_on_both_nodes(pair_dir):
    webdriver = need_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shots = artefacts()
    pair = Pair(pair_dir, relay=False, http=True)
    drivers: list = []
    try:
        pair.start("a")
        pair.wait_state("a", "active", 30)
        pair.wait_state("b", "inactive", 30)
        url = {n: pair.http_url(n) for n in "ab"}
        pages = {}
        for n in "ab":  # one browser per node: a session cookie is per host, both are 127.0.0.1
            pages[n] = new_driver(webdriver)
            drivers.append(pages[n])
            login(pages[n], url[n], pair.tokens["admin"])
        pa, pb = pages["a"], pages["b"]
        wait(pa, "a active, b inactive on a's page", lambda d: shows(d, "a", "active", "inactive"))
        wait(pb, "b inactive, a active on b's page", lambda d: shows(d, "b", "inactive", "active"))
        assert text_of(pa, "node-role") == "primary" and text_of(pb, "node-role") == "secondary"
        assert text_of(pa, "peer-name") == "b" and text_of(pb, "peer-name") == "a"
        wait(pb, "the banner on inactive b", lambda d: banner(d)[0])
        shown, text, href = banner(pb)
        assert text.startswith("Active node: a") and href.rstrip("/") == url["a"], (text, href)
        assert not banner(pa)[0]
        for d in (pa, pb):  # the timeline is drawn: a row per node
            wait(d, "the timeline", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline rect.seg")) > 1)
            d.execute_script("window.vmhaNoReload = 'still the same page';")
        for n, d in pages.items():
            d.save_screenshot(str(shots / f"monitor-{n}-before.png"))

        # the operator presses Failover on a's page and confirms
        button = pa.find_element(By.ID, "btn-failover")
        assert button.is_enabled()
        button.click()
        yes = wait(pa, "the confirmation dialog", lambda d: d.find_element(By.ID, "confirm-yes")
                   if d.find_element(By.ID, "confirm-yes").is_displayed() else None)
        assert "Fail over to the secondary b" in text_of(pa, "confirm-text")
        yes.click()

        # both pages follow the swap live, without a reload
        wait(pa, "a inactive, b active on a's page", lambda d: shows(d, "a", "inactive", "active"))
        wait(pb, "b active, a inactive on b's page", lambda d: shows(d, "b", "active", "inactive"))
        for d in (pa, pb):
            assert d.execute_script("return window.vmhaNoReload;") == "still the same page"
        assert pair.a.state() == "inactive" and pair.b.state() == "active"  # the nodes agree
        wait(pa, "the banner on a, now inactive", lambda d: banner(d)[0] and "Active node: b" in banner(d)[1])
        assert banner(pa)[2].rstrip("/") == url["b"]
        wait(pb, "no banner on b, now active", lambda d: not banner(d)[0])
        assert "failover:" in text_of(pa, "message"), text_of(pa, "message")

        # the failover in b's table of the last failovers and on its timeline
        def failover_row(d):
            rows = d.find_elements(By.CSS_SELECTOR, "#failovers tbody tr.fo-failover")
            cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")] if rows else []
            return cells if cells and cells[1] == "b" else None

        cells = wait(pb, "the failover in b's #failovers", failover_row)
        assert cells[4] == "operator" and "operator failover" in cells[5], cells
        assert cells[6].endswith(" ms") or cells[6].endswith(" s"), cells
        marker = wait(pb, "the failover marker on b's timeline", lambda d: d.find_elements(
            By.CSS_SELECTOR, "#timeline polygon.mk-failover:not(.seen) title"))
        title = marker[-1].get_attribute("textContent")
        assert title.startswith("failover: b active at") and "why: operator; cause: " in title, title
        # a's page: b's row, as a saw it, ends active and carries the failover a saw
        wait(pa, "b's failover seen on a's timeline", lambda d: d.find_elements(
            By.CSS_SELECTOR, "#timeline polygon.mk-failover.seen"))
        wait(pa, "the seen failover in a's #failovers", failover_row)
        for n, d in pages.items():
            d.save_screenshot(str(shots / f"monitor-{n}-after.png"))
            # the last hour: the pair's short life is wide enough to see
            Select(d.find_element(By.ID, "timeline-hours")).select_by_value("1")
            wait(d, "the timeline of the last hour",
                 lambda d: d.find_element(By.ID, "timeline").get_attribute("data-hours") == "1")
            d.save_screenshot(str(shots / f"monitor-{n}-after-1h.png"))

        # a read-only operator: the buttons are disabled, and a POST from the page is refused
        viewer = new_driver(webdriver)
        drivers.append(viewer)
        login(viewer, url["b"], pair.tokens["read"])
        wait(viewer, "the viewer's page", lambda d: shows(d, "b", "active", "inactive"))
        for ident in ("btn-failover", "btn-failback", "btn-mode"):
            assert not viewer.find_element(By.ID, ident).is_enabled(), ident
        assert "Read-only" in text_of(viewer, "controls-note")
        viewer.save_screenshot(str(shots / "monitor-b-read-only.png"))
        status, body = viewer.execute_async_script("""
            const done = arguments[arguments.length - 1];
            (async () => {
              const s = await (await fetch('/api/v1/session')).json();
              const r = await fetch('/api/v1/failback', {method: 'POST', body: '{"force": false}',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token}});
              done([r.status, await r.json()]);
            })().catch((e) => done([0, String(e)]));
        """)
        assert status == 403 and body["error"]["code"] == "forbidden", (status, body)
        assert pair.a.state() == "inactive" and pair.b.state() == "active"  # nothing changed
    finally:
        for d in drivers:
            try:
                d.quit()
            except Exception:  # noqa: BLE001 - the pair is stopped all the same
                pass
        pair.stop()
