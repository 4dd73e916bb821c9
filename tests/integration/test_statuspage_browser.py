# -*- test-case-name: tests.integration.test_statuspage_browser -*-
"""
The status page of the C{[admin]} listener in a real browser: Debian's
headless C{chromium}, driven through C{chromedriver} by selenium, against
a running L{LoadBalancerService} with real backends on 127.0.0.1.

Selenium's calls block, so they run in a thread (L{deferToThread}) while
the reactor of the test serves the page, the backends and the proxy.

The browser comes from apt (C{sh .ci/tools.sh chromium chromium-driver});
without it the test is skipped, unless the environment variable C{CI} is
set, where a missing browser fails the test rather than hide it.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from typing import Any, Callable, Optional

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy.testing import startServer
from tests.integration.test_admin_live import NamedBackend

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover - depends on the environment
    webdriver = None
    _seleniumMissing: Optional[str] = str(e)
else:
    _seleniumMissing = None

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: How long the page may take to show a stopped backend as down: a few
#: health intervals and page refreshes, with room for a loaded machine.
DOWN_WITHIN = 30.0


def _missing() -> Optional[str]:
    """
    Why the browser test cannot run here, or L{None} when it can.
    """
    absent = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if absent:
        return (
            f"{' and '.join(absent)} missing: install them with "
            "`sh .ci/tools.sh chromium chromium-driver`"
        )
    if _seleniumMissing is not None:
        return f"selenium is not installed ({_seleniumMissing}): pip install -e '.[test]'"
    return None


_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers =
    127.0.0.1:{a} weight=3
    127.0.0.1:{b}
    127.0.0.1:{c} backup
health_check = /health
health_interval = 200ms
health_timeout = 1s
health_fall = 1

[upstream:api]
servers =
    127.0.0.1:{d}
health_check = /health
health_interval = 200ms

[vhost:app]
default = yes
upstream = app

[vhost:api]
server_names = api.example
upstream = api

[admin]
listen = tcp:0:interface=127.0.0.1
"""


def _children() -> dict[int, list[int]]:
    """
    Every process's children, by parent PID, from C{/proc}.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: the fields
        # after its closing parenthesis are state, then the parent PID.
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _naming(text: str) -> set[int]:
    """
    The processes whose command line holds C{text}.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.add(int(entry))
            except OSError:
                continue
    return found


def _descendants(pid: int) -> set[int]:
    """
    C{pid} and every process started under it (that has not left it by
    forking twice: see L{_naming}).
    """
    children = _children()
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, ()))
    return found


def _alive(pid: int) -> bool:
    """
    Whether C{pid} still runs (a zombie waiting for its parent counts as
    stopped).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _screenshot(driver: Any, path: str) -> None:
    """
    Save the whole page, not only the window, as a PNG at C{path}.
    """
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            },
        },
    )
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))


class StatusPageBrowserTests(TestCase):
    """
    The status page, opened in headless chromium, lists every backend and
    shows one as down, by its own refresh, once it stops.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        why = _missing()
        if why is not None:
            if os.environ.get("CI"):
                self.fail(f"CI is set but the browser test cannot run: {why}")
            raise SkipTest(why)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.servers = {}
        for name in "abcd":
            server = yield startServer(NamedBackend(name.encode()), reactor)
            self.addCleanup(server.stop)
            self.servers[name] = server
        config = parseConfigText(
            _CONFIG.format(**{n: s.port for n, s in self.servers.items()}), "status.ini"
        )
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        proxy, admin = yield self.service.whenListening()
        self.proxy = "http://127.0.0.1:%d/" % (proxy.getHost().port,)
        self.admin = "http://127.0.0.1:%d/" % (admin.getHost().port,)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.driver = yield deferToThread(self.startBrowser)
        self.addCleanup(self.stopBrowser)

    def startBrowser(self) -> Any:
        """
        Start chromedriver and a headless chromium with a profile of its
        own in the test's directory.
        """
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-breakpad",
            "--disable-crash-reporter",
            "--disable-dev-shm-usage",
            "--force-device-scale-factor=1",
            "--window-size=1280,900",
            f"--user-data-dir={os.path.join(self.directory, 'profile')}",
        ):
            options.add_argument(argument)
        service = Service(
            CHROMEDRIVER, log_output=os.path.join(self.directory, "chromedriver.log")
        )
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(30)
        self.chromedriverPID = service.process.pid
        return driver

    @inlineCallbacks
    def stopBrowser(self) -> Any:
        """
        Quit the browser and chromedriver, then check every process they
        started is gone, killing by PID (and failing) any that is not: the
        processes under chromedriver's, and those that name the browser's
        profile directory (a helper that forked twice has left the tree).
        """
        started = _descendants(self.chromedriverPID) | _naming(self.directory)
        yield deferToThread(self.driver.quit)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            yield deferLater(reactor, 0.1, lambda: None)
        left = sorted(p for p in started if _alive(p))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(left, [], "processes still running after driver.quit()")

    def inBrowser(self, f: Callable[..., Any], *args: Any) -> Any:
        """
        Run C{f(driver, *args)} in a thread, off the reactor.
        """
        return deferToThread(f, self.driver, *args)

    def sendTraffic(self, perSecond: float) -> None:
        """
        Send C{perSecond} requests a second through the proxy until the
        test ends (then wait for those in flight).
        """
        inFlight: set[Deferred[Any]] = set()

        def send() -> None:
            d = self.client.get(self.proxy)
            d.addCallback(lambda response: response.content())
            d.addErrback(lambda failure: None)
            inFlight.add(d)
            d.addBoth(lambda _: inFlight.discard(d))

        def stop() -> Any:
            loop.stop()
            return gatherResults(list(inFlight))

        loop = LoopingCall(send)
        loop.clock = reactor
        loop.start(1.0 / perSecond)
        self.addCleanup(stop)

    @inlineCallbacks
    def test_backendGoesDown(self) -> Any:
        """
        The page lists every backend of every upstream; when a backend
        stops, its row turns to C{down} through the page's own refresh,
        without reloading the page, and the requests per second show.
        """
        self.sendTraffic(20)
        rows = yield self.inBrowser(openPage, self.admin)
        expected = {f"127.0.0.1:{s.port}" for s in self.servers.values()}
        self.assertEqual(set(rows), expected)
        self.assertEqual(
            {rows[f"127.0.0.1:{self.servers[n].port}"] for n in "abc"}, {"r-up"}
        )
        self.assertEqual(rows[f"127.0.0.1:{self.servers['d'].port}"], "r-up")

        yield self.servers["b"].stop()
        down = f"127.0.0.1:{self.servers['b'].port}"
        result = yield self.inBrowser(waitUntilDown, down)
        self.assertEqual(result["marker"], "set before the stop", "the page reloaded")
        self.assertNotEqual(result["before"], result["after"], "the figures did not change")
        self.assertIn("failed health check", result["rows"][down]["reason"])
        up = f"127.0.0.1:{self.servers['a'].port}"
        self.assertRegex(result["rows"][up]["rate"], r"^[0-9.]+/s$")
        desktop = os.path.join(self.directory, "status-desktop.png")
        phone = os.path.join(self.directory, "status-phone.png")
        yield self.inBrowser(screenshots, desktop, phone)
        for path in (desktop, phone):
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


