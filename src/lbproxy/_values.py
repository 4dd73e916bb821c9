# -*- test-case-name: tests.test_config -*-
"""
The kinds of value site.ini holds: durations, sizes, booleans, whole
numbers, lists, endpoint descriptions, host names, status ranges.

Each parser takes the raw text and returns the value, or raises
L{ValueError} whose message says what was expected (the configuration
reader puts it after C{expected} in its error).

This module imports nothing of lbproxy, so that both the configuration
reader (L{lbproxy._config}) and the balancers (whose C{balancer.*} options
share the syntax of durations) can import it without importing each other.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence, TypeVar

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


def parseRoutes(text: str) -> tuple[tuple[str, str], ...]:
    """
    Parse pairs of a path prefix and an upstream name, such as
    C{/api/ api /static/ static}.
    """
    words = splitWords(text)
    expected = "pairs of a path prefix starting with / and an upstream name"
    if len(words) % 2:
        raise ValueError(expected)
    pairs = tuple(zip(words[::2], words[1::2]))
    for prefix, upstream in pairs:
        if not prefix.startswith("/") or not isName(upstream):
            raise ValueError(expected)
    return pairs
