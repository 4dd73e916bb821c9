"""
Tests for examples/embedding.py, the library-use example of the docs: on
real sockets, with the real reactor, on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import os

import treq
from twisted.application.service import IServiceCollection
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbproxy import Pool, UpstreamResource, VirtualHostResource
from lbproxy.testing import RefusingPort

#: Seconds any one step may take before the test fails.
WAIT = 10

_EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples",
    "embedding.py",
)


def loadExample():
    """
    Import examples/embedding.py by its path (examples/ is not a package).
    """
    spec = importlib.util.spec_from_file_location(
        "_lbproxy_example_embedding", _EXAMPLE
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Named(Resource):
    """
    A backend answering with its name, remembering the paths it was asked
    for.
    """

    isLeaf = True

    def __init__(self, name):
        Resource.__init__(self)
        self.name = name
        self.paths = []

    def render(self, request):
        self.paths.append(request.uri)
        request.setHeader(b"content-type", b"text/plain")
        return self.name.encode("ascii")


class _Tracking(WrappingFactory):
    """
    A server factory that knows its open connections, so that a test can
    wait until every one of them is closed.
    """

    def __init__(self, wrapped):
        WrappingFactory.__init__(self, wrapped)
        self._waiting = []

    def unregisterProtocol(self, p):
        WrappingFactory.unregisterProtocol(self, p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def whenAllClosed(self):
        """
        Fire once no connection is open (at once if none is).
        """
        if not self.protocols:
            return succeed(None)
        d = Deferred()
        self._waiting.append(d)
        return d.addTimeout(WAIT, reactor)


class _RecordingEndpoint:
    """
    A server endpoint that remembers the port its wrapped endpoint listened
    on.
    """

    def __init__(self, endpoint):
        self._endpoint = endpoint
        self.listening = Deferred()

    def listen(self, factory):
        d = self._endpoint.listen(factory)

        def listened(port):
            self.listening.callback(port)
            return port

        return d.addCallback(listened)


class EmbeddingTests(TestCase):
    """
    Tests for the functions of examples/embedding.py.
    """

    timeout = 4 * WAIT

    def setUp(self):
        self.example = loadExample()
        self.trackers = []
        self.backends = [_Named("one"), _Named("two")]
        self.addresses = [self.listen(Site(b)) for b in self.backends]
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))

    def listen(self, factory):
        """
        Serve C{factory} on 127.0.0.1, a port of the system's choosing; on
        cleanup stop listening, then wait for its connections to close.

        @return: C{("127.0.0.1", port)}
        """
        tracking = _Tracking(factory)
        self.trackers.append(tracking)
        port = reactor.listenTCP(0, tracking, interface="127.0.0.1")
        self.addCleanup(tracking.whenAllClosed)
        self.addCleanup(port.stopListening)
        return ("127.0.0.1", port.getHost().port)

    @inlineCallbacks
    def startService(self, addresses):
        """
        Build the service of makeService for C{addresses}, listening on a
        port of the system's choosing; start it, and stop it on cleanup
        (unless the test did), then wait for the connections it accepted
        to close.

        @return: the service and the base URL of its listener.
        """
        service = self.example.makeService(
            "tcp:0:interface=127.0.0.1", addresses, reactor
        )
        listener = service.getServiceNamed("web")
        listener.factory = tracking = _Tracking(listener.factory)
        listener.endpoint = endpoint = _RecordingEndpoint(listener.endpoint)
        service.startService()
        self.addCleanup(tracking.whenAllClosed)
        self.addCleanup(lambda: service.running and service.stopService())
        port = yield endpoint.listening.addTimeout(WAIT, reactor)
        return service, f"http://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def get(self, url, headers=None):
        """
        GET C{url}: its status and body, within L{WAIT} seconds.
        """
        d = self.client.get(url, headers=headers).addTimeout(WAIT, reactor)
        response = yield d
        body = yield treq.content(response).addTimeout(WAIT, reactor)
        return response.code, body

    def test_makePool(self):
        """
        makePool gives a L{Pool} named app with one up backend per address,
        in order.
        """
        pool = self.example.makePool([("127.0.0.1", 1), ("127.0.0.1", 2)], reactor)
        self.addCleanup(pool.close)
        self.assertIsInstance(pool, Pool)
        self.assertEqual(pool.name, "app")
        self.assertEqual(
            [b.name for b in pool.backends], ["127.0.0.1:1", "127.0.0.1:2"]
        )
        self.assertEqual([b.state.value for b in pool.backends], ["up", "up"])

    @inlineCallbacks
    def test_serviceBalancesRequests(self):
        """
        The service of makeService serves the host application's own page
        at /, and balances /app/ requests round robin across the backends,
        passing the path and query on unchanged.  Stopping it closes every
        connection it made to the backends.
        """
        service, base = yield self.startService(self.addresses)
        self.assertTrue(IServiceCollection.providedBy(service))

        code, body = yield self.get(base + "/")
        self.assertEqual((code, body), (200, b"the host application\n"))
        self.assertEqual([b.paths for b in self.backends], [[], []])

        bodies = []
        for i in range(4):
            code, body = yield self.get(f"{base}/app/item?n={i}")
            self.assertEqual(code, 200)
            bodies.append(body)
        self.assertEqual(sorted(bodies), [b"one", b"one", b"two", b"two"])
        self.assertNotEqual(bodies[0], bodies[1])
        self.assertEqual(bodies[:2], bodies[2:])
        seen = sorted(self.backends[0].paths + self.backends[1].paths)
        self.assertEqual(seen, [b"/app/item?n=%d" % i for i in range(4)])

        # The pool kept its connections to the backends open; stopping
        # the service closes them.
        self.assertNotEqual([t.protocols for t in self.trackers], [{}, {}])
        yield service.stopService().addTimeout(WAIT, reactor)
        yield gatherResults([t.whenAllClosed() for t in self.trackers])

    @inlineCallbacks
    def test_serviceSkipsDeadBackend(self):
        """
        With one backend's port closed, every /app/ request still gets an
        answer from the other one; with no backend left, 502.
        """
        deadPort = RefusingPort()
        self.addCleanup(deadPort.close)
        dead = (deadPort.host, deadPort.port)
        service, base = yield self.startService([self.addresses[0], dead])

        bodies = []
        for _i in range(4):
            code, body = yield self.get(f"{base}/app/")
            bodies.append((code, body))
        self.assertEqual(bodies, [(200, b"one")] * 4)

        only, base = yield self.startService([dead])
        code, body = yield self.get(base + "/app/")
        self.assertEqual(code, 502)
        self.assertIn(b"502 Bad Gateway", body)

    @inlineCallbacks
    def test_virtualHosts(self):
        """
        The resource of makeVirtualHosts sends app.example.com and its
        subdomains to the pool whatever the path, and every other host name
        to the default resource.
        """
        pool = self.example.makePool(self.addresses, reactor)
        self.addCleanup(pool.close)
        default = _Named("default")
        root = self.example.makeVirtualHosts(pool, default)
        self.assertIsInstance(root, VirtualHostResource)
        self.assertIsInstance(
            root.vhostFor(b"app.example.com").resourceFor(b"/x"), UpstreamResource
        )
        host, port = self.listen(Site(root))
        url = f"http://{host}:{port}/any/path"

        answers = []
        for name in [b"app.example.com", b"APP.example.com:80", b"v2.app.example.com"]:
            code, body = yield self.get(url, headers={b"Host": [name]})
            answers.append((code, body))
        self.assertEqual(sorted(answers), [(200, b"one"), (200, b"one"), (200, b"two")])

        code, body = yield self.get(url, headers={b"Host": [b"elsewhere.example.org"]})
        self.assertEqual((code, body), (200, b"default"))
        self.assertEqual(default.paths, [b"/any/path"])
