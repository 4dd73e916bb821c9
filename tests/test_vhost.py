"""
Tests for L{lbproxy._vhost}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from lbproxy._vhost import VirtualHost, VirtualHostResource, normaliseHost


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, name):
        Resource.__init__(self)
        self.name = name

    def render(self, request):
        return self.name


class NormaliseHostTests(SynchronousTestCase):
    def test_portAndCase(self):
        self.assertEqual(normaliseHost(b"App.Example.COM:8080"), "app.example.com")
        self.assertEqual(normaliseHost(b"example.com."), "example.com")
        self.assertEqual(normaliseHost(b"[::1]:8080"), "[::1]")
        self.assertEqual(normaliseHost(None), "")


class VirtualHostResourceTests(SynchronousTestCase):
    def setUp(self):
        self.a = _Leaf(b"a")
        self.api = _Leaf(b"api")
        self.apiv2 = _Leaf(b"apiv2")
        self.b = _Leaf(b"b")
        self.app = VirtualHost(
            "app",
            ["app.example.com", "*.app.example.com"],
            {b"/": self.a, b"/api/": self.api, b"/api/v2/": self.apiv2},
        )
        self.other = VirtualHost("other", ["*.example.com"], {b"/": self.b})
        self.exact = VirtualHost("exact", ["www.example.com"], {b"/only/": self.b})

    def render(self, root, host, path=b"/"):
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.path = path
        if host is not None:
            request.requestHeaders.setRawHeaders(b"host", [host])
        body = root.render(request)
        return request.responseCode or 200, body

    def test_exactAndWildcard(self):
        """
        Exact names win over wildcards, and the longest wildcard wins.
        """
        root = VirtualHostResource([self.app, self.other, self.exact])
        self.assertIs(root.vhostFor(b"app.example.com"), self.app)
        self.assertIs(root.vhostFor(b"x.y.app.example.com"), self.app)
        self.assertIs(root.vhostFor(b"www.example.com"), self.exact)
        self.assertIs(root.vhostFor(b"foo.example.com"), self.other)
        self.assertIsNone(root.vhostFor(b"example.com"))
        self.assertIsNone(root.vhostFor(b"notexample.com"))

    def test_caseAndPortIgnored(self):
        root = VirtualHostResource([self.app])
        self.assertIs(root.vhostFor(b"APP.Example.Com:8443"), self.app)

    def test_default(self):
        """
        A host matching nothing, or no Host at all, goes to the default.
        """
        root = VirtualHostResource([self.app, self.other], default=self.other)
        self.assertIs(root.vhostFor(b"unknown.test"), self.other)
        self.assertIs(root.vhostFor(None), self.other)

    def test_notFound(self):
        """
        Without a default, an unknown host gets a 404 page.
        """
        root = VirtualHostResource([self.app])
        code, body = self.render(root, b"unknown.test")
        self.assertEqual(code, 404)
        self.assertIn(b"404 Not Found", body)

    def test_longestPrefix(self):
        root = VirtualHostResource([self.app])
        self.assertEqual(self.render(root, b"app.example.com", b"/api/v2/x"), (200, b"apiv2"))
        self.assertEqual(self.render(root, b"app.example.com", b"/api/x"), (200, b"api"))
        self.assertEqual(self.render(root, b"app.example.com", b"/apix"), (200, b"a"))

    def test_noRouteMatches(self):
        root = VirtualHostResource([self.exact])
        code, _ = self.render(root, b"www.example.com", b"/elsewhere")
        self.assertEqual(code, 404)


class VirtualHostCacheTests(SynchronousTestCase):
    def test_answersRemembered(self):
        """
        The same Host value gets the same answer, from the cache, which
        stops growing at L{_CACHED_HOSTS} distinct values while the answers
        stay right.
        """
        from lbproxy import _vhost

        app = VirtualHost("app", ["app.example", "*.app.example"], {b"/": _Leaf(b"a")})
        other = VirtualHost("other", ["other.example"], {b"/": _Leaf(b"o")})
        root = VirtualHostResource([app, other], default=other)
        self.assertIs(root.vhostFor(b"App.Example:80"), app)
        self.assertIs(root.vhostFor(b"App.Example:80"), app)
        self.assertIn(b"App.Example:80", root._cache)
        for i in range(_vhost._CACHED_HOSTS + 10):
            self.assertIs(root.vhostFor(b"x%d.app.example" % i), app)
        self.assertEqual(len(root._cache), _vhost._CACHED_HOSTS)
        self.assertIs(root.vhostFor(b"nowhere.example"), other)
        self.assertIs(root.vhostFor(None), other)
