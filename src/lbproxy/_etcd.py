# -*- test-case-name: tests.test_etcd -*-
"""
A small etcd v3 client, over the HTTP/JSON gateway that every etcd 3.4+
member serves next to gRPC (C{/v3/kv/range}, C{/v3/watch}), through treq:
enough to read every key under a prefix and then follow the prefix's
changes.

It is written here rather than taken from a library because lbproxy needs
only these two calls, and the gateway makes them plain HTTP POSTs of JSON
(keys and values in base64, 64-bit numbers as strings); a watch is one POST
whose response stays open and carries one JSON object per line.

L{PrefixMirror} keeps a copy of one prefix up to date with these: a full
read, then a watch from the revision after it, resumed from the last
revision seen when it is lost (each endpoint in turn, with a backoff), and
a full read again when etcd has compacted the revisions it would need.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from lbproxy._connections import QuietFactory
from lbproxy._tls import trustRootFor

#: The longest line of a watch stream (one JSON response) accepted; etcd
#: caps a request at 1.5 MiB by default, and a watch response batches
#: events, so this leaves room while bounding the buffer.
MAX_LINE = 16 * 1024 * 1024

#: The longest body of a range response accepted.
MAX_BODY = 64 * 1024 * 1024

#: The longest answer to an authenticate request (or to a refused call)
#: read.
MAX_ANSWER = 64 * 1024


class EtcdError(Exception):
    """
    An etcd endpoint could not be reached, answered with an error, or
    answered with something that is not what etcd sends.
    """


class Compacted(EtcdError):
    """
    etcd no longer has the revisions a watch asked for: they were
    compacted.  Only a full read can bring a copy up to date again.

    @ivar revision: the oldest revision etcd still has.
    """

    def __init__(self, revision: int) -> None:
        super().__init__(f"revisions before {revision} were compacted")
        self.revision = revision


class Unauthenticated(EtcdError):
    """
    etcd refused the token of a watch (it expired, or the member that gave
    it restarted): the gateway answers a watch with a stream that says so,
    where it answers other calls with HTTP 401.
    """


@dataclass(frozen=True)
class Event:
    """
    One change of one key, from a watch.

    @ivar key: the key.
    @ivar value: its new value, or L{None} when the key was deleted.
    @ivar revision: the revision of the change (the key's C{mod_revision}).
    """

    key: bytes
    value: Optional[bytes]
    revision: int


def prefixEnd(prefix: bytes) -> bytes:
    """
    The C{range_end} that, with C{key = prefix}, asks etcd for every key
    starting with C{prefix}: the prefix with its last byte plus one
    (trailing C{0xff} bytes dropped first), or C{b"\\0"} (every key) when
    the prefix is empty or all C{0xff}.
    """
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode(text: Any) -> bytes:
    if not isinstance(text, str):
        raise EtcdError(f"expected base64 text, got {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise EtcdError(f"expected base64 text, got {text!r}") from None


def _number(value: Any) -> int:
    """
    An int64 of the gateway's JSON, which writes them as strings and leaves
    out those that are 0.
    """
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise EtcdError(f"expected a number, got {value!r}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EtcdError(f"expected a JSON object for {what}, got {value!r}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    """
    A JSON list of the gateway's, which leaves out those that are empty.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise EtcdError(f"expected a JSON list for {what}, got {value!r}")
    return value


def _json(data: bytes, what: str) -> Any:
    """
    The JSON of C{data}, or L{EtcdError} saying that C{what} is not JSON
    (nested deeper than the parser goes included).
    """
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise EtcdError(f"{what} is not JSON: {e}") from None


def parseRange(body: bytes) -> tuple[int, dict[bytes, bytes]]:
    """
    Read the answer of C{/v3/kv/range}.

    @return: the store's revision and every key with its value.
    @raise EtcdError: when the body is not a range response.
    """
    answer = _object(_json(body, "the range response"), "the range response")
    if "error" in answer or "header" not in answer:
        raise EtcdError(f"etcd answered the range with {answer!r}")
    revision = _number(_object(answer["header"], "header").get("revision"))
    values = {}
    for kv in _list(answer.get("kvs"), "the keys"):
        kv = _object(kv, "a key")
        values[_decode(kv.get("key"))] = _decode(kv.get("value", ""))
    if _number(answer.get("more")) or answer.get("more") is True:
        raise EtcdError("etcd left keys out of the range response (more = true)")
    return revision, values


@dataclass(frozen=True)
class WatchResponse:
    """
    One response of a watch stream.

    @ivar created: whether this is the answer to the watch's creation.
    @ivar revision: the store's revision in the response's header.
    @ivar events: the changes it carries, in order.
    """

    created: bool
    revision: int
    events: tuple[Event, ...]


def parseWatchResponse(line: bytes) -> WatchResponse:
    """
    Read one line of a C{/v3/watch} stream.

    @raise Compacted: when the watch was cancelled because its start
        revision was compacted.
    @raise EtcdError: when the line is an error, a cancellation, or not a
        watch response.
    """
    message = _object(_json(line, "a watch message"), "a watch message")
    if "result" not in message:
        raise EtcdError(f"etcd ended the watch with {message!r}")
    result = _object(message["result"], "the watch result")
    compacted = _number(result.get("compact_revision"))
    if compacted:
        raise Compacted(compacted)
    if result.get("canceled"):
        reason = str(result.get("cancel_reason", "no reason"))
        error = Unauthenticated if "code = Unauthenticated" in reason else EtcdError
        raise error(f"etcd cancelled the watch: {reason}")
    header = _object(result.get("header", {}), "header")
    events = []
    for event in _list(result.get("events"), "the events"):
        event = _object(event, "an event")
        kv = _object(event.get("kv"), "an event's key")
        kind = event.get("type", "PUT")
        if kind not in ("PUT", "DELETE"):
            raise EtcdError(f"unknown event type {kind!r}")
        events.append(
            Event(
                _decode(kv.get("key")),
                _decode(kv.get("value", "")) if kind == "PUT" else None,
                _number(kv.get("mod_revision")),
            )
        )
    return WatchResponse(
        bool(result.get("created")), _number(header.get("revision")), tuple(events)
    )


class _Body(Protocol):
    """
    Reads a response body as it arrives, for L{EtcdClient}.

    treq's C{collect} does the same, but its L{Deferred} cannot be
    cancelled, and a watch's body never ends on its own: this one stops
    the transport when its L{Deferred} is cancelled.

    @ivar received: called with each piece of the body.
    @ivar finished: fires when the body ends (with L{None}) or breaks.
    """

    def __init__(self, received: Callable[[bytes], None]) -> None:
        self.received = received
        self.finished: Deferred[None] = Deferred(self._cancelBody)

    def _cancelBody(self, d: Deferred[None]) -> None:
        self._stopBody()

    def _stopBody(self) -> None:
        # An IResponse delivers its body with an IPushProducer as the
        # transport, whose stopProducing closes the connection.
        producer = cast(Optional[IPushProducer], self.transport)
        if producer is not None:
            producer.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        try:
            self.received(data)
        except Exception:
            self.finished.errback(Failure())
            self._stopBody()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


class LineSplitter:
    """
    Cuts a stream of bytes into lines, whatever the pieces it comes in.

    @ivar maxLine: the longest line accepted, in bytes.
    """

    def __init__(self, maxLine: int = MAX_LINE) -> None:
        self.maxLine = maxLine
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data}; return the complete lines it finished, without their
        line ends, blank ones left out.

        @raise EtcdError: when a line grows longer than L{maxLine}.
        """
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > self.maxLine:
            raise EtcdError(f"a watch message is longer than {self.maxLine} bytes")
        return [line for line in (line.strip() for line in lines) if line]


class EtcdClient:
    """
    Reaches one etcd cluster through the JSON gateway of its members,
    trying each endpoint in turn.

    The client remembers the endpoint that last answered and starts there;
    a failure moves it on to the next one.

    @ivar endpoints: the base URLs (C{http://host:port}) of the members.
    @ivar timeout: seconds a call may take to be answered (for a watch:
        until etcd says it is created).
    """

    _log = Logger()

    def __init__(
        self,
        endpoints: Sequence[str],
        clock: Any,
        http: Any = None,
        timeout: float = 5.0,
        tls: Optional[IPolicyForHTTPS] = None,
        credentials: Optional[tuple[str, str]] = None,
    ) -> None:
        """
        @param endpoints: the base URLs of the members, at least one.
        @param clock: the L{IReactorTime} for the timeouts.
        @param http: a L{treq.client.HTTPClient} (or treq's
            L{treq.testing.StubTreq}); by default one on the global reactor
            that keeps no connection open between calls, reaching
            C{https://} endpoints with C{tls}.
        @param tls: how to reach C{https://} endpoints (L{EtcdTLS}); by
            default, the platform's authorities and no client certificate.
        @param credentials: the user name and password to authenticate
            with, when etcd has auth enabled.
        """
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        if http is None:
            from treq.client import HTTPClient
            from twisted.internet import reactor
            from twisted.web.client import Agent, HTTPConnectionPool

            http = HTTPClient(
                Agent.usingEndpointFactory(
                    reactor,
                    _QuietEndpoints(reactor, tls or EtcdTLS(None)),
                    pool=HTTPConnectionPool(reactor, persistent=False),
                )
            )
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._clock = clock
        self._http = http
        self._current = 0
        self._credentials = credentials
        #: The token etcd gave for C{credentials}, until it refuses it.
        self._token: Optional[bytes] = None

    @property
    def endpoint(self) -> str:
        """
        The endpoint the next call goes to first.
        """
        return self.endpoints[self._current]

    def nextEndpoint(self) -> None:
        """
        Move on to the next endpoint, after a failure of the current one.
        """
        self._current = (self._current + 1) % len(self.endpoints)

    def _post(self, path: str, body: dict[str, Any]) -> Deferred[Any]:
        """
        POST C{body} as JSON to the current endpoint (with the token, when
        the client has credentials); fire with the response once its head
        arrives, or fail after L{timeout}.
        """
        endpoint = self.endpoint
        if self._credentials is None:
            d = self._send(endpoint + path, body, None)
        else:
            d = Deferred.fromCoroutine(self._authorized(endpoint, path, body))
        return self._bounded(d, f"{endpoint}{path}")

    def _send(self, url: str, body: dict[str, Any], token: Optional[bytes]) -> Deferred[Any]:
        headers = {b"Content-Type": [b"application/json"]}
        if token is not None:
            headers[b"Authorization"] = [token]
        d: Deferred[Any] = self._http.post(
            url, data=json.dumps(body).encode("utf-8"), headers=headers, unbuffered=True
        )
        return d

    async def _authorized(self, endpoint: str, path: str, body: dict[str, Any]) -> Any:
        """
        POST with the token, authenticating first when there is none, and
        once more when etcd refuses it (HTTP 401: a token expires, and a
        restarted member forgets the tokens it gave).
        """
        for last in (False, True):
            if self._token is None:
                self._token = await self._authenticate(endpoint)
            token = self._token
            response = await self._send(endpoint + path, body, token)
            if response.code != 401 or last:
                return response
            await self._readAnswer(response, endpoint)
            if self._token == token:
                self._token = None
        raise AssertionError("unreachable")

    async def _authenticate(self, endpoint: str) -> bytes:
        """
        Ask C{endpoint} for a token for the client's credentials.

        @raise EtcdError: naming the user (never the password) and what
            etcd said, when it refuses them.
        """
        assert self._credentials is not None
        name, password = self._credentials
        response = await self._send(
            endpoint + "/v3/auth/authenticate", {"name": name, "password": password}, None
        )
        code, answer = await self._readAnswer(response, endpoint)
        if code != 200:
            raise EtcdError(
                f"etcd refused to authenticate user {name!r}: "
                f"HTTP {code}{_errorMessage(answer)}"
            )
        token = _object(answer, "an authenticate response").get("token")
        if not isinstance(token, str) or not token:
            raise EtcdError(f"{endpoint} answered authenticate without a token")
        return token.encode("utf-8")

    async def _readAnswer(self, response: Any, endpoint: str) -> tuple[int, Any]:
        """
        Read a short JSON answer whatever its status.

        @return: the status, and the parsed JSON (L{None} when the body
            is not JSON).
        """
        content = await self._readAll(response, MAX_ANSWER, endpoint)
        try:
            return response.code, json.loads(content)
        except (ValueError, RecursionError):
            return response.code, None

    def _readAll(self, response: Any, limit: int, endpoint: str) -> Deferred[bytes]:
        """
        Read the whole body of C{response}, failing with L{EtcdError} past
        C{limit} bytes or after L{timeout}.
        """
        pieces: list[bytes] = []
        size = [0]

        def received(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > limit:
                raise EtcdError(f"a response longer than {limit} bytes")
            pieces.append(data)

        body = _Body(received)
        response.deliverBody(body)
        return self._bounded(body.finished, endpoint).addCallback(
            lambda _: b"".join(pieces)
        )

    def _bounded(self, d: Deferred[Any], what: str) -> Deferred[Any]:
        """
        Cancel C{d} unless it fires within L{timeout}, failing it with an
        L{EtcdError} that says so.
        """
        timedOut = []

        def expire() -> None:
            timedOut.append(True)
            d.cancel()

        call = self._clock.callLater(self.timeout, expire)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            if timedOut and isinstance(result, Failure) and result.check(CancelledError):
                raise EtcdError(f"{what} did not answer within {self.timeout:g}s")
            return result

        return d.addBoth(done)

    def range(self, prefix: bytes) -> Deferred[tuple[int, dict[bytes, bytes]]]:
        """
        Read every key under C{prefix}, trying each endpoint once, starting
        with the current one.

        @return: a L{Deferred} firing with the store's revision and the
            keys with their values, or failing with L{EtcdError} naming
            what each endpoint did.
        """
        request = {"key": _encode(prefix), "range_end": _encode(prefixEnd(prefix))}
        failures: list[str] = []
        current: list[Deferred[Any]] = []
        result: Deferred[tuple[int, dict[bytes, bytes]]] = Deferred(
            lambda d: current[0].cancel()
        )

        def attempt() -> None:
            endpoint = self.endpoint
            d = self._post("/v3/kv/range", request)
            current[:] = [d]
            d.addCallback(self._readBody, endpoint)
            d.addCallback(parseRange)
            d.addCallbacks(answered, failed, errbackArgs=(endpoint,))

        def answered(answer: tuple[int, dict[bytes, bytes]]) -> None:
            if not result.called:
                result.callback(answer)

        def failed(failure: Failure, endpoint: str) -> None:
            if result.called:
                return
            if failure.check(CancelledError):
                result.errback(failure)
                return
            failures.append(f"{endpoint}: {describe(failure)}")
            self.nextEndpoint()
            if len(failures) < len(self.endpoints):
                attempt()
            else:
                result.errback(EtcdError("; ".join(failures)))

        attempt()
        return result

    async def _refused(self, response: Any, endpoint: str) -> Any:
        """
        Raise the L{EtcdError} of a call answered with another status than
        200, with what etcd said (C{"etcdserver: user name is empty"}).
        """
        code, answer = await self._readAnswer(response, endpoint)
        raise EtcdError(f"HTTP {code} from {endpoint}{_errorMessage(answer)}")

    def _readBody(self, response: Any, endpoint: str) -> Deferred[bytes]:
        if response.code != 200:
            return Deferred.fromCoroutine(self._refused(response, endpoint))
        return self._readAll(response, MAX_BODY, endpoint)

    def watch(
        self,
        prefix: bytes,
        startRevision: int,
        received: Callable[[WatchResponse], None],
    ) -> Deferred[None]:
        """
        Watch every key under C{prefix} from C{startRevision} on, at the
        current endpoint, with progress notifications.

        @param received: called with each L{WatchResponse}, in order: the
            creation first, then the changes.
        @return: a L{Deferred} that fails when the watch ends (it has no
            other end): with L{Compacted}, L{EtcdError}, or why the
            connection broke.  Cancel it to stop watching.
        """
        request = {
            "create_request": {
                "key": _encode(prefix),
                "range_end": _encode(prefixEnd(prefix)),
                "start_revision": str(startRevision),
                "progress_notify": True,
            }
        }
        endpoint = self.endpoint
        lines = LineSplitter()
        answered = self._post("/v3/watch", request)
        current: list[Deferred[Any]] = [answered]
        created: list[bool] = []

        def receivedData(data: bytes) -> None:
            for line in lines.feed(data):
                response = parseWatchResponse(line)
                if response.created:
                    if created:
                        raise EtcdError(f"{endpoint} created the watch twice")
                    created.append(True)
                elif not created:
                    raise EtcdError(f"{endpoint} sent changes before creating the watch")
                received(response)

        def stream(response: Any) -> Deferred[None]:
            if response.code != 200:
                refused: Deferred[None] = Deferred.fromCoroutine(
                    self._refused(response, endpoint)
                )
                return refused
            body = _Body(receivedData)
            response.deliverBody(body)
            current[0] = body.finished
            return body.finished

        def ended(result: Any) -> None:
            if isinstance(result, Failure):
                result.raiseException()
            raise EtcdError(f"{endpoint} ended the watch stream")

        def fail(failure: Failure) -> None:
            if failure.check(Unauthenticated):
                # The next call takes a new token.
                self._token = None
            if not watching.called:
                watching.errback(failure)

        watching: Deferred[None] = Deferred(lambda d: current[0].cancel())
        answered.addCallback(stream).addBoth(ended).addErrback(fail)
        return watching


def _errorMessage(answer: Any) -> str:
    """
    What an etcd error answer says (C{{"error": ..., "message": ...}}),
    after a colon; nothing when it says nothing.
    """
    if isinstance(answer, dict):
        message = answer.get("message") or answer.get("error")
        if isinstance(message, str) and message:
            return f": {message[:200]}"
    return ""


@implementer(IPolicyForHTTPS)
class EtcdTLS:
    """
    How L{EtcdClient} reaches C{https://} endpoints: their certificates
    checked against C{etcd_ca} (or the platform's authorities) and the
    endpoint's host, and a client certificate shown when configured (etcd
    with C{--client-cert-auth} asks for one).

    Twisted's L{BrowserLikePolicyForHTTPS} takes only a trust root; this
    adds the client certificate, through the same public
    L{optionsForClientTLS}.
    """

    def __init__(
        self,
        caFile: Optional[str],
        clientCertificate: Any = None,
        intermediates: Sequence[Any] = (),
    ) -> None:
        """
        @param caFile: a PEM file of trusted authorities, or L{None} for
            the platform's.
        @param clientCertificate: a L{PrivateCertificate}, or L{None}.
        @param intermediates: the certificates (pyOpenSSL C{X509}) sent
            after the client certificate, up to what etcd trusts.
        """
        self._caFile = caFile
        self._clientCertificate = clientCertificate
        self._extra = {"extraCertChain": list(intermediates)} if intermediates else None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=trustRootFor(self._caFile),
            clientCertificate=self._clientCertificate,
            extraCertificateOptions=dict(self._extra) if self._extra else None,
        )


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """
    An endpoint that gives the protocol factory of its caller to the
    endpoint it wraps inside a L{QuietFactory}.

    Over TLS, Twisted's wrapping factory starts the factory it wraps,
    and the L{Agent}'s connection factory then logs "Starting factory" and
    "Stopping factory" (with its repr) for every call to etcd.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        return self._endpoint.connect(QuietFactory(protocolFactory.buildProtocol))


@implementer(IAgentEndpointFactory)
class _QuietEndpoints:
    """
    The endpoints of L{EtcdClient}'s L{Agent}: TCP to the URL's host, with
    TLS for C{https://} as C{tls} says, through L{_QuietEndpoint}.
    """

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS) -> None:
        self._reactor = reactor
        self._tls = tls

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self._reactor, uri.host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return _QuietEndpoint(endpoint)


def describe(failure: Failure) -> str:
    """
    One line saying why an etcd call failed, for the logs.
    """
    value = failure.value
    if isinstance(value, EtcdError):
        return str(value)
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(describe(reason) for reason in reasons)
    return f"{type(value).__name__}: {value}".rstrip(": ")


class PrefixMirror:
    """
    A copy of every key under one etcd prefix, kept up to date: a full
    read, then a watch from the revision after it; each response of the
    watch is applied in order, and C{changed} is told the whole new copy.

    A watch that is lost (the member went away, the stream broke, nothing
    came for L{idleTimeout}) is started again on the next endpoint from the
    revision after the last one applied, so no change is missed and none
    is applied twice; after every endpoint failed in a row, the next try
    waits, doubling from L{initialDelay} up to L{maxDelay}.  A watch that
    etcd created and that ended within L{maxDelay} counts as a failure in
    that row (a member, or a proxy in front of it, that accepts watches
    and drops them at once is not asked again and again without a
    pause); one that lasted longer starts a new row.  When etcd
    answers that those revisions were compacted, the mirror reads the
    whole prefix again.  A read that fails is retried the same way.

    @ivar values: every key under the prefix with its value, as last read.
    @ivar revision: the revision the copy is at: the last change applied,
        or the store's revision of the last full read; 0 before the first.
    @ivar idleTimeout: seconds a watch may send nothing before it is taken
        as lost; the mirror asks for progress notifications, which etcd
        sends to an idle watch every 10 minutes by default
        (C{--experimental-watch-progress-notify-interval}).
    @ivar watching: whether a watch is open (etcd said it was created, and
        it has not failed since).
    @ivar reads: full reads of the prefix done, in total.
    @ivar events: PUT and DELETE events applied, in total.
    @ivar failures: reads and watches that failed, in total (each is
        tried again).
    @ivar error: why the latest read or watch failed, or L{None} once one
        works again.
    """

    _log = Logger()

    initialDelay = 0.1
    maxDelay = 10.0
    idleTimeout = 660.0

    def __init__(
        self,
        client: EtcdClient,
        prefix: bytes,
        changed: Callable[[dict[bytes, bytes], str], None],
        clock: Any,
    ) -> None:
        """
        @param changed: called with the new copy and what changed, in
            words, after each full read and each watch response that
            changed a key.
        """
        self.client = client
        self.prefix = prefix
        self.changed = changed
        self.values: dict[bytes, bytes] = {}
        self.revision = 0
        self._clock = clock
        self._running = False
        self._pending: Optional[Deferred[Any]] = None
        self._retry: Optional[IDelayedCall] = None
        self._idle: Optional[IDelayedCall] = None
        self._failuresInRow = 0
        #: When etcd said the open watch was created (L{None} when none is).
        self._createdAt: Optional[float] = None
        #: Whether the watch in flight is being cancelled for having sent
        #: nothing for L{idleTimeout}.
        self._silent = False
        self.watching = False
        self.reads = 0
        self.events = 0
        self.failures = 0
        self.error: Optional[str] = None

    def start(self) -> None:
        """
        Read the prefix, then follow it until L{stop}.
        """
        self._running = True
        self._read()

    def stop(self) -> Deferred[None]:
        """
        Stop following the prefix: the call in flight is cancelled and no
        retry is made.
        """
        self._running = False
        self.watching = False
        for call in (self._retry, self._idle):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._idle = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        return succeed(None)

    def _read(self) -> None:
        self._retry = None
        d = self._pending = self.client.range(self.prefix)
        d.addCallbacks(self._readDone, self._failed, errbackArgs=("read",))

    def _readDone(self, result: tuple[int, dict[bytes, bytes]]) -> None:
        self._pending = None
        revision, values = result
        before = self.values
        self.values = dict(values)
        self.revision = revision
        self._failuresInRow = 0
        self.reads += 1
        self.error = None
        changes = _summary(before, self.values)
        self._log.info(
            "etcd {prefix}: read {count} key(s) at revision {revision} from "
            "{endpoint}{changes}",
            prefix=self.prefix.decode("utf-8", "replace"),
            count=len(values),
            revision=revision,
            endpoint=self.client.endpoint,
            changes=f" ({changes})" if changes else "",
        )
        self._tell(f"etcd read at revision {revision}")
        self._watch()

    def _watch(self) -> None:
        d = self._pending = self.client.watch(
            self.prefix, self.revision + 1, self._received
        )
        self._resetIdle()
        d.addErrback(self._failed, "watch")

    def _resetIdle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idleTimeout)
        else:
            self._idle = self._clock.callLater(self.idleTimeout, self._timedOut)

    def _timedOut(self) -> None:
        self._idle = None
        pending = self._pending
        if pending is not None:
            # L{_failed} says why the watch was cancelled.
            self._silent = True
            pending.cancel()

    def _received(self, response: WatchResponse) -> None:
        self._resetIdle()
        if response.created:
            self._createdAt = self._clock.seconds()
            self.watching = True
            self.error = None
            return
        if not response.events:
            # A progress notification: nothing changed up to its revision.
            self.revision = max(self.revision, response.revision)
            return
        applied = []
        # Every key a transaction (or a ranged delete: etcdctl del
        # --prefix) touches has the same revision, and their events come
        # in one response: each is new if its revision is past the copy's
        # before this response, not past the one its predecessors set.
        known = self.revision
        for event in response.events:
            if event.revision <= known:
                continue
            if event.value is None:
                if self.values.pop(event.key, None) is not None:
                    applied.append(f"deleted {event.key.decode('utf-8', 'replace')}")
            else:
                self.values[event.key] = event.value
                applied.append(f"put {event.key.decode('utf-8', 'replace')}")
            self.revision = event.revision
        self.events += len(applied)
        if applied:
            self._tell(f"etcd revision {self.revision}: " + ", ".join(applied))

    def _tell(self, reason: str) -> None:
        """
        Tell C{changed} the new copy, and why.

        Should it raise (a fault of its own, not etcd's), the failure is
        logged and the mirror goes on following the prefix, as it would
        not if the exception went on into the read's L{Deferred} (no
        watch would start) or the watch's stream (it would be dropped
        and resumed after the change, which would be lost): every call
        tells the whole copy, so the next change catches up.
        """
        try:
            self.changed(dict(self.values), reason)
        except Exception:
            self._log.failure(
                "etcd {prefix}: applying the copy at revision {revision} failed "
                "({reason}); following the prefix still",
                prefix=self.prefix.decode("utf-8", "replace"),
                revision=self.revision,
                reason=reason,
            )

    def _failed(self, failure: Failure, what: str) -> None:
        self._pending = None
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self.watching = False
        if not self._running:
            return
        self.failures += 1
        self.error = describe(failure)
        if self._silent and failure.check(CancelledError):
            self.error = f"it sent nothing for {self.idleTimeout:g}s"
        self._silent = False
        if failure.check(Compacted):
            self._log.warn(
                "etcd {prefix}: {why}; reading the whole prefix again",
                prefix=self.prefix.decode("utf-8", "replace"),
                why=self.error,
            )
            self._read()
            return
        endpoint = self.client.endpoint
        if what == "watch":
            self.client.nextEndpoint()
            created, self._createdAt = self._createdAt, None
            if created is not None and self._clock.seconds() - created >= self.maxDelay:
                self._failuresInRow = 0
            self._failuresInRow += 1
        else:
            # A read has tried every endpoint already.
            self._failuresInRow += len(self.client.endpoints)
        rounds = self._failuresInRow // len(self.client.endpoints)
        delay = 0.0
        if rounds:
            delay = min(self.maxDelay, self.initialDelay * 2 ** (rounds - 1))
        self._log.warn(
            "etcd {prefix}: the {what} at {endpoint} failed: {why}; trying "
            "{next} in {delay:g}s, from revision {revision}",
            prefix=self.prefix.decode("utf-8", "replace"),
            what=what,
            endpoint=endpoint if what == "watch" else "every endpoint",
            why=self.error,
            next=self.client.endpoint,
            delay=delay,
            revision=self.revision + 1,
        )
        again = self._read if what == "read" else self._watch
        self._retry = self._clock.callLater(delay, self._again, again)

    def _again(self, again: Callable[[], None]) -> None:
        self._retry = None
        if self._running:
            again()


def _summary(before: dict[bytes, bytes], after: dict[bytes, bytes]) -> str:
    """
    What changed from C{before} to C{after}, in words.
    """
    added = sum(1 for key in after if key not in before)
    removed = sum(1 for key in before if key not in after)
    changed = sum(1 for key in after if key in before and before[key] != after[key])
    parts = [
        f"{count} {what}"
        for count, what in ((added, "new"), (changed, "changed"), (removed, "gone"))
        if count
    ]
    return ", ".join(parts)
