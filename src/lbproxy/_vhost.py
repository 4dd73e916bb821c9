# -*- test-case-name: tests.test_vhost -*-
"""
Name-based virtual hosts: the request's C{Host} picks a vhost, the longest
matching route prefix of the vhost picks the resource.

A route may lead to any L{IResource}.  An L{lbproxy.UpstreamResource}
forwards the raw path and query, so it is rendered at once, with nothing
made per request; any other resource (a L{twisted.web.static.File}
directory, a Klein app, a tree of the embedder's own) is given
C{request.prepath} and C{request.postpath} with the route's prefix consumed
and is traversed from there, as L{twisted.web.server.Site} and
L{twisted.web.vhost.NameVirtualHost} would.

The route kinds of site.ini other than an upstream are resources here too:
L{StaticFiles} (C{files:DIR}), L{RedirectResource} (C{redirect:CODE:URL})
and L{FixedResource} (C{return:CODE[:BODY]}).  The last two answer from the
raw path, as an upstream does, so they are matched as plain bytes too.
"""

from __future__ import annotations

import re
from typing import (
    Any,
    Callable,
    Container,
    Generic,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    TypeVar,
)
from urllib.parse import unquote_to_bytes as unquote

from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import File
from zope.interface import implementer

from lbproxy._counters import RequestCounts
from lbproxy._http import ANY_ABSOLUTE, NO_BODY_CODES
from lbproxy._interfaces import implementsProxyRequest
from lbproxy._limits import RequestLimits
from lbproxy._pages import errorBody, renderError


class _Mount:
    """
    How a route reaches a resource that reads its path: the route's prefix
    becomes C{request.prepath}, the rest of the path C{request.postpath},
    and the resource is traversed from there as L{twisted.web.server.Site}
    traverses its root (L{getChildForRequest}).

    Such a route owns its prefix as whole path segments: C{/static} (or
    C{/static/}) is C{/static} and what is below C{/static/}, never
    C{/staticfoo}.

    @ivar key: the prefix without its trailing slash (C{b""} for the root):
        a path the route serves starts with it, followed by C{/} or nothing.
    @ivar prepath: the prefix's segments, unquoted.
    @ivar exact: whether a request for exactly L{key} is the route's: it
        is, unless the route was written with a trailing slash and L{key}
        is a route of its own.
    @ivar redirect: whether a request for exactly L{key} is answered with a
        redirect to C{key + b"/"} (the route was written with a trailing
        slash) rather than rendered.
    """

    __slots__ = ("key", "prepath", "exact", "redirect")

    def __init__(self, prefix: bytes, prefixes: Container[bytes]) -> None:
        """
        @param prefix: the route's prefix.
        @param prefixes: the prefixes of all the vhost's routes.
        """
        self.key = prefix.rstrip(b"/")
        self.prepath = [unquote(s) for s in self.key.split(b"/")[1:]]
        self.redirect = self.key != prefix and bool(self.key)
        self.exact = not self.redirect or self.key not in prefixes

    def owns(self, path: bytes) -> bool:
        """
        Whether C{path}, which starts with L{key}, is the route's.
        """
        end = len(self.key)
        if len(path) == end:
            return self.exact
        return path[end] == 0x2F  # b"/"

    def render(self, resource: IResource, request: Any) -> Any:
        """
        Traverse C{resource} for C{request} and render what is found.
        """
        rest = request.path[len(self.key) :]
        if rest:
            request.postpath = [unquote(s) for s in rest[1:].split(b"/")]
        elif self.redirect:
            return _redirectWithSlash(request, self.key)
        else:
            request.postpath = []
        request.prepath = list(self.prepath)
        return getChildForRequest(resource, request).render(request)


def _redirectWithSlash(request: Any, path: bytes) -> bytes:
    """
    Answer a request for C{path} with a redirect to C{path + b"/"}, its
    query kept, as nginx does for a prefix location written with a slash:
    301 for C{GET} and C{HEAD}, 308 (which keeps the method and body) for
    anything else.
    """
    query = request.uri.partition(b"?")[2]
    location = path + b"/" + (b"?" + query if query else b"")
    code = 301 if request.method in (b"GET", b"HEAD") else 308
    return _redirect(request, code, location)


