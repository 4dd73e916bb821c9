# -*- test-case-name: tests.test_service -*-
"""
Building a running lbproxy from a L{SiteConfig}: pools, the virtual-host
resource tree, listeners and demo backends, as one L{MultiService}.

This is the entry point for embedding lbproxy in another Twisted
application, and what C{twistd lbproxy} uses.
"""

from __future__ import annotations

import gc
import signal
from dataclasses import replace
from random import Random
from typing import Any, Callable, Mapping, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site
from twisted.web.static import File

from lbproxy._admin import AdminResource
from lbproxy._config import (
    ConfigError,
    DemoConfig,
    RouteConfig,
    SiteConfig,
    UpstreamConfig,
    VHostConfig,
    parseConfig,
)
from lbproxy._demo import DemoResource, DemoSite
from lbproxy._dns import DNSBackends, hasResolveLines, initialBackends, makeResolver
from lbproxy._etcdsource import EtcdSource
from lbproxy._gzip import GzipPolicy
from lbproxy._headers import HeaderRules
from lbproxy._health import HealthChecker
from lbproxy._heap import settle
from lbproxy._limits import (
    ConcurrencyLimiter,
    RateLimiter,
    RequestLimits,
    limitKeyFunction,
)
from lbproxy._listeners import EndpointListener, ListenerService
from lbproxy._logbuffer import BufferedLog
from lbproxy._pool import Pool
from lbproxy._proxy import UpstreamResource
from lbproxy._site import ProxySite
from lbproxy._snapshot import ReloadCounts, buildSnapshot
from lbproxy._tlsserver import (
    SNIConnectionCreator,
    TLSServerFactory,
    httpsPort,
    loadServerCertificates,
    probeHandshake,
    withFilesFromConfigDirectory,
)
from lbproxy._vhost import (
    FixedResource,
    HTTPSPolicy,
    RedirectResource,
    StaticFiles,
    VirtualHost,
    VirtualHostResource,
)
from lbproxy.balancers import buildBalancer


def buildPool(
    config: UpstreamConfig, reactor: Any = None, random: Optional[Random] = None
) -> Pool:
    """
    Build the L{Pool} of one upstream, with its balancer plugin.
    """
    return Pool(
        config.name,
        initialBackends(config.servers),
        buildBalancer(config.balancer, config.balancerOptions, random),
        reactor,
        maxFails=config.maxFails,
        failTimeout=config.failTimeout,
        connectTimeout=config.connectTimeout,
        readTimeout=config.readTimeout,
        nextUpstreamTries=config.nextUpstreamTries,
        keepalive=config.keepalive,
        tlsVerify=config.tlsVerify,
        tlsCA=config.tlsCA,
        tlsServerName=config.tlsServerName,
        slowStart=config.slowStart,
        upgradeProtocols=config.upgradeProtocols,
        tunnelTimeout=config.tunnelTimeout,
        requestBuffering=config.requestBuffering,
        sendProxyProtocol=config.sendProxyProtocol,
        queue=config.queue,
        queueTimeout=config.queueTimeout,
        ejectOn=config.ejectOn,
        maxEjection=config.maxEjection,
        retryBudget=config.retryBudget,
    )


def limitSettings(config: VHostConfig, workers: int = 1) -> Optional[tuple[Any, ...]]:
    """
    What the limits of a vhost are made from: its C{limit_*} keys and the
    number of workers that share them out, or L{None} when it has none.
    Two vhosts (or one, before and after a reload) with the same settings
    can share one L{RequestLimits}.
    """
    if config.limitRate is None and not config.limitConn:
        return None
    if config.limitPerWorker == "each":
        workers = 1
    return (
        config.limitRate,
        config.limitBurst,
        config.limitDelay,
        config.limitConn,
        config.limitKey,
        config.limitKeys,
        workers,
    )


def buildLimits(settings: tuple[Any, ...], reactor: Any = None) -> RequestLimits:
    """
    Build the L{RequestLimits} of a vhost from its L{limitSettings}: with
    C{workers} sharing them, each enforces C{1/workers} of the rate and of
    the burst (the clients' connections are spread over the workers, so
    that together they let through no more than the configuration says).
    """
    rate, burst, delay, conn, (kind, name), maxKeys, workers = settings
    if reactor is None:
        from twisted.internet import reactor
    return RequestLimits(
        limitKeyFunction(kind, name),
        reactor,
        rate=None if rate is None else RateLimiter(rate / workers, burst / workers, reactor, maxKeys),
        conn=ConcurrencyLimiter(conn) if conn else None,
        delay=delay,
    )


