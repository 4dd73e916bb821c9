# -*- test-case-name: tests.integration.test_admin_live -*-
"""
The admin JSON API on a real socket, steering a proxy on another: a drain
lets the open request finish and sends new traffic elsewhere.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy._backend import BackendState
from lbproxy.testing import startServer


class NamedBackend(Resource):
    """
    Answers with its name, except C{/hold}, which it keeps unanswered in
    L{held} until the test answers it.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        Resource.__init__(self)
        self.name = name
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        return self.name + b"\n"


_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers =
    127.0.0.1:{a}
    127.0.0.1:{b}

[vhost:app]
default = yes
upstream = app

[admin]
listen = tcp:0:interface=127.0.0.1
token = t0k
"""


class AdminLiveTests(TestCase):
    """
    The C{[admin]} listener of a running L{LoadBalancerService}.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.backends = {b"a": NamedBackend(b"a"), b"b": NamedBackend(b"b")}
        ports = []
        for resource in self.backends.values():
            server = yield startServer(resource, reactor)
            self.addCleanup(server.stop)
            ports.append(server.port)
        config = parseConfigText(_CONFIG.format(a=ports[0], b=ports[1]), "admin.ini")
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        proxy, admin = yield self.service.whenListening()
        self.url = "http://127.0.0.1:%d" % (proxy.getHost().port,)
        self.admin = "http://127.0.0.1:%d" % (admin.getHost().port,)
        self.ports = dict(zip(self.backends, ports))

    @inlineCallbacks
    def waitFor(self, condition: Callable[[], bool], within: float) -> Any:
        """
        Poll C{condition} every 20 ms until it holds, failing the test if
        it does not within C{within} seconds.
        """
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > within:
                self.fail(f"condition not met within {within}s")
            yield deferLater(reactor, 0.02, lambda: None)

    @inlineCallbacks
    def patch(self, path: str, body: Any, token: bytes = b"t0k") -> Any:
        response = yield self.client.request(
            "PATCH",
            self.admin + path,
            data=json.dumps(body).encode(),
            headers={b"Authorization": [b"Bearer " + token]},
        )
        content = yield response.json()
        return response.code, content

    @inlineCallbacks
    def test_drainWhileARequestIsOpen(self) -> None:
        """
        Draining the backend that holds an open request, through the API,
        takes it out of the rotation at once: the open request still
        finishes with its answer, and every new request goes to the other
        backend, until the backend is brought back up through the API.
        """
        held = self.client.get(self.url + "/hold")
        yield self.waitFor(lambda: any(b.held for b in self.backends.values()), 5)
        (name,) = [n for n, b in self.backends.items() if b.held]
        other = b"b" if name == b"a" else b"a"
        path = "/api/upstreams/app/servers/127.0.0.1:%d" % (self.ports[name],)

        code, body = yield self.patch(path, {"state": "drain"}, token=b"nope")
        self.assertEqual((code, body), (403, {"error": "wrong token"}))
        code, body = yield self.patch(path, {"state": "drain"})
        self.assertEqual((code, body["state"], body["active"]), (200, "draining", 1))

        answers = []
        for _ in range(6):
            response = yield self.client.get(self.url + "/")
            answers.append((yield response.content()))
        self.assertEqual(answers, [other + b"\n"] * 6)

        request = self.backends[name].held.pop()
        request.write(b"held answer\n")
        request.finish()
        response = yield held
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.content()), b"held answer\n")
        backend = self.service.pools["app"].backendNamed(path.rsplit("/", 1)[1])
        yield self.waitFor(lambda: backend.active == 0, 5)
        self.assertIs(backend.state, BackendState.DRAINING)

        response = yield self.client.get(self.admin + "/api/upstreams/app")
        listing = yield response.json()
        self.assertEqual(
            {b["name"]: (b["state"], b["active"]) for b in listing["backends"]},
            {
                "127.0.0.1:%d" % (self.ports[name],): ("draining", 0),
                "127.0.0.1:%d" % (self.ports[other],): ("up", 0),
            },
        )

        code, body = yield self.patch(path, {"state": "up"})
        self.assertEqual((code, body["state"]), (200, "up"))
        answers = set()
        for _ in range(4):
            response = yield self.client.get(self.url + "/")
            answers.add((yield response.content()))
        self.assertEqual(answers, {b"a\n", b"b\n"})
