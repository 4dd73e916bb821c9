# -*- test-case-name: tests.test_config -*-
"""
The kinds of value site.ini holds: durations, sizes, booleans, whole
numbers, lists, endpoint descriptions, host names, status ranges, the
routes of a vhost.

Each parser takes the raw text and returns the value, or raises
L{ValueError} whose message says what was expected (the configuration
reader puts it after C{expected} in its error).

This module imports nothing of lbproxy, so that both the configuration
reader (L{lbproxy._config}) and the balancers (whose C{balancer.*} options
share the syntax of durations) can import it without importing each other.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import (
    Callable,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import urlsplit

T = TypeVar("T")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^(\d+)([kmg])?$")
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, None: 1}
_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)"
    r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$"
)


def spelledAddress(address: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]) -> str:
    """
    C{address} as text, an IPv4-mapped IPv6 address in the mixed form
    RFC 5952 recommends (C{::ffff:192.0.2.1}), as the kernel names such a
    peer, not in the hexadecimal one C{str} gives before Python 3.13
    (C{::ffff:c000:201}): one client is spelled one way in the logs and
    headers, whether it reached lbproxy directly or through a balancer, and
    on every Python.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def editDistance(a: str, b: str) -> int:
    """
    The number of edits that turn C{a} into C{b}: a character inserted,
    removed or replaced, or two neighbouring characters swapped (the
    optimal string alignment distance, which counts the usual typing
    slips, C{read_timout} or C{round_robni}, as one edit each).
    """
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (ca != cb),
            )
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


def closestName(word: str, candidates: Iterable[str]) -> Optional[str]:
    """
    The candidate that C{word} is most likely a misspelling of: one or two
    edits away (only one for a word of three characters or fewer, where
    two edits would make almost anything match), the nearest first, then
    the first in alphabetical order.  Case is ignored.

    @return: the candidate, or L{None} when none is that close.
    """
    most = 1 if len(word) <= 3 else 2
    found = []
    for candidate in candidates:
        distance = editDistance(word.lower(), candidate.lower())
        if 0 < distance <= most or (distance == 0 and word != candidate):
            found.append((distance, candidate))
    return min(found)[1] if found else None


def didYouMean(
    word: str, candidates: Iterable[str], show: Callable[[str], str] = repr
) -> str:
    """
    The end of an error message that suggests what C{word} was meant to
    be (see L{closestName}): C{"; did you mean 'x'?"}, or C{""} when no
    candidate is close.

    @param show: how to write the candidate, C{'x'} by default.
    """
    match = closestName(word, candidates)
    return "" if match is None else f"; did you mean {show(match)}?"


def got(expected: str, value: str) -> str:
    """
    What an error says of a bad part of a value: what was expected, then
    the part, C{"a whole number of at least 1, got 'weight=0'"}.
    """
    return f"{expected}, got {value!r}"