def buildVirtualHost(
    config: VHostConfig,
    resources: dict[str, UpstreamResource],
    redirectPort: Optional[Callable[[], int]] = None,
    limits: Optional[RequestLimits] = None,
) -> VirtualHost:
    """
    Build one L{VirtualHost}, its routes pointing at the resources of
    their upstreams, or at the resource of their kind (static files, a
    redirect, a fixed answer).

    A route to an upstream gets the vhost's header rules, less those its
    C{[route:VHOST:PREFIX]} section replaces.

    @param redirectPort: gives the HTTPS port that C{redirect_https = yes}
        sends clients to.
    @param limits: the vhost's L{RequestLimits} (see L{buildLimits}), or
        L{None}.
    """
    compiled: dict[Any, Optional[HeaderRules]] = {}

    def rulesFor(prefix: str) -> Optional[HeaderRules]:
        override = config.routeOverrides.get(prefix)
        request, response = config.requestHeaders, config.responseHeaders
        if override is not None:
            if override.requestHeaders is not None:
                request = override.requestHeaders
            if override.responseHeaders is not None:
                response = override.responseHeaders
        key = (request, response)
        if key not in compiled:
            # Compiled once for the routes that share them.
            compiled[key] = (
                HeaderRules(request, response, config.requestId)
                if request or response or config.requestId
                else None
            )
        return compiled[key]

    gzip = None
    if config.gzip:
        # One policy for the vhost's upstream routes, as the rules.
        gzip = GzipPolicy(config.gzipTypes, config.gzipMinLength, config.gzipCompLevel)

    def resourceFor(
        upstream: str, prefix: str, stripPrefix: Optional[bytes] = None
    ) -> UpstreamResource:
        base = resources[upstream]
        headerRules = rulesFor(prefix)
        if (
            base.preserveHost == config.preserveHost
            and stripPrefix is None
            and headerRules is None
            and gzip is None
        ):
            return base
        return UpstreamResource(
            base.pool,
            config.preserveHost,
            base.reactor,
            stripPrefix,
            headerRules=headerRules,
            gzip=gzip,
        )

    def routeResource(route: RouteConfig) -> IResource:
        prefix = route.prefix.encode("utf-8")
        if route.kind == "files":
            return (File if route.listing else StaticFiles)(route.target)
        if route.kind == "redirect":
            return RedirectResource(route.code, route.target.encode("ascii"), prefix)
        if route.kind == "return":
            return FixedResource(route.code, route.target.encode("utf-8"))
        return resourceFor(route.target, route.prefix, prefix if route.stripPrefix else None)

    routes = {route.prefix.encode("utf-8"): routeResource(route) for route in config.routes}
    if config.upstream is not None and b"/" not in routes:
        routes[b"/"] = resourceFor(config.upstream, "/")
    https = None
    port = redirectPort if config.redirectHTTPS else None
    if port is not None or config.hsts is not None:
        https = HTTPSPolicy(port, None if config.hsts is None else config.hsts.encode("ascii"))
    return VirtualHost(config.name, config.serverNames, routes, https, limits)


def _seeded(upstream: UpstreamConfig, previous: Optional[EtcdSource]) -> UpstreamConfig:
    """
    C{upstream}, with the servers that C{previous} (the etcd source of the
    same upstream before a reload) last applied, when it followed the same
    prefix.
    """
    if (
        upstream.serversFrom != "etcd"
        or previous is None
        or previous.prefix != upstream.etcdKeyPrefix
    ):
        return upstream
    return replace(upstream, servers=previous.servers)


def _logsRequestId(config: SiteConfig) -> bool:
    """
    Whether the access log of C{config} ends each line with the request's
    id: when a vhost has C{request_id = yes}.
    """
    return any(vhost.requestId for vhost in config.vhosts)


