# -*- test-case-name: tests.test_balancers -*-
"""
The contracts between lbproxy's parts, and between lbproxy and its plugins.

The public names are re-exported by L{lbproxy.interfaces}.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBackend(Interface):
    """
    One server of an upstream, as balancers see it.

    Balancers read these attributes; only the pool changes them.
    """

    id = Attribute(
        "An opaque, stable L{str} identifying this backend within its pool "
        "(safe to put in a cookie: it does not reveal the address)."
    )
    name = Attribute("C{host:port} as a L{str}, for logs and the status page.")
    host = Attribute("The host name or IP address, as a L{str}.")
    port = Attribute("The TCP port, as an L{int}.")
    scheme = Attribute("C{'http'} or C{'https'}.")
    weight = Attribute("The configured weight, a positive L{int}.")
    effectiveWeight = Attribute(
        "The weight balancers should use now, a positive L{float} no larger "
        "than C{weight} (smaller while the backend is slow-starting)."
    )
    backup = Attribute("L{True} for a backup server.")
    state = Attribute("The L{lbproxy.BackendState} of this backend.")
    active = Attribute("The number of requests in flight to this backend.")


class IBalancer(Interface):
    """
    A balancing algorithm bound to one pool.

    The pool tells the balancer which backends are eligible (up, not
    draining, not disabled; the backups only while no primary is up) with
    L{backendsChanged}; the balancer never sees any other backend.  Picking
    is synchronous so that every algorithm can be tested without Deferreds,
    and it runs for every request in the reactor thread, so it must be
    cheap: the built-ins take a few microseconds at 256 backends.

    A balancer that keeps per-request state (requests in flight, latency)
    should count from L{requestStarted} and L{requestFinished} rather than
    read L{IBackend.active}, so that it agrees with what it was told even
    when driven without a pool, and should cope with notifications for a
    backend that has meanwhile left the eligible set.
    """

    def backendsChanged(backends):
        """
        The eligible set changed: a backend was added, removed, went up or
        down, started or stopped draining, or changed weight (including its
        L{IBackend.effectiveWeight}, which slow start changes step by step;
        the set may then be the same backends as before).

        @param backends: every eligible backend, in configuration order.
        @type backends: L{tuple} of L{IBackend}
        """

    def pick(request, exclude):
        """
        Choose a backend for C{request}.

        @param request: the client request being forwarded, or L{None}
            when a backend is picked without one (health tooling); a
            balancer that needs a request falls back to another rule then.
        @type request: L{twisted.web.server.Request} or L{None}

        @param exclude: backends that must not be chosen: those already
            tried for this request, and those at their C{max_conns} (the
            pool adds them only while some backend is at its cap).
        @type exclude: a L{frozenset} of L{IBackend}

        @return: an eligible L{IBackend} not in C{exclude}, or L{None} when
            there is none.
        """

    def requestStarted(backend, request):
        """
        C{request} is being sent to C{backend} (which this balancer picked).

        Called before the response head is written, so a balancer may still
        add response headers or cookies to C{request} here.  When an attempt
        fails and the request is retried, this is called again for the next
        backend, on the same C{request}: replace what an earlier call added
        rather than adding it twice.
        """

    def requestFinished(backend, request, outcome, latency):
        """
        The exchange with C{backend} for C{request} ended.

        @param outcome: an L{lbproxy.Outcome}.
        @param latency: seconds from L{requestStarted} until the response
            head arrived (or until the failure), a L{float}.
        """


class IMembershipObserver(Interface):
    """
    Told when a backend joins or leaves a pool (see
    L{lbproxy._pool.Pool.setBackends}), so that what follows each backend
    (its health checks, say) can follow the membership without asking the
    pool for it.
    """

    def backendAdded(backend):
        """
        C{backend} joined the pool: it is in the pool's C{backends} now.
        """

    def backendRemoved(backend):
        """
        C{backend} left the pool: its requests have finished, its
        connections are closing, and it is no longer in the pool's
        C{backends}.
        """


class IMembershipSource(Interface):
    """
    What changes a pool's members while it runs, from something outside
    the configuration file (DNS answers, etcd keys), through
    L{lbproxy._pool.Pool.setBackends}: a service (an C{IService} too),
    a child of the L{lbproxy.LoadBalancerService}.
    """

    def status():
        """
        What the admin snapshot shows of the source (see
        L{lbproxy._snapshot}): a JSON-able L{dict} with its C{kind}
        (C{"dns"}, C{"etcd"}) and how its work is going; its counts add up
        across workers.
        """


class IBalancerFactory(Interface):
    """
    A named balancing algorithm, found by L{twisted.plugin.getPlugins} in the
    C{twisted.plugins} dropin package.  Providers also provide
    L{twisted.plugin.IPlugin}.
    """

    name = Attribute(
        "The name used in site.ini (C{balancer = NAME}), a L{str} of letters, "
        "digits and underscores."
    )
    description = Attribute("A one-line description, a L{str}.")
    options = Attribute(
        "A mapping of every option this balancer accepts (without the "
        "C{balancer.} prefix) to a one-line help text."
    )

    def buildBalancer(options, random):
        """
        Build a balancer for one pool.

        @param options: the C{balancer.*} keys of the upstream section, with
            the prefix removed.
        @type options: L{dict} of L{str} to L{str}

        @param random: the source of randomness the balancer must use, so
            that tests can fix the seed.
        @type random: L{random.Random}

        @return: a new L{IBalancer}.

        @raise lbproxy.balancers.InvalidBalancerOptions: when an option is
            unknown or its value is bad.
        """


class IProxyRequest(Interface):
    """
    What forwarding a client request to a backend needs of that request,
    beyond L{twisted.web.iweb.IRequest}: how the backend's response goes
    back, and how the exchange learns that the client left.

    lbproxy's own HTTP/1.1 requests (L{lbproxy.ProxySite}'s) provide it
    directly and write a proxied head as bytes; any other
    L{twisted.web.iweb.IRequest} (an embedder's plain L{Site <twisted.web.server.Site>}, an HTTP/2
    stream's request) is adapted to it, through the request's public API.
    """

    clientAddress = Attribute(
        "The client's address, an L{twisted.internet.interfaces.IAddress}: "
        "the peer's, or, for a request that came through a proxy lbproxy "
        "trusts (C{trusted_proxies}), the client that proxy named in "
        "C{X-Forwarded-For}.  The one place the client is kept: the "
        "request's C{getClientAddress()} gives the same address, and the "
        "access log, C{X-Forwarded-For}, C{X-Real-IP}, C{$remote_addr} and "
        "the balancers hashing the client all read it."
    )
    hostHeader = Attribute(
        "The request's C{Host} header value as L{bytes}, or L{None} when it "
        "has none."
    )
    onConnectionLost = Attribute(
        "L{None}, or a callable taking a L{twisted.python.failure.Failure}: "
        "called once if the client connection is lost before the response "
        "is finished.  Set by the exchange; cleared when the request finishes."
    )
    startedWriting = Attribute("Whether the response head is written or held.")

    def holdProxiedHead(code, phrase, headerLines, length):
        """
        Start the response with a backend's status and headers.  The head
        may be held until the first L{writeBody} or L{flushHead}.

        @param code: the status code, an L{int}.
        @param phrase: the reason phrase, L{bytes}.
        @param headerLines: the end-to-end header lines to send, as a list
            of L{bytes} each holding one or more whole lines
            (C{b"Name: value\\r\\n"}), already validated.
        @param length: the body's length in bytes, or L{None} when unknown.
        """

    def writeBody(data):
        """
        Write part of the response body (L{bytes}) after L{holdProxiedHead}.
        """

    def flushHead():
        """
        Send a held response head now: the body will take more than this
        read of the backend connection.
        """

    def finish():
        """
        The response is complete (as L{twisted.web.iweb.IRequest.finish}).
        """

    def abortConnection():
        """
        Close the client connection at once, without finishing the
        response: a response whose backend broke off must not look
        complete.
        """

    def callWhenDone(callback):
        """
        Call C{callback} (with no argument) once, when the request is over:
        finished, or its client connection lost before that.  What
        C{notifyFinish().addBoth(...)} does, without a L{Deferred
        <twisted.internet.defer.Deferred>} for lbproxy's own requests;
        several callbacks are called in the order they were given.
        """

    def registerProducer(producer, streaming):
        """
        As L{twisted.internet.interfaces.IConsumer.registerProducer}: the
        client's connection pauses C{producer} while it cannot keep up.
        """

    def unregisterProducer():
        """
        As L{twisted.internet.interfaces.IConsumer.unregisterProducer}.
        """


class ITunnelChannel(Interface):
    """
    A request's C{channel} that can turn its connection into a tunnel
    after a C{101 Switching Protocols} response (an C{Upgrade} such as
    WebSocket).  lbproxy's HTTP/1.1 channel provides it; an HTTP/2
    stream's does not (a stream has no connection of its own to give, and
    Extended CONNECT, RFC 8441, is not implemented), nor does Twisted's
    own C{HTTPChannel}: their requests' C{Upgrade} is not forwarded.
    """

    def startTunnel(received):
        """
        Send the response head held for the request (the 101) and from now
        on hand every byte the client sends to C{received}, beginning with
        those that came after the request's head.  The client's bytes are
        no longer read as requests, and no client timeout runs; the
        request stays the connection's current one until the connection
        closes (so a graceful stop waits for it, up to its deadline).

        @param received: a callable taking L{bytes}.
        @return: the client connection's transport, an
            L{twisted.internet.interfaces.ITransport} that also provides
            L{twisted.internet.interfaces.IPushProducer} and
            L{twisted.internet.interfaces.IConsumer}.
        """


#: Whether each request class implements L{IProxyRequest}, asked once per
#: class rather than once per request (C{providedBy} costs several times
#: a dictionary look-up, on every request).
_implementers: dict[type, bool] = {}


def implementsProxyRequest(request: object) -> bool:
    """
    Whether the class of C{request} implements L{IProxyRequest} (the
    request provides it itself, with no adapter).
    """
    cls = type(request)
    answer = _implementers.get(cls)
    if answer is None:
        answer = _implementers[cls] = IProxyRequest.implementedBy(cls)
    return answer