def parseDuration(text: str) -> float:
    """
    Parse C{500ms}, C{2s}, C{1m}, C{1h}, C{1d} or a bare number of seconds.

    @return: the duration in seconds.
    @raise ValueError: when C{text} is not a duration.
    """
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ValueError("a duration such as 500ms, 2s, 1m or 1h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parseSize(text: str) -> int:
    """
    Parse a size in bytes with an optional C{k}, C{m} or C{g} suffix
    (powers of 1024).

    @return: the size in bytes.
    @raise ValueError: when C{text} is not a size.
    """
    match = _SIZE.match(text.strip().lower())
    if match is None:
        raise ValueError("a size such as 512, 16k, 100m or 1g")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parseBool(text: str) -> bool:
    """
    Parse C{yes}/C{no} (or C{true}/C{false}, C{on}/C{off}, C{1}/C{0}).

    @raise ValueError: when C{text} is none of them.
    """
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError("yes or no") from None


def _wholeNumberParser(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """
    Make a parser of decimal whole numbers of at least C{low} (and at most
    C{high}, unless it is L{None}).
    """
    if high is None:
        what = f"a whole number of at least {low}"
    else:
        what = f"a whole number from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(what) from None
        if value < low or (high is not None and value > high):
            raise ValueError(what)
        return value

    return parse


#: Parse a whole number of at least 1.
parsePositiveInt = _wholeNumberParser(1)

#: Parse a whole number of at least 0.
parseNonNegativeInt = _wholeNumberParser(0)

#: Parse a zlib compression level: a whole number from 1 to 9.
parseCompressionLevel = _wholeNumberParser(1, 9)

#: The largest C{weight=} of a server line: far more than a share needs,
#: and a number the balancers' arithmetic (in floats) holds.
MAX_WEIGHT = 1000000


def parseWeight(text: str) -> int:
    """
    Parse a server's C{weight=}: a whole number of at least 1, at most
    L{MAX_WEIGHT}.
    """
    weight = parsePositiveInt(text)
    if weight > MAX_WEIGHT:
        raise ValueError(f"a weight of at most {MAX_WEIGHT}")
    return weight


#: An HTTP token, lower-cased.
_TOKEN = r"[!#$%&'*+.^_`|~0-9a-z-]+"
_MEDIA_TYPE = re.compile(r"^" + _TOKEN + r"/" + _TOKEN + r"$")
_PROTOCOL_NAME = re.compile(r"^" + _TOKEN + r"$")


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*r?/(s|m)$")


def parseRate(text: str) -> float:
    """
    Parse a request rate, C{20/s} or C{30/m} (nginx's C{20r/s} and
    C{30r/m} too), as requests per second.
    """
    match = _RATE.match(text.strip().lower())
    value = float(match.group(1)) if match else 0.0
    if match is None or value <= 0:
        raise ValueError("a rate greater than zero such as 20/s or 30/m")
    return value / 60 if match.group(2) == "m" else value


#: A C{limit_key}: C{("remote_addr", "")}, or C{("header", NAME)} or
#: C{("cookie", NAME)}.
LimitKey = Tuple[str, str]

def parseLimitKey(text: str) -> LimitKey:
    """
    Parse what requests are counted by: C{remote_addr} (the client's
    address), C{header:NAME} or C{cookie:NAME}.
    """
    expected = "remote_addr, header:NAME or cookie:NAME"
    value = text.strip()
    if value.lower() == "remote_addr":
        return ("remote_addr", "")
    kind, sep, name = value.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    # A cookie's name is a token, as a header's (RFC 6265 4.1.1).
    if sep and kind in ("header", "cookie") and _HEADER_NAME.match(name):
        return (kind, name.lower() if kind == "header" else name)
    raise ValueError(expected)


#: The default of C{limit_keys}: the most keys a vhost's rate table holds.
DEFAULT_LIMIT_KEYS = 100_000

#: The values of C{limit_per_worker}.
LIMIT_PER_WORKER = ("divide", "each")


def parseLimitPerWorker(text: str) -> str:
    """
    Parse how C{limit_rate} and C{limit_burst} apply with several
    workers: C{divide} (each worker gets its share) or C{each} (each
    worker gets them whole).
    """
    value = text.strip().lower()
    if value not in LIMIT_PER_WORKER:
        raise ValueError("divide or each")
    return value


def parseMediaType(text: str) -> str:
    """
    Parse a media type without parameters, lower-cased: C{type/subtype},
    C{type/*} (every subtype), or C{*} (any type).
    """
    value = text.strip().lower()
    if value != "*" and (not _MEDIA_TYPE.match(value) or value.startswith("*/")):
        raise ValueError("a media type such as text/html, text/* or *")
    return value


def parseProtocolName(text: str) -> str:
    """
    Parse the name of an C{Upgrade} protocol (an HTTP token, without a
    C{/version}), lower-cased: C{websocket}, C{h2c}.
    """
    value = text.strip().lower()
    if not _PROTOCOL_NAME.match(value):
        raise ValueError("a protocol name such as websocket")
    return value


def parsePositiveDuration(text: str) -> float:
    """
    Parse a duration (see L{parseDuration}) greater than zero.
    """
    value = parseDuration(text)
    if value <= 0:
        raise ValueError("a duration greater than zero, such as 500ms or 2s")
    return value


def parsePositiveSize(text: str) -> int:
    """
    Parse a size (see L{parseSize}) greater than zero.
    """
    value = parseSize(text)
    if value <= 0:
        raise ValueError("a size greater than zero, such as 16k or 100m")
    return value


def splitWords(text: str) -> list[str]:
    """
    Split a list written on one line or several, items separated by
    whitespace.
    """
    return text.split()


def splitLines(text: str) -> list[str]:
    """
    Split a list of one item per line, dropping blank lines.
    """
    return [line.strip() for line in text.splitlines() if line.strip()]


class BadItems(ValueError):
    """
    Some items of a list are bad.

    @ivar items: C{(item, what was expected)} for each bad item, in order.
    """

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self.items = list(items)
        super().__init__("; ".join(f"{item!r}: {what}" for item, what in self.items))


def listOf(
    parse: Callable[[str], T],
    split: Callable[[str], list[str]] = splitWords,
    nonEmpty: str = "",
) -> Callable[[str], tuple[T, ...]]:
    """
    Make a parser of a list whose items C{parse} parses.

    @param split: how the text divides into items.
    @param nonEmpty: what to expect when there is no item at all; an empty
        list is accepted when it is empty.
    @return: a parser that raises L{BadItems} naming every bad item, so that
        each is reported with its own value.
    """

    def parseList(text: str) -> tuple[T, ...]:
        values = []
        bad = []
        for item in split(text):
            try:
                values.append(parse(item))
            except ValueError as e:
                bad.append((item, str(e)))
        if bad:
            raise BadItems(bad)
        if nonEmpty and not values:
            raise ValueError(nonEmpty)
        return tuple(values)

    return parseList


def parseText(text: str) -> str:
    """
    Take any text as it is.
    """
    return text


def parseOptionalText(text: str) -> Optional[str]:
    """
    Take text, such as a file name, without surrounding whitespace; nothing
    at all is L{None}.
    """
    return text.strip() or None


def parseWord(text: str) -> str:
    """
    Take text without surrounding whitespace, such as the name of a
    balancer (checked against the plugins found, later).
    """
    return text.strip()


def parseAccessLog(text: str) -> Optional[str]:
    """
    Parse where the access log goes: a path, C{-} for standard output, or
    C{off} (L{None}).
    """
    text = text.strip()
    if not text:
        raise ValueError("a path, - for standard output, or off")
    return None if text == "off" else text


#: The formats of C{access_log_format}.
ACCESS_LOG_FORMATS = ("combined", "upstream", "json")


def parseAccessLogFormat(text: str) -> str:
    """
    Parse the access log's format: C{combined}, C{upstream} or C{json}.
    """
    text = text.strip().lower()
    if text not in ACCESS_LOG_FORMATS:
        raise ValueError("combined, upstream or json")
    return text


#: The values of C{send_proxy_protocol}, and the PROXY protocol version
#: each sends (0: none).
PROXY_PROTOCOL_VERSIONS = {"no": 0, "v1": 1, "v2": 2}


def parseProxyProtocol(text: str) -> int:
    """
    Parse C{send_proxy_protocol}: C{no}, C{v1} or C{v2}.

    @return: the version to send, 0 for none.
    """
    version = PROXY_PROTOCOL_VERSIONS.get(text.strip().lower())
    if version is None:
        raise ValueError("no, v1 or v2")
    return version


def parsePath(text: str) -> str:
    """
    Parse a URL path such as C{/healthz}.
    """
    text = text.strip()
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise ValueError("a path starting with /, such as /healthz")
    return text


def parseUpstreamName(text: str) -> str:
    """
    Parse a reference to an C{[upstream:NAME]} section (whether there is
    one is checked once the whole file is read).
    """
    text = text.strip()
    if not isName(text):
        raise ValueError("the name of an [upstream:NAME] section")
    return text


def parseEndpoint(text: str) -> str:
    """
    Check a Twisted server endpoint description, such as C{tcp:8080}.

    @return: C{text} unchanged.
    @raise ValueError: when no endpoint parser accepts it, and for
        C{haproxy:ssl:} (see L{lbproxy._proxyprotocol}).
    """
    # Imported here: twistd imports the balancers (and so this module)
    # while it scans for plugins, before it installs the reactor.
    from twisted.internet.endpoints import serverFromString

    kind, _, rest = text.strip().partition(":")
    if kind.lower() == "haproxy" and rest.split(":", 1)[0].lower() == "ssl":
        # The PROXY header comes before the TLS; an ssl: endpoint would
        # look for it inside.
        raise ValueError(
            "haproxy:tcp:PORT in listen_tls (haproxy:ssl: would read the "
            "PROXY header inside the TLS, where balancers do not send it)"
        )
    try:
        serverFromString(_NoReactor(), text)
    except Exception as e:
        raise ValueError(
            f"a Twisted server endpoint description such as tcp:8080 ({e})"
        ) from None
    return text


def parseServersFrom(text: str) -> str:
    """
    Parse C{servers_from}: where an upstream's backends come from besides
    its C{servers} (only C{etcd} for now).
    """
    word = text.strip().lower()
    if word != "etcd":
        raise ValueError("etcd (backends from the keys under etcd_prefix)")
    return word


def parseEtcdEndpoint(text: str) -> str:
    """
    Parse one of C{etcd_endpoints}: the C{http://HOST:PORT} or
    C{https://HOST:PORT} of an etcd member's client URL, without a path.

    @return: the URL without a trailing slash, its scheme in lower case.
    """
    expected = "an etcd client URL such as http://127.0.0.1:2379 or https://etcd-1:2379"
    url = text.strip().rstrip("/")
    scheme, separator, address = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in ("http", "https"):
        raise ValueError(expected)
    match = re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]/]+):(\d+)$", address)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(expected)
    host = match.group(1)
    if not host.startswith("[") and not isHostName(host.lower()):
        raise ValueError(expected)
    return f"{scheme}://{address}"


