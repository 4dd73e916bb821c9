"""
Tests for L{lbproxy._vhost}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import File
from twisted.web.test.requesthelper import DummyRequest

from lbproxy import ProxySite
from lbproxy._vhost import VirtualHost, VirtualHostResource, normaliseHost

_PEER = IPv4Address("TCP", "192.0.2.1", 4321)


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
        self.assertIn(b"App.Example:80", root._vhostCache)
        for i in range(_vhost._CACHED_HOSTS + 10):
            self.assertIs(root.vhostFor(b"x%d.app.example" % i), app)
        self.assertEqual(len(root._vhostCache), _vhost._CACHED_HOSTS)
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


def _directory(testCase):
    """
    A directory for L{static.File}: C{public/} holds C{hello.txt} and
    C{sub/inner.txt}, and has C{secret.txt} next to it, which must never be
    served.

    @return: the L{FilePath} of C{public/}.
    """
    base = FilePath(testCase.mktemp())
    public = base.child("public")
    public.child("sub").makedirs()
    public.child("hello.txt").setContent(b"hello\n")
    public.child("sub").child("inner.txt").setContent(b"inner\n")
    base.child("secret.txt").setContent(b"top secret\n")
    return public


#: Requests that try to leave the directory served at C{/static/}.
_ESCAPES = [
    b"/static/../secret.txt",
    b"/static/%2e%2e/secret.txt",
    b"/static/%2E%2E/secret.txt",
    b"/static/..%2fsecret.txt",
    b"/static/%2e%2e%2fsecret.txt",
    b"/static/sub/../../secret.txt",
    b"/static/sub/%2e%2e/%2e%2e/secret.txt",
    b"/static/..%5csecret.txt",
    b"/static/%2fetc%2fpasswd",
]


class StaticFileDummyRequestTests(SynchronousTestCase):
    """
    A L{static.File} directory behind a vhost route, rendered with
    L{DummyRequest}s (which run the file's producer to the end).
    """

    def setUp(self):
        self.public = _directory(self)

    def test_fileUnderPrefix(self):
        root = VirtualHostResource(
            [VirtualHost("app", ["app.example"], {b"/static/": File(self.public.path)})]
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/static/hello.txt")),
            (200, b"hello\n"),
        )
        self.assertEqual(
            _render(root, _request(b"app.example", b"/static/sub/inner.txt")),
            (200, b"inner\n"),
        )

    def test_fileOfDefaultVhost(self):
        """
        A directory at C{/} of the default vhost serves any unknown host.
        """
        files = VirtualHost("files", [], {b"/": File(self.public.path)})
        root = VirtualHostResource(
            [VirtualHost("app", ["app.example"], {b"/": _Leaf(b"app")})], default=files
        )
        self.assertEqual(
            _render(root, _request(b"unknown.example", b"/hello.txt")), (200, b"hello\n")
        )
        self.assertEqual(_render(root, _request(b"app.example", b"/hello.txt")), (200, b"app"))


class _Site:
    """
    A L{ProxySite} over C{root}, driven on L{StringTransport}s.
    """

    def __init__(self, testCase, root):
        self.reactor = MemoryReactorClock()
        self.site = ProxySite(root, reactor=self.reactor)
        self.site.startFactory()
        testCase.addCleanup(self.site.stopFactory)

    def get(self, path, host=b"app.example", method=b"GET"):
        """
        Send one request on a new connection.

        @return: the status, the headers (lower-case names to lists of
            values) and the body of the response.
        """
        channel = self.site.buildProtocol(_PEER)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 80), peerAddress=_PEER
        )
        channel.makeConnection(transport)
        channel.dataReceived(
            b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
            % (method, path, host)
        )
        return _parseResponse(transport.value(), method == b"HEAD")


def _parseResponse(data, head=False):
    """
    The status, headers and body of the one HTTP/1.1 response in C{data}.
    """
    top, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {data[:300]!r}")
    lines = top.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if head:
        return status, headers, rest
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = b""
        while True:
            size, _, rest = rest.partition(b"\r\n")
            length = int(size.split(b";")[0], 16)
            if length == 0:
                break
            body, rest = body + rest[:length], rest[length + 2 :]
        return status, headers, body
    length = int(headers[b"content-length"][0]) if b"content-length" in headers else len(rest)
    return status, headers, rest[:length]


class StaticFileSiteTests(SynchronousTestCase):
    """
    A L{static.File} directory behind a vhost route of a L{ProxySite}, on
    L{StringTransport}: listings, redirects and escapes, which need no file
    producer (that is run by Twisted's global cooperator; the integration
    tests read files over real sockets).
    """

    def setUp(self):
        self.public = _directory(self)
        self.proxy = _Site(
            self,
            VirtualHostResource(
                [
                    VirtualHost(
                        "app",
                        ["app.example"],
                        {b"/": _Leaf(b"app"), b"/static/": File(self.public.path)},
                    )
                ],
                default=VirtualHost("files", [], {b"/": File(self.public.path)}),
            ),
        )

    def test_listing(self):
        """
        C{/static/} lists the directory, with links relative to it.
        """
        status, _, body = self.proxy.get(b"/static/")
        self.assertEqual(status, 200)
        self.assertIn(b'href="hello.txt"', body)
        self.assertIn(b'href="sub/"', body)
        self.assertNotIn(b"secret", body)

    def test_headOfFile(self):
        status, headers, body = self.proxy.get(b"/static/hello.txt", method=b"HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-length"], [b"6"])
        self.assertEqual(body, b"")

    def test_prefixWithoutSlash(self):
        """
        C{/static} is redirected to C{/static/}, the query kept.
        """
        status, headers, _ = self.proxy.get(b"/static?x=1")
        self.assertEqual((status, headers[b"location"]), (301, [b"/static/?x=1"]))
        status, headers, _ = self.proxy.get(b"/staticx")
        self.assertEqual(status, 200)

    def test_subdirectoryWithoutSlash(self):
        """
        A subdirectory asked for without its slash gets L{static.File}'s own
        redirect, to the URL under the route's prefix.
        """
        status, headers, _ = self.proxy.get(b"/static/sub")
        self.assertIn(status, (301, 302))
        [location] = headers[b"location"]
        self.assertTrue(location.endswith(b"/static/sub/"), location)
        self.assertIn(location.split(b"/static/")[0], (b"", b"http://app.example"))

    def test_escapes(self):
        """
        No path, whether with C{..} or C{%2e%2e} or an encoded slash, serves
        a file outside the directory.
        """
        for path in _ESCAPES:
            status, _, body = self.proxy.get(path)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"top secret", body)

    def test_defaultVhost(self):
        """
        A host matching no vhost gets the default's directory at C{/}, and
        cannot leave it either.
        """
        status, _, body = self.proxy.get(b"/", host=b"unknown.example")
        self.assertEqual(status, 200)
        self.assertIn(b'href="hello.txt"', body)
        status, headers, _ = self.proxy.get(
            b"/hello.txt", host=b"unknown.example", method=b"HEAD"
        )
        self.assertEqual((status, headers[b"content-length"]), (200, [b"6"]))
        for path in _ESCAPES:
            path = path[len(b"/static") :]
            status, _, body = self.proxy.get(path, host=b"unknown.example")
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"top secret", body)


class _URLs(Resource):
    """
    A leaf answering with C{request.prePathURL()} and the URL of a sibling
    by C{request.URLPath()}.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"%s %s" % (
            request.prePathURL(),
            str(request.URLPath().sibling(b"other")).encode("ascii"),
        )


class TreeSiteTests(SynchronousTestCase):
    """
    A two-level tree of plain resources behind a vhost route of a
    L{ProxySite}, on L{StringTransport}.
    """

    def setUp(self):
        tree = _Tree()
        tree.children[b"docs"].putChild(b"urls", _URLs())
        self.proxy = _Site(
            self,
            VirtualHostResource(
                [VirtualHost("app", ["app.example"], {b"/": _Leaf(b"app"), b"/site/": tree})]
            ),
        )

    def test_traversed(self):
        self.assertEqual(
            self.proxy.get(b"/site/docs/page/a%20b")[::2],
            (200, b"page site,docs,page|a b"),
        )
        self.assertEqual(self.proxy.get(b"/site/")[::2], (200, b"index site,|"))
        self.assertEqual(self.proxy.get(b"/other")[::2], (200, b"app"))
        self.assertEqual(self.proxy.get(b"/site/nothing")[0], 404)

    def test_urls(self):
        """
        C{request.prePathURL()} and C{request.URLPath()} name the resource
        under the route's prefix.
        """
        self.assertEqual(
            self.proxy.get(b"/site/docs/urls/x")[::2],
            (
                200,
                b"http://app.example/site/docs/urls http://app.example/site/docs/other",
            ),
        )

    def test_redirectToSlash(self):
        status, headers, _ = self.proxy.get(b"/site")
        self.assertEqual((status, headers[b"location"]), (301, [b"/site/"]))
