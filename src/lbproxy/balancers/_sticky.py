# -*- test-case-name: tests.test_balancers -*-
"""
Sticky sessions by cookie.
"""

from __future__ import annotations

import hashlib
import hmac
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

    The cookie never holds the backend's address.  Without a secret it
    holds the backend's L{id<lbproxy.interfaces.IBackend.id>}, a hash of
    the upstream's name and the backend's URL: the same on every lbproxy
    instance with the same upstream, but whoever knows the upstream's name
    can test a guessed address against it.  With a secret
    (C{balancer.secret}) it holds an HMAC-SHA256 of the backend's URL
    (C{scheme://host:port}) keyed with the secret: the same on every
    instance given the same secret, and no address can be tested against
    it without the secret.

    The cookie is set in L{requestStarted}, before the response head is
    written; a retry on another backend replaces the cookie that the
    earlier try set rather than adding a second one.

    @ivar cookieName: the cookie's name, as L{bytes}.
    @ivar fallback: the L{IBalancer} for unpinned requests.
    """

    def __init__(
        self,
        cookie: str = "lbproxy_sticky",
        maxAge: Optional[int] = None,
        fallback: Optional[IBalancer] = None,
        secret: Optional[bytes] = None,
    ) -> None:
        """
        @param cookie: the cookie's name.
        @param maxAge: the cookie's C{Max-Age} in seconds; L{None} for a
            session cookie.
        @param fallback: balances unpinned requests; round robin when
            L{None}.
        @param secret: the key of the HMAC that names a backend in the
            cookie; L{None} to use the backend's id.

        @raise InvalidBalancerOptions: when C{cookie} is not a valid cookie
            name, or C{secret} is empty.
        """
        super().__init__()
        if secret is not None and not secret:
            raise InvalidBalancerOptions(
                "balancer.secret is empty; expected some secret text, the "
                "same on every lbproxy instance"
            )
        self._secret = secret
        self._values: dict[Any, bytes] = {}
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

    def cookieValue(self, backend: Any) -> bytes:
        """
        The value of the cookie that pins a client to C{backend}: its id,
        or with a secret the HMAC of its URL; empty when it has neither an
        id nor a secret.
        """
        value = self._values.get(backend)
        if value is None:
            if self._secret is None:
                value = backend.id.encode("ascii")
            else:
                value = hmac.new(
                    self._secret, backend.url.encode("utf-8"), hashlib.sha256
                ).hexdigest()[:32].encode("ascii")
            if value:
                self._values[backend] = value
        return value

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        super().backendsChanged(backends)
        eligible = set(self.backends)
        self._values = {b: v for b, v in self._values.items() if b in eligible}
        byValue = {}
        for backend in self.backends:
            value = self.cookieValue(backend)
            if value:
                byValue[value] = backend
        self._byId = byValue
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
        if request is None:
            return
        value = self.cookieValue(backend)
        if not value:
            return
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