def parseEtcdPrefix(text: str) -> str:
    """
    Parse C{etcd_prefix}: the etcd key prefix under which every key is a
    server line; any text without surrounding whitespace, not empty.
    """
    prefix = text.strip()
    if not prefix:
        raise ValueError("a key prefix such as /lbproxy/upstreams/app/")
    return prefix


class _NoReactor:
    """
    Stands in for the reactor while endpoint descriptions are checked:
    building an endpoint only stores its reactor.
    """


def isName(text: str) -> bool:
    """
    Whether C{text} may be the C{NAME} of a section such as
    C{[upstream:NAME]}: letters, digits, C{_}, C{.} and C{-}.
    """
    return _NAME.match(text) is not None


def isHostName(text: str) -> bool:
    """
    Whether the lower-cased C{text} is a host name, or a C{*.domain}
    wildcard.
    """
    return _HOSTNAME.match(text) is not None


def parseServiceName(text: str) -> str:
    """
    Parse the C{NAME} of C{service=NAME}: an RFC 6335 service name (1 to 15
    letters, digits and inner hyphens, at least one letter), lower-cased.
    """
    name = text.lower()
    if len(name) > 15 or not re.match(r"^(?=.*[a-z])[a-z0-9](?:-?[a-z0-9])*$", name):
        raise ValueError("a service name such as http (letters, digits, hyphens)")
    return name


