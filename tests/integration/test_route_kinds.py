"""
The route kinds of site.ini on real sockets: a proxy built from a
configuration with C{strip_prefix}, C{files:DIR}, C{redirect:CODE:URL} and
C{return:CODE[:BODY]} routes, on 127.0.0.1, read by a real HTTP client.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers

from lbproxy.config import parseConfigText
from lbproxy.service import LoadBalancerService
from lbproxy.testing import startServer
from tests.integration.test_vhost_resources import _Echo

#: Seconds any one step may take before the test fails.
WAIT = 10

_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:api]
servers = 127.0.0.1:{backend}

[vhost:app]
server_names = app.example
default = yes
upstream = api
routes =
    /api/ api strip_prefix
    /assets/ files:{files}
    /old/ redirect:301:https://new.example.com/
    /ping return:204
    /hello return:200:hello
"""


class RouteKindsLiveTests(TestCase):
    """
    Each route kind answers through real sockets.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        base = FilePath(self.mktemp())
        public = base.child("public")
        public.makedirs()
        self.big = os.urandom(100 * 1024)
        public.child("big.bin").setContent(self.big)
        base.child("secret.txt").setContent(b"top secret\n")

        backend = yield startServer(_Echo(), reactor)
        self.addCleanup(backend.stop)
        config = parseConfigText(
            _CONFIG.format(backend=backend.port, files=public.path), "routes.ini"
        )
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        (port,) = yield self.service.whenListening().addTimeout(WAIT, reactor)
        self.base = b"http://127.0.0.1:%d" % (port.getHost().port,)

        clientPool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(clientPool.closeCachedConnections)
        self.agent = Agent(reactor, pool=clientPool)

    @inlineCallbacks
    def get(self, path, headers=None, method=b"GET"):
        """
        Send one request for C{path} to the proxy, as it is written.

        @return: a L{Deferred} firing with the response and its body.
        """
        headers = Headers({**(headers or {}), b"host": [b"app.example"]})
        response = yield self.agent.request(method, self.base + path, headers).addTimeout(
            WAIT, reactor
        )
        body = yield readBody(response).addTimeout(WAIT, reactor)
        return response, body

    @inlineCallbacks
    def test_filesRange(self):
        """
        A C{Range} request for a static file gets 206 and that part.
        """
        response, body = yield self.get(b"/assets/big.bin", {b"range": [b"bytes=1000-1999"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-range"),
            [b"bytes 1000-1999/%d" % (len(self.big),)],
        )
        self.assertTrue(body == self.big[1000:2000], "the part came back changed")
        response, body = yield self.get(b"/assets/big.bin")
        self.assertEqual(response.code, 200)
        self.assertTrue(body == self.big, "the file came back changed")

    @inlineCallbacks
    def test_filesConditional(self):
        """
        A request whose C{If-Modified-Since} is not older than the file
        gets 304 with no body.
        """
        later = datetimeToString(2**31 - 1)
        response, body = yield self.get(b"/assets/big.bin", {b"if-modified-since": [later]})
        self.assertEqual((response.code, body), (304, b""))

    @inlineCallbacks
    def test_filesNoListingNoEscape(self):
        """
        The directory is not listed, and no path leaves it.
        """
        response, body = yield self.get(b"/assets/")
        self.assertEqual(response.code, 403)
        self.assertNotIn(b"big.bin", body)
        for rest in (b"%2e%2e/secret.txt", b"..%2fsecret.txt", b"../secret.txt"):
            response, body = yield self.get(b"/assets/" + rest)
            self.assertEqual(response.code, 404, rest)
            self.assertNotIn(b"top secret", body)

    @inlineCallbacks
    def test_redirect(self):
        """
        A redirect carries the rest of the path and the query.
        """
        response, _ = yield self.get(b"/old/docs/page%201?a=1&b=2")
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"),
            [b"https://new.example.com/docs/page%201?a=1&b=2"],
        )

    @inlineCallbacks
    def test_return(self):
        """
        Return routes answer at once, with their code and body.
        """
        response, body = yield self.get(b"/ping")
        self.assertEqual((response.code, body), (204, b""))
        response, body = yield self.get(b"/hello")
        self.assertEqual((response.code, body), (200, b"hello"))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"]
        )

    @inlineCallbacks
    def test_stripPrefix(self):
        """
        The backend sees the path without C{/api}, query kept; the other
        paths go to it whole.
        """
        response, body = yield self.get(b"/api/users/7?x=1")
        self.assertEqual((response.code, body), (200, b"backend /users/7?x=1"))
        response, body = yield self.get(b"/apiary?y")
        self.assertEqual((response.code, body), (200, b"backend /apiary?y"))
