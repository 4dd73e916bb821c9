# -*- test-case-name: tests.test_etcdsource -*-
"""
The backends of an upstream with C{servers_from = etcd}: every key under
its C{etcd_prefix} is a server line, and the pool's membership follows the
keys as they are put and deleted.

The etcd side (reading, watching, resuming) is L{lbproxy._etcd}'s; this
module turns each new copy of the prefix into server lines and hands them
to L{lbproxy._pool.Pool.setBackends}, which keeps the backends that stay
and drains those that leave.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.ssl import Certificate, KeyPair, PrivateCertificate
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy._backend import backendFor
from lbproxy._certificates import loadChain
from lbproxy._config import (
    ServerConfig,
    UpstreamConfig,
    certificateNameProblem,
    parseServer,
)
from lbproxy._etcd import EtcdClient, EtcdTLS, PrefixMirror
from lbproxy._interfaces import IMembershipSource
from lbproxy._pool import Pool


def etcdTLS(upstream: UpstreamConfig) -> Optional[EtcdTLS]:
    """
    How C{upstream} reaches its C{https://} etcd endpoints (C{etcd_ca},
    C{etcd_certificate} with the intermediates after it in its file, and
    C{etcd_key}), or L{None} when it has none.

    @raise CertificateError: when the client certificate or its key
        cannot be read or do not match.
    """
    if not upstream.etcdOverTLS:
        return None
    if upstream.etcdCertificate is None:
        return EtcdTLS(upstream.etcdCA)
    key, certificate, intermediates = loadChain(
        upstream.etcdCertificate, upstream.etcdKey
    ).openSSLObjects()
    client = PrivateCertificate.fromCertificateAndKeyPair(Certificate(certificate), KeyPair(key))
    return EtcdTLS(upstream.etcdCA, client, intermediates)


def etcdCredentials(upstream: UpstreamConfig) -> Optional[tuple[str, str]]:
    """
    The etcd user name of C{upstream} and the password in its
    C{etcd_password_file} (the file's first line), or L{None}.

    @raise OSError: when the file cannot be read.
    @raise ValueError: when its first line is empty.
    """
    if upstream.etcdUsername is None or upstream.etcdPasswordFile is None:
        return None
    with open(upstream.etcdPasswordFile, encoding="utf-8") as f:
        password = f.readline().rstrip("\r\n")
    if not password:
        raise ValueError(f"{upstream.etcdPasswordFile} holds no password on its first line")
    return (upstream.etcdUsername, password)


def _identity(server: ServerConfig) -> tuple[str, str, int]:
    return (server.scheme, server.host, server.port)


#: The most characters of a key, value or error a log line shows.
SHOWN = 200


def shortened(text: str, limit: int = SHOWN, quote: bool = False) -> str:
    """
    C{text} for a log line (in quotes, as C{repr} gives it, when C{quote}
    is true): whole up to C{limit} characters, else its start and how long
    it is.  Whoever writes to etcd chooses its keys and values (up to
    1.5 MB each), and a log line should not carry them all.
    """
    shown = repr(text[:limit]) if quote else text[:limit]
    if len(text) <= limit:
        return shown
    return f"{shown}... ({len(text)} characters)"


@implementer(IMembershipSource)
class EtcdSource(Service):
    """
    Keeps one pool's backends equal to the server lines under an etcd
    prefix, from the moment it starts until it stops (a child of the
    service that owns the pool, replaced with it on reload).

    Each key's value is parsed with L{parseServer}.  A value that does not
    parse is logged once and never applied: the key's last good value
    stays in force, and a key that never had one adds no backend.  Keys
    are taken in their sorted order, so when two name the same address the
    first counts (the other is logged).

    @ivar pool: the L{Pool} whose membership this source sets.
    @ivar mirror: the L{PrefixMirror} following the prefix.
    @ivar servers: the server lines last applied, in key order.
    """

    _log = Logger()

    def __init__(
        self,
        pool: Pool,
        endpoints: tuple[str, ...],
        prefix: str,
        reactor: Any = None,
        http: Any = None,
        tls: Optional[EtcdTLS] = None,
        credentials: Optional[tuple[str, str]] = None,
        tlsVerify: bool = True,
        tlsServerName: Optional[str] = None,
    ) -> None:
        """
        @param endpoints: the etcd client URLs, tried in turn.
        @param prefix: the key prefix.
        @param reactor: the clock for timeouts and retries; the global
            reactor when L{None}.
        @param http: the treq client to reach etcd with (see
            L{EtcdClient}).
        @param tls: how to reach C{https://} endpoints.
        @param credentials: the etcd user name and password.
        @param tlsVerify: the upstream's C{tls_verify}, and
        @param tlsServerName: its C{tls_server_name}: an C{https} value
            whose certificate they could not check is refused (see
            L{certificateNameProblem}).
        """
        if reactor is None:
            from twisted.internet import reactor as _globalReactor

            reactor = _globalReactor
        self.pool = pool
        self.prefix = prefix
        self.mirror = PrefixMirror(
            EtcdClient(endpoints, reactor, http, tls=tls, credentials=credentials),
            prefix.encode("utf-8"),
            self._changed,
            reactor,
        )
        self._tlsSettings = (tlsVerify, tlsServerName)
        self.servers: tuple[ServerConfig, ...] = ()
        self._parsed: dict[bytes, tuple[bytes, ServerConfig]] = {}
        self._rejected: dict[bytes, bytes] = {}

    @classmethod
    def forUpstream(
        cls, pool: Pool, upstream: UpstreamConfig, reactor: Any = None, http: Any = None
    ) -> EtcdSource:
        """
        The source of an upstream with C{servers_from = etcd}, reaching
        etcd as its C{etcd_*} keys say (their files read now: a reload
        reads them again).

        @raise CertificateError: when C{etcd_certificate} cannot be used.
        @raise OSError: when C{etcd_password_file} cannot be read.
        """
        return cls(
            pool,
            upstream.etcdEndpoints,
            upstream.etcdKeyPrefix,
            reactor,
            http,
            etcdTLS(upstream),
            etcdCredentials(upstream),
            upstream.tlsVerify,
            upstream.tlsServerName,
        )

    def carryOver(self, previous: EtcdSource) -> None:
        """
        Take over from C{previous}, the source of the same upstream before
        a reload, the last good value of each key, when it followed the
        same prefix: a key whose value is bad when this source first reads
        it keeps the backend it had, as it would have without the reload.
        A value this source refuses (a TLS name its upstream's new
        settings cannot check) is not taken.  Call it before starting.
        """
        if previous.prefix != self.prefix:
            return
        for key, (value, _) in previous._parsed.items():
            try:
                self._parsed[key] = (value, self._parse(value))
            except (UnicodeDecodeError, ValueError):
                continue

    def startService(self) -> None:
        Service.startService(self)
        self.mirror.start()

    def status(self) -> dict[str, Any]:
        """
        What the admin snapshot shows of the source (see
        L{lbproxy._snapshot}): the prefix, the endpoint in use, the
        revision the backends are at, whether a watch is open, the reads,
        events and failures so far, the keys under the prefix (and those
        of them not a server line), and why the latest read or watch
        failed.
        """
        mirror = self.mirror
        return {
            "kind": "etcd",
            "prefix": self.prefix,
            "endpoint": mirror.client.endpoint,
            "revision": mirror.revision,
            "watching": mirror.watching,
            "reads": mirror.reads,
            "events": mirror.events,
            "failures": mirror.failures,
            "keys": len(mirror.values),
            "rejected": len(self._rejected),
            "error": mirror.error,
        }

    def stopService(self) -> Optional[Deferred[None]]:
        Service.stopService(self)
        return self.mirror.stop()

    def _parse(self, value: bytes) -> ServerConfig:
        """
        The server line of a key's value.

        @raise ValueError: (or L{UnicodeDecodeError}) saying what a value
            should be, when C{value} is none that this upstream can use.
        """
        server = parseServer(value.decode("utf-8"))
        if server.service is not None or server.resolve:
            # Nothing here looks names up again: a service= line would
            # have port 0 (its SRV records give the ports), and a resolve
            # line would silently not follow its name.
            raise ValueError(
                "HOST:PORT; resolve and service=NAME are for the servers key "
                "of the configuration file"
            )
        problem = certificateNameProblem(server, *self._tlsSettings)
        if problem is not None:
            raise ValueError(problem)
        return server

    def _changed(self, values: dict[bytes, bytes], reason: str) -> None:
        parsed: dict[bytes, tuple[bytes, ServerConfig]] = {}
        rejected: dict[bytes, bytes] = {}
        for key in sorted(values):
            value = values[key]
            known = self._parsed.get(key)
            if known is not None and known[0] == value:
                parsed[key] = known
                continue
            try:
                server = self._parse(value)
            except (UnicodeDecodeError, ValueError) as e:
                rejected[key] = value
                if self._rejected.get(key) != value:
                    self._log.error(
                        "upstream {upstream}: etcd key {key} = {value} is not "
                        "a server line, skipped ({kept}): expected {expected}",
                        upstream=self.pool.name,
                        key=shortened(key.decode("utf-8", "replace")),
                        value=shortened(value.decode("utf-8", "replace"), quote=True),
                        kept="its last good value stays"
                        if known is not None
                        else "no backend for it",
                        expected=shortened(str(e)),
                    )
                if known is not None:
                    parsed[key] = known
                continue
            parsed[key] = (value, server)
        self._parsed, self._rejected = parsed, rejected
        servers: list[ServerConfig] = []
        owners: dict[tuple[str, str, int], bytes] = {}
        for key, (_, server) in parsed.items():
            owner = owners.setdefault(_identity(server), key)
            if owner != key:
                self._log.warn(
                    "upstream {upstream}: etcd keys {first} and {second} both "
                    "name {server}; {first} counts",
                    upstream=self.pool.name,
                    first=owner.decode("utf-8", "replace"),
                    second=key.decode("utf-8", "replace"),
                    server=f"{server.host}:{server.port}",
                )
                continue
            servers.append(server)
        self.servers = tuple(servers)
        self.pool.setBackends([backendFor(server) for server in servers], reason)