class StopSignals:
    """
    SIGINT and SIGTERM once the reactor runs: the first stops the reactor
    gracefully; each later one calls C{again} instead (the reactor's
    handler would try to stop a stopping reactor, and log a
    C{ReactorNotRunning} traceback).

    The first signal stops the reactor with
    L{IReactorCore.stop <twisted.internet.interfaces.IReactorCore.stop>}
    rather than through the reactor's own handler: that handler records
    the signal, and twistd then ends by killing itself with it, so a
    graceful stop would end with the status of a process killed by
    SIGTERM (143) instead of 0.

    @ivar stopping: whether a stop has begun (a first signal came, or
        L{stop} was called).
    """

    stopping = False

    def __init__(self, again: Callable[[], object], reactor: Any = None) -> None:
        """
        @param again: called in the reactor thread for every signal after
            the first.
        @param reactor: the reactor; the global one when L{None}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.again = again
        self.reactor = reactor
        self.previous: dict[int, Any] = {}

    def installWhenRunning(self) -> None:
        """
        Take SIGINT and SIGTERM once the reactor runs (it installs its own
        handlers as it starts).
        """
        self.reactor.callWhenRunning(self.install)

    def install(self) -> None:
        """
        Take SIGINT and SIGTERM now, in front of their handlers.
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.signal(signum, self.onSignal)
            except ValueError:  # not the main thread
                return
            self.previous[signum] = previous

    def stop(self) -> None:
        """
        Say that a stop has begun: the next signal calls C{again}.
        """
        self.stopping = True

    def onSignal(self, signum: int, frame: Any) -> None:
        if self.stopping:
            self.reactor.callFromThread(self.again)
            return
        self.stopping = True
        self.reactor.callFromThread(self.reactor.stop)


