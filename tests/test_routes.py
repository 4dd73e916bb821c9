"""
Tests for the route kinds of a vhost: C{strip_prefix} on an upstream route,
C{files:DIR}, C{redirect:CODE:URL} and C{return:CODE[:BODY]}, from
site.ini to the bytes a client gets, in memory.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.static import File

from lbproxy._vhost import FixedResource, RedirectResource, StaticFiles
from lbproxy.config import ConfigError, RouteConfig, parseConfigText
from lbproxy.service import LoadBalancerService
from lbproxy.testing import ProxyHarness

_SITE = """
[lbproxy]
listen = tcp:8080
access_log = off

[upstream:app]
servers = 127.0.0.1:9001

[upstream:api]
servers = 127.0.0.2:9002

[vhost:app]
server_names = app.example
upstream = app
routes =
{routes}
"""


def _site(routes):
    return _SITE.format(routes="\n".join("    " + line for line in routes.splitlines()))


def _errors(routes):
    try:
        parseConfigText(_site(routes), "site.ini")
    except ConfigError as e:
        return e.errors
    raise AssertionError("no ConfigError")


class ParseRoutesTests(SynchronousTestCase):
    """
    The C{routes} key: one route per line (or several on one line), each a
    prefix, a target and flags; every bad route is an error naming the
    file, the section, the key, the route and what was expected.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def routes(self, text):
        (vhost,) = parseConfigText(_site(text), "site.ini").vhosts
        return vhost.routes

    def test_kinds(self):
        """
        Each kind of target, with its flags.
        """
        routes = self.routes(
            f"/api/ api strip_prefix\n"
            f"/static/ app\n"
            f"/assets/ files:{self.directory}\n"
            f"/pub/ files:{self.directory} listing\n"
            f"/old/ redirect:301:https://new.example.com/\n"
            f"/tmp/ redirect:307:http://other.example:8080/x\n"
            f"/ping return:204\n"
            f"/ok return:200:ok:fine\n"
            f"/gone return:410\n"
        )
        self.assertEqual(
            routes,
            (
                RouteConfig("/api/", "upstream", "api", stripPrefix=True),
                RouteConfig("/static/", "upstream", "app"),
                RouteConfig("/assets/", "files", self.directory),
                RouteConfig("/pub/", "files", self.directory, listing=True),
                RouteConfig("/old/", "redirect", "https://new.example.com/", 301),
                RouteConfig("/tmp/", "redirect", "http://other.example:8080/x", 307),
                RouteConfig("/ping", "return", "", 204),
                RouteConfig("/ok", "return", "ok:fine", 200),
                RouteConfig("/gone", "return", "", 410),
            ),
        )

    def test_oneLine(self):
        """
        Several routes on one line read as one per line: a route begins
        at each word starting with C{/}.
        """
        self.assertEqual(
            self.routes("/api/ api strip_prefix /ping return:204 /x app"),
            (
                RouteConfig("/api/", "upstream", "api", stripPrefix=True),
                RouteConfig("/ping", "return", "", 204),
                RouteConfig("/x", "upstream", "app"),
            ),
        )

    def test_errorsNameEverything(self):
        """
        Each bad route is its own error, naming the file, the section, the
        key, the route and what was expected; the good ones around them
        raise nothing.
        """
        missing = os.path.join(self.directory, "nothing")
        errors = _errors(
            "/a/ redirect:303:https://x.example/\n"
            "/b/ app\n"
            f"/c/ files:{missing}\n"
            "/d/ redirect:301:/relative\n"
        )
        self.assertEqual(len(errors), 3, errors)
        self.assertTrue(
            errors[0].startswith(
                "site.ini: [vhost:app] routes = '/a/ redirect:303:https://x.example/': "
                "bad value; expected redirect:CODE:URL with CODE 301, 302, 307 or 308"
            ),
            errors[0],
        )
        self.assertTrue(
            errors[1].startswith(f"site.ini: [vhost:app] routes = '/c/ files:{missing}': bad value; expected files:DIR"),
            errors[1],
        )
        self.assertIn(f"there is no directory {missing}", errors[1])
        self.assertIn("absolute http:// or https:// URL", errors[2])
        self.assertIn("'/d/ redirect:301:/relative'", errors[2])

    def test_badRoutes(self):
        """
        What each kind refuses, and what the error expects.
        """
        for route, expected in [
            ("/a/", "a path prefix followed by an upstream name, files:DIR"),
            ("a/ app", "a path prefix starting with /"),
            ("/a/ up:stream", "a path prefix followed by an upstream name"),
            ("/a/ files:relative/dir", "DIR the absolute path of a directory"),
            ("/a/ redirect:301", "absolute http:// or https:// URL"),
            ("/a/ redirect:301:ftp://x.example/", "absolute http:// or https:// URL"),
            ("/a/ redirect:301:https:///path", "absolute http:// or https:// URL"),
            ("/a/ redirect:301:https://x.example/?a=1", "without query or fragment"),
            ("/a/ redirect:301:https://x.example/#top", "without query or fragment"),
            ("/a/ redirect:200:https://x.example/", "CODE 301, 302, 307 or 308"),
            ("/a/ redirect:abc:https://x.example/", "CODE 301, 302, 307 or 308"),
            ("/a/ return:", "return:CODE or return:CODE:BODY"),
            ("/a/ return:101", "CODE between 200 and 599"),
            ("/a/ return:600", "CODE between 200 and 599"),
            ("/a/ return:204:body", "none with 204 or 304"),
            ("/a/ return:304:body", "none with 204 or 304"),
            ("/a/ app listing", "after an upstream name, strip_prefix"),
            (f"/a/ files:{self.directory} strip_prefix", "after files:DIR, listing"),
            ("/a/ return:200 strip_prefix", "after redirect: and return:, nothing"),
            ("/a/ redirect:301:https://x.example/ listing", "after redirect: and return:, nothing"),
            ("/a/ proxy:app", "files:DIR, redirect:CODE:URL or return:CODE[:BODY], got 'proxy:app'"),
        ]:
            errors = _errors(route)
            self.assertEqual(len(errors), 1, (route, errors))
            self.assertIn(f"[vhost:app] routes = {route!r}: bad value; expected", errors[0])
            self.assertIn(expected, errors[0], route)

    def test_misspeltNames(self):
        """
        A route kind or flag one or two letters from a known one ends its
        error with what was given and a "did you mean"; one further away
        with what was given only.
        """
        flags = (
            "after an upstream name, strip_prefix; after files:DIR, listing; "
            "after redirect: and return:, nothing"
        )
        targets = (
            "a path prefix followed by an upstream name, files:DIR, "
            "redirect:CODE:URL or return:CODE[:BODY]"
        )
        for route, expected in [
            ("/a/ app strip-prefix", f"{flags}, got 'strip-prefix'; did you mean 'strip_prefix'?"),
            (f"/a/ files:{self.directory} lsiting", f"{flags}, got 'lsiting'; did you mean 'listing'?"),
            ("/a/ app strip", f"{flags}, got 'strip'"),
            ("/a/ file:/srv", f"{targets}, got 'file:/srv'; did you mean 'files:'?"),
            ("/a/ retrun:204", f"{targets}, got 'retrun:204'; did you mean 'return:'?"),
            ("/a/ proxy:app", f"{targets}, got 'proxy:app'"),
        ]:
            (error,) = _errors(route)
            self.assertEqual(
                error, f"site.ini: [vhost:app] routes = {route!r}: bad value; expected {expected}"
            )

    def test_undefinedUpstream(self):
        """
        An upstream route naming no section is an error, flags or not; the
        other kinds name no section.
        """
        (error,) = _errors("/api/ nowhere strip_prefix\n/ping return:204")
        self.assertIn("[vhost:app] routes = '/api/ nowhere'", error)
        self.assertIn("no [upstream:nowhere]", error)

    def test_routesAlone(self):
        """
        A vhost whose only routes are not upstreams needs no upstream.
        """
        text = _site("/ return:200:hello").replace("upstream = app\n", "")
        (vhost,) = parseConfigText(text).vhosts
        self.assertEqual(vhost.routes, (RouteConfig("/", "return", "hello", 200),))
        self.assertIsNone(vhost.upstream)


