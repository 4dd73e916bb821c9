"""
Any resource behind a vhost, on real sockets: a L{static.File} directory
and a two-level tree of plain resources behind the routes of a
L{ProxySite} on 127.0.0.1, next to an L{UpstreamResource}, read by a real
HTTP client.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols.policies import WrappingFactory
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import File

from lbproxy import (
    Backend,
    Pool,
    ProxySite,
    UpstreamResource,
    VirtualHost,
    VirtualHostResource,
)

#: Seconds any one step may take before the test fails.
WAIT = 10


class _Tracking(WrappingFactory):
    """
    A server factory that knows its open connections, so that a test can
    wait until every one of them is closed.
    """

    noisy = False

    def __init__(self, wrapped):
        WrappingFactory.__init__(self, wrapped)
        self.waiting = []

    def unregisterProtocol(self, p):
        WrappingFactory.unregisterProtocol(self, p)
        if not self.protocols:
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(None)

    def closed(self):
        """
        A L{Deferred} that fires once no connection is open.
        """
        if not self.protocols:
            return succeed(None)
        d = Deferred()
        self.waiting.append(d)
        return d.addTimeout(WAIT, reactor)


class _Echo(Resource):
    """
    A backend answering with the target it was asked for.
    """

    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"backend " + request.uri


class _Page(Resource):
    """
    A leaf answering with its paths and its URL by C{request.prePathURL()}.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"%s|%s %s" % (
            b",".join(request.prepath),
            b",".join(request.postpath),
            request.prePathURL(),
        )


def _tree():
    """
    A two-level tree: C{/docs/page} and an index.
    """
    root = Resource()
    docs = Resource()
    docs.putChild(b"page", _Page())
    root.putChild(b"docs", docs)
    root.putChild(b"", _Page())
    return root


class VirtualHostResourcesTests(TestCase):
    """
    C{app.example} routes C{/static/} to a directory, C{/site/} to a tree
    and the rest to a backend; any other host gets the directory at C{/}.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        base = FilePath(self.mktemp())
        public = base.child("public")
        public.child("sub").makedirs()
        public.child("hello.txt").setContent(b"hello\n")
        self.big = os.urandom(300 * 1024)
        public.child("sub").child("big.bin").setContent(self.big)
        base.child("secret.txt").setContent(b"top secret\n")

        backend = yield self.listen(Site(_Echo()))
        pool = Pool("app", [Backend("127.0.0.1", backend.getHost().port)], reactor=reactor)
        self.addCleanup(pool.close)
        app = VirtualHost(
            "app",
            ["app.example"],
            {
                b"/": UpstreamResource(pool),
                b"/static/": File(public.path),
                b"/site/": _tree(),
            },
        )
        files = VirtualHost("files", [], {b"/": File(public.path)})
        site = ProxySite(VirtualHostResource([app], default=files), reactor=reactor)
        proxy = yield self.listen(site)
        self.base = b"http://127.0.0.1:%d" % (proxy.getHost().port,)

        clientPool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(clientPool.closeCachedConnections)
        self.agent = Agent(reactor, pool=clientPool)

    @inlineCallbacks
    def listen(self, factory):
        """
        Listen with C{factory} on a port of 127.0.0.1; the cleanup stops
        listening, then waits until every connection is closed.
        """
        tracking = _Tracking(factory)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(tracking)
        self.addCleanup(tracking.closed)
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def get(self, path, host=b"app.example", method=b"GET"):
        """
        Send one request for C{path} (sent as it is written) to the proxy.

        @return: a L{Deferred} firing with the response and its body.
        """
        d = self.agent.request(
            method, self.base + path, Headers({b"host": [host]})
        ).addTimeout(WAIT, reactor)
        response = yield d
        body = yield readBody(response).addTimeout(WAIT, reactor)
        return response, body

    @inlineCallbacks
    def test_staticFile(self):
        """
        Files under C{/static/} are served, large ones whole; the directory
        is listed at C{/static/}, and C{/static} is redirected there.
        """
        response, body = yield self.get(b"/static/hello.txt")
        self.assertEqual((response.code, body), (200, b"hello\n"))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        response, body = yield self.get(b"/static/sub/big.bin")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(body), len(self.big))
        self.assertTrue(body == self.big, "the file came back changed")
        response, body = yield self.get(b"/static/")
        self.assertEqual(response.code, 200)
        self.assertIn(b'href="hello.txt"', body)
        response, _ = yield self.get(b"/static?q=1")
        self.assertEqual(
            (response.code, response.headers.getRawHeaders(b"location")),
            (301, [b"/static/?q=1"]),
        )
        response, _ = yield self.get(b"/static/sub")
        [location] = response.headers.getRawHeaders(b"location")
        self.assertTrue(location.endswith(b"/static/sub/"), location)
        response, _ = yield self.get(b"/static/hello.txt", method=b"HEAD")
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"6"])

    @inlineCallbacks
    def test_noEscape(self):
        """
        C{..}, C{%2e%2e} and encoded slashes stay inside the directory,
        under a route and as the default vhost's.
        """
        for host, prefix in [(b"app.example", b"/static"), (b"other.example", b"")]:
            for rest in [
                b"/../secret.txt",
                b"/%2e%2e/secret.txt",
                b"/..%2fsecret.txt",
                b"/sub/%2E%2E/%2E%2E/secret.txt",
            ]:
                response, body = yield self.get(prefix + rest, host=host)
                self.assertEqual(response.code, 404, (host, rest))
                self.assertNotIn(b"top secret", body)

    @inlineCallbacks
    def test_defaultVhost(self):
        """
        Any other host gets the directory at C{/}.
        """
        response, body = yield self.get(b"/hello.txt", host=b"other.example")
        self.assertEqual((response.code, body), (200, b"hello\n"))
        response, body = yield self.get(b"/", host=b"other.example")
        self.assertIn(b'href="sub/"', body)

    @inlineCallbacks
    def test_tree(self):
        """
        The tree under C{/site/} is traversed from after the prefix, and
        its resources know their URL; the backend still gets the rest,
        path unchanged.
        """
        response, body = yield self.get(b"/site/docs/page/a%20b")
        self.assertEqual(response.code, 200)
        port = self.base.rsplit(b":", 1)[1]
        self.assertEqual(
            body,
            b"site,docs,page|a b http://app.example:%s/site/docs/page" % (port,),
        )
        response, body = yield self.get(b"/site/")
        self.assertEqual(body, b"site,| http://app.example:%s/site/" % (port,))
        response, _ = yield self.get(b"/site")
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/site/"])
        response, _ = yield self.get(b"/site/nothing")
        self.assertEqual(response.code, 404)
        response, body = yield self.get(b"/sitemap.xml?x")
        self.assertEqual((response.code, body), (200, b"backend /sitemap.xml?x"))