def tlsNameProblem(name: str) -> Optional[str]:
    """
    Why a certificate cannot be checked against the host name C{name}, or
    L{None} when it can.

    L{twisted.internet.ssl.optionsForClientTLS} encodes the name with the
    C{idna} package (IDNA 2008) when it is installed, as it is with
    Twisted's C{tls} extra: that refuses names Python's own C{idna} codec
    takes, such as C{my_app} (an underscore), and it would do so when the
    first connection is made.
    """
    try:
        import idna
    except ImportError:  # pragma: no cover (Twisted then uses the codec)
        return None
    try:
        idna.encode(name)
    except idna.IDNAError as e:
        return str(e)
    return None


def isIPLiteral(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address rather than a name.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parseResolverAddress(text: str) -> tuple[str, int]:
    """
    Parse one C{resolver} address: an IPv4 address, an IPv6 address (in
    brackets when a port follows), and an optional port (53 when left out).

    @return: C{(address, port)}.
    """
    expected = "an IP address with an optional port, such as 127.0.0.1:53 or [::1]:53"
    match = re.match(r"^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+))(?::(\d+))?$", text)
    host, port = text, "53"
    if match is not None:
        host = match.group(1) or match.group(2)
        port = match.group(3) or "53"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(expected) from None
    if not 0 < int(port) < 65536:
        raise ValueError(expected)
    return spelledAddress(address), int(port)


#: An entry of C{trusted_proxies}: an IPv4 or IPv6 network, or
#: L{UNIX_PEERS}.
TrustedNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network, str]

