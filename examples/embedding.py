# -*- test-case-name: tests.test_embedding -*-
"""
lbproxy as a library: a pool of backends and the proxy resource, built in
Python (no configuration file) and served by a plain
L{twisted.web.server.Site} of an application that has pages of its own.

The application below answers C{/} itself and hands everything under
C{/app/} to two backends, balanced round robin (L{makeResource}).
L{makeVirtualHosts} shows the other way in: name-based virtual hosts, where
the host name C{app.example.com} goes to the backends whatever the path.

Run it with twistd as a .tac file, next to the demo backends of
C{examples/site.ini} (which listen on 127.0.0.1:9001 and 9002)::

    twistd -n lbproxy --config examples/site.ini &
    twistd -n --pidfile= -y examples/embedding.py
    curl http://127.0.0.1:8081/app/

Or import it and add L{makeService}'s result to an application of your own.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.application import strports
from twisted.application.service import Application, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.static import Data

from lbproxy import Backend, Pool, UpstreamResource, VirtualHost, VirtualHostResource
from lbproxy.balancers import buildBalancer

#: Where the demo backends of examples/site.ini listen.
DEMO_BACKENDS = [("127.0.0.1", 9001), ("127.0.0.1", 9002)]


def makePool(
    addresses: Iterable[tuple[str, int]], reactor: Optional[Any] = None
) -> Pool:
    """
    Build the pool of the upstream C{app}: one L{Backend} per address, a
    balancer plugin found by name, and the same timeouts and passive health
    settings a site.ini would give (see the configuration reference).

    @param addresses: C{(host, port)} of each backend.
    @param reactor: the reactor; the global one when L{None}.
    """
    return Pool(
        "app",
        [Backend(host, port) for host, port in addresses],
        buildBalancer("round_robin"),
        reactor,
        connectTimeout=2.0,
        readTimeout=30.0,
        maxFails=1,
        failTimeout=10.0,
    )


def makeResource(pool: Pool) -> IResource:
    """
    The application's own resource tree, with the proxy mounted at
    C{/app/}.

    L{UpstreamResource} is a leaf: it forwards the whole path and query
    unchanged, so the backends see C{/app/...}.
    """
    root = Resource()
    root.putChild(b"", Data(b"the host application\n", "text/plain"))
    root.putChild(b"app", UpstreamResource(pool))
    return root


def makeVirtualHosts(pool: Pool, default: IResource) -> VirtualHostResource:
    """
    Name-based virtual hosts in front of the application: C{app.example.com}
    (and any subdomain of it) goes to the pool whatever the path; every
    other host name gets C{default}.

    A route may lead to any resource: C{default} may be a leaf or a tree of
    the application's own (such as L{makeResource}'s), traversed under the
    route's prefix as a L{Site} would.
    """
    app = VirtualHost(
        "app",
        ["app.example.com", "*.app.example.com"],
        {b"/": UpstreamResource(pool)},
    )
    other = VirtualHost("other", [], {b"/": default})
    return VirtualHostResource([app], default=other)


class PoolService(Service):
    """
    Closes a pool's idle persistent connections when the application stops.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        return self.pool.close()


def makeService(
    listen: str = "tcp:8081:interface=127.0.0.1",
    backends: Iterable[tuple[str, int]] = DEMO_BACKENDS,
    reactor: Optional[Any] = None,
) -> MultiService:
    """
    The web part of the application as one service: a listener named
    C{"web"} whose L{Site} serves L{makeResource}'s tree, and a
    L{PoolService} that closes the pool's connections on the way out.

    @param listen: a Twisted server endpoint description.
    @param backends: C{(host, port)} of each backend.
    @param reactor: the reactor; the global one when L{None}.
    """
    pool = makePool(backends, reactor)
    site = Site(makeResource(pool))
    site.displayTracebacks = False
    parent = MultiService()
    PoolService(pool).setServiceParent(parent)
    listener = strports.service(listen, site, reactor=reactor)
    listener.setName("web")
    listener.setServiceParent(parent)
    return parent


def makeApplication() -> Any:
    """
    The application object that C{twistd -y} runs.
    """
    application = Application("lbproxy-embedding-example")
    makeService().setServiceParent(application)
    return application


# twistd -y runs this file with no __name__ of its own (so the builtins'
# name shows through) and looks for "application"; importing it does not
# build anything.
if __name__ == "builtins":
    application = makeApplication()
