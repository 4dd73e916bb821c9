# -*- test-case-name: tests.test_proxy -*-
"""
The short pages lbproxy answers with when it cannot forward a request.
Nothing internal (no traceback, no backend address) ever goes in them.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import RESPONSES

_TEMPLATE = (
    "<html><head><title>{code} {phrase}</title></head>"
    "<body><h1>{code} {phrase}</h1><p>{detail}</p><hr>lbproxy</body></html>\n"
)

#: The reason phrases of RFC 9110 for the codes lbproxy answers with itself.
PHRASES = {
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_DETAILS = {
    400: "The request could not be understood.",
    404: "No site is configured for this host name or path.",
    413: "The request body is larger than this server accepts.",
    429: "Too many requests from this client; try again later.",
    431: "The request head is larger than this server accepts.",
    502: "No backend server could take the request.",
    503: "The service is not available right now.",
    504: "The backend server did not answer in time.",
}


def phrase(code: int) -> bytes:
    """
    The reason phrase lbproxy sends with C{code}: RFC 9110's for its own
    codes, else Twisted's.
    """
    text = PHRASES.get(code)
    if text is not None:
        return text.encode("ascii")
    return RESPONSES.get(code, b"Error")


def errorBody(code: int) -> bytes:
    """
    The HTML body of the error page for C{code}.
    """
    return _TEMPLATE.format(
        code=code, phrase=phrase(code).decode("ascii"), detail=_DETAILS.get(code, "")
    ).encode("ascii")


def renderError(request: Any, code: int) -> bytes:
    """
    Set up C{request} to answer with the error page for C{code}, and return
    its body (for C{render} to return, or to C{write}).
    """
    body = errorBody(code)
    request.setResponseCode(code, PHRASES.get(code, "Error").encode("ascii"))
    for name in (b"content-encoding", b"set-cookie", b"last-modified", b"etag"):
        request.responseHeaders.removeHeader(name)
    request.cookies = []
    request.responseHeaders.setRawHeaders(b"content-type", [b"text/html; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    return body


def writeError(request: Any, code: int) -> None:
    """
    Answer C{request} with the error page for C{code} and finish it.
    """
    body = renderError(request, code)
    request.write(body)
    request.finish()