#: The C{trusted_proxies} entry that trusts clients on UNIX sockets (as
#: nginx's C{set_real_ip_from unix:}).
UNIX_PEERS = "unix:"


def parseTrustedProxy(text: str) -> TrustedNetwork:
    """
    Parse one entry of C{trusted_proxies}: an IPv4 or IPv6 address
    (C{10.0.0.7}, C{::1}), a network in CIDR form (C{10.0.0.0/8},
    C{fd00::/8}), or C{unix:} for the peers of UNIX-socket listeners.

    @return: an C{ipaddress.IPv4Network} or C{ipaddress.IPv6Network} (an
        address is the network of that one address), or L{UNIX_PEERS}.
    @raise ValueError: for anything else, and for a network with host bits
        set (C{10.1.2.3/8}), which is more likely a typo than meant.
    """
    text = text.strip()
    if text.lower() == UNIX_PEERS:
        return UNIX_PEERS
    expected = (
        "an IPv4 or IPv6 address or network, such as 10.0.0.0/8, "
        "192.168.1.10 or fd00::/8, or unix:"
    )
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(expected) from None
    if network.network_address != ipaddress.ip_address(text.partition("/")[0]):
        raise ValueError(f"a network without host bits: {network} rather than {text}")
    return network


#: The values C{tls_min_version} accepts.
TLS_VERSIONS = ("1.2", "1.3")

_HSTS = re.compile(
    r"^max-age=(\d{1,10})((\s*;\s*(includeSubDomains|preload))*)\s*;?$", re.IGNORECASE
)


def parseTLSVersion(text: str) -> str:
    """
    Parse the oldest TLS version an HTTPS listener accepts: C{1.2} or
    C{1.3} (older ones are not offered at all).
    """
    text = text.strip().lower()
    if text.startswith("tlsv"):
        text = text[4:]
    if text not in TLS_VERSIONS:
        raise ValueError("1.2 or 1.3")
    return text


def parseHSTS(text: str) -> Optional[str]:
    """
    Parse the value of a Strict-Transport-Security header (RFC 6797):
    C{max-age=SECONDS}, then any of C{; includeSubDomains} and
    C{; preload}; C{off} (or nothing) is L{None}.
    """
    text = text.strip()
    if text.lower() in ("", "off", "no"):
        return None
    if _HSTS.match(text) is None:
        raise ValueError("max-age=SECONDS, optionally followed by ; includeSubDomains and ; preload")
    return text


def parseOptionalHostName(text: str) -> Optional[str]:
    """
    Parse a DNS host name (no wildcard), lower-cased; nothing is L{None}.
    """
    name = text.strip().lower().rstrip(".")
    if not name:
        return None
    if name.startswith("*") or not isHostName(name):
        raise ValueError("a host name such as api.internal")
    return name


def parseStatusRanges(text: str) -> tuple[tuple[int, int], ...]:
    """
    Parse status codes and ranges such as C{200-399 404}.

    @return: inclusive C{(low, high)} ranges.
    """
    expected = "status codes or ranges between 100 and 599, such as 200-399 404"
    ranges = []
    for item in splitWords(text):
        low, sep, high = item.partition("-")
        try:
            lo, hi = int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(expected) from None
        if not (100 <= lo <= hi <= 599):
            raise ValueError(expected)
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError(expected)
    return tuple(ranges)


def parseStatusSet(text: str) -> frozenset[int]:
    """
    Parse status codes, ranges and classes such as C{5xx}, C{500 502 503}
    or C{500-504 429}, or C{none} for no status.

    @return: every status named.
    """
    if text.strip().lower() == "none":
        return frozenset()
    codes: set[int] = set()
    ranges = []
    for item in splitWords(text):
        if len(item) == 3 and item[0] in "12345" and item[1:].lower() == "xx":
            first = int(item[0]) * 100
            codes.update(range(first, first + 100))
        else:
            ranges.append(item)
    try:
        if ranges or not codes:
            for low, high in parseStatusRanges(" ".join(ranges)):
                codes.update(range(low, high + 1))
    except ValueError:
        raise ValueError(
            "status codes, ranges or classes between 100 and 599, such as "
            "5xx or 500 502 503, or none"
        ) from None
    return frozenset(codes)


