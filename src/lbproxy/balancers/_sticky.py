# -*- test-case-name: tests.test_balancers -*-
"""
Sticky sessions by cookie.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Iterable, Optional

from zope.interface import implementer

from lbproxy._interfaces import IBalancer
from lbproxy.balancers._base import BalancerBase, InvalidBalancerOptions
from lbproxy.balancers._roundrobin import RoundRobin

# RFC 6265 cookie-name: an RFC 7230 token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@implementer(IBalancer)
class Sticky(BalancerBase):
    """
    Sticky sessions: the first response to a client sets a cookie naming
    the backend that answered, and later requests carrying that cookie go
    to the same backend while it is eligible.  When it is not (down,
    draining, or already tried for this request), the request is balanced
    by the fallback balancer and the cookie re-pinned to its new backend.

    The cookie holds the backend's opaque L{id<lbproxy.interfaces.IBackend.id>},
    never its address.  It is set in L{requestStarted}, before the response
    head is written; a retry on another backend replaces the cookie that the
    earlier try set rather than adding a second one.

    @ivar cookieName: the cookie's name, as L{bytes}.
    @ivar fallback: the L{IBalancer} for unpinned requests.
    """

    def __init__(
        self,
        cookie: str = "lbproxy_sticky",
        maxAge: Optional[int] = None,
        fallback: Optional[IBalancer] = None,
    ) -> None:
        """
        @param cookie: the cookie's name.
        @param maxAge: the cookie's C{Max-Age} in seconds; L{None} for a
            session cookie.
        @param fallback: balances unpinned requests; round robin when
            L{None}.

        @raise InvalidBalancerOptions: when C{cookie} is not a valid cookie
            name.
        """
        super().__init__()
        if not _TOKEN.match(cookie):
            raise InvalidBalancerOptions(
                f"balancer.cookie = {cookie!r} is not a valid cookie name; "
                "expected letters, digits and !#$%&'*+-.^_`|~"
            )
        self.cookieName = cookie.encode("ascii")
        self._prefix = self.cookieName + b"="
        self._maxAge = None if maxAge is None else str(int(maxAge)).encode("ascii")
        self.fallback: IBalancer = fallback if fallback is not None else RoundRobin()
        self._byId: dict[bytes, Any] = {}

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        super().backendsChanged(backends)
        self._byId = {b.id.encode("ascii"): b for b in self.backends if b.id}
        self.fallback.backendsChanged(self.backends)

    def _pinned(self, request: Any) -> Optional[bytes]:
        if request is None:
            return None
        try:
            value: Optional[bytes] = request.getCookie(self.cookieName)
        except AttributeError:
            return None
        return value

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        pinned = self._pinned(request)
        if pinned is not None:
            backend = self._byId.get(pinned)
            if backend is not None and backend not in exclude:
                return backend
        return self.fallback.pick(request, exclude)

    def requestStarted(self, backend: Any, request: Any) -> None:
        self.fallback.requestStarted(backend, request)
        if request is None or not backend.id:
            return
        value = backend.id.encode("ascii")
        if self._pinned(request) == value:
            return
        cookies = getattr(request, "cookies", None)
        if cookies is None:
            return
        prefix = self._prefix
        cookies[:] = [c for c in cookies if not c.startswith(prefix)]
        request.addCookie(
            self.cookieName,
            value,
            path=b"/",
            max_age=self._maxAge,
            secure=request.isSecure(),
            httpOnly=True,
            sameSite="lax",
        )

    def requestFinished(
        self, backend: Any, request: Any, outcome: Any, latency: float
    ) -> None:
        self.fallback.requestFinished(backend, request, outcome, latency)
