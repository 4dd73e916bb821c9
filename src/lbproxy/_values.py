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

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar
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


def _wholeNumberParser(low: int) -> Callable[[str], int]:
    """
    Make a parser of decimal whole numbers of at least C{low}.
    """
    what = f"a whole number of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(what) from None
        if value < low:
            raise ValueError(what)
        return value

    return parse


#: Parse a whole number of at least 1.
parsePositiveInt = _wholeNumberParser(1)

#: Parse a whole number of at least 0.
parseNonNegativeInt = _wholeNumberParser(0)


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
    @raise ValueError: when no endpoint parser accepts it.
    """
    # Imported here: twistd imports the balancers (and so this module)
    # while it scans for plugins, before it installs the reactor.
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(_NoReactor(), text)
    except Exception as e:
        raise ValueError(
            f"a Twisted server endpoint description such as tcp:8080 ({e})"
        ) from None
    return text


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
        raise ValueError(f"a path prefix followed by {_ROUTE_TARGETS}")
    for flag in flags:
        if flag not in allowed:
            raise ValueError(
                "after an upstream name, strip_prefix; after files:DIR, "
                "listing; after redirect: and return:, nothing"
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