def parsePercent(text: str) -> float:
    """
    Parse a share written as a percentage, C{0%} to C{100%}.

    @return: the share, between 0.0 and 1.0.
    """
    expected = "a percentage between 0% and 100%, such as 20%"
    number, percent, rest = text.strip().partition("%")
    if not percent or rest:
        raise ValueError(expected)
    try:
        value = float(number)
    except ValueError:
        raise ValueError(expected) from None
    if not 0.0 <= value <= 100.0:
        raise ValueError(expected)
    return value / 100.0


def parseOptionalPercent(text: str) -> Optional[float]:
    """
    Parse a percentage (see L{parsePercent}), or C{off} for none.
    """
    if text.strip().lower() == "off":
        return None
    try:
        return parsePercent(text)
    except ValueError as e:
        raise ValueError(f"{e}, or off") from None


def parseServerName(text: str) -> str:
    """
    Check one server name: an exact name or C{*.domain}, lower-cased.

    @return: the name lower-cased, without a trailing dot.
    """
    name = text.lower().rstrip(".")
    if not isHostName(name):
        raise ValueError("host names such as app.example.com or *.example.com")
    return name


#: The status codes a C{redirect:} route may answer with.
REDIRECT_CODES = (301, 302, 307, 308)

_ROUTE_TARGETS = (
    "an upstream name, files:DIR, redirect:CODE:URL or return:CODE[:BODY]"
)
_URL_TEXT = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class RouteConfig:
    """
    One route of a vhost: a path prefix and what answers the paths that
    start with it.

    @ivar prefix: the path prefix, starting with C{/}.
    @ivar kind: C{"upstream"} (forwarded to an upstream), C{"files"}
        (static files of a directory), C{"redirect"} or C{"return"} (a
        fixed answer).
    @ivar target: the upstream's name, the directory's absolute path, the
        absolute URL redirected to, or the body returned (C{""}: none).
    @ivar code: the status of a C{redirect} or C{return}; 0 otherwise.
    @ivar stripPrefix: (C{upstream}) the backend sees the path without
        the prefix.
    @ivar listing: (C{files}) a directory with no index file is listed
        rather than refused.
    """

    prefix: str
    kind: str
    target: str = ""
    code: int = 0
    stripPrefix: bool = False
    listing: bool = False


def _parseFilesRoute(prefix: str, directory: str, flags: Sequence[str]) -> RouteConfig:
    expected = "files:DIR with DIR the absolute path of a directory, such as files:/srv/www"
    if not os.path.isabs(directory):
        raise ValueError(expected)
    if not os.path.isdir(directory):
        raise ValueError(f"{expected}; there is no directory {directory}")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise ValueError(f"{expected}; {directory} cannot be read")
    return RouteConfig(prefix, "files", directory, listing="listing" in flags)


def _parseRedirectRoute(prefix: str, value: str) -> RouteConfig:
    codes = ", ".join(str(c) for c in REDIRECT_CODES[:-1])
    expected = (
        f"redirect:CODE:URL with CODE {codes} or {REDIRECT_CODES[-1]} and URL an "
        "absolute http:// or https:// URL without query or fragment, such as "
        "redirect:301:https://new.example.com/"
    )
    code, _, url = value.partition(":")
    if not code.isdigit() or int(code) not in REDIRECT_CODES:
        raise ValueError(expected)
    parts = urlsplit(url)
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.netloc
        or "?" in url
        or "#" in url
        or not _URL_TEXT.match(url)
    ):
        raise ValueError(expected)
    return RouteConfig(prefix, "redirect", url, int(code))


def _parseReturnRoute(prefix: str, value: str) -> RouteConfig:
    expected = (
        "return:CODE or return:CODE:BODY with CODE between 200 and 599 and "
        "BODY a word of text (none with 204 or 304), such as return:204 or "
        "return:200:ok"
    )
    code, _, body = value.partition(":")
    if not code.isdigit() or not 200 <= int(code) <= 599:
        raise ValueError(expected)
    if body and int(code) in (204, 304):
        raise ValueError(expected)
    return RouteConfig(prefix, "return", body, int(code))


