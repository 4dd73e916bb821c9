"""
Tests for L{lbproxy._vhost}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
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


class _PathLeaf(Resource):
    """
    A leaf answering with its name and the paths it was given, as
    C{name prepath|postpath} (segments joined by C{,}).
    """

    isLeaf = True

    def __init__(self, name):
        Resource.__init__(self)
        self.name = name

    def render(self, request):
        return b"%s %s|%s" % (
            self.name,
            b",".join(request.prepath),
            b",".join(request.postpath),
        )


class _Tree(Resource):
    """
    The top of a two-level tree: C{""} (its index) and C{docs/page} are
    leaves; rendered itself, it answers C{tree} with its paths.
    """

    def __init__(self):
        Resource.__init__(self)
        docs = Resource()
        docs.putChild(b"page", _PathLeaf(b"page"))
        self.putChild(b"docs", docs)
        self.putChild(b"", _PathLeaf(b"index"))

    def render_GET(self, request):
        return _PathLeaf(b"tree").render(request)


def _request(host, path, method=b"GET", query=b""):
    """
    A L{DummyRequest} for C{path}, with C{Host: host}; its C{prepath} and
    C{postpath} are not what the path says, as a site that leaves them to
    its (leaf) root may give them.
    """
    request = DummyRequest([b"not", b"this"])
    request.prepath = [b"nor", b"this"]
    request.method = method
    request.path = path
    request.uri = path + (b"?" + query if query else b"")
    request.requestHeaders.setRawHeaders(b"host", [host])
    return request


def _render(root, request):
    """
    Render C{request} with C{root}: the status and the body, whether the
    body was returned or written.
    """
    result = root.render(request)
    if result is NOT_DONE_YET:
        assert request.finished, "the resource did not finish"
        result = b"".join(request.written)
    return request.responseCode or 200, result


class TreeRouteTests(SynchronousTestCase):
    """
    A route to a resource that is not an L{UpstreamResource} gives it
    C{prepath} and C{postpath} with the route's prefix consumed, and
    traverses it as L{twisted.web.server.Site} would.
    """

    def setUp(self):
        self.other = _PathLeaf(b"other")

    def root(self, routes):
        return VirtualHostResource([VirtualHost("app", ["app.example"], routes)])

    def test_twoLevelsUnderPrefix(self):
        """
        A tree under C{/site/} is traversed from the segment after the
        prefix; what is left after a leaf is its C{postpath}, unquoted.
        """
        root = self.root({b"/": self.other, b"/site/": _Tree()})
        self.assertEqual(
            _render(root, _request(b"app.example", b"/site/docs/page")),
            (200, b"page site,docs,page|"),
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/site/docs/page/a%20b/c%2Fd")),
            (200, b"page site,docs,page|a b,c/d"),
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/site/")),
            (200, b"index site,|"),
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/elsewhere/x")),
            (200, b"other |elsewhere,x"),
        )

    def test_missingChild(self):
        """
        A path with no child in the tree gets the tree's own 404.
        """
        root = self.root({b"/site/": _Tree()})
        code, _ = _render(root, _request(b"app.example", b"/site/docs/nothing"))
        self.assertEqual(code, 404)

    def test_treeAtRoot(self):
        """
        At the route C{/} (or C{""}) the whole path is the C{postpath}, as
        under a L{twisted.web.server.Site}.
        """
        for prefix in (b"/", b""):
            root = self.root({prefix: _Tree()})
            self.assertEqual(
                _render(root, _request(b"app.example", b"/docs/page/x")),
                (200, b"page docs,page|x"),
            )
            self.assertEqual(
                _render(root, _request(b"app.example", b"/")), (200, b"index |")
            )

    def test_prefixWithoutSlash(self):
        """
        A prefix written without its slash takes the path equal to it
        (the tree itself renders) and the paths below it, not a path that
        merely starts with the same bytes: that one goes to a shorter
        route.
        """
        root = self.root({b"/": self.other, b"/site": _Tree()})
        self.assertEqual(
            _render(root, _request(b"app.example", b"/site")), (200, b"tree site|")
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/site/docs/page")),
            (200, b"page site,docs,page|"),
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/sitemap.xml")),
            (200, b"other |sitemap.xml"),
        )
        code, _ = _render(self.root({b"/site": _Tree()}), _request(b"app.example", b"/sitex"))
        self.assertEqual(code, 404)

    def test_nestedPrefix(self):
        """
        A prefix of several segments is several C{prepath} segments,
        unquoted.
        """
        root = self.root({b"/a%20b/c/": _Tree()})
        self.assertEqual(
            _render(root, _request(b"app.example", b"/a%20b/c/docs/page")),
            (200, b"page a b,c,docs,page|"),
        )

    def test_redirectToSlash(self):
        """
        A route written C{/site/} answers a request for C{/site} with a
        redirect to C{/site/}, the query kept: 301 for C{GET} and C{HEAD},
        308 for any other method.
        """
        root = self.root({b"/": self.other, b"/site/": _Tree()})
        for method, query, code, location in [
            (b"GET", b"", 301, b"/site/"),
            (b"HEAD", b"", 301, b"/site/"),
            (b"GET", b"a=1&b", 301, b"/site/?a=1&b"),
            (b"POST", b"", 308, b"/site/"),
        ]:
            request = _request(b"app.example", b"/site", method, query)
            code_, body = _render(root, request)
            self.assertEqual(code_, code)
            self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [location])
            self.assertEqual(
                request.responseHeaders.getRawHeaders(b"content-length"),
                [b"%d" % len(body)],
            )
            self.assertIn(b"%d" % code, body)

    def test_noRedirectWhenRouted(self):
        """
        When C{/site} is a route of its own, a request for C{/site} goes
        there, not to a redirect.
        """
        root = self.root({b"/site/": _Tree(), b"/site": _PathLeaf(b"bare")})
        self.assertEqual(
            _render(root, _request(b"app.example", b"/site")), (200, b"bare site|")
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/site/docs/page")),
            (200, b"page site,docs,page|"),
        )

    def test_leafReadsPath(self):
        """
        A leaf that is not an L{UpstreamResource} (a Klein app, a
        L{twisted.web.wsgi.WSGIResource}) is given its paths too.
        """
        root = self.root({b"/api/": _PathLeaf(b"api")})
        self.assertEqual(
            _render(root, _request(b"app.example", b"/api/v1/x%3Fy")),
            (200, b"api api|v1,x?y"),
        )

    def test_upstreamNotTraversed(self):
        """
        An L{UpstreamResource} is rendered as it is: its prefix matches as
        bytes, and the request's paths are left alone.
        """
        from twisted.internet.testing import MemoryReactorClock

        from lbproxy import Backend, Pool, UpstreamResource

        class Upstream(UpstreamResource):
            def render(self, request):
                seen.append((request.prepath, request.postpath))
                return b"upstream"

        seen = []
        pool = Pool("app", [Backend("127.0.0.1", 1)], reactor=MemoryReactorClock())
        upstream = Upstream(pool)
        vhost = VirtualHost("app", ["app.example"], {b"/api": upstream})
        self.assertEqual(vhost.table, ((b"/api", upstream, None),))
        request = _request(b"app.example", b"/apix/y")
        prepath, postpath = request.prepath, request.postpath
        self.assertEqual(
            _render(VirtualHostResource([vhost]), request), (200, b"upstream")
        )
        self.assertIs(seen[0][0], prepath)
        self.assertIs(seen[0][1], postpath)
        self.assertEqual(seen, [([b"nor", b"this"], [b"not", b"this"])])

    def test_resourceFor(self):
        """
        L{VirtualHost.resourceFor} answers as the routing does.
        """
        tree, upstream = _Tree(), _Leaf(b"up")
        vhost = VirtualHost("app", [], {b"/": upstream, b"/site/": tree})
        self.assertIs(vhost.resourceFor(b"/site/x"), tree)
        self.assertIs(vhost.resourceFor(b"/site"), tree)
        self.assertIs(vhost.resourceFor(b"/sitex"), upstream)
