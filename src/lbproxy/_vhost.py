# -*- test-case-name: tests.test_vhost -*-
"""
Name-based virtual hosts: the request's C{Host} picks a vhost, the longest
matching route prefix of the vhost picks the resource.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy._pages import renderError


class VirtualHost:
    """
    One virtual host: its names and its routes.

    @ivar serverNames: lower-cased exact names and C{*.domain} wildcards.
    @ivar routes: C{(prefix, resource)} pairs, longest prefix first; the
        prefix C{b"/"} (or C{b""}) matches every path.
    """

    def __init__(
        self,
        name: str,
        serverNames: Iterable[str],
        routes: Mapping[bytes, IResource],
    ) -> None:
        self.name = name
        self.serverNames = tuple(n.lower() for n in serverNames)
        self.routes: Sequence[tuple[bytes, IResource]] = sorted(
            routes.items(), key=lambda item: -len(item[0])
        )

    def resourceFor(self, path: bytes) -> Optional[IResource]:
        """
        The resource of the longest route prefix of C{path}, or L{None}.
        """
        for prefix, resource in self.routes:
            if path.startswith(prefix):
                return resource
        return None

    def __repr__(self) -> str:
        return f"<VirtualHost {self.name!r} {list(self.serverNames)!r}>"


_ABSOLUTE = re.compile(rb"\A[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def originForm(uri: bytes) -> bytes:
    """
    The path and query of a request target: an absolute-form target
    (C{http://host/path?q}) loses its scheme and authority, so that it is
    routed and forwarded like C{/path?q}, never to the host it names.
    """
    match = _ABSOLUTE.match(uri)
    if match is None:
        return uri
    rest = uri[match.end() :]
    return rest if rest.startswith(b"/") else b"/" + rest


def normaliseHost(host: Optional[bytes]) -> str:
    """
    Lower-case a C{Host} header value and drop its port and trailing dot.
    """
    if not host:
        return ""
    text = host.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    text = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return text.rstrip(".")


_UNCHECKED = object()

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
        self._exact: dict[str, VirtualHost] = {}
        self._wildcards: list[tuple[str, VirtualHost]] = []
        for vhost in self.vhosts:
            for name in vhost.serverNames:
                if name.startswith("*."):
                    self._wildcards.append((name[1:], vhost))
                else:
                    self._exact.setdefault(name, vhost)
        self._wildcards.sort(key=lambda item: -len(item[0]))
        self._cache: dict[Optional[bytes], Optional[VirtualHost]] = {}

    def vhostFor(self, host: Optional[bytes]) -> Optional[VirtualHost]:
        """
        The vhost serving C{host} (a C{Host} header value), or L{None}.

        The answers for the first L{_CACHED_HOSTS} distinct values are
        remembered: a site sees few of them, and a client that makes up
        new ones only fills the cache, it does not grow it.
        """
        cache = self._cache
        try:
            return cache[host]
        except KeyError:
            pass
        vhost = self._vhostFor(host)
        if len(cache) < _CACHED_HOSTS:
            cache[host] = vhost
        return vhost

    def _vhostFor(self, host: Optional[bytes]) -> Optional[VirtualHost]:
        name = normaliseHost(host)
        vhost = self._exact.get(name)
        if vhost is not None:
            return vhost
        for suffix, candidate in self._wildcards:
            if name.endswith(suffix) and len(name) > len(suffix):
                return candidate
        return self.default

    def render(self, request: Any) -> Any:
        if not request.path.startswith(b"/"):
            # Served by a plain Site rather than lbproxy's, which already
            # reduces an absolute-form target.
            request.uri = originForm(request.uri)
            request.path = request.uri.split(b"?", 1)[0]
        # lbproxy's channel has already found and checked the Host header
        # (and set it on the request itself, not as a class default).
        host = getattr(request, "__dict__", {}).get("hostHeader", _UNCHECKED)
        if host is _UNCHECKED:
            host = request.getHeader(b"host")
        vhost = self.vhostFor(host)
        resource = vhost.resourceFor(request.path) if vhost is not None else None
        if resource is None:
            return renderError(request, 404)
        result = resource.render(request)
        return NOT_DONE_YET if result is NOT_DONE_YET else result