def _parseRoute(words: Sequence[str]) -> RouteConfig:
    """
    Parse one route: its prefix, its target and its flags.
    """
    prefix = words[0]
    if not prefix.startswith("/"):
        raise ValueError(f"a path prefix starting with / followed by {_ROUTE_TARGETS}")
    if len(words) < 2:
        raise ValueError(f"a path prefix followed by {_ROUTE_TARGETS}")
    target, flags = words[1], words[2:]
    kind, sep, value = target.partition(":")
    allowed: tuple[str, ...] = ()
    if not sep:
        if not isName(target):
            raise ValueError(f"a path prefix followed by {_ROUTE_TARGETS}")
        allowed = ("strip_prefix",)
        route = RouteConfig(prefix, "upstream", target, stripPrefix="strip_prefix" in flags)
    elif kind == "files":
        allowed = ("listing",)
        route = _parseFilesRoute(prefix, value, flags)
    elif kind == "redirect":
        route = _parseRedirectRoute(prefix, value)
    elif kind == "return":
        route = _parseReturnRoute(prefix, value)
    else:
        raise ValueError(
            got(f"a path prefix followed by {_ROUTE_TARGETS}", target)
            + didYouMean(kind, ("files", "redirect", "return"), lambda k: repr(k + ":"))
        )
    for flag in flags:
        if flag not in allowed:
            raise ValueError(
                got(
                    "after an upstream name, strip_prefix; after files:DIR, "
                    "listing; after redirect: and return:, nothing",
                    flag,
                )
                + didYouMean(flag, allowed)
            )
    return route


def _splitRoutes(text: str) -> list[list[str]]:
    """
    Split routes into their words: each begins at a word starting with
    C{/}, so that one route per line and several on one line read alike.
    """
    routes: list[list[str]] = []
    for word in splitWords(text):
        if word.startswith("/") or not routes:
            routes.append([word])
        else:
            routes[-1].append(word)
    return routes


def parseRoutes(text: str) -> tuple[RouteConfig, ...]:
    """
    Parse routes: each a path prefix, then its target (an upstream name,
    C{files:DIR}, C{redirect:CODE:URL} or C{return:CODE[:BODY]}), then its
    flags (C{strip_prefix} after an upstream name, C{listing} after
    C{files:DIR}), such as C{/api/ api strip_prefix /ping return:204}.

    The directory of a C{files:} route must exist and be readable: this
    is the one check of the configuration that looks at the file system.

    @raise BadItems: naming every bad route.
    """
    values = []
    bad = []
    for words in _splitRoutes(text):
        try:
            values.append(_parseRoute(words))
        except ValueError as e:
            bad.append((" ".join(words), str(e)))
    if bad:
        raise BadItems(bad)
    return tuple(values)


#: The variables a header value (C{request_headers}, C{response_headers})
#: may use, as C{$name} or C{${name}}.
HEADER_VARIABLES = ("remote_addr", "host", "scheme", "request_id", "server_port")

#: A header name: an RFC 9110 token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

#: What a header value may hold: visible ASCII, space and tab.
_HEADER_VALUE_BAD = re.compile(r"[^\t\x20-\x7e]")

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]*)\}|([A-Za-z0-9_]*))")

#: The characters L{_HEADER_VALUE_BAD} refuses that have a name.
_CONTROL_NAMES = {"\r": "CR", "\n": "LF", "\0": "NUL", "\x7f": "DEL"}

#: The headers lbproxy frames or routes by itself, which a header rule may
#: not touch, with the reason given.
_FRAMING_HEADERS = {
    "connection": "a hop-by-hop header, removed by lbproxy",
    "keep-alive": "a hop-by-hop header, removed by lbproxy",
    "proxy-connection": "a hop-by-hop header, removed by lbproxy",
    "te": "a hop-by-hop header, removed by lbproxy",
    "trailer": "a hop-by-hop header, removed by lbproxy",
    "transfer-encoding": "the body's framing, which lbproxy sets",
    "upgrade": "a hop-by-hop header, removed by lbproxy",
    "content-length": "the body's framing, which lbproxy sets",
}

