"""
Tests for L{lbproxy._http}: the HTTP grammar shared by the server and the
client side.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy._http import (
    ABSOLUTE,
    CTL,
    FIELD_VALUE,
    FIELDS,
    NO_BODY_CODES,
    TOKEN,
    TOKEN_RE,
)

#: RFC 9110 5.6.2's tchar, the characters of a token:
#:
#:     tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#:             "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = frozenset(
    b"!#$%&'*+-.^_`|~"
    b"0123456789"
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class TokenTests(SynchronousTestCase):
    def test_tcharLessAmpersand(self):
        """
        Of all one-byte strings, L{TOKEN_RE} matches exactly RFC 9110's
        tchar, but C{&}, which Twisted 24.7's own token check leaves out
        (so it refuses a header name with it).
        """
        for byte in range(256):
            b = bytes([byte])
            self.assertEqual(TOKEN_RE.match(b) is not None, byte in _TCHAR and b != b"&", b)

    def test_whole(self):
        """
        L{TOKEN_RE} matches a whole string only: not an empty one, not one
        with a token inside, not one with a newline after it.
        """
        self.assertIsNotNone(TOKEN_RE.match(b"X-Forwarded-For"))
        self.assertIsNotNone(TOKEN_RE.fullmatch(b"!#$%'*+-.^_`|~09azAZ"))
        for bad in [b"", b"a b", b"a:", b" a", b"a\n", b"a&b", b"\xe9"]:
            self.assertIsNone(TOKEN_RE.match(bad), bad)

    def test_source(self):
        """
        L{TOKEN} is the source of an expression, for larger ones.
        """
        self.assertIsInstance(TOKEN, bytes)
        self.assertIsInstance(FIELD_VALUE, bytes)


class ControlTests(SynchronousTestCase):
    def test_ctl(self):
        """
        L{CTL} is the control characters but HTAB, each once.
        """
        self.assertEqual(
            sorted(CTL), [b for b in range(256) if (b < 32 or b == 127) and b != 9]
        )

    def test_translateCheck(self):
        """
        Deleting L{CTL} changes a value exactly when it has a control
        character other than HTAB.
        """
        for value, bad in [
            (b"a\tb \xe9~", False),
            (b"a\x00b", True),
            (b"a\rb", True),
            (b"a\nb", True),
            (b"\x7f", True),
        ]:
            self.assertEqual(value.translate(None, CTL) != value, bad, value)


class AbsoluteTests(SynchronousTestCase):
    def test_httpSchemes(self):
        """
        L{ABSOLUTE} matches the scheme and authority of an http or https
        target, whatever the case of the scheme.
        """
        for target, prefix in [
            (b"http://a.example/p?q", b"http://a.example"),
            (b"HTTPS://a.example:8443?q", b"HTTPS://a.example:8443"),
            (b"hTtP://", b"hTtP://"),
        ]:
            match = ABSOLUTE.match(target)
            assert match is not None, target
            self.assertEqual(match.group(), prefix)

    def test_notAbsolute(self):
        """
        Origin-form targets and other schemes do not match.
        """
        for target in [b"/http://a/", b"ftp://a/", b"http:/a", b"*", b"httpx://a/"]:
            self.assertIsNone(ABSOLUTE.match(target), target)


class FieldsTests(SynchronousTestCase):
    def test_valid(self):
        """
        CR LF separated lines, each a token directly followed by a colon
        and a value of HTAB, visible ASCII, space and obs-text, match as a
        whole.
        """
        for block in [
            b"A:",
            b"Host: a\r\nX-A:\t v \xe9\r\nB:c",
        ]:
            self.assertIsNotNone(FIELDS.fullmatch(block), block)

    def test_invalid(self):
        """
        Whitespace before a colon, folding, bare LF or CR, NUL, DEL, C{&}
        in a name, an empty name and a trailing CR LF do not match.
        """
        for block in [
            b"A : b",
            b"A: b\r\n c",
            b"A: b\nB: c",
            b"A: b\rB: c",
            b"A: b\x00",
            b"A: \x7f",
            b"A&: b",
            b": b",
            b"A: b\r\n",
            b"",
        ]:
            self.assertIsNone(FIELDS.fullmatch(block), block)

    def test_range(self):
        """
        L{FIELDS} can check part of a buffer.
        """
        buffer = b"GET / HTTP/1.1\r\nA: b\r\n\r\n"
        self.assertIsNotNone(FIELDS.fullmatch(buffer, 16, len(buffer) - 4))


class NoBodyTests(SynchronousTestCase):
    def test_codes(self):
        """
        204 and 304 responses have no body.
        """
        self.assertEqual(NO_BODY_CODES, frozenset([204, 304]))
