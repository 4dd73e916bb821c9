# -*- test-case-name: tests.test_admin -*-
"""
Tests for L{lbproxy._admin}: the JSON API of the C{[admin]} listener,
driven through L{treq.testing.StubTreq} (a real L{twisted.web.server.Site}
in memory).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._admin import AdminResource
from lbproxy._backend import Backend, BackendState
from lbproxy._pool import Pool
from lbproxy.balancers._roundrobin import RoundRobin

_BASE = "http://127.0.0.1:9000"


class AdminAPITests(SynchronousTestCase):
    """
    L{AdminResource} lists upstreams and changes backends, refusing what it
    should with a JSON error body.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.a = Backend("127.0.0.1", 9001)
        self.b = Backend("127.0.0.1", 9002, weight=2)
        self.pool = Pool("app", [self.a, self.b], RoundRobin(), self.clock)
        self.addCleanup(self.pool.close)
        self.pools = {"app": self.pool}
        self.resource = AdminResource(lambda: self.pools, "s3cret")
        self.treq = StubTreq(self.resource)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: Optional[str] = "s3cret",
        raw: Optional[bytes] = None,
        forwarded: Optional[bytes] = None,
    ) -> tuple[int, Any]:
        """
        Send a request and return its status and parsed JSON body.

        @param forwarded: an C{X-Forwarded-For} header to send.
        """
        headers = {}
        if forwarded is not None:
            headers[b"X-Forwarded-For"] = [forwarded]
        if token is not None:
            headers[b"Authorization"] = [b"Bearer " + token.encode()]
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        d = self.treq.request(method, _BASE + path, headers=headers, data=data)
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        content = self.successResultOf(response.content())
        return response.code, json.loads(content)

    def test_list(self) -> None:
        """
        C{GET /api/upstreams} lists each upstream with its backends, their
        state, reason, weights and counters.
        """
        self.pool.requestStarted(self.a, "r1")
        code, body = self.request("GET", "/api/upstreams", token=None)
        self.assertEqual(code, 200)
        (upstream,) = body["upstreams"]
        self.assertEqual(upstream["name"], "app")
        first, second = upstream["backends"]
        self.assertEqual(
            first,
            {
                "name": "127.0.0.1:9001",
                "url": "http://127.0.0.1:9001",
                "id": self.a.id,
                "state": "up",
                "reason": "started",
                "since": None,
                "weight": 1,
                "effective_weight": 1.0,
                "backup": False,
                "active": 1,
                "max_conns": None,
                "requests": 1,
                "responses": 0,
                "responses_by_class": {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
                "failures": 0,
                "ejections": 0,
                "last_latency": None,
                "response_time_histogram": {
                    "bounds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                    "counts": [0] * 12,
                    "count": 0,
                    "sum": 0.0,
                },
                "health": None,
            },
        )
        self.assertEqual((second["name"], second["weight"], second["active"]), ("127.0.0.1:9002", 2, 0))

    def test_oneUpstreamAndServer(self) -> None:
        """
        C{GET /api/upstreams/NAME} gives one upstream, and
        C{.../servers/HOST:PORT} one backend, without a token.
        """
        code, body = self.request("GET", "/api/upstreams/app", token=None)
        self.assertEqual((code, [b["name"] for b in body["backends"]]), (200, ["127.0.0.1:9001", "127.0.0.1:9002"]))
        code, body = self.request("GET", "/api/upstreams/app/servers/127.0.0.1:9002", token=None)
        self.assertEqual((code, body["weight"]), (200, 2))

    def test_unknown(self) -> None:
        """
        An unknown upstream, server or path gives 404 with a JSON error.
        """
        for path in [
            "/api/upstreams/nope",
            "/api/upstreams/app/servers/127.0.0.1:9999",
            "/api/backends",
            "/api",
        ]:
            code, body = self.request("GET", path)
            self.assertEqual(code, 404, path)
            self.assertIn("error", body)
        code, body = self.request("PATCH", "/api/upstreams/nope/servers/127.0.0.1:9001", {"state": "drain"})
        self.assertEqual((code, body), (404, {"error": "no upstream named 'nope'"}))

    def test_drainAndUp(self) -> None:
        """
        C{{"state": "drain"}} drains the backend through the pool (no new
        requests, the reason names the API); C{{"state": "up"}} brings it
        back.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        self.clock.advance(5)
        code, body = self.request("PATCH", path, {"state": "drain"})
        self.assertEqual((code, body["state"]), (200, "draining"))
        self.assertEqual(body["since"], 1005.0)
        self.assertIn("admin API", body["reason"])
        self.assertIs(self.a.state, BackendState.DRAINING)
        self.assertEqual(self.pool.eligible, (self.b,))
        code, body = self.request("PATCH", path, {"state": "up"})
        self.assertEqual((code, body["state"]), (200, "up"))
        self.assertEqual(self.pool.eligible, (self.a, self.b))

    def test_downAndUp(self) -> None:
        """
        C{{"state": "down"}} takes the backend out for maintenance through
        the pool (disabled: no new requests, and active checks skip it), as
        a server line's C{down}; C{{"state": "up"}} brings it back.  Asked
        twice, it keeps the reason and time of the first.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        self.clock.advance(5)
        code, body = self.request("PATCH", path, {"state": "down"})
        self.assertEqual(
            (code, body["state"], body["since"], body["reason"]),
            (200, "disabled", 1005.0, "disabled through the admin API (127.0.0.1)"),
        )
        self.assertIs(self.a.state, BackendState.DISABLED)
        self.assertEqual(self.pool.eligible, (self.b,))
        self.clock.advance(5)
        code, body = self.request("PATCH", path, {"state": "down"})
        self.assertEqual((code, body["state"], body["since"]), (200, "disabled", 1005.0))
        code, body = self.request("PATCH", path, {"state": "up"})
        self.assertEqual((code, body["state"]), (200, "up"))
        self.assertEqual(self.pool.eligible, (self.a, self.b))

    def test_drainThenDown(self) -> None:
        """
        A drained backend can be taken down, and a down one drained: the
        last state asked for is the backend's.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        self.request("PATCH", path, {"state": "drain"})
        code, body = self.request("PATCH", path, {"state": "down"})
        self.assertEqual((code, body["state"]), (200, "disabled"))
        code, body = self.request("PATCH", path, {"state": "drain"})
        self.assertEqual((code, body["state"]), (200, "draining"))

    def test_whoAsked(self) -> None:
        """
        The reason of a change names the address the request came from;
        an C{X-Forwarded-For} header is not believed, since any client can
        send one.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        code, body = self.request("PATCH", path, {"state": "drain"}, forwarded=b"203.0.113.7")
        self.assertEqual(code, 200)
        self.assertEqual(body["reason"], "drained through the admin API (127.0.0.1)")

    def test_whoAskedTheParent(self) -> None:
        """
        On a worker (C{behindParent}), whose private socket only its
        parent reaches, the reason names the client the parent was asked
        by, in C{X-Forwarded-For}; without the header, the peer.
        """
        self.resource.behindParent = True
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        code, body = self.request("PATCH", path, {"state": "drain"}, forwarded=b"203.0.113.7")
        self.assertEqual(
            body["reason"],
            "drained through the admin API (203.0.113.7, through the workers' parent)",
        )
        self.request("PATCH", path, {"state": "up"})
        code, body = self.request("PATCH", path, {"state": "drain"})
        self.assertEqual(body["reason"], "drained through the admin API (127.0.0.1)")

    def test_weight(self) -> None:
        """
        C{{"weight": N}} changes the backend's weight, with the state in
        the same body if wanted.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9002"
        code, body = self.request("PATCH", path, {"weight": 5})
        self.assertEqual((code, body["weight"], body["effective_weight"]), (200, 5, 5.0))
        self.assertEqual(self.b.weight, 5)
        code, body = self.request("PATCH", path, {"weight": 3, "state": "drain"})
        self.assertEqual((code, body["weight"], body["state"]), (200, 3, "draining"))

    def test_badBody(self) -> None:
        """
        A body that is not a JSON object of a known state and a positive
        whole weight gives 400 and changes nothing, not even the part that
        was right.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        for raw in [
            b"drain",
            b"",
            b"[]",
            b"{}",
            b'{"state": "disabled"}',
            b'{"state": "maint"}',
            b'{"weight": 0}',
            b'{"weight": 1000001}',
            b'{"weight": 1' + b"0" * 400 + b'}',
            b'{"weight": 1.5}',
            b'{"weight": true}',
            b'{"weight": "2"}',
            b'{"state": "drain", "weight": -1}',
            b'{"state": "drain", "colour": "blue"}',
        ]:
            code, body = self.request("PATCH", path, raw=raw)
            self.assertEqual(code, 400, raw)
            self.assertIn("expected", body["error"])
        self.assertIs(self.a.state, BackendState.UP)
        self.assertEqual(self.a.weight, 1)

    def test_tokenMissing(self) -> None:
        """
        A change without the token gives 401 (with
        C{WWW-Authenticate: Bearer}) and changes nothing; so does another
        scheme than Bearer.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        code, body = self.request("PATCH", path, {"state": "drain"}, token=None)
        self.assertEqual(code, 401)
        self.assertIn("Bearer", body["error"])
        d = self.treq.request(
            "PATCH", _BASE + path, headers={b"Authorization": [b"Basic czNjcmV0"]},
            data=b'{"state": "drain"}',
        )
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="lbproxy"'])
        self.assertIs(self.a.state, BackendState.UP)

    def test_tokenWrong(self) -> None:
        """
        A change with another token gives 403 and changes nothing, even for
        an unknown server (no names are given away).
        """
        for path in [
            "/api/upstreams/app/servers/127.0.0.1:9001",
            "/api/upstreams/nope/servers/127.0.0.1:9001",
        ]:
            code, body = self.request("PATCH", path, {"state": "drain"}, token="s3cre")
            self.assertEqual((code, body), (403, {"error": "wrong token"}))
        self.assertIs(self.a.state, BackendState.UP)

    def test_noToken(self) -> None:
        """
        Without a configured token, changes need none.
        """
        self.resource.token = None
        code, body = self.request(
            "PATCH", "/api/upstreams/app/servers/127.0.0.1:9001", {"state": "drain"}, token=None
        )
        self.assertEqual((code, body["state"]), (200, "draining"))

    def test_otherMethods(self) -> None:
        """
        Other methods give 405 with a JSON error; a listing takes no
        PATCH.
        """
        code, body = self.request("DELETE", "/api/upstreams/app/servers/127.0.0.1:9001")
        self.assertEqual(code, 405)
        code, body = self.request("PATCH", "/api/upstreams/app", {"state": "drain"})
        self.assertEqual(code, 405)
        self.assertIs(self.a.state, BackendState.UP)

    def test_followsReloadedPools(self) -> None:
        """
        Each request reads the pools it is given now: after a reload it
        shows the new ones.
        """
        self.pools = {"other": Pool("other", [Backend("127.0.0.1", 9005)], RoundRobin(), self.clock)}
        code, body = self.request("GET", "/api/upstreams")
        self.assertEqual([u["name"] for u in body["upstreams"]], ["other"])
