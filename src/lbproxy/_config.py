# -*- test-case-name: tests.test_config -*-
"""
site.ini: read with L{configparser}, checked completely, and turned into
frozen objects that the rest of lbproxy builds from.

Parsing is pure: no reactor, no sockets, nothing read but the file.  Every
problem found is reported at once, each naming the file, the section, the
key, the bad value and what was expected.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from lbproxy._values import (
    isHostName,
    isName,
    parseBool,
    parseDuration,
    parseEndpoint,
    parseNonNegativeInt,
    parsePositiveDuration,
    parsePositiveInt,
    parsePositiveSize,
    parseRoutes,
    parseServerName,
    parseStatusRanges,
    splitLines,
    splitWords,
)
from lbproxy.balancers import BalancerNotFound, InvalidBalancerOptions, buildBalancer

T = TypeVar("T")


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
class ServerConfig:
    """
    One C{servers} line of an upstream.

    @ivar maxFails: this server's C{max_fails}, or L{None} to use the
        upstream's.
    @ivar failTimeout: this server's C{fail_timeout} in seconds, or L{None}.
    """

    host: str
    port: int
    scheme: str = "http"
    weight: int = 1
    backup: bool = False
    down: bool = False
    maxFails: Optional[int] = None
    failTimeout: Optional[float] = None


@dataclass(frozen=True)
class HealthCheckConfig:
    """
    The active health check of an upstream.

    @ivar status: the passing status codes, as inclusive C{(low, high)}
        ranges.
    @ivar body: text the body must contain to pass, or L{None}.
    """

    path: str
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    status: tuple[tuple[int, int], ...] = ((200, 399),)
    body: Optional[str] = None
    mandatory: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    """
    An C{[upstream:NAME]} section.  Durations are in seconds.
    """

    name: str
    servers: tuple[ServerConfig, ...]
    balancer: str = "round_robin"
    balancerOptions: Mapping[str, str] = field(default_factory=dict)
    maxFails: int = 1
    failTimeout: float = 10.0
    connectTimeout: float = 5.0
    readTimeout: float = 60.0
    nextUpstreamTries: int = 0
    keepalive: int = 32
    healthCheck: Optional[HealthCheckConfig] = None
    slowStart: float = 0.0
    tlsVerify: bool = True
    tlsCA: Optional[str] = None


@dataclass(frozen=True)
class VHostConfig:
    """
    A C{[vhost:NAME]} section.

    @ivar serverNames: lower-cased exact names and C{*.domain} wildcards.
    @ivar upstream: the upstream for every path no route matches, or
        L{None} (such paths get 404).
    @ivar routes: C{(path prefix, upstream name)} pairs.
    """

    name: str
    serverNames: tuple[str, ...] = ()
    default: bool = False
    upstream: Optional[str] = None
    routes: tuple[tuple[str, str], ...] = ()
    preserveHost: bool = True


@dataclass(frozen=True)
class DemoConfig:
    """
    A C{[demo:NAME]} section: a built-in sample backend answering with its
    name.
    """

    name: str
    listen: tuple[str, ...]


@dataclass(frozen=True)
class ProxyConfig:
    """
    The C{[lbproxy]} section.  Durations are in seconds, sizes in bytes.

    @ivar accessLog: a path, C{"-"} for standard output, or L{None} (off).
    @ivar maxConnections: the most client connections open at once (0: no
        limit); beyond it a new connection is accepted and closed at once.
    """

    listen: tuple[str, ...] = ()
    accessLog: Optional[str] = "-"
    workers: int = 1
    clientHeaderTimeout: float = 10.0
    clientBodyTimeout: float = 60.0
    keepaliveTimeout: float = 75.0
    maxBodySize: int = 100 * 1024 * 1024
    maxHeaderSize: int = 16 * 1024
    maxConnections: int = 10000


@dataclass(frozen=True)
class SiteConfig:
    """
    A whole configuration.

    @ivar upstreams: upstream name to L{UpstreamConfig}.
    @ivar vhosts: the virtual hosts, in file order.
    @ivar demos: the built-in sample backends to start.
    @ivar source: the file it came from, for messages.
    """

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    vhosts: tuple[VHostConfig, ...] = ()
    demos: tuple[DemoConfig, ...] = ()
    source: str = "<string>"


def parseServer(text: str) -> ServerConfig:
    """
    Parse a C{servers} line: C{[http://|https://]HOST[:PORT]} followed by
    any of C{weight=N}, C{backup}, C{down}, C{max_fails=N},
    C{fail_timeout=T}.
    """
    expected = (
        "[http://|https://]HOST:PORT followed by any of weight=N, backup, "
        "down, max_fails=N, fail_timeout=T"
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
    host = match.group(1).strip("[]")
    port = int(match.group(2)) if match.group(2) else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise ValueError(f"a port between 1 and 65535 in {expected}")
    if ":" not in host and not isHostName(host.lower()):
        raise ValueError(f"a valid host name in {expected}")
    options: dict[str, Any] = {}
    for param in params:
        name, sep, value = param.partition("=")
        try:
            if name == "weight" and sep:
                options["weight"] = parsePositiveInt(value)
            elif name == "max_fails" and sep:
                options["maxFails"] = parseNonNegativeInt(value)
            elif name == "fail_timeout" and sep:
                options["failTimeout"] = parsePositiveDuration(value)
            elif name in ("backup", "down") and not sep:
                options[name] = True
            else:
                raise ValueError(expected)
        except ValueError as e:
            raise ValueError(f"{param!r}: {e}") from None
    if options.get("backup") and options.get("down"):
        raise ValueError("a server that is either backup or down, not both")
    return ServerConfig(host=host.lower(), port=port, scheme=scheme, **options)


# Keys of SPEC.md that this version knows about but does not implement yet:
# accepting them silently would promise what is not there.
_NOT_YET = {
    "lbproxy": {"listen_tls", "tls_certificate", "tls_key", "tls_min_version"},
    "vhost": {"tls_certificate", "tls_key", "redirect_https", "hsts"},
}


class _Section:
    """
    Reads the keys of one section, collecting errors instead of stopping at
    the first one.
    """

    def __init__(
        self, reader: _Reader, section: str, kind: str, allowed: Sequence[str]
    ) -> None:
        self._reader = reader
        self.section = section
        self._values = dict(reader.parser.items(section)) if section else {}
        self.ok = True
        prefixAllowed = kind == "upstream"
        for key, value in self._values.items():
            if key in _NOT_YET.get(kind, ()):
                self.error(key, value, "nothing: this key is not supported yet")
            elif key not in allowed and not (
                prefixAllowed and key.startswith("balancer.")
            ):
                self.error(
                    key,
                    value,
                    "one of the keys of [{}]: {}".format(
                        section.split(":")[0] + (":NAME" if ":" in section else ""),
                        ", ".join(sorted(allowed)),
                    ),
                    unknown=True,
                )

    def error(self, key: str, value: str, expected: str, unknown: bool = False) -> None:
        self.ok = False
        what = "unknown key" if unknown else "bad value"
        self._reader.errors.append(
            f"{self._reader.filename}: [{self.section}] {key} = {value!r}: "
            f"{what}; expected {expected}"
        )

    def has(self, key: str) -> bool:
        return key in self._values

    def raw(self, key: str) -> Optional[str]:
        return self._values.get(key)

    def get(self, key: str, parse: Callable[[str], T], default: T) -> T:
        if key not in self._values:
            return default
        value = self._values[key]
        try:
            return parse(value)
        except ValueError as e:
            self.error(key, value, str(e))
            return default

    def getList(self, key: str, parse: Callable[[str], T], split: Callable[[str], list[str]] = splitWords) -> list[T]:
        if key not in self._values:
            return []
        result = []
        for item in split(self._values[key]):
            try:
                result.append(parse(item))
            except ValueError as e:
                self.error(key, item, str(e))
        return result

    def balancerOptions(self) -> dict[str, str]:
        return {
            key[len("balancer.") :]: value
            for key, value in self._values.items()
            if key.startswith("balancer.")
        }


class _Reader:
    def __init__(self, parser: configparser.ConfigParser, filename: str) -> None:
        self.parser = parser
        self.filename = filename
        self.errors: list[str] = []

    def fail(self, section: str, key: str, value: str, expected: str) -> None:
        self.errors.append(
            f"{self.filename}: [{section}] {key} = {value!r}: {expected}"
        )


_PROXY_KEYS = (
    "listen",
    "access_log",
    "workers",
    "client_header_timeout",
    "client_body_timeout",
    "keepalive_timeout",
    "max_body_size",
    "max_header_size",
    "max_connections",
)
_UPSTREAM_KEYS = (
    "servers",
    "balancer",
    "max_fails",
    "fail_timeout",
    "connect_timeout",
    "read_timeout",
    "next_upstream_tries",
    "keepalive",
    "health_check",
    "health_interval",
    "health_timeout",
    "health_rise",
    "health_fall",
    "health_status",
    "health_body",
    "health_mandatory",
    "slow_start",
    "tls_verify",
    "tls_ca",
)
_VHOST_KEYS = ("server_names", "default", "upstream", "routes", "preserve_host")
_DEMO_KEYS = ("listen",)


def _readProxy(reader: _Reader) -> ProxyConfig:
    if not reader.parser.has_section("lbproxy"):
        return ProxyConfig()
    s = _Section(reader, "lbproxy", "lbproxy", _PROXY_KEYS)
    defaults = ProxyConfig()
    accessLog = s.raw("access_log")
    if accessLog is not None:
        accessLog = accessLog.strip()
        if not accessLog:
            s.error("access_log", accessLog, "a path, - for standard output, or off")
    workers = s.get("workers", parsePositiveInt, 1)
    listen = tuple(s.getList("listen", parseEndpoint))
    if workers > 1:
        for description in listen:
            kind = description.split(":", 1)[0].lower()
            if kind not in ("tcp", "tcp6") and not kind.isdigit():
                s.error(
                    "workers",
                    str(workers),
                    f"1 with the listener {description!r}: several workers "
                    "share tcp: and tcp6: listeners only",
                )
    return ProxyConfig(
        listen=listen,
        accessLog=None if accessLog == "off" else (accessLog or defaults.accessLog),
        workers=workers,
        clientHeaderTimeout=s.get(
            "client_header_timeout", parsePositiveDuration, defaults.clientHeaderTimeout
        ),
        clientBodyTimeout=s.get(
            "client_body_timeout", parsePositiveDuration, defaults.clientBodyTimeout
        ),
        keepaliveTimeout=s.get(
            "keepalive_timeout", parsePositiveDuration, defaults.keepaliveTimeout
        ),
        maxBodySize=s.get("max_body_size", parsePositiveSize, defaults.maxBodySize),
        maxHeaderSize=s.get("max_header_size", parsePositiveSize, defaults.maxHeaderSize),
        maxConnections=s.get(
            "max_connections", parseNonNegativeInt, defaults.maxConnections
        ),
    )


def _readHealth(s: _Section) -> Optional[HealthCheckConfig]:
    healthKeys = [k for k in _UPSTREAM_KEYS if k.startswith("health_") and s.has(k)]
    path = s.raw("health_check")
    if path is None:
        for key in healthKeys:
            s.error(key, s.raw(key) or "", "health_check = PATH to be set as well")
        return None
    path = path.strip()
    if not path.startswith("/") or any(c.isspace() for c in path):
        s.error("health_check", path, "a path starting with /, such as /healthz")
    d = HealthCheckConfig(path=path)
    return HealthCheckConfig(
        path=path,
        interval=s.get("health_interval", parsePositiveDuration, d.interval),
        timeout=s.get("health_timeout", parsePositiveDuration, d.timeout),
        rise=s.get("health_rise", parsePositiveInt, d.rise),
        fall=s.get("health_fall", parsePositiveInt, d.fall),
        status=s.get("health_status", parseStatusRanges, d.status),
        body=s.raw("health_body"),
        mandatory=s.get("health_mandatory", parseBool, d.mandatory),
    )


def _readUpstream(reader: _Reader, section: str, name: str) -> UpstreamConfig:
    s = _Section(reader, section, "upstream", _UPSTREAM_KEYS)
    d = UpstreamConfig(name=name, servers=())
    servers = s.getList("servers", parseServer, splitLines)
    if not s.has("servers"):
        reader.fail(section, "servers", "", "missing key; expected one or more HOST:PORT lines")
    elif not servers and s.ok:
        s.error("servers", s.raw("servers") or "", "one or more HOST:PORT lines")
    seen = set()
    for server in servers:
        key = (server.scheme, server.host, server.port)
        if key in seen:
            s.error("servers", f"{server.host}:{server.port}", "each server listed once")
        seen.add(key)
    balancer = (s.raw("balancer") or d.balancer).strip()
    options = s.balancerOptions()
    try:
        buildBalancer(balancer, options)
    except BalancerNotFound as e:
        s.error(
            "balancer", balancer, "the name of a balancer plugin: " + ", ".join(e.available)
        )
    except InvalidBalancerOptions as e:
        s.error("balancer", balancer, f"valid balancer.* options: {e}")
    tlsCA = s.raw("tls_ca")
    return UpstreamConfig(
        name=name,
        servers=tuple(servers),
        balancer=balancer,
        balancerOptions=options,
        maxFails=s.get("max_fails", parseNonNegativeInt, d.maxFails),
        failTimeout=s.get("fail_timeout", parsePositiveDuration, d.failTimeout),
        connectTimeout=s.get("connect_timeout", parsePositiveDuration, d.connectTimeout),
        readTimeout=s.get("read_timeout", parsePositiveDuration, d.readTimeout),
        nextUpstreamTries=s.get("next_upstream_tries", parseNonNegativeInt, d.nextUpstreamTries),
        keepalive=s.get("keepalive", parseNonNegativeInt, d.keepalive),
        healthCheck=_readHealth(s),
        slowStart=s.get("slow_start", parseDuration, d.slowStart),
        tlsVerify=s.get("tls_verify", parseBool, d.tlsVerify),
        tlsCA=tlsCA.strip() if tlsCA else None,
    )


def _readVHost(reader: _Reader, section: str, name: str) -> VHostConfig:
    s = _Section(reader, section, "vhost", _VHOST_KEYS)
    upstream = s.raw("upstream")
    if upstream is not None:
        upstream = upstream.strip()
        if not isName(upstream):
            s.error("upstream", upstream, "the name of an [upstream:NAME] section")
    return VHostConfig(
        name=name,
        serverNames=tuple(s.getList("server_names", parseServerName)),
        default=s.get("default", parseBool, False),
        upstream=upstream,
        routes=tuple(s.get("routes", parseRoutes, [])),
        preserveHost=s.get("preserve_host", parseBool, True),
    )


def _readDemo(reader: _Reader, section: str, name: str) -> DemoConfig:
    s = _Section(reader, section, "demo", _DEMO_KEYS)
    listen = s.getList("listen", parseEndpoint)
    if not s.has("listen"):
        reader.fail(section, "listen", "", "missing key; expected a server endpoint such as tcp:9001")
    return DemoConfig(name=name, listen=tuple(listen))


def _crossCheck(reader: _Reader, config: SiteConfig) -> None:
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
        if vhost.upstream is None and not vhost.routes:
            reader.fail(section, "upstream", "", "missing key; expected upstream = NAME or routes")
        if vhost.upstream is not None and vhost.upstream not in config.upstreams:
            reader.fail(
                section,
                "upstream",
                vhost.upstream,
                f"undefined section; expected the name of an [upstream:NAME] section, but there is no [upstream:{vhost.upstream}]",
            )
        for prefix, upstream in vhost.routes:
            if upstream not in config.upstreams:
                reader.fail(
                    section,
                    "routes",
                    f"{prefix} {upstream}",
                    f"undefined section; expected the name of an [upstream:NAME] section, but there is no [upstream:{upstream}]",
                )
        if not vhost.serverNames and not vhost.default:
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
    if config.vhosts and not config.proxy.listen:
        reader.fail("lbproxy", "listen", "", "missing key; expected one or more server endpoints such as tcp:8080")


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
    upstreams: dict[str, UpstreamConfig] = {}
    vhosts = []
    demos = []
    for section in parser.sections():
        kind, sep, name = section.partition(":")
        kind = kind.strip()
        name = name.strip()
        if kind in ("upstream", "vhost", "demo") and sep and isName(name):
            if kind == "upstream":
                upstreams[name] = _readUpstream(reader, section, name)
            elif kind == "vhost":
                vhosts.append(_readVHost(reader, section, name))
            else:
                demos.append(_readDemo(reader, section, name))
        elif section != "lbproxy":
            reader.errors.append(
                f"{filename}: [{section}]: unknown section; expected [lbproxy], "
                "[upstream:NAME], [vhost:NAME] or [demo:NAME] with NAME made of "
                "letters, digits, '_', '.' and '-'"
            )
    config = SiteConfig(
        proxy=proxy,
        upstreams=upstreams,
        vhosts=tuple(vhosts),
        demos=tuple(demos),
        source=filename,
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
