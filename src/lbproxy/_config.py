# -*- test-case-name: tests.test_config -*-
"""
site.ini: read with L{configparser}, checked completely, and turned into
frozen objects that the rest of lbproxy builds from.

Each key is declared once, on the attribute of the frozen object it fills:
its name in site.ini, its default (the attribute's), its value parser (from
L{lbproxy._values}) and one line saying what it is for.  The keys a section
accepts, the defaults, the parsing and the error messages all come from
those declarations; what involves more than one key (the C{health_*} keys
need C{health_check}, the balancer must accept its options, vhosts must
name upstreams that exist) is checked after.

Parsing is pure: no reactor, no sockets, nothing read but the file (only
the directories of C{files:} routes are looked for).  Every
problem found is reported at once, each naming the file, the section, the
key, the bad value and what was expected.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from functools import partial
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union, cast

from lbproxy._gzip import DEFAULT_LEVEL as DEFAULT_GZIP_LEVEL
from lbproxy._gzip import DEFAULT_MIN_LENGTH as DEFAULT_GZIP_MIN_LENGTH
from lbproxy._gzip import DEFAULT_TYPES as DEFAULT_GZIP_TYPES
from lbproxy._values import (
    DEFAULT_LIMIT_KEYS,
    BadItems,
    HeaderRule,
    LimitKey,
    RouteConfig,
    TrustedNetwork,
    closestName,
    didYouMean,
    got,
    isHostName,
    isIPLiteral,
    isName,
    listOf,
    parseAccessLog,
    parseAccessLogFormat,
    parseBool,
    parseCompressionLevel,
    parseDuration,
    parseEndpoint,
    parseEtcdEndpoint,
    parseEtcdPrefix,
    parseHSTS,
    parseLimitKey,
    parseLimitPerWorker,
    parseMediaType,
    parseNonNegativeInt,
    parseOptionalHostName,
    parseOptionalPercent,
    parseOptionalText,
    parsePath,
    parsePercent,
    parsePositiveDuration,
    parsePositiveInt,
    parsePositiveSize,
    parseProtocolName,
    parseProxyProtocol,
    parseRate,
    parseRequestHeaderRules,
    parseResolverAddress,
    parseResponseHeaderRules,
    parseRoutes,
    parseServerName,
    parseServersFrom,
    parseServiceName,
    parseSize,
    parseStatusRanges,
    parseStatusSet,
    parseText,
    parseTLSVersion,
    parseTrustedProxy,
    parseUpstreamName,
    parseWeight,
    parseWord,
    spelledAddress,
    splitLines,
    tlsNameProblem,
)
from lbproxy.balancers import BalancerNotFound, InvalidBalancerOptions, buildBalancer

D = TypeVar("D")
P = TypeVar("P")



class ConfigError(ValueError):
    """
    The configuration is invalid.

    @ivar errors: one message per problem found, each naming the file, the
        section, the key, the bad value and what was expected.
    """

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Key:
    """
    The declaration of one site.ini key.

    @ivar name: the key as written in site.ini.  A name ending in C{.}
        declares every key with that prefix (C{balancer.}): the value is then
        a mapping of the rest of each key's name to its parsed value.
    @ivar parse: turns the raw text into the value, or raises L{ValueError}
        saying what was expected (L{BadItems} for a list: one error per bad
        item).
    @ivar doc: one line saying what the key is for.
    @ivar required: what to expect, in the error when the key is missing
        from its section; empty when it may be left out.
    @ivar attribute: the attribute of the frozen object the key fills.
    """

    name: str
    parse: Callable[[str], Any]
    doc: str
    required: str = ""
    attribute: str = ""

    @property
    def isPrefix(self) -> bool:
        """
        Whether this declares every key starting with L{name}.
        """
        return self.name.endswith(".")


#: Where a dataclass field keeps its L{Key}, in its C{metadata}.
_KEY = "lbproxy.config.key"


def _key(name: str, parse: Callable[[str], Any], doc: str, required: str = "") -> Mapping[str, Key]:
    """
    The field metadata that declares a key: C{field(metadata=_key(...))}
    alone for an attribute with no default (one that must be given when the
    object is built in Python), through L{_setting} otherwise.
    """
    return {_KEY: Key(name, parse, doc, required)}


def _setting(name: str, default: D, parse: Callable[[str], P], doc: str) -> Union[D, P]:
    """
    Declare a key that fills the attribute being defined: its name in
    site.ini, its default, its parser and a line of documentation.

    @return: the dataclass field, typed as the values it may hold (so that
        mypy checks both the default and the parser against the attribute).
    """
    return cast(Union[D, P], field(default=default, metadata=_key(name, parse, doc)))


def _keysOf(cls: type) -> list[Key]:
    """
    The keys that the fields of dataclass C{cls} declare, in field order,
    each with the attribute it fills.
    """
    return [
        replace(f.metadata[_KEY], attribute=f.name) for f in fields(cls) if _KEY in f.metadata
    ]


def defaultOf(cls: type, key: Key) -> Any:
    """
    The default of C{key} (one of C{cls}'s), or L{dataclasses.MISSING} when
    the attribute has none.
    """
    f: Field[Any] = {f.name: f for f in fields(cls)}[key.attribute]
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True)
class ServerConfig:
    """
    One C{servers} line of an upstream.

    @ivar maxFails: this server's C{max_fails}, or L{None} to use the
        upstream's.
    @ivar failTimeout: this server's C{fail_timeout} in seconds, or L{None}.
    @ivar maxConns: the most requests in flight to this server at once
        (C{max_conns}), or L{None} for no limit.
    @ivar resolve: the line names a host whose DNS answer gives the
        backends, one per address, followed as it changes (see
        L{lbproxy._dns}).
    @ivar service: with C{resolve}, the C{NAME} of C{service=NAME}: the
        backends come from the SRV records of C{_NAME._tcp.HOST}, and
        C{port} is 0.
    """

    host: str
    port: int
    scheme: str = "http"
    weight: int = 1
    backup: bool = False
    down: bool = False
    maxFails: Optional[int] = None
    failTimeout: Optional[float] = None
    maxConns: Optional[int] = None
    resolve: bool = False
    service: Optional[str] = None


#: The options of a server line that take a value: name to the attribute
#: of L{ServerConfig} and the parser of the value.
_SERVER_OPTIONS: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "weight": ("weight", parseWeight),
    "max_fails": ("maxFails", parseNonNegativeInt),
    "fail_timeout": ("failTimeout", parsePositiveDuration),
    "max_conns": ("maxConns", parsePositiveInt),
    "service": ("service", parseServiceName),
}

#: The options of a server line that take no value.
_SERVER_FLAGS = ("backup", "down", "resolve")


def certificateNameProblem(
    server: ServerConfig, verify: bool, serverName: Optional[str]
) -> Optional[str]:
    """
    What stops an upstream with C{tls_verify = verify} and
    C{tls_server_name = serverName} from checking the certificate of
    C{server}, or L{None}: an C{https} server named by a host name that no
    certificate check takes (see L{tlsNameProblem}), when it is the name
    checked.
    """
    if server.scheme != "https" or not verify or serverName is not None:
        return None
    if isIPLiteral(server.host):
        return None
    problem = tlsNameProblem(server.host)
    if problem is None:
        return None
    return (
        f"a host name a certificate can be checked against ({problem}); or "
        "tls_server_name = NAME, or tls_verify = no"
    )


def parseServer(text: str) -> ServerConfig:
    """
    Parse a C{servers} line: C{[http://|https://]HOST[:PORT]} followed by
    any of C{weight=N}, C{backup}, C{down}, C{max_fails=N},
    C{fail_timeout=T}, C{max_conns=N}, C{resolve} and C{service=NAME}.
    """
    expected = (
        "[http://|https://]HOST:PORT followed by any of weight=N, backup, "
        "down, max_fails=N, fail_timeout=T, max_conns=N, resolve, service=NAME"
    )
    words = text.split()
    if not words:
        raise ValueError(expected)
    address, params = words[0], words[1:]
    scheme = "http"
    lowered = address.lower()
    for prefix in ("http://", "https://"):
        if lowered.startswith(prefix):
            scheme = prefix[:-3]
            address = address[len(prefix) :]
    address = address.rstrip("/")
    match = re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]/]+)(?::(\d+))?$", address)
    if match is None:
        raise ValueError(expected)
    host = match.group(1)
    port = int(match.group(2)) if match.group(2) else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise ValueError(f"a port between 1 and 65535 in {expected}")
    if host.startswith("["):
        # In its canonical form, so that one address written two ways is
        # one server (one backend of a pool).
        try:
            host = spelledAddress(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"an IPv6 address in [brackets] in {expected}") from None
    elif host.startswith("*") or not isHostName(host.lower()):
        raise ValueError(f"a valid host name in {expected}")
    options: dict[str, Any] = {}
    for param in params:
        name, sep, value = param.partition("=")
        if name in _SERVER_FLAGS and not sep:
            options[name] = True
            continue
        option = _SERVER_OPTIONS.get(name) if sep else None
        if option is None:
            meant = closestName(name, [*_SERVER_OPTIONS, *_SERVER_FLAGS])
            if meant is not None and meant in _SERVER_OPTIONS:
                meant += sep + value
            suggestion = f"; did you mean {meant!r}?" if meant else ""
            raise ValueError(got(expected, param) + suggestion)
        attribute, parse = option
        try:
            options[attribute] = parse(value)
        except ValueError as e:
            raise ValueError(got(str(e), param)) from None
    if options.get("backup") and options.get("down"):
        raise ValueError("a server that is either backup or down, not both")
    if options.get("resolve") and isIPLiteral(host):
        raise ValueError(f"a host name with resolve, not the IP address {host}")
    if "service" in options:
        if not options.get("resolve"):
            raise ValueError("service=NAME together with resolve (app.internal service=http resolve)")
        if match.group(2):
            raise ValueError("no port with service=NAME: the SRV records give the ports")
        if "weight" in options:
            raise ValueError("no weight= with service=NAME: the SRV records give the weights")
        port = 0
    return ServerConfig(host=host.lower(), port=port, scheme=scheme, **options)


@dataclass(frozen=True)
class HealthCheckConfig:
    """
    The active health check of an upstream, from the C{health_*} keys of its
    section.

    @ivar status: the passing status codes, as inclusive C{(low, high)}
        ranges.
    @ivar body: text the body must contain to pass, or L{None}.
    """

    path: str = field(
        metadata=_key("health_check", parsePath, "the path to probe; turns active checks on")
    )
    interval: float = _setting(
        "health_interval", 5.0, parsePositiveDuration, "the time between two probes of a backend"
    )
    timeout: float = _setting(
        "health_timeout", 2.0, parsePositiveDuration, "how long a probe may take"
    )
    rise: int = _setting(
        "health_rise", 2, parsePositiveInt, "passing probes in a row that bring a backend up"
    )
    fall: int = _setting(
        "health_fall", 3, parsePositiveInt, "failing probes in a row that take a backend down"
    )
    status: tuple[tuple[int, int], ...] = _setting(
        "health_status", ((200, 399),), parseStatusRanges, "the status codes that pass"
    )
    body: Optional[str] = _setting(
        "health_body", None, parseText, "text the response body must contain to pass"
    )
    mandatory: bool = _setting(
        "health_mandatory", False, parseBool, "backends start down until a probe passes"
    )


@dataclass(frozen=True)
class UpstreamConfig:
    """
    An C{[upstream:NAME]} section.  Durations are in seconds.

    @ivar balancerOptions: the C{balancer.*} keys, without C{balancer.}.
    @ivar healthCheck: from the C{health_*} keys, or L{None} without
        C{health_check}.
    """

    name: str
    servers: tuple[ServerConfig, ...] = field(
        metadata=_key(
            "servers",
            listOf(parseServer, splitLines, nonEmpty="one or more HOST:PORT lines"),
            "the backends, one server line per line (required unless servers_from is set)",
        )
    )
    balancer: str = _setting(
        "balancer", "round_robin", parseWord, "the balancer plugin that picks a backend"
    )
    balancerOptions: Mapping[str, str] = field(
        default_factory=dict,
        metadata=_key("balancer.", parseText, "an option of the chosen balancer"),
    )
    maxFails: int = _setting(
        "max_fails", 1, parseNonNegativeInt, "failures within fail_timeout that take a backend out"
    )
    failTimeout: float = _setting(
        "fail_timeout", 10.0, parsePositiveDuration, "the window of max_fails and how long a backend stays out"
    )
    connectTimeout: float = _setting(
        "connect_timeout", 5.0, parsePositiveDuration, "how long a backend may take to accept a connection"
    )
    readTimeout: float = _setting(
        "read_timeout", 60.0, parsePositiveDuration, "how long a backend may be silent while it answers"
    )
    nextUpstreamTries: int = _setting(
        "next_upstream_tries", 0, parseNonNegativeInt, "backends one request may try (0: each once)"
    )
    keepalive: int = _setting(
        "keepalive", 32, parseNonNegativeInt, "idle connections kept open per backend"
    )
    healthCheck: Optional[HealthCheckConfig] = None
    slowStart: float = _setting(
        "slow_start", 0.0, parseDuration, "how long a returning backend takes to reach its weight"
    )
    tlsVerify: bool = _setting(
        "tls_verify", True, parseBool, "verify the certificates of https:// servers"
    )
    tlsCA: Optional[str] = _setting(
        "tls_ca", None, parseOptionalText, "a PEM file of the authorities to trust for https:// servers"
    )
    tlsServerName: Optional[str] = _setting(
        "tls_server_name", None, parseOptionalHostName, "the name https:// servers are sent in SNI and checked against (default: their host)"
    )
    upgradeProtocols: tuple[str, ...] = _setting(
        "upgrade_protocols", ("websocket",), listOf(parseProtocolName), "the Upgrade protocols tunnelled to the backend (empty: none)"
    )
    tunnelTimeout: float = _setting(
        "tunnel_timeout", 3600.0, parsePositiveDuration, "how long an upgraded connection (a WebSocket) may carry no byte"
    )
    requestBuffering: bool = _setting(
        "request_buffering", True, parseBool, "read request bodies whole before forwarding (no: stream them to the backend)"
    )
    sendProxyProtocol: int = _setting(
        "send_proxy_protocol", 0, parseProxyProtocol, "no, v1 or v2: the PROXY protocol header that starts each new backend connection"
    )
    serversFrom: Optional[str] = _setting(
        "servers_from", None, parseServersFrom, "etcd: the backends are the values of the keys under etcd_prefix, followed as they change"
    )
    etcdEndpoints: tuple[str, ...] = _setting(
        "etcd_endpoints", ("http://127.0.0.1:2379",), listOf(parseEtcdEndpoint, nonEmpty="one or more etcd client URLs"), "the client URLs of the etcd members, tried in turn"
    )
    etcdPrefix: Optional[str] = _setting(
        "etcd_prefix", None, parseEtcdPrefix, "the etcd key prefix whose keys are server lines (default: /lbproxy/upstreams/NAME/)"
    )
    etcdCA: Optional[str] = _setting(
        "etcd_ca", None, parseOptionalText, "a PEM file of the authorities to trust for https:// etcd endpoints (default: the platform's)"
    )
    etcdCertificate: Optional[str] = _setting(
        "etcd_certificate", None, parseOptionalText, "the client certificate (PEM) shown to https:// etcd endpoints that ask for one"
    )
    etcdKey: Optional[str] = _setting(
        "etcd_key", None, parseOptionalText, "its private key (PEM); read from etcd_certificate when not set"
    )
    etcdUsername: Optional[str] = _setting(
        "etcd_username", None, parseOptionalText, "the etcd user lbproxy authenticates as, when etcd has auth enabled"
    )
    etcdPasswordFile: Optional[str] = _setting(
        "etcd_password_file", None, parseOptionalText, "a file holding that user's password (its first line)"
    )

    queue: int = _setting(
        "queue", 100, parseNonNegativeInt, "requests that may wait while every backend is at its max_conns (0: none)"
    )
    queueTimeout: float = _setting(
        "queue_timeout", 5.0, parsePositiveDuration, "how long a request may wait in the queue; then 503"
    )
    ejectOn: frozenset[int] = _setting(
        "eject_on", frozenset(), parseStatusSet, "response statuses that count as backend failures, such as 5xx or 500 502 503 (none: no status)"
    )
    maxEjection: float = _setting(
        "max_ejection", 0.5, parsePercent, "with eject_on: the largest share of the backends out at once"
    )
    retryBudget: Optional[float] = _setting(
        "retry_budget", None, parseOptionalPercent, "retries on another backend as a share of the requests of the last 10 s (off: no limit)"
    )

    @property
    def etcdKeyPrefix(self) -> str:
        """
        The etcd prefix this upstream follows: C{etcd_prefix}, or
        C{/lbproxy/upstreams/NAME/}.
        """
        return self.etcdPrefix or f"/lbproxy/upstreams/{self.name}/"

    @property
    def etcdOverTLS(self) -> bool:
        """
        Whether any of C{etcd_endpoints} is an C{https://} one, which the
        C{etcd_ca} and C{etcd_certificate} keys are for.
        """
        return any(e.startswith("https://") for e in self.etcdEndpoints)
    resolveMin: float = _setting(
        "resolve_min", 1.0, parsePositiveDuration, "the shortest time a DNS answer of a resolve line is used (a shorter TTL is raised to it)"
    )
    resolveMax: float = _setting(
        "resolve_max", 300.0, parsePositiveDuration, "the longest time a DNS answer of a resolve line is used (a longer TTL is cut to it)"
    )


@dataclass(frozen=True)
class VHostConfig:
    """
    A C{[vhost:NAME]} section.

    @ivar serverNames: lower-cased exact names and C{*.domain} wildcards.
    @ivar upstream: the upstream for every path no route matches, or
        L{None} (such paths get 404).
    @ivar routes: the L{RouteConfig}s, in file order.
    @ivar routeOverrides: route prefix to the L{RouteOverridesConfig} of
        its C{[route:VHOST:PREFIX]} section, for the routes that have one.
    """

    name: str
    serverNames: tuple[str, ...] = _setting(
        "server_names", (), listOf(parseServerName), "the host names this vhost answers"
    )
    default: bool = _setting(
        "default", False, parseBool, "also answer every host no vhost names"
    )
    upstream: Optional[str] = _setting(
        "upstream", None, parseUpstreamName, "the upstream of every path no route matches"
    )
    routes: tuple[RouteConfig, ...] = _setting(
        "routes", (), parseRoutes, "path prefixes and what answers each: an upstream, files, a redirect, a fixed answer"
    )
    preserveHost: bool = _setting(
        "preserve_host", True, parseBool, "send the client's Host to the backend"
    )
    requestHeaders: tuple[HeaderRule, ...] = _setting(
        "request_headers", (), parseRequestHeaderRules, "headers set or removed on the way to the backend"
    )
    responseHeaders: tuple[HeaderRule, ...] = _setting(
        "response_headers", (), parseResponseHeaderRules, "headers set or removed on the way to the client"
    )
    requestId: bool = _setting(
        "request_id", False, parseBool, "an X-Request-ID on every request, to the backend, the client and the log"
    )
    gzip: bool = _setting(
        "gzip", False, parseBool, "compress text responses the backend did not compress, for clients that accept gzip"
    )
    gzipTypes: tuple[str, ...] = _setting(
        "gzip_types", DEFAULT_GZIP_TYPES, listOf(parseMediaType), "the media types gzip compresses"
    )
    gzipMinLength: int = _setting(
        "gzip_min_length", DEFAULT_GZIP_MIN_LENGTH, parseSize, "the smallest body gzip compresses, when its length is known"
    )
    gzipCompLevel: int = _setting(
        "gzip_comp_level", DEFAULT_GZIP_LEVEL, parseCompressionLevel, "the gzip compression level, 1 (fastest) to 9"
    )
    tlsCertificate: Optional[str] = _setting(
        "tls_certificate", None, parseOptionalText, "the certificate chain (PEM) served when SNI names one of server_names"
    )
    tlsKey: Optional[str] = _setting(
        "tls_key", None, parseOptionalText, "its private key (PEM); read from tls_certificate when not set"
    )
    redirectHTTPS: bool = _setting(
        "redirect_https", False, parseBool, "answer plain HTTP with 308 to the same URL over HTTPS"
    )
    hsts: Optional[str] = _setting(
        "hsts", None, parseHSTS, "the Strict-Transport-Security header of HTTPS responses, such as max-age=31536000"
    )
    limitRate: Optional[float] = _setting(
        "limit_rate", None, parseRate, "requests per second (20/s) or minute (30/m) per client; over it 429 (nginx limit_req)"
    )
    limitBurst: int = _setting(
        "limit_burst", 0, parseNonNegativeInt, "requests a client may make above limit_rate at once (nginx burst)"
    )
    limitDelay: bool = _setting(
        "limit_delay", False, parseBool, "yes: requests within the burst are spaced out to the rate; no: they pass at once (nginx nodelay)"
    )
    limitConn: int = _setting(
        "limit_conn", 0, parseNonNegativeInt, "requests in flight per client (0: no limit); beyond it 429 (nginx limit_conn)"
    )
    limitKey: LimitKey = _setting(
        "limit_key", ("remote_addr", ""), parseLimitKey, "what a client is for the limits: remote_addr, header:NAME or cookie:NAME"
    )
    limitPerWorker: str = _setting(
        "limit_per_worker", "divide", parseLimitPerWorker, "with workers = N: divide (each worker enforces 1/N of limit_rate and limit_burst) or each"
    )
    limitKeys: int = _setting(
        "limit_keys", DEFAULT_LIMIT_KEYS, parsePositiveInt, "the most clients limit_rate remembers; the least recently seen are forgotten first"
    )
    routeOverrides: Mapping[str, RouteOverridesConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteOverridesConfig:
    """
    A C{[route:VHOST:PREFIX]} section: what the route C{PREFIX} of
    C{[vhost:VHOST]} does differently from the rest of its vhost, as the
    directives of an nginx C{location} block.  Each key given replaces the
    vhost's for that route (an empty value: none at all), as nginx's
    C{proxy_set_header} and C{add_header} in a C{location} replace those
    of its C{server}; a key left out keeps the vhost's.

    @ivar vhost: the vhost's name.
    @ivar prefix: the route's prefix, as C{routes} writes it.
    @ivar requestHeaders: the route's C{request_headers}, or L{None} to
        use the vhost's.
    @ivar responseHeaders: the route's C{response_headers}, or L{None}.
    """

    vhost: str
    prefix: str
    requestHeaders: Optional[tuple[HeaderRule, ...]] = _setting(
        "request_headers", None, parseRequestHeaderRules, "replaces the vhost's request_headers on this route"
    )
    responseHeaders: Optional[tuple[HeaderRule, ...]] = _setting(
        "response_headers", None, parseResponseHeaderRules, "replaces the vhost's response_headers on this route"
    )


@dataclass(frozen=True)
class DemoConfig:
    """
    A C{[demo:NAME]} section: a built-in sample backend answering with its
    name.
    """

    name: str
    listen: tuple[str, ...] = field(
        metadata=_key(
            "listen",
            listOf(parseEndpoint),
            "where the sample backend listens",
            required="a server endpoint such as tcp:9001",
        )
    )


@dataclass(frozen=True)
class ProxyConfig:
    """
    The C{[lbproxy]} section.  Durations are in seconds, sizes in bytes.

    @ivar accessLog: a path, C{"-"} for standard output, or L{None} (off).
    @ivar maxConnections: the most client connections open at once (0: no
        limit); beyond it a new connection is accepted and closed at once.
    @ivar trustedProxies: the peers whose C{X-Forwarded-For} names the
        client: C{ipaddress} networks, and C{"unix:"} for the peers of
        UNIX-socket listeners.
    """

    listen: tuple[str, ...] = _setting(
        "listen", (), listOf(parseEndpoint), "where clients connect"
    )
    accessLog: Optional[str] = _setting(
        "access_log", "-", parseAccessLog, "where the access log goes: a path, - or off"
    )
    accessLogFormat: str = _setting(
        "access_log_format", "combined", parseAccessLogFormat, "combined, upstream (with nginx's $upstream_* fields and $request_time) or json"
    )
    workers: int = _setting(
        "workers", 1, parsePositiveInt, "processes sharing the listening sockets"
    )
    clientHeaderTimeout: float = _setting(
        "client_header_timeout", 10.0, parsePositiveDuration, "how long a request head may take"
    )
    clientBodyTimeout: float = _setting(
        "client_body_timeout", 60.0, parsePositiveDuration, "the longest pause within a request body"
    )
    keepaliveTimeout: float = _setting(
        "keepalive_timeout", 75.0, parsePositiveDuration, "how long a client connection may be idle"
    )
    sendTimeout: float = _setting(
        "send_timeout", 60.0, parsePositiveDuration, "how long a client may accept none of a response being relayed"
    )
    shutdownTimeout: float = _setting(
        "shutdown_timeout", 30.0, parseDuration, "how long a graceful stop waits for requests in flight (0: not at all)"
    )
    maxBodySize: int = _setting(
        "max_body_size", 100 * 1024 * 1024, parsePositiveSize, "the largest request body"
    )
    maxHeaderSize: int = _setting(
        "max_header_size", 16 * 1024, parsePositiveSize, "the largest request head"
    )
    maxConnections: int = _setting(
        "max_connections", 10000, parseNonNegativeInt, "client connections open at once (0: no limit)"
    )
    trustedProxies: tuple[TrustedNetwork, ...] = _setting(
        "trusted_proxies", (), listOf(parseTrustedProxy), "peers whose X-Forwarded-For names the client (nginx set_real_ip_from)"
    )
    listenTLS: tuple[str, ...] = _setting(
        "listen_tls", (), listOf(parseEndpoint), "where clients connect over HTTPS (TLS added by lbproxy)"
    )
    tlsCertificate: Optional[str] = _setting(
        "tls_certificate", None, parseOptionalText, "the certificate chain (PEM) served when SNI names no vhost with its own"
    )
    tlsKey: Optional[str] = _setting(
        "tls_key", None, parseOptionalText, "its private key (PEM); read from tls_certificate when not set"
    )
    tlsMinVersion: str = _setting(
        "tls_min_version", "1.2", parseTLSVersion, "the oldest TLS version accepted: 1.2 or 1.3"
    )
    http2: bool = _setting(
        "http2", True, parseBool, "offer HTTP/2 (h2) through ALPN on TLS listeners"
    )
    resolver: tuple[tuple[str, int], ...] = _setting(
        "resolver", (), listOf(parseResolverAddress), "the DNS servers of resolve server lines, IP[:PORT] ... (default: those of /etc/resolv.conf)"
    )


#: Where the C{[admin]} listener listens when its section gives no
#: C{listen}: loopback only, as its JSON API can change the running proxy.
DEFAULT_ADMIN_LISTEN = "tcp:9000:interface=127.0.0.1"


@dataclass(frozen=True)
class AdminConfig:
    """
    The C{[admin]} section: the listener of the status page, the
    Prometheus metrics and the JSON API.

    @ivar token: the bearer token that changes through the API need, or
        L{None} when they need none.
    """

    listen: str = _setting(
        "listen", DEFAULT_ADMIN_LISTEN, parseEndpoint, "where the status page, /metrics and the JSON API listen (keep it on loopback)"
    )
    token: Optional[str] = _setting(
        "token", None, parseOptionalText, 'the token that changes need as "Authorization: Bearer TOKEN" (empty: none)'
    )
    #: Not a key: whether C{listen} is a worker's private socket, which
    #: only its parent reaches (L{lbproxy._workers.workerService}); the
    #: parent names the client it asks for in C{X-Forwarded-For}.
    behindParent: bool = False


@dataclass(frozen=True)
class SiteConfig:
    """
    A whole configuration.

    @ivar upstreams: upstream name to L{UpstreamConfig}.
    @ivar vhosts: the virtual hosts, in file order.
    @ivar demos: the built-in sample backends to start.
    @ivar admin: the C{[admin]} section, or L{None} when there is none (no
        admin listener then).
    @ivar source: the file it came from, for messages.
    """

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    vhosts: tuple[VHostConfig, ...] = ()
    demos: tuple[DemoConfig, ...] = ()
    source: str = "<string>"
    admin: Optional[AdminConfig] = None


#: The classes whose fields declare the keys of each kind of section.
_SECTIONS: Mapping[str, tuple[type, ...]] = {
    "lbproxy": (ProxyConfig,),
    "upstream": (UpstreamConfig, HealthCheckConfig),
    "vhost": (VHostConfig,),
    "route": (RouteOverridesConfig,),
    "demo": (DemoConfig,),
    "admin": (AdminConfig,),
}

#: The kinds of section that take no C{:NAME}.
_SINGLE_SECTIONS = ("lbproxy", "admin")

# Keys of SPEC.md that this version knows about but does not implement yet:
# accepting them silently would promise what is not there.
_NOT_YET: Mapping[str, set[str]] = {}


#: What follows the kind in the name of a section, for messages (C{:NAME}
#: unless given here).
_SECTION_NAMES = {"route": ":VHOST:PREFIX"}


def sectionKeys(kind: str) -> list[tuple[type, Key]]:
    """
    The keys a kind of section accepts (C{"lbproxy"}, C{"upstream"},
    C{"vhost"}, C{"route"}, C{"demo"} or C{"admin"}), each with the class whose attribute it fills.
    """
    return [(cls, key) for cls in _SECTIONS[kind] for key in _keysOf(cls)]


class _Section:
    """
    Reads the keys of one section, collecting errors instead of stopping at
    the first one.

    @ivar ok: whether no error was found in this section so far.
    """

    def __init__(self, reader: _Reader, section: str, kind: str) -> None:
        self._reader = reader
        self.section = section
        self._values = dict(reader.parser.items(section))
        self.ok = True
        keys = [key for _, key in sectionKeys(kind)]
        names = {key.name for key in keys if not key.isPrefix}
        prefixes = tuple(key.name for key in keys if key.isPrefix)
        for name, value in self._values.items():
            if name in _NOT_YET.get(kind, ()):
                self.error(name, value, "nothing: this key is not supported yet")
            elif name not in names and not name.startswith(prefixes):
                self.error(
                    name,
                    value,
                    "one of the keys of [{}]: {}{}".format(
                        kind + (_SECTION_NAMES.get(kind, ":NAME") if ":" in section else ""),
                        ", ".join(sorted(names)),
                        didYouMean(name, sorted(names)),
                    ),
                    unknown=True,
                )

    def error(self, key: str, value: str, expected: str, unknown: bool = False) -> None:
        """
        Report a bad value of C{key} (or an unknown C{key}).
        """
        self.ok = False
        self._reader.bad.add((self.section, key))
        what = "unknown key" if unknown else "bad value"
        self._reader.errors.append(
            f"{self._reader.filename}: [{self.section}] {key} = {value!r}: "
            f"{what}; expected {expected}"
        )

    def has(self, key: str) -> bool:
        """
        Whether the section gives C{key}.
        """
        return key in self._values

    def raw(self, key: str) -> Optional[str]:
        """
        The text of C{key}, or L{None} when the section does not give it.
        """
        return self._values.get(key)

    def read(self, cls: type) -> dict[str, Any]:
        """
        Parse the keys that C{cls} declares, reporting each bad value and
        each required key that is missing.

        @return: the keyword arguments of C{cls} for the keys given with a
            good value; the others are left to C{cls}'s defaults.
        """
        values: dict[str, Any] = {}
        for key in _keysOf(cls):
            if key.isPrefix:
                values[key.attribute] = self._readPrefix(key)
                continue
            text = self._values.get(key.name)
            if text is None:
                if key.required:
                    self._reader.fail(
                        self.section, key.name, "", f"missing key; expected {key.required}"
                    )
                continue
            try:
                values[key.attribute] = key.parse(text)
            except BadItems as e:
                for item, expected in e.items:
                    self.error(key.name, item, expected)
            except ValueError as e:
                self.error(key.name, text, str(e))
        return values

    def _readPrefix(self, key: Key) -> dict[str, Any]:
        """
        Parse every key starting with C{key.name}, by the rest of its name.
        """
        values = {}
        for name, text in self._values.items():
            if name.startswith(key.name):
                try:
                    values[name[len(key.name) :]] = key.parse(text)
                except ValueError as e:
                    self.error(name, text, str(e))
        return values


class _Reader:
    """
    The state of one reading of a file: the parsed INI and the errors so
    far.

    @ivar bad: C{(section, key)} for each key already reported, so that the
        checks across sections do not report it again as missing.
    """

    def __init__(self, parser: configparser.ConfigParser, filename: str) -> None:
        self.parser = parser
        self.filename = filename
        self.errors: list[str] = []
        self.bad: set[tuple[str, str]] = set()

    def reported(self, section: str, *keys: str) -> bool:
        """
        Whether a bad value of any of C{keys} of C{section} was reported.
        """
        return any((section, key) in self.bad for key in keys)

    def fail(self, section: str, key: str, value: str, expected: str) -> None:
        """
        Report a problem of C{key} that is not a bad value of its own.
        """
        self.errors.append(
            f"{self.filename}: [{section}] {key} = {value!r}: {expected}"
        )


def _readProxy(reader: _Reader) -> ProxyConfig:
    if not reader.parser.has_section("lbproxy"):
        return ProxyConfig()
    s = _Section(reader, "lbproxy", "lbproxy")
    proxy = ProxyConfig(**s.read(ProxyConfig))
    if proxy.workers > 1:
        from lbproxy._proxyprotocol import withoutPrefix

        for description in proxy.listen + proxy.listenTLS:
            kind = withoutPrefix(description).split(":", 1)[0].lower()
            if kind not in ("tcp", "tcp6") and not kind.isdigit():
                s.error(
                    "workers",
                    str(proxy.workers),
                    f"1 with the listener {description!r}: several workers "
                    "share tcp: and tcp6: listeners only (haproxy: in front "
                    "of either too)",
                )
    return proxy


def _readAdmin(reader: _Reader) -> Optional[AdminConfig]:
    if not reader.parser.has_section("admin"):
        return None
    s = _Section(reader, "admin", "admin")
    return AdminConfig(**s.read(AdminConfig))


def _readHealth(s: _Section) -> Optional[HealthCheckConfig]:
    if not s.has("health_check"):
        for key in _keysOf(HealthCheckConfig):
            if s.has(key.name):
                s.error(key.name, s.raw(key.name) or "", "health_check = PATH to be set as well")
        return None
    values = s.read(HealthCheckConfig)
    if "path" not in values:
        return None
    return HealthCheckConfig(**values)


#: The keys of an upstream that only C{servers_from = etcd} uses.
_ETCD_KEYS = (
    "etcd_endpoints",
    "etcd_prefix",
    "etcd_ca",
    "etcd_certificate",
    "etcd_key",
    "etcd_username",
    "etcd_password_file",
)


def _readUpstream(reader: _Reader, section: str, name: str) -> UpstreamConfig:
    s = _Section(reader, section, "upstream")
    values = s.read(UpstreamConfig)
    upstream = UpstreamConfig(
        **{"name": name, "servers": (), **values, "healthCheck": _readHealth(s)}
    )
    if upstream.serversFrom is None and not reader.reported(section, "servers_from"):
        if not s.has("servers"):
            reader.fail(
                section, "servers", "", "missing key; expected one or more HOST:PORT "
                "lines (or servers_from = etcd)"
            )
        for key in _ETCD_KEYS:
            if s.has(key):
                s.error(key, s.raw(key) or "", "servers_from = etcd to be set as well")
    elif upstream.serversFrom == "etcd" and s.has("servers"):
        s.error(
            "servers",
            s.raw("servers") or "",
            "no servers with servers_from = etcd: the backends are the values "
            f"of the keys under {upstream.etcdKeyPrefix}",
        )
    if upstream.serversFrom == "etcd":
        for key, other in (
            ("etcd_username", "etcd_password_file"),
            ("etcd_password_file", "etcd_username"),
            ("etcd_key", "etcd_certificate"),
        ):
            if s.has(key) and not s.has(other):
                reader.fail(section, other, "", f"missing key; expected {other}, as {key} is set")
        if not upstream.etcdOverTLS:
            for key in ("etcd_ca", "etcd_certificate"):
                if s.has(key):
                    s.error(key, s.raw(key) or "", "an https:// endpoint in etcd_endpoints as well (TLS is only for those)")
    seen = set()
    for server in upstream.servers:
        where = (server.scheme, server.host, server.port)
        if where in seen:
            s.error("servers", f"{server.host}:{server.port}", "each server listed once")
        seen.add(where)
        problem = certificateNameProblem(server, upstream.tlsVerify, upstream.tlsServerName)
        if problem is not None:
            s.error("servers", f"https://{server.host}:{server.port}", problem)
    if upstream.tlsVerify and upstream.tlsServerName is not None:
        problem = tlsNameProblem(upstream.tlsServerName)
        if problem is not None:
            s.error(
                "tls_server_name",
                upstream.tlsServerName,
                f"a host name a certificate can be checked against ({problem}); "
                "or tls_verify = no",
            )
    if upstream.resolveMin > upstream.resolveMax and not reader.reported(section, "resolve_max"):
        s.error(
            "resolve_max",
            s.raw("resolve_max") or f"{upstream.resolveMax:g}s",
            f"a duration no shorter than resolve_min ({upstream.resolveMin:g}s)",
        )
    if not reader.reported(section, "balancer"):
        try:
            buildBalancer(upstream.balancer, upstream.balancerOptions)
        except BalancerNotFound as e:
            s.error(
                "balancer",
                upstream.balancer,
                "the name of a balancer plugin: "
                + ", ".join(e.available)
                + didYouMean(upstream.balancer, e.available),
            )
        except InvalidBalancerOptions as e:
            s.error("balancer", upstream.balancer, f"valid balancer.* options: {e}")
    return upstream


def _checkRequestIdRules(
    s: _Section, requestId: bool, rules: Sequence[tuple[str, Sequence[HeaderRule]]]
) -> None:
    """
    With C{request_id = yes}, report every header rule of C{rules} (pairs
    of a key and its rules) that names X-Request-ID, which is the key's.
    """
    if not requestId:
        return
    for key, keyRules in rules:
        for verb, header, _ in keyRules:
            if header.lower() == "x-request-id":
                s.error(
                    key,
                    f"{verb} {header}",
                    "no rule for X-Request-ID: request_id = yes sets it",
                )


def _readVHost(reader: _Reader, section: str, name: str) -> VHostConfig:
    s = _Section(reader, section, "vhost")
    vhost = VHostConfig(name=name, **s.read(VHostConfig))
    if vhost.limitRate is None and not reader.reported(section, "limit_rate"):
        for key in ("limit_burst", "limit_delay", "limit_per_worker", "limit_keys"):
            if s.has(key) and not reader.reported(section, key):
                s.error(key, s.raw(key) or "", "limit_rate to be set as well")
    if (
        vhost.limitRate is None
        and not vhost.limitConn
        and s.has("limit_key")
        and not reader.reported(section, "limit_rate", "limit_conn")
    ):
        s.error("limit_key", s.raw("limit_key") or "", "limit_rate or limit_conn to be set as well")
    _checkRequestIdRules(
        s,
        vhost.requestId,
        [
            ("request_headers", vhost.requestHeaders),
            ("response_headers", vhost.responseHeaders),
        ],
    )
    return vhost


def _routeSectionName(name: str) -> Optional[tuple[str, str]]:
    """
    The vhost name and the route prefix of a C{[route:VHOST:PREFIX]}
    section called C{route:NAME}, or L{None} when C{NAME} is not of that
    form.
    """
    vhost, sep, prefix = name.partition(":")
    vhost, prefix = vhost.strip(), prefix.strip()
    if not (sep and isName(vhost) and prefix.startswith("/")):
        return None
    return vhost, prefix


def _readRoutes(
    reader: _Reader, sections: Sequence[str], vhosts: list[VHostConfig]
) -> None:
    """
    Read the C{[route:VHOST:PREFIX]} sections, each into the
    L{VHostConfig.routeOverrides} of its vhost (replaced in C{vhosts}).
    """
    byName = {vhost.name: index for index, vhost in enumerate(vhosts)}
    overrides: dict[str, dict[str, RouteOverridesConfig]] = {}
    for section in sections:
        names = _routeSectionName(section.partition(":")[2])
        assert names is not None
        vhostName, prefix = names
        s = _Section(reader, section, "route")
        route = RouteOverridesConfig(vhost=vhostName, prefix=prefix, **s.read(RouteOverridesConfig))
        index = byName.get(vhostName)
        if index is None:
            reader.errors.append(
                f"{reader.filename}: [{section}]: undefined vhost; expected "
                "[route:VHOST:PREFIX] with VHOST the name of a [vhost:NAME] "
                f"section, but there is no [vhost:{vhostName}]"
                + didYouMean(vhostName, byName, partial("[route:{}:{p}]".format, p=prefix))
            )
            continue
        vhost = vhosts[index]
        kinds = {r.prefix: r.kind for r in vhost.routes}
        if vhost.upstream is not None:
            kinds.setdefault("/", "upstream")
        if prefix not in kinds:
            if not reader.reported(f"vhost:{vhostName}", "routes"):
                reader.errors.append(
                    f"{reader.filename}: [{section}]: undefined route; expected "
                    "[route:VHOST:PREFIX] with PREFIX one of the routes of "
                    f"[vhost:{vhostName}]: "
                    + (", ".join(sorted(kinds)) or "none")
                    + didYouMean(prefix, kinds, partial("[route:{}:{}]".format, vhostName))
                )
            continue
        given = [
            (key, rules)
            for key, rules in [
                ("request_headers", route.requestHeaders),
                ("response_headers", route.responseHeaders),
            ]
            if rules is not None
        ]
        if kinds[prefix] != "upstream":
            for key, _ in given:
                s.error(
                    key,
                    s.raw(key) or "",
                    f"no header rules on {prefix}, a {kinds[prefix]}: route "
                    "(header rules apply to routes to an upstream)",
                )
        _checkRequestIdRules(s, vhost.requestId, given)
        overrides.setdefault(vhostName, {})[prefix] = route
    for vhostName, routes in overrides.items():
        index = byName[vhostName]
        vhosts[index] = replace(vhosts[index], routeOverrides=routes)


def _readDemo(reader: _Reader, section: str, name: str) -> DemoConfig:
    s = _Section(reader, section, "demo")
    return DemoConfig(**{"name": name, "listen": (), **s.read(DemoConfig)})


def _undefinedUpstream(name: str, upstreams: Mapping[str, UpstreamConfig]) -> str:
    """
    The error of a reference to an upstream that no section defines.
    """
    return (
        "undefined section; expected the name of an [upstream:NAME] section, "
        f"but there is no [upstream:{name}]"
        + didYouMean(name, sorted(upstreams), lambda n: f"[upstream:{n}]")
    )


def _crossCheck(reader: _Reader, config: SiteConfig) -> None:
    """
    Check what involves more than one section, leaving out the keys already
    reported as bad (their value is the default, not what the file says).
    """
    defaults = [v for v in config.vhosts if v.default]
    for extra in defaults[1:]:
        reader.fail(
            f"vhost:{extra.name}",
            "default",
            "yes",
            f"bad value; expected only one default vhost, but [vhost:{defaults[0].name}] is default too",
        )
    owners: dict[str, str] = {}
    for vhost in config.vhosts:
        section = f"vhost:{vhost.name}"
        if (
            vhost.upstream is None
            and not vhost.routes
            and not reader.reported(section, "upstream", "routes")
        ):
            reader.fail(section, "upstream", "", "missing key; expected upstream = NAME or routes")
        if vhost.upstream is not None and vhost.upstream not in config.upstreams:
            reader.fail(
                section,
                "upstream",
                vhost.upstream,
                _undefinedUpstream(vhost.upstream, config.upstreams),
            )
        for route in vhost.routes:
            if route.kind == "upstream" and route.target not in config.upstreams:
                reader.fail(
                    section,
                    "routes",
                    f"{route.prefix} {route.target}",
                    _undefinedUpstream(route.target, config.upstreams),
                )
        if (
            not vhost.serverNames
            and not vhost.default
            and not reader.reported(section, "server_names", "default")
        ):
            reader.fail(section, "server_names", "", "missing key; expected server_names, or default = yes")
        for serverName in vhost.serverNames:
            if serverName in owners:
                reader.fail(
                    section,
                    "server_names",
                    serverName,
                    f"bad value; expected each name in one vhost only, but [vhost:{owners[serverName]}] has it too",
                )
            owners[serverName] = vhost.name
    if (
        config.vhosts
        and not config.proxy.listen
        and not config.proxy.listenTLS
        and not reader.reported("lbproxy", "listen", "listen_tls")
    ):
        reader.fail("lbproxy", "listen", "", "missing key; expected one or more server endpoints such as tcp:8080")


def _sectionSuggestion(section: str) -> str:
    """
    The "did you mean" of an unknown section whose kind is misspelt:
    C{[upstrem:app]} is likely C{[upstream:app]}, C{[lbproy]} C{[lbproxy]}.
    """
    kind, sep, name = section.partition(":")
    kinds = [k for k in _SECTIONS if (k in _SINGLE_SECTIONS) != bool(sep)]
    return didYouMean(kind.strip(), kinds, lambda k: f"[{k}{sep}{name}]")


def parseConfigText(text: str, filename: str = "<string>") -> SiteConfig:
    """
    Parse and check the text of a site.ini.

    @param filename: the name to use in error messages.
    @raise ConfigError: listing every problem found.
    """
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=True,
        empty_lines_in_values=False,
        default_section="\0lbproxy-no-defaults",
    )
    parser.optionxform = lambda option: option.strip().lower()  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=filename)
    except configparser.Error as e:
        message = " ".join(str(e).split())
        raise ConfigError([f"{filename}: {message}"]) from None

    reader = _Reader(parser, filename)
    proxy = _readProxy(reader)
    admin = _readAdmin(reader)
    upstreams: dict[str, UpstreamConfig] = {}
    vhosts: list[VHostConfig] = []
    demos = []
    routes = []
    for section in parser.sections():
        kind, sep, name = section.partition(":")
        kind = kind.strip()
        name = name.strip()
        if kind == "route" and _routeSectionName(name) is not None:
            # Read once every vhost is.
            routes.append(section)
        elif kind in _SECTIONS and kind not in ("lbproxy", "route") and sep and isName(name):
            if kind == "upstream":
                upstreams[name] = _readUpstream(reader, section, name)
            elif kind == "vhost":
                vhosts.append(_readVHost(reader, section, name))
            else:
                demos.append(_readDemo(reader, section, name))
        elif section not in _SINGLE_SECTIONS:
            reader.errors.append(
                f"{filename}: [{section}]: unknown section; expected [lbproxy], "
                "[admin], [upstream:NAME], [vhost:NAME], [route:VHOST:PREFIX] or "
                "[demo:NAME] with NAME and VHOST made of letters, digits, '_', "
                "'.' and '-' and PREFIX a path prefix starting with /"
                + _sectionSuggestion(section)
            )
    _readRoutes(reader, routes, vhosts)
    config = SiteConfig(
        proxy=proxy,
        upstreams=upstreams,
        vhosts=tuple(vhosts),
        demos=tuple(demos),
        source=filename,
        admin=admin,
    )
    _crossCheck(reader, config)
    if reader.errors:
        raise ConfigError(reader.errors)
    return config


def parseConfig(path: str) -> SiteConfig:
    """
    Read and check the site.ini at C{path}.

    @raise ConfigError: when it cannot be read or is invalid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read the configuration: {e}"]) from None
    return parseConfigText(text, path)