def _redirect(request: Any, code: int, location: bytes) -> bytes:
    """
    Set up C{request} to answer with a redirect to C{location}, and return
    the body of its short page.
    """
    body = errorBody(code)
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"location", [location])
    request.responseHeaders.setRawHeaders(b"content-type", [b"text/html; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    return body


class StaticFiles(File):
    """
    The static files of a directory (a C{files:DIR} route), served as
    L{twisted.web.static.File} serves them (index files, C{Range},
    C{If-Modified-Since}, no path outside the directory), but without
    directory listings: a directory with no index file is C{403
    Forbidden}, as with nginx's C{autoindex off}.  A route with the
    C{listing} flag is a plain L{File}.
    """

    def directoryListing(self) -> IResource:
        return self.forbidden


@implementer(IResource)
class RedirectResource(Resource):
    """
    Answers every request with a redirect (a C{redirect:CODE:URL} route):
    to C{url}, followed by the rest of the request's path after the
    route's prefix and by its query, one C{/} between the two.

    @ivar code: 301, 302, 307 or 308.
    @ivar url: the absolute URL redirected to.
    @ivar prefix: the route's prefix, left out of the path appended.
    """

    isLeaf = True

    def __init__(self, code: int, url: bytes, prefix: bytes) -> None:
        Resource.__init__(self)
        self.code = code
        self.url = url
        self.prefix = prefix

    def locationFor(self, uri: bytes) -> bytes:
        """
        Where a request for C{uri} (path and query, the path starting with
        L{prefix}) is sent.
        """
        rest = uri[len(self.prefix) :] if uri.startswith(self.prefix) else uri
        url = self.url
        if not rest:
            return url
        if url.endswith(b"/"):
            return url + rest[1:] if rest.startswith(b"/") else url + rest
        if rest.startswith((b"/", b"?")):
            return url + rest
        return url + b"/" + rest

    def render(self, request: Any) -> bytes:
        return _redirect(request, self.code, self.locationFor(request.uri))


@implementer(IResource)
class FixedResource(Resource):
    """
    Answers every request with the same status and body (a
    C{return:CODE[:BODY]} route): the body as C{text/plain}, or with no
    body given, lbproxy's page for a code of 400 or more (as nginx's
    C{return 404;}) and an empty body below.

    @ivar code: the status code.
    @ivar body: the body, or L{None}.
    """

    isLeaf = True

    def __init__(self, code: int, body: Optional[bytes] = None) -> None:
        Resource.__init__(self)
        self.code = code
        self.body = body or None

    def render(self, request: Any) -> Any:
        code = self.code
        request.setResponseCode(code)
        if code in NO_BODY_CODES:
            # Finished here: a returned body would get a Content-Length,
            # which a 204 must not have.
            request.finish()
            return NOT_DONE_YET
        headers = request.responseHeaders
        body = self.body
        if body is not None:
            headers.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        elif code >= 400:
            body = errorBody(code)
            headers.setRawHeaders(b"content-type", [b"text/html; charset=utf-8"])
        else:
            body = b""
        headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        return body


def _readsPath(resource: IResource) -> bool:
    """
    Whether C{resource} needs C{request.prepath} and C{request.postpath}
    (and traversal): every resource but an L{lbproxy.UpstreamResource},
    which forwards C{request.uri} whole, and the fixed answers of
    L{RedirectResource} and L{FixedResource}.
    """
    # Imported here: lbproxy._proxy stands on the client side, which must
    # stay free to import this module.
    from lbproxy._proxy import UpstreamResource

    return not isinstance(resource, (UpstreamResource, RedirectResource, FixedResource))


#: What may stand for the host in the URL of a redirect to HTTPS: a host
#: name, an IPv4 address, or an IPv6 address in brackets.
_REDIRECT_HOST = re.compile(rb"^(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)$")


class HTTPSPolicy:
    """
    What a vhost does about HTTPS (C{redirect_https} and C{hsts}): answer
    plain-HTTP requests with a 308 to the same URL over HTTPS, and add
    C{Strict-Transport-Security} to the responses of HTTPS requests (and
    never to plain-HTTP ones, RFC 6797 section 7.2).

    @ivar redirectPort: L{None} for no redirect, else what gives the HTTPS
        port redirected to (called for each redirect: the port of a
        listener on port 0 is known once it listens); the port is left
        out of the URL when it is 443.
    @ivar hsts: the C{Strict-Transport-Security} value, or L{None}.
    """

    def __init__(
        self, redirectPort: Optional[Callable[[], int]], hsts: Optional[bytes]
    ) -> None:
        self.redirectPort = redirectPort
        self.hsts = hsts

    def apply(self, request: Any, host: Optional[bytes], fallbackHost: Optional[str]) -> Optional[bytes]:
        """
        Apply the policy to C{request} before its route renders it.

        @param host: the request's C{Host} header, if any.
        @param fallbackHost: the name to redirect to when the request has
            no C{Host} (the vhost's first exact name), if any.
        @return: the body of the redirect when the request is answered
            with one, else L{None} (the route renders it).
        """
        if request.isSecure():
            if self.hsts is not None:
                request.responseHeaders.setRawHeaders(b"strict-transport-security", [self.hsts])
            return None
        if self.redirectPort is None:
            return None
        name = hostName(host) if host else (fallbackHost or "").encode("ascii")
        if _REDIRECT_HOST.match(name) is None:
            return renderError(request, 400)
        uri = request.uri if request.uri.startswith(b"/") else originForm(request.uri)
        port = self.redirectPort()
        authority = name if port == 443 else b"%s:%d" % (name, port)
        location = b"https://" + authority + uri
        return _redirect(request, 308, location)


class VirtualHost:
    """
    One virtual host: its names and its routes.

    @ivar serverNames: lower-cased exact names and C{*.domain} wildcards.
    @ivar routes: C{(prefix, resource)} pairs, longest prefix first; the
        prefix C{b"/"} (or C{b""}) matches every path.  The prefix of an
        L{lbproxy.UpstreamResource}, a L{RedirectResource} or a
        L{FixedResource} is matched as bytes (C{/api} matches C{/apix}, as
        an nginx prefix location); that of any other resource
        as whole segments (C{/static} and C{/static/} match C{/static} and
        C{/static/...} only), and C{/static/} answers a request for
        C{/static} with a redirect to C{/static/}, unless C{/static} is a
        route of its own.
    @ivar table: the routes as L{routeFor} reads them: C{(key, resource,
        mount)}, in the order of L{routes}; C{mount} is L{None} for an
        L{lbproxy.UpstreamResource}, rendered as it is, else the L{_Mount}
        that sets the request's paths and traverses the resource.
    @ivar requestCounts: the L{RequestCounts} of the requests it took,
        which L{VirtualHostResource} hands to each (as its
        C{requestCounts}) for the site to count it when it ends.
    """

    #: The vhost's L{HTTPSPolicy}, or L{None} when it has none.
    https: Optional[HTTPSPolicy] = None

    #: The vhost's per-client limits (L{RequestLimits}), checked for every
    #: request after L{https} and before the route, or L{None}.
    limits: Optional[RequestLimits] = None

    def __init__(
        self,
        name: str,
        serverNames: Iterable[str],
        routes: Mapping[bytes, IResource],
        https: Optional[HTTPSPolicy] = None,
        limits: Optional[RequestLimits] = None,
    ) -> None:
        self.name = name
        self.https = https
        self.limits = limits
        self.serverNames = tuple(n.lower() for n in serverNames)
        self.routes: Sequence[tuple[bytes, IResource]] = sorted(
            routes.items(), key=lambda item: -len(item[0])
        )
        table: list[tuple[bytes, IResource, Optional[_Mount]]] = []
        for prefix, resource in self.routes:
            if _readsPath(resource):
                mount = _Mount(prefix, routes)
                table.append((mount.key, resource, mount))
            else:
                table.append((prefix, resource, None))
        self.table: Sequence[tuple[bytes, IResource, Optional[_Mount]]] = tuple(table)
        #: The first exact server name, if any.
        self.exactName = next((n for n in self.serverNames if not n.startswith("*.")), None)
        self.requestCounts = RequestCounts()

    def routeFor(self, path: bytes) -> Optional[tuple[bytes, IResource, Optional[_Mount]]]:
        """
        The route of C{path}: the one with the longest prefix that matches
        it, as a C{(key, resource, mount)} entry of L{table}, or L{None}.
        C{mount} is L{None} for a resource rendered as it is.
        """
        for entry in self.table:
            if path.startswith(entry[0]):
                mount = entry[2]
                if mount is None or mount.owns(path):
                    return entry
        return None

    def resourceFor(self, path: bytes) -> Optional[IResource]:
        """
        The resource of the longest route prefix of C{path}, or L{None}.
        """
        entry = self.routeFor(path)
        return None if entry is None else entry[1]

    def __repr__(self) -> str:
        return f"<VirtualHost {self.name!r} {list(self.serverNames)!r}>"




def originForm(uri: bytes) -> bytes:
    """
    The path and query of a request target: an absolute-form target
    (C{http://host/path?q}) loses its scheme and authority, so that it is
    routed and forwarded like C{/path?q}, never to the host it names.
    """
    match = ANY_ABSOLUTE.match(uri)
    if match is None:
        return uri
    rest = uri[match.end() :]
    return rest if rest.startswith(b"/") else b"/" + rest


def hostName(host: bytes) -> bytes:
    """
    A C{Host} header value lower-cased, without its port and trailing dot
    (C{b"App.Example.:8080"} is C{b"app.example"}, C{b"[::1]:80"} is
    C{b"[::1]"}).
    """
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    host = host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host
    return host.rstrip(b".")


def normaliseHost(host: Optional[bytes]) -> str:
    """
    Lower-case a C{Host} header value and drop its port and trailing dot
    (see L{hostName}), as text.
    """
    if not host:
        return ""
    return hostName(host).decode("ascii", "replace")


T = TypeVar("T")


class ServerNames(Generic[T]):
    """
    Server names (exact names and C{*.domain} wildcards) to what answers
    them, looked up as vhosts are matched: an exact name wins, then the
    wildcard with the longest suffix (any subdomain, not the domain
    itself); for the first of several entries of one name.
    """

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._exact: dict[str, T] = {}
        self._wildcards: list[tuple[str, T]] = []
        for name, value in entries:
            if name.startswith("*."):
                self._wildcards.append((name[1:], value))
            else:
                self._exact.setdefault(name, value)
        self._wildcards.sort(key=lambda item: -len(item[0]))

    def lookup(self, name: str) -> Optional[T]:
        """
        What answers C{name} (lower-cased, without port or trailing dot),
        or L{None}.
        """
        value = self._exact.get(name)
        if value is not None:
            return value
        for suffix, candidate in self._wildcards:
            if name.endswith(suffix) and len(name) > len(suffix):
                return candidate
        return None


#: How many distinct C{Host} values L{VirtualHostResource.vhostFor}
#: remembers.
_CACHED_HOSTS = 1024


@implementer(IResource)
class VirtualHostResource(Resource):
    """
    The root resource of lbproxy's listeners: picks a L{VirtualHost} by the
    request's C{Host}, then a resource by path prefix, and renders it.

    Like L{twisted.web.vhost.NameVirtualHost}, but with wildcard names, a
    default vhost, port- and case-insensitive matching and path routes; and
    it is a leaf, so no resource objects are made per path segment.

    Exact names win over wildcards; among wildcards the longest suffix wins.
    A request whose host matches nothing goes to the default vhost, or gets
    404 when there is none.
    """

    isLeaf = True

    def __init__(
        self, vhosts: Iterable[VirtualHost], default: Optional[VirtualHost] = None
    ) -> None:
        Resource.__init__(self)
        self.vhosts = tuple(vhosts)
        self.default = default
        self._names: ServerNames[VirtualHost] = ServerNames(
            (name, vhost) for vhost in self.vhosts for name in vhost.serverNames
        )
        self._vhostCache: dict[Optional[bytes], Optional[VirtualHost]] = {}

    def vhostFor(self, host: Optional[bytes]) -> Optional[VirtualHost]:
        """
        The vhost serving C{host} (a C{Host} header value), or L{None}.

        The answers for the first L{_CACHED_HOSTS} distinct values are
        remembered: a site sees few of them, and a client that makes up
        new ones only fills the cache, it does not grow it.
        """
        cache = self._vhostCache
        try:
            return cache[host]
        except KeyError:
            pass
        vhost = self._vhostFor(host)
        if len(cache) < _CACHED_HOSTS:
            cache[host] = vhost
        return vhost

    def _vhostFor(self, host: Optional[bytes]) -> Optional[VirtualHost]:
        vhost = self._names.lookup(normaliseHost(host))
        return self.default if vhost is None else vhost

    def render(self, request: Any) -> Any:
        if not request.path.startswith(b"/"):
            # Served by a plain Site rather than lbproxy's, which already
            # reduces an absolute-form target.
            request.uri = originForm(request.uri)
            request.path = request.uri.split(b"?", 1)[0]
        # lbproxy's own requests carry the Host header their channel found
        # and checked.
        if implementsProxyRequest(request):
            host = request.hostHeader
        else:
            host = request.getHeader(b"host")
        vhost = self.vhostFor(host)
        if vhost is None:
            return renderError(request, 404)
        request.requestCounts = vhost.requestCounts
        https = vhost.https
        if https is not None:
            redirect = https.apply(request, host, vhost.exactName)
            if redirect is not None:
                return redirect
        limits = vhost.limits
        if limits is not None:
            refused = limits.admit(request, self)
            if refused is not None:
                return refused
        # VirtualHost.routeFor, inlined: this runs for every proxied
        # request, and an UpstreamResource costs one test more than a
        # plain prefix match.
        path = request.path
        for key, resource, mount in vhost.table:
            if path.startswith(key):
                if mount is None:
                    result = resource.render(request)
                    break
                if mount.owns(path):
                    result = mount.render(resource, request)
                    break
        else:
            return renderError(request, 404)
        return NOT_DONE_YET if result is NOT_DONE_YET else result
