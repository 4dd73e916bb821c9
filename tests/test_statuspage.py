# -*- test-case-name: tests.test_statuspage -*-
"""
Tests for L{lbproxy._statuspage}: the HTML status page of the C{[admin]}
listener, read through L{AdminResource} with L{treq.testing.StubTreq} (a
real L{twisted.web.server.Site} in memory) and drawn from snapshots.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from html.parser import HTMLParser
from typing import Any, Optional

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._admin import AdminResource
from lbproxy._backend import Backend, Outcome
from lbproxy._certificates import loadChain
from lbproxy._pool import Pool
from lbproxy._snapshot import certificateStatus
from lbproxy._statuspage import (
    CONTENT_SECURITY_POLICY,
    NOSCRIPT_REFRESH_SECONDS,
    RateMeter,
    readings,
    renderPage,
    renderStatus,
)
from lbproxy.balancers._roundrobin import RoundRobin
from tests.certificates import Authority
from tests.test_metrics import dnsSource, etcdSource
from tests.test_snapshot import runningService

_BASE = "http://127.0.0.1:9000"


class _Rows(HTMLParser):
    """
    The text of each cell of each table row of a page, and the classes of
    each row, as a browser would read them (entities decoded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.rowClasses: list[str] = []
        self.tags: list[tuple[str, dict[str, Optional[str]]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.text = ""
        self._inCell = False
        self._inScript: Optional[list[str]] = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
            self.rowClasses.append(dict(attrs).get("class") or "")
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self._inCell = True
        elif tag == "span" and self._inCell:
            self.rows[-1][-1] += " "
        elif tag == "script":
            self._inScript = self.scripts
        elif tag == "style":
            self._inScript = self.styles

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._inCell = False
        elif tag in ("script", "style"):
            self._inScript = None

    def handle_data(self, data: str) -> None:
        if self._inScript is not None:
            self._inScript.append(data)
            return
        self.text += data + " "
        if self._inCell:
            self.rows[-1][-1] += data


def parse(page: str) -> _Rows:
    """
    Read C{page} with L{_Rows}.
    """
    parser = _Rows()
    parser.feed(page)
    parser.close()
    return parser


def _words(text: str) -> str:
    return " ".join(text.split())


class StatusPageTests(SynchronousTestCase):
    """
    C{GET /} of L{AdminResource} is the status page of the running pools.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.a = Backend("127.0.0.1", 9001, weight=3)
        self.b = Backend("127.0.0.1", 9002)
        self.c = Backend("::1", 9003, backup=True)
        self.app = Pool("app", [self.a, self.b, self.c], RoundRobin(), self.clock)
        self.api = Pool("api", [Backend("10.1.2.3", 80, down=True)], RoundRobin(), self.clock)
        for pool in (self.app, self.api):
            self.addCleanup(pool.close)
        self.pools = {"app": self.app, "api": self.api}
        self.resource = AdminResource(lambda: self.pools, "s3cret", reactor=self.clock)
        self.treq = StubTreq(self.resource)

    def get(self, path: str = "/", method: str = "GET") -> tuple[int, Any, str]:
        """
        Request C{path}; return the status, headers and body.
        """
        d = self.treq.request(method, _BASE + path)
        self.treq.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content()).decode("utf-8")
        return response.code, response.headers, body

    def test_everyBackendListed(self) -> None:
        """
        The page is HTML with a section per upstream and a row per backend:
        its address, state, weights and counters.
        """
        code, headers, body = self.get()
        self.assertEqual(code, 200)
        self.assertEqual(
            headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
        )
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        page = parse(body)
        sections = [a.get("data-upstream") for t, a in page.tags if t == "section"]
        self.assertEqual(sections, ["app", "api"])
        backendRows = [
            _words(r[0]) for r, c in zip(page.rows, page.rowClasses) if c.startswith("r-")
        ]
        self.assertEqual(
            backendRows,
            ["127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003 backup", "10.1.2.3:80"],
        )
        first = [_words(cell) for cell in page.rows[1]]
        self.assertEqual(first[1], "up started since start")
        self.assertEqual(first[2:6], ["3 effective 3", "0", "0 \u2013/s", "0 \u2013/s"])
        self.assertIn("app 3 of 3 up", _words(page.text))
        self.assertIn("api 0 of 1 up", _words(page.text))

    def test_states(self) -> None:
        """
        Each backend's state is shown with its reason and how long ago it
        began, and the row is marked with it.
        """
        self.app.markDown(self.b, "3 consecutive failed health checks")
        self.clock.advance(42)
        self.app.drain(self.a, "drained by the operator")
        self.clock.advance(3)
        page = parse(self.get()[2])
        states = {
            _words(row[0]): (cls, _words(row[1]))
            for row, cls in zip(page.rows, page.rowClasses)
            if cls
        }
        self.assertEqual(
            states,
            {
                "127.0.0.1:9001": ("r-draining", "draining drained by the operator since 3s ago"),
                "127.0.0.1:9002": ("r-down", "down 3 consecutive failed health checks since 45s ago"),
                "[::1]:9003 backup": ("r-up", "up started since start"),
                "10.1.2.3:80": ("r-disabled", "disabled down in the configuration since start"),
            },
        )
        titles = [a.get("title") for t, a in page.tags if t == "time"]
        self.assertEqual(titles, ["2027-01-15 08:00:42 UTC", "2027-01-15 08:00:00 UTC"])
        self.assertIn("app 1 of 3 up", _words(page.text))

    def test_perSecond(self) -> None:
        """
        Requests and failures are shown in total and per second, over the
        time between two renderings of the page on the injected clock.
        """
        self.get()
        for i in range(10):
            self.app.requestStarted(self.a, i)
            self.app.requestFinished(
                self.a, i, Outcome.SUCCESS if i < 8 else Outcome.RESET, 0.004
            )
        self.app.requestStarted(self.a, "open")
        self.clock.advance(4)
        page = parse(self.get()[2])
        row = [_words(cell) for cell in page.rows[1]]
        self.assertEqual(row[3:7], ["1", "11 2.8/s", "2 0.5/s", "4.0 ms"])

    def test_escaping(self) -> None:
        """
        Every value of the snapshot is escaped: names and reasons come from
        the configuration and from the backends' answers.
        """
        hostile = "<script>alert('x')</script>&\""
        snapshot = {
            "upstreams": [
                {
                    "name": hostile,
                    "backends": [
                        {
                            "name": hostile,
                            "url": hostile,
                            "state": hostile,
                            "reason": hostile,
                            "since": 10.0,
                            "weight": hostile,
                            "effective_weight": hostile,
                            "active": hostile,
                            "requests": 1,
                            "failures": 0,
                            "last_latency": hostile,
                            "health": {
                                "last_result": hostile,
                                "last_passed": hostile,
                                "last_latency": 0.1,
                                "last_time": 5.0,
                            },
                        }
                    ],
                }
            ],
            "certificates": [
                {"names": [hostile], "file": hostile, "not_after_timestamp": hostile}
            ],
        }
        page = renderPage(snapshot, {}, 20.0)
        self.assertNotIn("<script>alert", page)
        self.assertNotIn("'x'", page)
        self.assertEqual(page.count("<script>"), 1)
        parsed = parse(page)
        self.assertEqual(len(parsed.scripts), 1)
        texts = [cell for row in parsed.rows for cell in row]
        self.assertIn(hostile, [t.strip() for t in texts])
        self.assertEqual(
            [a.get("data-upstream") for t, a in parsed.tags if t == "section"][0], hostile
        )
        self.assertIn(f'class="state s-{_escaped(hostile)}"', page)

    def test_noScriptRefresh(self) -> None:
        """
        Without JavaScript the page reloads itself (a C{<noscript>} refresh)
        and has a link to reload it by hand.
        """
        body = self.get()[2]
        self.assertIn(
            f'<noscript><meta http-equiv="refresh" content="{NOSCRIPT_REFRESH_SECONDS}">'
            "</noscript>",
            body,
        )
        links = [a for t, a in parse(body).tags if t == "a"]
        self.assertIn({"href": "./", "id": "reload"}, links)

    def test_scriptRefresh(self) -> None:
        """
        The page's script fetches C{?part=status}, which is the page's
        C{<main id="status">} alone, drawn from the same snapshot.
        """
        full = self.get()[2]
        (script,) = parse(full).scripts
        self.assertIn('fetch("?part=status"', script)
        self.assertIn('getElementById("status")', script)
        code, headers, part = self.get("/?part=status")
        self.assertEqual(code, 200)
        self.assertTrue(part.startswith('<main id="status"'), part[:40])
        self.assertTrue(part.endswith("</main>"), part[-40:])
        self.assertIn(part, full)

    def test_contentSecurityPolicy(self) -> None:
        """
        The policy lets the page run its own inline style and script, by
        their hashes, and nothing else.
        """
        code, headers, body = self.get()
        self.assertEqual(
            headers.getRawHeaders(b"content-security-policy"),
            [CONTENT_SECURITY_POLICY.encode("ascii")],
        )
        page = parse(body)
        for kind, (source,) in (("script", page.scripts), ("style", page.styles)):
            digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
            self.assertIn(f"{kind}-src 'sha256-{digest}';", CONTENT_SECURITY_POLICY)
        self.assertNotIn("unsafe", CONTENT_SECURITY_POLICY)
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])

    def test_noExternalResources(self) -> None:
        """
        The page loads nothing: no external script, style sheet, image or
        font.
        """
        body = self.get()[2]
        for tag, attrs in parse(body).tags:
            self.assertNotIn("src", attrs, tag)
            if tag == "link":
                self.fail(f"a <link> {attrs}")
        self.assertNotIn("http://", body)
        self.assertNotIn("https://", body)
        self.assertNotIn("url(", body)

    def test_headAndOtherMethods(self) -> None:
        """
        C{HEAD /} has the page's headers and no body; other methods get 405
        with a JSON error.
        """
        code, headers, body = self.get(method="HEAD")
        self.assertEqual((code, body), (200, ""))
        code, headers, body = self.get(method="POST")
        self.assertEqual(code, 405)
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertIn('"error"', body)

    def test_followsReloadedPools(self) -> None:
        """
        The page shows the pools the callable gives at each request.
        """
        self.pools = {"new": Pool("new", [Backend("127.0.0.1", 9100)], RoundRobin(), self.clock)}
        self.addCleanup(self.pools["new"].close)
        page = parse(self.get()[2])
        self.assertEqual(
            [a.get("data-upstream") for t, a in page.tags if t == "section"], ["new"]
        )


def _sourceLines(main: str) -> list[str]:
    """
    The text of each upstream's source line (under its heading) in
    C{main}, as a browser shows it.
    """
    return [
        _words(html.unescape(re.sub("<[^>]+>", "", line)))
        for line in re.findall(r'<p class="source">(.*?)</p>', main)
    ]


def _headings(main: str) -> list[str]:
    """
    The text of each upstream's heading in C{main}.
    """
    return [
        _words(html.unescape(re.sub("<[^>]+>", " ", h)))
        for h in re.findall(r"<h2>(.*?)</h2>", main)
    ]


class SourceTests(SynchronousTestCase):
    """
    Under the heading of an upstream whose backends come from DNS or etcd,
    a line says where from and how that goes; the heading says how many
    backends joined and left.
    """

    def render(self, *upstreams: dict[str, Any]) -> str:
        """
        The C{<main>} of a snapshot of C{upstreams} (given their names and
        no backends), at the time 100.
        """
        snapshot = {
            "upstreams": [
                {"name": f"u{n}", "backends": [], **u} for n, u in enumerate(upstreams)
            ]
        }
        return renderStatus(snapshot, {}, 100.0)

    def test_dns(self) -> None:
        """
        A DNS source: each C{resolve} line with its addresses and the age of
        its latest answer, and why its latest lookup failed (the last answer
        kept, or none yet); then the lookups and how many failed.
        """
        main = self.render(
            {"backends_added": 3, "backends_removed": 1, "source": dnsSource()}
        )
        self.assertEqual(
            _sourceLines(main),
            [
                "Backends from DNS: app.internal:8080 (2 addresses, answered 12s ago), "
                "_http._tcp.svc.internal (1 address, answered 1m 00s ago; lookup "
                "failed: DNS lookup timed out, keeping the last answer), "
                "new.internal:8080 (lookup failed: no such name, no answer yet); "
                "40 lookups, 2 failed"
            ],
        )
        self.assertEqual(_headings(main), ["u0 0 of 0 up 3 backends added, 1 removed"])
        titles = [a.get("title") for t, a in parse(main).tags if t == "time"]
        self.assertEqual(titles, ["1970-01-01 00:01:28 UTC", "1970-01-01 00:00:40 UTC"])
        self.assertIn('<span class="warn">lookup failed: ', main)

    def test_dnsNotAnswered(self) -> None:
        """
        A C{resolve} line whose first lookup has not ended says so.
        """
        line = {"name": "a.internal", "addresses": 0, "last_answer": None,
                "next_lookup": 101.0, "error": None}
        main = self.render({"source": dnsSource(lines=[line], lookups=1, lookup_failures=0)})
        self.assertEqual(
            _sourceLines(main),
            ["Backends from DNS: a.internal (not answered yet); 1 lookup, 0 failed"],
        )

    def test_etcd(self) -> None:
        """
        An etcd source: its prefix, revision, endpoint and watch, its keys
        (and the rejected ones), and its reads, events and failures; one
        whose watch is not open says why, one not read yet says so.
        """
        main = self.render(
            {"backends_added": 5, "backends_removed": 0, "source": etcdSource()},
            {
                "source": etcdSource(
                    revision=0, watching=False, error="connection refused",
                    reads=0, events=0, failures=1, keys=0, rejected=0,
                )
            },
        )
        self.assertEqual(
            _sourceLines(main),
            [
                "Backends from etcd /lbproxy/upstreams/app/ at revision 42 via "
                "http://127.0.0.1:2379, watching; 5 keys (1 rejected); 3 reads, "
                "17 events, 2 failures",
                "Backends from etcd /lbproxy/upstreams/app/ not read yet via "
                "http://127.0.0.1:2379, not watching: connection refused; 0 keys; "
                "0 reads, 0 events, 1 failure",
            ],
        )
        self.assertEqual(
            _headings(main),
            ["u0 0 of 0 up 5 backends added, 0 removed", "u1 0 of 0 up"],
        )

    def test_fixedServers(self) -> None:
        """
        An upstream with fixed servers (no C{source}, or a snapshot from
        before sources) has no source line; its heading says how many
        backends joined and left (an application that embeds lbproxy may
        call C{Pool.setBackends} itself), when any did.
        """
        main = self.render(
            {"source": None, "backends_added": 1, "backends_removed": 1},
            {"source": None, "backends_added": 0, "backends_removed": 0},
            {},
        )
        self.assertEqual(_sourceLines(main), [])
        self.assertNotIn("Backends from", main)
        self.assertEqual(
            _headings(main),
            ["u0 0 of 0 up 1 backend added, 1 removed", "u1 0 of 0 up", "u2 0 of 0 up"],
        )

    def test_escaping(self) -> None:
        """
        Everything of a source is escaped: names, prefix, endpoint and
        errors come from the configuration, etcd and DNS servers.
        """
        hostile = "<script>alert('x')</script>&\""
        line = {"name": hostile, "addresses": 1, "last_answer": 90.0,
                "next_lookup": 101.0, "error": hostile}
        main = self.render(
            {"source": dnsSource(lines=[line])},
            {
                "source": etcdSource(
                    prefix=hostile, endpoint=hostile, watching=False, error=hostile,
                    revision=hostile,
                )
            },
        )
        self.assertNotIn("<script>", main)
        self.assertNotIn("'x'", main)
        dns, etcd = _sourceLines(main)
        self.assertEqual(
            dns,
            f"Backends from DNS: {hostile} (1 address, answered 10s ago; lookup "
            f"failed: {hostile}, keeping the last answer); 40 lookups, 2 failed",
        )
        self.assertEqual(
            etcd,
            f"Backends from etcd {hostile} at revision {hostile} via {hostile}, not "
            f"watching: {hostile}; 5 keys (1 rejected); 3 reads, 17 events, 2 failures",
        )

    def test_perWorker(self) -> None:
        """
        In the merged snapshot of C{workers} mode, what differs between
        workers (a line's addresses, the revision each is at, whether each
        watches) is shown per worker; the counts are the sums.
        """
        line = {
            "name": "app.internal",
            "addresses": {"per_worker": {"0": 2, "1": 1}},
            "last_answer": 88.0,
            "next_lookup": {"per_worker": {"0": 118.0, "1": 120.0}},
            "error": None,
        }
        main = self.render(
            {"source": dnsSource(lines=[line], lookups=80, lookup_failures=0)},
            {
                "source": etcdSource(
                    revision={"per_worker": {"0": 42, "1": 41}},
                    watching={"per_worker": {"0": True, "1": False}},
                    error={"per_worker": {"0": None, "1": "connection refused"}},
                    rejected=0,
                )
            },
        )
        self.assertEqual(
            _sourceLines(main),
            [
                "Backends from DNS: app.internal (w0 2 addresses, answered 12s ago "
                "\u00b7 w1 1 address, answered 12s ago); 80 lookups, 0 failed",
                "Backends from etcd /lbproxy/upstreams/app/ w0 at revision 42 via "
                "http://127.0.0.1:2379, watching; 5 keys \u00b7 w1 at revision 41 via "
                "http://127.0.0.1:2379, not watching: connection refused; 5 keys; "
                "3 reads, 17 events, 2 failures",
            ],
        )


def _escaped(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


class RenderTests(SynchronousTestCase):
    """
    L{renderStatus} draws a snapshot, whatever built it.
    """

    def test_healthCheck(self) -> None:
        """
        A backend's latest health check is shown with its verdict, detail,
        latency and age; one not checked yet, or without active checks,
        says so.
        """
        snapshot = {
            "upstreams": [
                {
                    "name": "app",
                    "backends": [
                        {
                            "name": "a:1",
                            "state": "down",
                            "health": {
                                "last_result": "failed: connection refused",
                                "last_passed": False,
                                "last_latency": 0.0021,
                                "last_time": 95.0,
                            },
                        },
                        {"name": "b:1", "state": "up", "health": {"last_result": None}},
                        {"name": "c:1", "state": "up", "health": None},
                    ],
                }
            ]
        }
        rows = parse(renderStatus(snapshot, {}, 100.0)).rows
        self.assertEqual(
            [_words(r[-1]) for r in rows[1:]],
            [
                "failed connection refused 2.1 ms \u00b7 5s ago",
                "not checked yet",
                "no active checks",
            ],
        )

    def test_certificates(self) -> None:
        """
        Certificates are listed with their names, file and expiry, which is
        marked when near or past.
        """
        day = 86400.0
        snapshot = {
            "upstreams": [],
            "certificates": [
                {"names": ["a.example", "b.example"], "file": "/etc/a.pem", "not_after_timestamp": 90 * day},
                {"names": ["c.example"], "file": "/etc/c.pem", "not_after_timestamp": 3 * day},
                {"names": ["d.example"], "file": "/etc/d.pem", "not_after_timestamp": 0.5 * day},
            ],
        }
        main = renderStatus(snapshot, {}, day)
        rows = parse(main).rows
        self.assertEqual(
            [[_words(c) for c in r] for r in rows[1:]],
            [
                ["a.example, b.example", "/etc/a.pem", "1970-04-01 00:00:00 UTC in 89d 00h"],
                ["c.example", "/etc/c.pem", "1970-01-04 00:00:00 UTC in 2d 00h"],
                ["d.example", "/etc/d.pem", "1970-01-01 12:00:00 UTC expired"],
            ],
        )
        self.assertEqual(
            re.findall(r'<span class="(ok|warn|bad)">1970', main), ["ok", "warn", "bad"]
        )

    def test_perWorker(self) -> None:
        """
        The merged snapshot of C{workers} mode gives what differs between
        workers by worker number: each worker's value is shown under its
        number, the row takes the worst of the states, and the per-worker
        breakdown is a table of its own.
        """
        snapshot = {
            "upstreams": [
                {
                    "name": "app",
                    "backends": [
                        {
                            "name": "a:1",
                            "state": {"per_worker": {"0": "up", "1": "down"}},
                            "reason": {"per_worker": {"0": "started", "1": "refused <x>"}},
                            "since": {"per_worker": {"0": None, "1": 90.0}},
                            "weight": 2,
                            "effective_weight": 2.0,
                            "requests": 7,
                            "last_latency": {"per_worker": {"0": 0.001, "1": 0.002}},
                            "health": {
                                "last_result": {
                                    "per_worker": {"0": "passed: status 200", "1": "failed: refused"}
                                },
                                "last_passed": {"per_worker": {"0": True, "1": False}},
                                "last_latency": 0.004,
                                "last_time": 99.0,
                            },
                        }
                    ],
                }
            ],
            "workers": [
                {
                    "worker": 0,
                    "pid": 41,
                    "answered": True,
                    "answer": {"connections": 3, "active_requests": 1, "vhosts": [{"requests": 5}]},
                },
                {"worker": 1, "pid": None, "answered": False, "error": "not running"},
            ],
        }
        page = parse(renderStatus(snapshot, {}, 100.0))
        rows = [[_words(c) for c in r] for r, c in zip(page.rows, page.rowClasses) if c]
        self.assertEqual(
            rows[0][:3],
            [
                "a:1",
                "w0 up started since start w1 down refused <x> since 10s ago",
                "2 effective 2",
            ],
        )
        self.assertEqual(
            rows[0][6:],
            [
                "w0 1.0 ms w1 2.0 ms",
                "w0 passed status 200 4.0 ms \u00b7 1s ago w1 failed refused 4.0 ms \u00b7 1s ago",
            ],
        )
        self.assertEqual(page.rowClasses[1], "r-down")
        self.assertIn("app 0 of 1 up", _words(page.text))
        self.assertEqual(
            rows[1:],
            [
                ["0", "41", "answering", "3", "1", "5"],
                ["1", "\u2013", "not answering not running", "\u2013", "\u2013", "\u2013"],
            ],
        )

    def test_noUpstreams(self) -> None:
        """
        An empty snapshot says there is nothing to show.
        """
        self.assertIn("No upstreams are configured.", renderStatus({}, {}, 0.0))

    def test_readings(self) -> None:
        """
        The readings are the requests and failures of each backend, by
        upstream and backend name, and, when the snapshot has vhosts, the
        client requests and 5xx answers of every vhost and of none.
        """
        snapshot: dict[str, Any] = {
            "upstreams": [
                {"name": "app", "backends": [{"name": "a:1", "requests": 5, "failures": 1}]},
                {"name": "api", "backends": [{"name": "a:1", "requests": 7}]},
            ]
        }
        self.assertEqual(
            readings(snapshot),
            {
                ("app", "a:1", "requests"): 5,
                ("app", "a:1", "failures"): 1,
                ("api", "a:1", "requests"): 7,
            },
        )
        snapshot = {
            "upstreams": [],
            "vhosts": [
                {"requests": 10, "responses_by_class": {"2xx": 8, "5xx": 2}},
                {"requests": 4, "responses_by_class": {"5xx": 1}},
            ],
            "unrouted": {"requests": 3, "responses_by_class": {"4xx": 3}},
        }
        self.assertEqual(
            readings(snapshot), {("", "", "requests"): 17, ("", "", "5xx"): 3}
        )

    def test_overview(self) -> None:
        """
        Over the tables, the snapshot's connections, requests in flight,
        client requests and 5xx answers (with their rates) and reloads.
        """
        snapshot = {
            "connections": 12,
            "connections_refused": 2,
            "active_requests": 3,
            "vhosts": [{"requests": 1500, "responses_by_class": {"5xx": 4}}],
            "unrouted": {"requests": 0},
            "reloads": 5,
            "reload_failures": 1,
            "last_reload_ok": False,
            "config_loaded": 70.0,
            "upstreams": [],
        }
        rates = {("", "", "requests"): 25.0, ("", "", "5xx"): 0.5}
        main = renderStatus(snapshot, rates, 100.0)
        tiles = re.findall(r'<div class="(tile(?: [a-z]+)?)">(.*?)</div>', main)
        self.assertEqual(
            [(css, _words(re.sub("<[^>]+>", " ", body))) for css, body in tiles],
            [
                ("tile", "Connections 12 2 refused"),
                ("tile", "In flight 3"),
                ("tile", "Requests 1,500 25/s"),
                ("tile bad", "5xx answers 4 0.5/s"),
                ("tile warn", "Reloads 5 1 refused \u00b7 loaded 30s ago"),
            ],
        )
        self.assertNotIn('class="tiles"', renderStatus({"upstreams": []}, {}, 0.0))


class FromServiceTests(SynchronousTestCase):
    """
    The page of a running L{LoadBalancerService}'s C{[admin]} listener is
    drawn from the service's own snapshot.
    """

    def test_servicePage(self) -> None:
        """
        C{GET /} shows the service's figures over its upstream's backends;
        a second look, 2 s later, has their rates.
        """
        reactor, service = runningService(self)
        assert service.admin is not None
        treq = StubTreq(service.admin)

        def look() -> _Rows:
            d = treq.get("http://127.0.0.1:9000/")
            treq.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 200)
            return parse(self.successResultOf(response.content()).decode())

        look()
        reactor.advance(2)
        page = look()
        text = _words(page.text)
        self.assertIn("Connections 0 In flight 0 Requests 0 0/s", text)
        self.assertIn("Reloads 0 loaded 2s ago", text)
        self.assertEqual(
            [_words(r[0]) for r, c in zip(page.rows, page.rowClasses) if c],
            ["127.0.0.1:9001", "127.0.0.1:9002"],
        )
        self.assertEqual(_words(page.rows[1][4]), "0 0/s")

    def test_certificate(self) -> None:
        """
        A certificate's row, from the snapshot of a real chain: its names,
        file and expiry in UTC.
        """
        directory = os.path.abspath(self.mktemp())
        chainPath, keyPath = Authority().write(directory, ["a.test", "b.test"], days=30)
        chain = loadChain(chainPath, keyPath)
        snapshot = {"upstreams": [], "certificates": [certificateStatus(chain)]}
        now = chain.notAfter.timestamp() - 30 * 86400
        main = renderStatus(snapshot, {}, now)
        (row,) = [[_words(c) for c in r] for r in parse(main).rows[1:]]
        expiry = chain.notAfter.strftime("%Y-%m-%d %H:%M:%S UTC")
        self.assertEqual(row, ["a.test, b.test", chainPath, f"{expiry} in 30d 00h"])
        self.assertIn(f'<span class="ok">{expiry}</span>', main)


class RateMeterTests(SynchronousTestCase):
    """
    L{RateMeter} turns successive readings of counters into rates.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.meter = RateMeter(self.clock)

    def test_firstReading(self) -> None:
        """
        The first reading of a counter has no rate.
        """
        self.assertEqual(self.meter.rates({"a": 5}), {"a": None})

    def test_rate(self) -> None:
        """
        The rate is the difference over the time between the readings.
        """
        self.meter.rates({"a": 5})
        self.clock.advance(2)
        self.assertEqual(self.meter.rates({"a": 15}), {"a": 5.0})
        self.clock.advance(10)
        self.assertEqual(self.meter.rates({"a": 15}), {"a": 0.0})

    def test_tooSoon(self) -> None:
        """
        A reading less than C{minimum} after the kept one repeats the rate
        found before, and the next is taken over the longer time.
        """
        self.meter.rates({"a": 0})
        self.clock.advance(2)
        self.assertEqual(self.meter.rates({"a": 4}), {"a": 2.0})
        self.clock.advance(0.5)
        self.assertEqual(self.meter.rates({"a": 100}), {"a": 2.0})
        self.clock.advance(0.5)
        self.assertEqual(self.meter.rates({"a": 104}), {"a": 100.0})

    def test_reset(self) -> None:
        """
        A counter that went down (new pools after a reload) starts again.
        """
        self.meter.rates({"a": 50})
        self.clock.advance(2)
        self.assertEqual(self.meter.rates({"a": 3}), {"a": None})
        self.clock.advance(1)
        self.assertEqual(self.meter.rates({"a": 6}), {"a": 3.0})

    def test_forgets(self) -> None:
        """
        A counter missing from a reading is forgotten: it starts again if
        it comes back.
        """
        self.meter.rates({"a": 1, "b": 1})
        self.clock.advance(2)
        self.assertEqual(self.meter.rates({"b": 3}), {"b": 1.0})
        self.clock.advance(2)
        self.assertEqual(self.meter.rates({"a": 9, "b": 3}), {"a": None, "b": 0.0})