#: A header rule: C{(verb, name, value)}, the verb C{"set"} or
#: C{"remove"}, the value (empty for C{remove}) as parts that are each
#: C{(False, literal text)} or C{(True, variable name)}.
HeaderRule = Tuple[str, str, Tuple[Tuple[bool, str], ...]]


def parseHeaderValue(text: str) -> tuple[tuple[bool, str], ...]:
    """
    Parse the value of a C{set} header rule: text with variables
    (L{HEADER_VARIABLES}) written C{$name} or C{${name}}; C{$$} is a
    literal C{$}.

    @return: the parts of the value, each C{(False, literal text)} or
        C{(True, variable name)}, literals merged.
    @raise ValueError: for a control character (CR, LF, NUL...), a
        character outside ASCII, or an unknown variable.
    """
    bad = _HEADER_VALUE_BAD.search(text)
    if bad is not None:
        char = bad.group()
        what = _CONTROL_NAMES.get(char) or (
            f"U+{ord(char):04X}" if char > "\x7f" else f"control character 0x{ord(char):02x}"
        )
        raise ValueError(
            f"a value of visible ASCII characters, spaces and tabs, without {what}"
        )
    parts: list[tuple[bool, str]] = []
    literal = ""
    position = 0
    while True:
        dollar = text.find("$", position)
        if dollar < 0:
            break
        literal += text[position:dollar]
        if text[dollar + 1 : dollar + 2] == "$":
            literal += "$"
            position = dollar + 2
            continue
        match = _VARIABLE.match(text, dollar)
        assert match is not None
        braced, bare = match.groups()
        name = braced if braced is not None else bare
        if name not in HEADER_VARIABLES:
            shown = match.group() if match.group() != "$" else text[dollar : dollar + 2]
            known = ", ".join("$" + v for v in HEADER_VARIABLES)
            raise ValueError(
                got(f"a known variable ({known}; $$ for a literal $)", shown)
                + didYouMean(name, HEADER_VARIABLES, lambda v: repr("$" + v))
            )
        if literal:
            parts.append((False, literal))
            literal = ""
        parts.append((True, name))
        position = match.end()
    literal += text[position:]
    if literal:
        parts.append((False, literal))
    return tuple(parts)


def _headerRuleParser(refused: Mapping[str, str]) -> Callable[[str], HeaderRule]:
    """
    Make the parser of one header rule line, C{set NAME VALUE} or
    C{remove NAME}, that refuses the header names of C{refused} (lower-case
    names to the reason).
    """
    expected = "set NAME VALUE or remove NAME"

    def parse(text: str) -> HeaderRule:
        words = text.split(None, 2)
        verb = words[0].lower() if words else ""
        if verb not in ("set", "remove"):
            if not words:
                raise ValueError(expected)
            raise ValueError(got(expected, words[0]) + didYouMean(verb, ("set", "remove")))
        if len(words) < 2:
            raise ValueError(f"a header name after {verb!r} in {expected}")
        name = words[1]
        if _HEADER_NAME.match(name) is None:
            raise ValueError(got("a header name (letters, digits and !#$%&'*+-.^_`|~)", name))
        why = refused.get(name.lower())
        if why is not None:
            raise ValueError(f"a header other than {name} ({why})")
        if verb == "remove":
            if len(words) > 2:
                raise ValueError(got("nothing after the name in remove NAME", words[2]))
            return (verb, name, ())
        if len(words) < 3:
            raise ValueError(f"a value after the name in set NAME VALUE ('remove {name}' removes it)")
        return (verb, name, parseHeaderValue(words[2].strip(" \t")))

    return parse


def _splitRuleLines(text: str) -> list[str]:
    """
    Split header rules, one per line, at line feeds only: a CR or another
    control character inside a line stays there, to be refused with the
    line's value.
    """
    return [line.strip(" \t") for line in text.split("\n") if line.strip(" \t")]


#: Parse C{request_headers}: the rules for the headers sent to a backend.
parseRequestHeaderRules = listOf(
    _headerRuleParser(
        {
            **_FRAMING_HEADERS,
            "host": "set by preserve_host: yes sends the client's, no the backend's host:port",
        }
    ),
    _splitRuleLines,
)

#: Parse C{response_headers}: the rules for the headers sent to a client.
parseResponseHeaderRules = listOf(_headerRuleParser(_FRAMING_HEADERS), _splitRuleLines)