class RouteKindsTests(SynchronousTestCase):
    """
    A service built from site.ini answers each route kind, in memory.
    """

    def setUp(self):
        base = FilePath(self.mktemp())
        self.public = base.child("public")
        self.public.child("empty").makedirs()
        self.public.child("hello.txt").setContent(b"hello\n")

    def serve(self, routes):
        reactor = MemoryReactorClock()
        service = LoadBalancerService(parseConfigText(_site(routes)), reactor)
        proxy = ProxyHarness(service.resource, reactor=reactor)
        self.addCleanup(proxy.close)
        return proxy

    def request(self, proxy, target, method=b"GET"):
        client = proxy.connect()
        client.send(b"%s %s HTTP/1.1\r\nHost: app.example\r\n\r\n" % (method, target))
        return client

    def test_stripPrefix(self):
        """
        With C{strip_prefix} the backend sees the path without the prefix,
        a leading C{/} kept, and the query; without it, the whole path.
        """
        proxy = self.serve("/api/ api strip_prefix\n/v1 api strip_prefix\n/plain/ api")
        for target, sent in [
            (b"/api/users?x=1", b"GET /users?x=1 HTTP/1.1\r\n"),
            (b"/api/", b"GET / HTTP/1.1\r\n"),
            (b"/v1?q", b"GET /?q HTTP/1.1\r\n"),
            (b"/v1", b"GET / HTTP/1.1\r\n"),
            (b"/v1/a/b", b"GET /a/b HTTP/1.1\r\n"),
            (b"/plain/x?y", b"GET /plain/x?y HTTP/1.1\r\n"),
            (b"/other", b"GET /other HTTP/1.1\r\n"),
        ]:
            client = self.request(proxy, target)
            if proxy.pending():
                backend = proxy.acceptBackend()
            self.assertTrue(backend.received().startswith(sent), (target, backend.received()))
            backend.clear()
            backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.assertTrue(client.received().endswith(b"\r\n\r\nok"))

    def test_stripPrefixLogsWholePath(self):
        """
        The client's request keeps its whole path (the access log's): only
        what goes to the backend changes.
        """
        proxy = self.serve("/api/ api strip_prefix")
        client = self.request(proxy, b"/api/users")
        proxy.acceptBackend()
        (request,) = client.requests
        self.assertEqual(request.uri, b"/api/users")

    def test_redirect(self):
        """
        A redirect route answers with its code and the URL, followed by the
        rest of the path after the prefix and the query.
        """
        proxy = self.serve(
            "/old/ redirect:301:https://new.example.com/\n"
            "/tmp redirect:307:https://t.example/base\n"
        )
        for target, code, location in [
            (b"/old/a/b%20c?q=1&r", 301, b"https://new.example.com/a/b%20c?q=1&r"),
            (b"/old/", 301, b"https://new.example.com/"),
            (b"/old/?q", 301, b"https://new.example.com/?q"),
            (b"/tmp", 307, b"https://t.example/base"),
            (b"/tmp/x", 307, b"https://t.example/base/x"),
            (b"/tmp?x", 307, b"https://t.example/base?x"),
            (b"/tmpfile", 307, b"https://t.example/base/file"),
        ]:
            client = self.request(proxy, target)
            response = client.received()
            self.assertTrue(response.startswith(b"HTTP/1.1 %d " % code), response)
            self.assertIn(b"\r\nLocation: %s\r\n" % location, response)
            self.assertEqual(proxy.pending(), [])

    def test_return(self):
        """
        A return route answers with its code and body; without a body, an
        empty one (none at all for 204), or lbproxy's page from 400 up.
        """
        proxy = self.serve("/ping return:204\n/ok return:200:ok\n/gone return:410\n/empty return:200")
        response = self.request(proxy, b"/ping").received()
        self.assertTrue(response.startswith(b"HTTP/1.1 204 "), response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)
        self.assertNotIn(b"Content-Length", response)
        self.assertNotIn(b"Transfer-Encoding", response)
        response = self.request(proxy, b"/ok?x").received()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertIn(b"\r\nContent-Type: text/plain; charset=utf-8\r\n", response)
        self.assertIn(b"\r\nContent-Length: 2\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\nok"), response)
        response = self.request(proxy, b"/ok", method=b"HEAD").received()
        self.assertIn(b"\r\nContent-Length: 2\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)
        response = self.request(proxy, b"/gone").received()
        self.assertTrue(response.startswith(b"HTTP/1.1 410 Gone\r\n"), response)
        self.assertIn(b"<h1>410 Gone</h1>", response)
        response = self.request(proxy, b"/empty").received()
        self.assertIn(b"\r\nContent-Length: 0\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)
        self.assertEqual(proxy.pending(), [])

    def test_filesNoListing(self):
        """
        A directory with no index file is refused without C{listing}, and
        listed with it.
        """
        proxy = self.serve(
            f"/assets/ files:{self.public.path}\n/pub/ files:{self.public.path} listing"
        )
        for target in (b"/assets/", b"/assets/empty/"):
            response = self.request(proxy, target).received()
            self.assertTrue(response.startswith(b"HTTP/1.1 403 "), (target, response))
            self.assertNotIn(b"hello.txt", response)
        response = self.request(proxy, b"/pub/").received()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        self.assertIn(b'href="hello.txt"', response)

    def test_filesIndex(self):
        """
        A directory with an index file serves it, listing or not.
        """
        self.public.child("index.html").setContent(b"<p>index</p>")
        proxy = self.serve(f"/assets/ files:{self.public.path}")
        client = self.request(proxy, b"/assets/")
        # static.File's producer is pulled: pull it as a socket would.
        while client.transport.producer is not None:
            client.transport.producer.resumeProducing()
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        self.assertTrue(response.endswith(b"\r\n\r\n<p>index</p>"), response)

    def test_resources(self):
        """
        The service builds the resource of each kind.
        """
        reactor = MemoryReactorClock()
        service = LoadBalancerService(
            parseConfigText(
                _site(
                    f"/a/ files:{self.public.path}\n/b/ files:{self.public.path} listing\n"
                    "/c/ redirect:308:https://x.example/\n/d return:200:hi\n/e/ api strip_prefix"
                )
            ),
            reactor,
        )
        vhost = service.resource.vhostFor(b"app.example")
        files = vhost.resourceFor(b"/a/x")
        self.assertIsInstance(files, StaticFiles)
        self.assertEqual(files.path, self.public.path)
        listing = vhost.resourceFor(b"/b/x")
        self.assertIs(type(listing), File)
        redirect = vhost.resourceFor(b"/c/")
        self.assertIsInstance(redirect, RedirectResource)
        self.assertEqual((redirect.code, redirect.url), (308, b"https://x.example/"))
        fixed = vhost.resourceFor(b"/d")
        self.assertIsInstance(fixed, FixedResource)
        self.assertEqual((fixed.code, fixed.body), (200, b"hi"))
        upstream = vhost.resourceFor(b"/e/")
        self.assertIs(upstream.pool, service.pools["api"])
        self.assertEqual(upstream.stripPrefix, b"/e/")
        self.assertIsNone(vhost.resourceFor(b"/").stripPrefix)