class LoadBalancerService(MultiService):
    """
    A whole lbproxy: the pools, the virtual hosts and a listener per
    C{listen} endpoint, plus the C{[demo:NAME]} sample backends.

    Add it to an application with C{setServiceParent}; it listens when
    started and closes its pooled connections when stopped.

    The C{[admin]} listener serves L{AdminResource}, whose run-time changes
    to the backends last until the next L{reload} (which builds the pools
    again); its token follows reloads, its endpoint does not.

    @ivar config: the L{SiteConfig} it was built from.
    @ivar pools: upstream name to L{Pool}.
    @ivar healthCheckers: upstream name to its L{HealthChecker}, for the
        upstreams with C{health_check}.
    @ivar sources: upstream name to the service that changes its pool's
        members while it runs (L{lbproxy._etcdsource.EtcdSource} for
        C{servers_from = etcd}, L{lbproxy._dns.DNSBackends} for
        C{resolve} server lines), a child of this service replaced on
        reload, as the health checkers are.
    @ivar resource: the root L{VirtualHostResource}.
    @ivar site: the L{ProxySite} every listener serves.
    @ivar limits: vhost name to its L{limitSettings} and L{RequestLimits},
        for the vhosts with C{limit_rate} or C{limit_conn}.
    @ivar reloads: how many reloads were taken (L{reload}).
    @ivar reloadFailures: how many reloads from the configuration file
        (L{reloadFromFile}, on SIGHUP) were refused.
    @ivar lastReloadOK: whether the latest reload from the file was taken
        (L{True} before any).
    @ivar configLoaded: the reactor time the running configuration was
        taken: the service's start, or its latest reload (L{None} before
        the start).
    @ivar certificates: the L{ServerCertificates} of the running
        configuration.
    """

    reloads = 0
    reloadFailures = 0
    lastReloadOK = True
    configLoaded: Optional[float] = None

    _log = Logger()

    @property
    def shutdownTimeout(self) -> float:
        """
        Seconds that requests in flight get to finish when the service
        stops (C{shutdown_timeout} of the running configuration); the
        client connections still open then are aborted.
        """
        return self.config.proxy.shutdownTimeout

    def __init__(self, config: SiteConfig, reactor: Any = None) -> None:
        MultiService.__init__(self)
        self.config = config
        self._reactor = reactor
        self._configPath: Optional[str] = None
        self._previousHangup: Any = None
        self._previousUserSignal: Any = None
        self._stopSignals: Optional[StopSignals] = None
        #: The garbage collector L{settleHeap} settles, or L{None}.
        self._collector: Any = None
        self.limits: dict[str, tuple[tuple[Any, ...], RequestLimits]] = {}
        # Every file of the configuration is checked before anything is
        # built from one.
        certificates = self.certificates = loadServerCertificates(config)
        self.pools, self.healthCheckers, self.sources, self.resource = self._build(
            config
        )
        for checker in self.healthCheckers.values():
            checker.setServiceParent(self)
        for source in self.sources.values():
            source.setServiceParent(self)
        self._accessLog: Optional[BufferedLog] = None
        self.site = ProxySite(
            self.resource,
            accessLog=None,
            keepaliveTimeout=config.proxy.keepaliveTimeout,
            maxBodySize=config.proxy.maxBodySize,
            maxHeaderSize=config.proxy.maxHeaderSize,
            reactor=reactor,
            clientHeaderTimeout=config.proxy.clientHeaderTimeout,
            clientBodyTimeout=config.proxy.clientBodyTimeout,
            sendTimeout=config.proxy.sendTimeout,
            maxConnections=config.proxy.maxConnections,
            trustedProxies=config.proxy.trustedProxies,
            logRequestId=_logsRequestId(config),
            http2=config.proxy.http2,
            accessLogFormat=config.proxy.accessLogFormat,
        )
        self._listeners: list[ListenerService] = []
        for description in config.proxy.listen:
            self._listeners.append(self._listen(description, self.site))
        #: Makes the TLS connections of the C{listen_tls} listeners; its
        #: table of certificates is replaced on reload.
        self.tlsCreator = SNIConnectionCreator()
        self.tlsFactories: list[TLSServerFactory] = []
        certificates.logWarnings()
        if config.proxy.listenTLS:
            self.tlsCreator.table = certificates.buildTable(
                self.tlsCreator, self._offeredProtocols()
            )
        self._tlsListeners: list[ListenerService] = []
        for description in config.proxy.listenTLS:
            factory = TLSServerFactory(self.tlsCreator, self.site, reactor)
            self.tlsFactories.append(factory)
            self._tlsListeners.append(self._listen(description, factory))
        self._listeners.extend(self._tlsListeners)
        if self.tlsFactories:
            # Refuse to start on a Twisted and pyOpenSSL that could not
            # complete a handshake, rather than fail every client's.
            names = [n for n in certificates.byName if not n.startswith("*.")]
            probeHandshake(self.tlsFactories[0], names[0] if names else None)
        self.demos: dict[str, DemoResource] = {}
        for demo in config.demos:
            self._addDemo(demo)
        #: The JSON API of the C{[admin]} section, or L{None} without one.
        self.admin: Optional[AdminResource] = None
        if config.admin is not None:
            self.admin = AdminResource(
                lambda: self.pools,
                config.admin.token,
                self.snapshot,
                reactor=reactor,
                behindParent=config.admin.behindParent,
            )
            self._listeners.append(self._listen(config.admin.listen, Site(self.admin)))

    def _clock(self) -> Any:
        """
        The reactor: the one given, else the global one.
        """
        if self._reactor is not None:
            return self._reactor
        from twisted.internet import reactor

        return reactor

    def snapshot(self) -> dict[str, Any]:
        """
        Everything an operator looks at, as a JSON-able dict (see
        L{lbproxy._snapshot.buildSnapshot}): what C{GET /api/status} of
        the C{[admin]} listener answers, and what its status page and
        C{/metrics} are rendered from.
        """
        return buildSnapshot(
            pools=self.pools,
            healthCheckers=self.healthCheckers,
            sources=self.sources,
            vhosts=self.resource.vhosts,
            site=self.site,
            reloads=ReloadCounts(
                self.reloads, self.reloadFailures, self.lastReloadOK, self.configLoaded
            ),
            certificates=self.certificates.chains(),
            now=self._clock().seconds(),
        )

    def httpsPort(self) -> int:
        """
        The port C{redirect_https} sends clients to: that of the first
        C{listen_tls} listener (once it listens, the port it got).
        """
        listeners = self._tlsListeners
        port = listeners[0].port if listeners else None
        if port is not None:
            number: int = getattr(port.getHost(), "port", 443)
            return number
        return httpsPort(self.config.proxy) or 443

    def _offeredProtocols(self) -> list[bytes]:
        """
        What the HTTPS listeners offer through ALPN: the site's
        C{acceptableProtocols()}, read whenever the contexts are built.
        """
        return list(IProtocolNegotiationFactory(self.site).acceptableProtocols())

    def _build(
        self, config: SiteConfig, previous: Optional[Mapping[str, Service]] = None
    ) -> tuple[
        dict[str, Pool], dict[str, HealthChecker], dict[str, Service], VirtualHostResource
    ]:
        """
        Build the pools, health checkers, sources of dynamic membership
        (etcd, DNS) and virtual hosts of C{config}.

        @param previous: the sources of the configuration being replaced:
            an upstream that follows the same etcd prefix, or has the same
            C{resolve} lines, starts with the backends its source found,
            rather than with none until the new source has its first
            answer.
        """
        reactor = self._reactor
        previous = previous or {}
        etcd = {n: s for n, s in previous.items() if isinstance(s, EtcdSource)}
        upstreams = {
            name: withFilesFromConfigDirectory(config, _seeded(upstream, etcd.get(name)))
            for name, upstream in config.upstreams.items()
        }
        pools = {
            name: buildPool(upstream, reactor) for name, upstream in upstreams.items()
        }
        checkers = {
            name: HealthChecker(pools[name], upstream.healthCheck, reactor)
            for name, upstream in config.upstreams.items()
            if upstream.healthCheck is not None
        }
        sources: dict[str, Service] = {}
        for name, upstream in config.upstreams.items():
            if upstream.serversFrom == "etcd":
                source = EtcdSource.forUpstream(pools[name], upstreams[name], reactor)
                if name in etcd:
                    source.carryOver(etcd[name])
                sources[name] = source
            elif hasResolveLines(upstream.servers):
                dns = DNSBackends(
                    pools[name],
                    upstream.servers,
                    makeResolver(config.proxy.resolver, reactor),
                    reactor,
                    upstream.resolveMin,
                    upstream.resolveMax,
                )
                before = previous.get(name)
                if isinstance(before, DNSBackends):
                    dns.carryOver(before)
                sources[name] = dns
        resources = {
            name: UpstreamResource(pool, True, reactor) for name, pool in pools.items()
        }
        # A vhost whose limits are the same as before the reload keeps
        # them, with what they counted (as nginx keeps a zone's state).
        oldLimits, self.limits = self.limits, {}
        vhosts = []
        for vhostConfig in config.vhosts:
            limits = None
            settings = limitSettings(vhostConfig, config.proxy.workers)
            if settings is not None:
                kept = oldLimits.get(vhostConfig.name)
                if kept is not None and kept[0] == settings:
                    limits = kept[1]
                else:
                    limits = buildLimits(settings, reactor)
                self.limits[vhostConfig.name] = (settings, limits)
            vhosts.append(buildVirtualHost(vhostConfig, resources, self.httpsPort, limits))
        default = next(
            (vh for vh, c in zip(vhosts, config.vhosts) if c.default), None
        )
        return pools, checkers, sources, VirtualHostResource(vhosts, default)

    def reload(self, config: SiteConfig) -> Deferred[Any]:
        """
        Switch to C{config} without dropping a request: new requests use
        the new pools, balancers, health checks and virtual hosts, and the
        client limits and access log change; requests in flight finish on
        the old pools, which close their connections as they end.

        Listeners, demo backends and C{workers} cannot change this way (the
        sockets stay as they are); a change to them is logged and takes
        effect at the next restart.

        @return: a L{Deferred <twisted.internet.defer.Deferred>} that fires once the old health checks have
            stopped and the old pools' idle connections are closed.
        @raise OSError: when the new access log cannot be opened; nothing
            has changed then.
        @raise ConfigError: when a certificate of the HTTPS listeners
            cannot be used; nothing has changed then (open connections and
            new handshakes keep the certificates loaded before).
        """
        # Read and checked before anything changes.
        certificates = loadServerCertificates(config)
        accessLog = None
        if self.running:
            accessLog = ProxySite.openAccessLog(config.proxy.accessLog, self._reactor)
        old = self.config
        for what, before, after in [
            ("listen", old.proxy.listen, config.proxy.listen),
            ("listen_tls", old.proxy.listenTLS, config.proxy.listenTLS),
            ("workers", old.proxy.workers, config.proxy.workers),
            ("demo backends", old.demos, config.demos),
            ("[admin]", old.admin is None, config.admin is None),
            (
                "[admin] listen",
                old.admin and old.admin.listen,
                config.admin and config.admin.listen,
            ),
        ]:
            if before != after:
                self._log.warn(
                    "reload: a change of {what} takes effect at the next "
                    "restart; it is unchanged until then",
                    what=what,
                )
        pools, checkers, sources, resource = self._build(config, self.sources)
        oldPools, oldCheckers, oldSources = self.pools, self.healthCheckers, self.sources
        self.pools, self.healthCheckers, self.resource = pools, checkers, resource
        self.sources = sources
        self.config = config
        self.site.resource = resource
        self.site.configure(config.proxy)
        self.site.logRequestId = _logsRequestId(config)
        if self.admin is not None and config.admin is not None:
            self.admin.token = config.admin.token
        self.certificates = certificates
        certificates.logWarnings()
        if self.tlsFactories and certificates.default is not None:
            self.tlsCreator.table = certificates.buildTable(
                self.tlsCreator, self._offeredProtocols()
            )
        elif self.tlsFactories:
            # listen_tls went with its certificates: the listeners stay
            # until the restart (logged above), with the certificates
            # they have.
            self._log.warn(
                "reload: the new configuration has no certificate; the "
                "listen_tls listeners keep serving the ones loaded before"
            )
        if self.running:
            self._useAccessLog(accessLog)
        results = []
        for child in [*oldCheckers.values(), *oldSources.values()]:
            results.append(maybeDeferred(child.disownServiceParent))
        for checker in checkers.values():
            checker.setServiceParent(self)
        for source in sources.values():
            source.setServiceParent(self)
        results.extend(pool.close() for pool in oldPools.values())
        self.reloads += 1
        self.configLoaded = self._clock().seconds()
        self._log.info(
            "reloaded {source}: {upstreams} upstream(s), {vhosts} vhost(s)",
            source=config.source,
            upstreams=len(pools),
            vhosts=len(config.vhosts),
        )
        reloaded = DeferredList(results)
        if self._collector is not None:
            # The old configuration is garbage once its pools are closed.
            reloaded.addCallback(self._settle)
        return reloaded

    def settleHeap(self, collector: Any = gc) -> None:
        """
        Settle the heap (L{lbproxy._heap.settle}: one full collection,
        then every object alive frozen out of the next ones) once the
        reactor runs, and again after each L{reload}, so that the garbage
        collector's full collections stay short (as C{twistd lbproxy}
        does; it changes the collector of the whole process, so an
        embedding application decides for itself).

        @param collector: the C{gc} module, or one that looks like it.
        """
        self._collector = collector

    def _settle(self, result: object) -> object:
        settle(self._collector)
        return result

    def reloadFromFile(self, path: Optional[str] = None) -> bool:
        """
        Read the configuration file again and L{reload} it; a file with
        errors is reported and the running configuration stays.

        @param path: the file; the one the running configuration came from
            when L{None}.
        @return: whether the new configuration was taken.
        """
        path = path or self.config.source
        self.lastReloadOK = False
        try:
            config = parseConfig(path)
            self.reload(config)
        except ConfigError as e:
            self.reloadFailures += 1
            # A bad file, or a certificate of it that cannot be used.
            self._log.error(
                "reload of {path} refused, the running configuration stays:\n"
                "{errors}",
                path=path,
                errors="\n".join(e.errors),
            )
            return False
        except OSError as e:
            self.reloadFailures += 1
            self._log.error(
                "reload of {path} refused, the running configuration stays: "
                "cannot open the access log {log}: {reason}",
                path=path,
                log=config.proxy.accessLog,
                reason=e.strerror or e,
            )
            return False
        self.lastReloadOK = True
        return True

    def reloadOnHangup(self, path: str) -> None:
        """
        Reload C{path} on SIGHUP while the service runs (as twistd lbproxy
        does; an embedding application decides for itself).
        """
        self._configPath = path

    def abortOnSecondSignal(self) -> None:
        """
        Once the service is stopping (after a first SIGINT or SIGTERM, which
        lets requests in flight finish for up to L{shutdownTimeout}
        seconds), make a second SIGINT or SIGTERM stop it at once: every
        client connection still open is aborted, and the stop completes (as
        C{twistd lbproxy} does; an embedding application decides for
        itself).
        """
        if self._stopSignals is None:
            self._stopSignals = StopSignals(self.abortNow, self._reactor)

    def abortNow(self) -> Deferred[None]:
        """
        Abort every client connection now, those with a request in flight
        included.

        @return: a L{Deferred <twisted.internet.defer.Deferred>} that fires once they are closed.
        """
        count = len(self.site.channels)
        if count:
            self._log.warn(
                "stopping at once: aborting {count} client connection(s)",
                count=count,
            )
        return self.site.closeConnections(0)

    def reopenAccessLog(self) -> bool:
        """
        Open the access log's file again, and close the one written so far
        (SIGUSR1, after logrotate has moved the file away: lines go to a
        new file of the same name).  When it cannot be opened, the log goes
        on in the file it was in, and the error is logged.

        @return: whether it was reopened.
        """
        path = self.config.proxy.accessLog
        try:
            self._setAccessLog(path)
        except OSError as e:
            self._log.error(
                "cannot reopen the access log {log}: {reason}; it goes on "
                "in the file it was in",
                log=path,
                reason=e.strerror or e,
            )
            return False
        return True

    def _onUserSignal(self, signum: int, frame: Any) -> None:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        reactor.callFromThread(self.reopenAccessLog)
        # twistd's own: it rotates the --logfile on SIGUSR1.
        previous = self._previousUserSignal
        if callable(previous):
            previous(signum, frame)

    def _onHangup(self, signum: int, frame: Any) -> None:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        reactor.callFromThread(self.reloadFromFile, self._configPath)

    def _setAccessLog(self, path: Optional[str]) -> None:
        """
        Log to C{path} (see L{ProxySite.openAccessLog}; L{None} for no
        access log), closing the log file used so far.
        """
        self._useAccessLog(ProxySite.openAccessLog(path, self._reactor))

    def _useAccessLog(self, accessLog: Optional[BufferedLog]) -> None:
        """
        Log to C{accessLog} (or nowhere), closing the log used so far once
        the lines it kept are written: on reopen, on reload and at stop,
        no line is lost.
        """
        old = self._accessLog
        self._accessLog = accessLog
        self.site.accessLog = accessLog
        if old is not None:
            old.close()

    def _listen(self, description: str, factory: Any) -> ListenerService:
        """
        Add a listener on C{description} serving C{factory}: it listens
        when the service starts, and a port that cannot be opened (in use,
        say) makes the start fail.
        """
        service = EndpointListener(description, factory, self._reactor)
        service.setServiceParent(self)
        return service

    def _addDemo(self, demo: DemoConfig) -> None:
        site = DemoSite(demo.name)
        self.demos[demo.name] = site.resource
        for description in demo.listen:
            self._listeners.append(self._listen(description, site))

    def whenListening(self) -> Deferred[list[Any]]:
        """
        Fire with every listening port (proxy listeners first, then demo
        backends, then the C{[admin]} listener) once all are listening, or fail (with a
        L{twisted.internet.defer.FirstError}) when one could not listen.
        """
        return gatherResults(
            [s.whenListening() for s in self._listeners], consumeErrors=True
        )

    def startService(self) -> None:
        self._setAccessLog(self.config.proxy.accessLog)
        MultiService.startService(self)
        if self._collector is not None:
            self._clock().callWhenRunning(self._settle, None)
        if self.configLoaded is None:
            self.configLoaded = self._clock().seconds()
        signals = self._stopSignals
        if signals is not None:
            signals.stopping = False
            if not signals.previous:
                signals.installWhenRunning()
        if self._configPath is not None and hasattr(signal, "SIGHUP"):
            self._previousHangup = signal.signal(signal.SIGHUP, self._onHangup)
            self._previousUserSignal = signal.signal(signal.SIGUSR1, self._onUserSignal)

    def stopService(self) -> Deferred[Any]:
        if self._previousHangup is not None:
            signal.signal(signal.SIGHUP, self._previousHangup)
            signal.signal(signal.SIGUSR1, self._previousUserSignal)
            self._previousHangup = None
        if self._stopSignals is not None:
            self._stopSignals.stop()
            if self.site.channels:
                self._log.info(
                    "stopping: requests in flight get up to {timeout} s to "
                    "finish; a second SIGINT or SIGTERM stops at once",
                    timeout=self.shutdownTimeout,
                )
        d = MultiService.stopService(self)

        def closeClients(result: Any) -> Any:
            return self.site.closeConnections(self.shutdownTimeout)

        def closePools(result: Any) -> Any:
            return DeferredList([p.close() for p in self.pools.values()])

        def closeLog(result: Any) -> Any:
            self._setAccessLog(None)
            return result

        return d.addCallback(closeClients).addCallback(closePools).addCallback(closeLog)