#: Reads every backend row at once, in the page: the page's refresh may
#: replace the rows between two WebDriver calls.
_READ_ROWS = """
var rows = {};
document.querySelectorAll("tr[class^='r-']").forEach(function (row) {
    rows[row.querySelector(".addr").textContent] = {
        state: row.className,
        reason: row.querySelector(".reason").textContent,
        rate: row.querySelector("td[data-label=Requests] .sub").textContent
    };
});
return rows;
"""


def _backendRows(driver: Any) -> dict[str, dict[str, str]]:
    """
    Each backend row of the page, by address: its C{r-STATE} class, state
    reason and requests per second.
    """
    rows: dict[str, dict[str, str]] = driver.execute_script(_READ_ROWS)
    return rows


#: The time the figures on the page were drawn, read in the page: the
#: refresh replaces C{<main id="status">} with a new element, so one found
#: by a WebDriver call may be detached (stale) by the next.
_READ_TIME = """return document.getElementById("status").getAttribute("data-time");"""


def _statusTime(driver: Any) -> str:
    """
    The C{data-time} of the page's C{<main id="status">}, as it is now.
    """
    drawn: str = driver.execute_script(_READ_TIME)
    return drawn


def openPage(driver: Any, url: str) -> dict[str, str]:
    """
    Open the status page, wait for its rows, and set a marker on
    C{window} that a reload would lose.
    """
    driver.get(url)
    WebDriverWait(driver, 10, poll_frequency=0.1).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[class^='r-']")) >= 4
    )
    driver.execute_script("window.lbproxyMarker = 'set before the stop';")
    return {address: row["state"] for address, row in _backendRows(driver).items()}


def waitUntilDown(driver: Any, address: str) -> dict[str, Any]:
    """
    Poll the DOM until the row of C{address} shows it down.
    """
    before = _statusTime(driver)

    def isDown(d: Any) -> Any:
        rows = _backendRows(d)
        return rows if rows.get(address, {}).get("state") == "r-down" else None

    try:
        rows = WebDriverWait(driver, DOWN_WITHIN, poll_frequency=0.1).until(isDown)
    except TimeoutException:
        raise AssertionError(
            f"{address} not shown down within {DOWN_WITHIN}s: {_backendRows(driver)}"
        ) from None
    return {
        "rows": rows,
        "marker": driver.execute_script("return window.lbproxyMarker;"),
        "before": before,
        "after": _statusTime(driver),
    }


def screenshots(driver: Any, desktop: str, phone: str) -> None:
    """
    Save the page as a desktop browser shows it, then at a phone's 390
    CSS pixels.
    """
    _screenshot(driver, desktop)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    WebDriverWait(driver, 10, poll_frequency=0.1).until(
        lambda d: d.execute_script("return window.innerWidth;") == 390
    )
    _screenshot(driver, phone)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
