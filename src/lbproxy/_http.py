# -*- test-case-name: tests.test_http -*-
"""
The HTTP/1.1 grammar that both sides of the proxy check messages against.

The server side (requests from clients), the client side (responses from
backends) and the routing of absolute-form targets each used to write
these expressions and sets themselves, two or three times over, with small
differences between the copies.  They live here once; every module that
parses HTTP imports them.

Where RFC 9110 and the oldest supported Twisted (24.7) disagree, the
stricter reading wins: lbproxy must never accept a message that Twisted
refuses, because the same bytes may reach a Twisted server behind it, and
because the tests compare lbproxy's parsers with Twisted's.
"""

from __future__ import annotations

import re

#: The source (bytes) of a regular expression matching a token (RFC 9110
#: 5.6.2): a method, a header name, a transfer coding.  It is the RFC's
#: token less C{&}, which Twisted 24.7 does not accept in a header name
#: (a name with it is refused, never read differently).  Source, not a
#: compiled expression, so that larger expressions can be built from it.
TOKEN = rb"[!#$%'*+\-.^_`|~0-9A-Za-z]+"

#: L{TOKEN} compiled to match a whole string: C{TOKEN_RE.match(b)} (or
#: C{fullmatch}) is not L{None} exactly when C{b} is a token.
TOKEN_RE = re.compile(rb"\A" + TOKEN + rb"\Z")

#: The source (bytes) of a regular expression matching a field value
#: (RFC 9110 5.5): any byte but the control characters, HTAB excepted
#: (so obs-text, C{0x80}-C{0xff}, is allowed, and CR, LF and NUL are not).
#: Leading and trailing whitespace is matched too; callers strip it.
FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"

#: The control characters that may not appear in a field value: all of
#: C{0x00}-C{0x1f} and C{0x7f} but HTAB.  NUL, CR and LF are the ones that
#: split messages.  Meant as the C{delete} argument of C{bytes.translate}:
#: C{value.translate(None, CTL) != value} says that C{value} has one.
CTL = bytes(range(0, 9)) + bytes(range(10, 32)) + b"\x7f"

#: The status codes whose responses never have a body, whatever their
#: headers say (RFC 9112 6.3; 1xx are handled apart, as interim).
NO_BODY_CODES = frozenset([204, 304])

#: The start of an absolute-form request target (RFC 9112 3.2.2) whose
#: scheme is C{http} or C{https} (in any case): the match is the scheme
#: and the authority, and what follows it is the path and query, all that
#: lbproxy uses of such a target.
ABSOLUTE = re.compile(rb"\A[Hh][Tt][Tt][Pp][Ss]?://[^/?#]*")

#: The start of an absolute-form request target of any scheme: what a
#: plain L{twisted.web.server.Site} may pass on, reduced the same way.
ANY_ABSOLUTE = re.compile(rb"\A[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")

#: A request target as lbproxy accepts it: printable ASCII, no space (the
#: regex source, for patterns that embed it).
TARGET = rb"[\x21-\x7e]+"

#: L{TARGET} compiled to match a whole string.
TARGET_RE = re.compile(rb"\A" + TARGET + rb"\Z")

#: A C{Host} value (or an HTTP/2 C{:authority}): a DNS name (letters,
#: digits, C{-}, C{.}, C{_}), an IPv4 address or a bracketed IPv6 address,
#: with an optional port.  Stricter than RFC 3986's reg-name, which also
#: allows sub-delims and %-escapes that no real host name needs.
HOST = re.compile(rb"\A(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?\Z")

#: A block of header lines separated by CR LF (with no CR LF after the
#: last), every one a L{TOKEN} name directly followed by its colon (so
#: no whitespace before the colon and no obs-fold) and a L{FIELD_VALUE}.
#: Use C{FIELDS.fullmatch(block)} (or C{fullmatch(buffer, start, end)}): a
#: block that matches needs none of the refusals of a line-by-line parse,
#: and its lines can be split on CR LF and partitioned on the first colon.
FIELDS = re.compile(
    rb"(?:" + TOKEN + rb":" + FIELD_VALUE + rb")"
    rb"(?:\r\n" + TOKEN + rb":" + FIELD_VALUE + rb")*"
)
