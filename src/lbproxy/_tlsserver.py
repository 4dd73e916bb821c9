# -*- test-case-name: tests.test_tlsserver -*-
"""
HTTPS listeners: TLS terminated with pyOpenSSL, one certificate per vhost
picked by SNI, with the safe settings in one place.

Why not Twisted's L{CertificateOptions} alone: it serves one certificate
(its C{contextForServerName} exists only from Twisted 26.4), and on
Twisted 25.5 and older L{TLSMemoryBIOFactory} sets the ALPN callbacks
on the shared context again for every connection when the wrapped factory
negotiates protocols, which pyOpenSSL 26.2 and later refuse ("Context has
already been used to create a Connection, it cannot be mutated again").

So lbproxy builds, up front, one fully configured L{SSL.Context} per
certificate (with L{CertificateOptions}, so Twisted still chooses the
curves and applies the versions and ciphers), adds what Twisted leaves
out (renegotiation off, the session cache and tickets on) and never
changes a context again.  L{SNIConnectionCreator}, an
L{IOpenSSLServerConnectionCreator}, starts every connection on the
default context and switches it in the servername callback with
C{Connection.set_context}.  L{TLSServerFactory} wraps the site so that
Twisted never sees a factory that negotiates protocols: the ALPN list
(the site's C{acceptableProtocols()}, read when the contexts are built) is
the contexts' own.  A reload builds a new name-to-context table and swaps
it in; connections already open keep the context they started with, and a
certificate that did not change keeps its context (and so its session
cache and ticket keys).

Sessions are resumed from the default context's cache and with its
ticket keys, whatever the SNI name: OpenSSL looks a session up before the
servername callback runs, and pyOpenSSL offers no earlier hook (OpenSSL's
client hello callback).  So a client that offers, for one name, a session
it made for another name of the same listener resumes it, with the
certificate of the first; clients keep their sessions by name, and the
server holds both certificates' keys, but RFC 6066 would have the server
refuse it.

The settings (L{MOZILLA_INTERMEDIATE}, L{serverContext}): TLS 1.2 at
least (C{tls_min_version = 1.3} allowed), Mozilla's "intermediate"
ciphers for TLS 1.2 (OpenSSL's TLS 1.3 suites, which are the same
three), no compression, no renegotiation, session resumption by session
ID and by session ticket.
"""

from __future__ import annotations

import datetime
import os
import stat
from typing import Any, Callable, Mapping, Optional, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolNegotiationFactory,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from lbproxy._certificates import (
    CertificateChain,
    CertificateError,
    expiryWarning,
    loadChain,
    nameCovered,
)
from lbproxy._config import ConfigError, SiteConfig
from lbproxy._tls import trustRootFor
from lbproxy._vhost import ServerNames

__all__ = [
    "MOZILLA_INTERMEDIATE",
    "SNIConnectionCreator",
    "ServerCertificates",
    "ServerNameContexts",
    "TLSServerFactory",
    "loadServerCertificates",
    "serverContext",
]

_log = Logger()

#: The TLS 1.2 cipher suites of Mozilla's "intermediate" configuration
#: (version 5.7), in its order, less the three C{DHE-RSA-...} suites: they
#: need Diffie-Hellman parameters that pyOpenSSL cannot have OpenSSL pick
#: (C{SSL_CTX_set_dh_auto}), and every client that could use them has the
#: ECDHE ones.  TLS 1.3 uses OpenSSL's default suites, which are Mozilla's.
MOZILLA_INTERMEDIATE = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

#: C{SSL_OP_NO_RENEGOTIATION} (OpenSSL 1.1.0h and later; pyOpenSSL names
#: it only from 22.0).
_OP_NO_RENEGOTIATION = getattr(SSL, "OP_NO_RENEGOTIATION", 0x40000000)

#: The session id context of every server context (see L{serverContext}).
SESSION_ID_CONTEXT = b"lbproxy"

_MINIMUM = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

_ACCEPTABLE = AcceptableCiphers.fromOpenSSLCipherString(MOZILLA_INTERMEDIATE)


def serverContext(
    chain: CertificateChain, minimumVersion: str, protocols: Sequence[bytes]
) -> SSL.Context:
    """
    Build the server context that serves C{chain}, with lbproxy's settings.

    @param minimumVersion: C{"1.2"} or C{"1.3"}.
    @param protocols: what ALPN offers, best first (none: no ALPN).
    @return: a context that is complete: nothing is set on it afterwards.
    """
    key, certificate, intermediates = chain.openSSLObjects()
    options = CertificateOptions(
        privateKey=key,
        certificate=certificate,
        extraCertChain=intermediates,
        acceptableCiphers=_ACCEPTABLE,
        raiseMinimumTo=_MINIMUM[minimumVersion],
        enableSessions=True,
        enableSessionTickets=True,
        acceptableProtocols=list(protocols) or None,
    )
    context = options.getContext()
    context.set_options(SSL.OP_NO_COMPRESSION | _OP_NO_RENEGOTIATION)
    # One session id context for every context (Twisted draws one at
    # random for each): a session is found in the default context's cache
    # before SNI switches the connection to another context, and is then
    # checked against the context it was stored with, so different ones
    # would turn every session id resumption on a vhost's certificate down.
    context.set_session_id(SESSION_ID_CONTEXT)
    return context


class ServerNameContexts:
    """
    Which context serves which SNI name: exact names first, then wildcards
    (C{*.example.com}: any name ending in C{.example.com}), the longest
    suffix first, as vhosts are matched; else the default.

    @ivar default: the context of connections without SNI or with a name
        no certificate is configured for.
    @ivar contexts: every context, by the key L{ServerCertificates} gives
        it (so that a reload can keep those that did not change).
    """

    def __init__(
        self,
        default: SSL.Context,
        byName: Mapping[str, SSL.Context],
        contexts: Mapping[Any, SSL.Context],
    ) -> None:
        self.default = default
        self.contexts = dict(contexts)
        self._names: ServerNames[SSL.Context] = ServerNames(byName.items())

    def contextFor(self, serverName: Optional[bytes]) -> SSL.Context:
        """
        The context for the SNI name C{serverName} (L{None}: no SNI).
        """
        if not serverName:
            return self.default
        context = self._names.lookup(serverName.decode("ascii", "replace").lower().rstrip("."))
        return self.default if context is None else context


@implementer(IOpenSSLServerConnectionCreator)
class SNIConnectionCreator:
    """
    Makes the L{SSL.Connection} of each accepted TLS connection: on the
    current table's default context, switched by the servername callback
    to the context SNI names.

    @ivar table: the current L{ServerNameContexts}; replace it to serve new
        certificates from the next handshake on.
    """

    def __init__(self) -> None:
        self.table: Optional[ServerNameContexts] = None

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        table = self.table
        assert table is not None, "no certificates loaded"
        connection = SSL.Connection(table.default, None)
        connection.set_app_data(tlsProtocol)
        if isinstance(tlsProtocol, TLSServerProtocol):
            tlsProtocol.lbproxyConnection = connection
        return connection

    def onServerName(self, connection: SSL.Connection) -> None:
        """
        The servername callback of every context this creator serves: use
        the context of the name the client sent.
        """
        table = self.table
        if table is None:
            return
        context = table.contextFor(connection.get_servername())
        if context is not connection.get_context():
            connection.set_context(context)


class _SiteProtocols(Factory):
    """
    Builds the protocols of the wrapped site, but, unlike the site, does not
    provide L{IProtocolNegotiationFactory}: Twisted 25.5 and older would
    set the site's protocols on the shared context for every connection
    (see the module docstring); the contexts already offer them.
    """

    def __init__(self, site: Any) -> None:
        self.site = site

    def logPrefix(self) -> str:
        prefix: str = self.site.logPrefix()
        return prefix

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        return self.site.buildProtocol(addr)


class TLSServerProtocol(BufferingTLSTransport):
    """
    Twisted's TLS transport for one accepted connection, which keeps the
    connection's session resumable when the client goes away without a
    TLS close_notify: OpenSSL may take the session out of its cache then
    (it does when the SSL object is freed before a shutdown was sent).
    sslyze's resumption check got 0 of 5 resumptions by session id
    without this, 5 of 5 with it.  TLS 1.1 and later allow resuming such a
    session (RFC 5246, section 7.2.1); session tickets, which OpenSSL does
    not keep, are not concerned.

    @ivar lbproxyConnection: the connection's L{SSL.Connection}, set by
        L{SNIConnectionCreator}.
    """

    lbproxyConnection: Optional[SSL.Connection] = None

    def connectionLost(self, reason: Any = connectionDone) -> None:
        connection = self.lbproxyConnection
        if connection is not None:
            self.lbproxyConnection = None
            connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        BufferingTLSTransport.connectionLost(self, reason)


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    The factory of an HTTPS listener: TLS with the connections that
    C{creator} makes, around the protocols of C{site}.  A connection the
    site refuses (beyond C{max_connections}) is closed before any TLS.

    @ivar creator: the L{SNIConnectionCreator}.
    @ivar site: the site whose protocols speak HTTP inside the TLS.
    """

    protocol = TLSServerProtocol

    def __init__(self, creator: SNIConnectionCreator, site: Any, clock: Any = None) -> None:
        TLSMemoryBIOFactory.__init__(self, creator, False, _SiteProtocols(site), clock)
        self.creator = creator
        self.site = site

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


class ServerCertificates:
    """
    The certificates of a configuration, read and checked: the default
    chain and each vhost's, ready to become contexts.

    @ivar default: the chain served without SNI or for an unknown name
        (L{None} when there is no certificate at all).
    @ivar byName: each vhost server name of a vhost with its own chain.
    @ivar minimumVersion: C{tls_min_version}.
    @ivar warnings: what to log (certificates that expire soon, names a
        vhost's certificate does not cover).
    """

    def __init__(
        self,
        default: Optional[CertificateChain],
        byName: Mapping[str, CertificateChain],
        minimumVersion: str,
        warnings: Sequence[str],
    ) -> None:
        self.default = default
        self.byName = dict(byName)
        self.minimumVersion = minimumVersion
        self.warnings = list(warnings)

    def chains(self) -> list[CertificateChain]:
        """
        Every distinct chain, the default first.
        """
        seen: dict[bytes, CertificateChain] = {}
        for chain in [self.default, *self.byName.values()]:
            if chain is not None:
                seen.setdefault(chain.fingerprint, chain)
        return list(seen.values())

    def buildTable(
        self,
        creator: SNIConnectionCreator,
        protocols: Sequence[bytes],
    ) -> ServerNameContexts:
        """
        Build the contexts for C{creator} (whose servername callback they
        call), reusing those of its current table whose chain, settings and
        protocols are the same.
        """
        previous = creator.table.contexts if creator.table is not None else {}
        contexts: dict[Any, SSL.Context] = {}
        for chain in self.chains():
            key = (chain.fingerprint, self.minimumVersion, tuple(protocols))
            context = previous.get(key)
            if context is None:
                context = serverContext(chain, self.minimumVersion, protocols)
                context.set_tlsext_servername_callback(creator.onServerName)
            contexts[key] = context

        def contextOf(chain: CertificateChain) -> SSL.Context:
            return contexts[(chain.fingerprint, self.minimumVersion, tuple(protocols))]

        assert self.default is not None, "no certificate to serve by default"
        return ServerNameContexts(
            contextOf(self.default),
            {name: contextOf(chain) for name, chain in self.byName.items()},
            contexts,
        )

    def logWarnings(self) -> None:
        """
        Log L{warnings}, one line each.
        """
        for warning in self.warnings:
            _log.warn("{line}", line=warning)


def _baseDirectory(config: SiteConfig) -> Optional[str]:
    source = config.source
    if os.path.isfile(source):
        return os.path.dirname(os.path.abspath(source))
    return None


def fromConfigDirectory(config: SiteConfig, path: str) -> str:
    """
    The TLS file C{path} of C{config}: a relative path is read from the
    directory of the configuration file (the current directory for a
    configuration that did not come from a file).
    """
    base = _baseDirectory(config)
    return path if base is None else os.path.join(base, path)


def loadServerCertificates(
    config: SiteConfig, now: Optional[datetime.datetime] = None
) -> ServerCertificates:
    """
    Read and check every certificate of C{config} (relative paths are read
    from the configuration file's directory), and the C{tls_ca} files of
    its upstreams with C{https://} servers.

    @param now: the time to check validity at (an aware datetime); the
        current time when L{None}.
    @return: the certificates, whose C{default} is L{None} when there is
        none at all.
    @raise ConfigError: listing every problem: a file missing or
        unreadable, a key that is not its certificate's, a vhost's
        certificate for none of its names, C{listen_tls} without a
        certificate to serve by default, C{redirect_https} without
        C{listen_tls}.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    proxy = config.proxy
    filename = config.source
    errors: list[str] = []
    warnings: list[str] = []
    base = _baseDirectory(config)

    def fail(section: str, key: str, value: str, reason: str) -> None:
        errors.append(f"{filename}: [{section}] {key} = {value!r}: {reason}")

    def load(section: str, owner: Any) -> Optional[CertificateChain]:
        if owner.tlsCertificate is None:
            if owner.tlsKey is not None:
                fail(section, "tls_certificate", "", "missing key; expected the certificate chain that tls_key belongs to")
            return None
        try:
            chain = loadChain(owner.tlsCertificate, owner.tlsKey, base)
        except CertificateError as e:
            fail(section, "tls_certificate", owner.tlsCertificate, str(e))
            return None
        for warning in (expiryWarning(chain, now), othersCanRead(chain.keyPath, "key file")):
            if warning is not None:
                warnings.append(f"[{section}] {warning}")
        return chain

    default = load("lbproxy", proxy)
    byName: dict[str, CertificateChain] = {}
    defaultVHostChain = None
    for vhost in config.vhosts:
        section = f"vhost:{vhost.name}"
        chain = load(section, vhost)
        if vhost.redirectHTTPS and httpsPort(proxy) is None:
            fail(
                section,
                "redirect_https",
                "yes",
                "bad value; expected no: there is no tcp: listen_tls listener in "
                "[lbproxy] whose port to redirect to",
            )
        if chain is None:
            continue
        if vhost.default:
            defaultVHostChain = chain
        covered = [n for n in vhost.serverNames if nameCovered(chain.dnsNames, n)]
        if vhost.serverNames and not covered:
            fail(
                section,
                "tls_certificate",
                vhost.tlsCertificate or "",
                f"the certificate in {chain.certificatePath} is for "
                f"{', '.join(chain.dnsNames) or 'no DNS name'}, none of this "
                f"vhost's server_names ({', '.join(vhost.serverNames)})",
            )
            continue
        for name in vhost.serverNames:
            if name not in covered:
                warnings.append(
                    f"[{section}] the certificate in {chain.certificatePath} is "
                    f"not valid for {name} (it is for {', '.join(chain.dnsNames)}); "
                    "clients asking for it will refuse it"
                )
            byName[name] = chain
    if default is None and proxy.tlsCertificate is None:
        default = defaultVHostChain
        if default is None and proxy.listenTLS:
            fail(
                "lbproxy",
                "tls_certificate",
                "",
                "missing key; expected the certificate chain (PEM) served when SNI "
                "names no vhost with a certificate of its own, as listen_tls is set "
                "(or a tls_certificate on the default vhost)",
            )
    for upstream in config.upstreams.values():
        if upstream.serversFrom == "etcd":
            _checkEtcdFiles(config, upstream, fail, warnings.append)
        if not any(server.scheme == "https" for server in upstream.servers):
            continue
        section = f"upstream:{upstream.name}"
        if not upstream.tlsVerify:
            warnings.append(
                f"[{section}] tls_verify = no: the certificates of its https:// "
                "servers are not checked (anyone on the path can impersonate them)"
            )
        elif upstream.tlsCA is not None:
            caFile = fromConfigDirectory(config, upstream.tlsCA)
            try:
                trustRootFor(caFile)
            except (OSError, ValueError) as e:
                fail(section, "tls_ca", upstream.tlsCA, _cannotUse(caFile, e))
    if errors:
        raise ConfigError(errors)
    if default is None:
        if byName:
            default = next(iter(byName.values()))
    return ServerCertificates(default, byName, proxy.tlsMinVersion, warnings)



def withFilesFromConfigDirectory(config: SiteConfig, upstream: Any) -> Any:
    """
    C{upstream} (an L{lbproxy._config.UpstreamConfig}) with its C{tls_ca}
    and C{etcd_*} files read from the configuration file's directory when
    relative, as every TLS file of the configuration.
    """
    from dataclasses import replace

    files: dict[str, Any] = {
        field: fromConfigDirectory(config, path)
        for field in ("tlsCA", "etcdCA", "etcdCertificate", "etcdKey", "etcdPasswordFile")
        if (path := getattr(upstream, field)) is not None
    }
    return replace(upstream, **files) if files else upstream


def _cannotUse(path: str, error: Exception) -> str:
    """
    Why the file at C{path} cannot be used: the system's words for an
    L{OSError}, the error itself otherwise.
    """
    return f"cannot use {path}: {getattr(error, 'strerror', None) or error}"


def othersCanRead(path: str, what: str) -> Optional[str]:
    """
    A warning when the secret file at C{path} (C{what}: "key file",
    "password file") can be read by every user of the machine, L{None}
    otherwise (or when it cannot be looked at: reading it says why).

    Only others' read permission is warned about, as OpenSSH refuses a
    private key for it: a group that may read keys is a common choice
    (Debian's C{ssl-cert}).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & stat.S_IROTH:
        return None
    return (
        f"the {what} {path} can be read by every user of this machine "
        f"(mode {stat.S_IMODE(mode):04o}); make it unreadable to others (chmod o-r)"
    )


def _checkEtcdFiles(
    config: SiteConfig,
    upstream: Any,
    fail: Callable[[str, str, str, str], None],
    warn: Callable[[str], None],
) -> None:
    """
    Report with C{fail(section, key, value, reason)} what is wrong with the
    files of C{upstream}'s C{etcd_*} keys (an upstream with C{servers_from
    = etcd}), and with C{warn(line)} those of its secret files that every
    user can read.
    """
    from lbproxy._etcdsource import etcdCredentials, etcdTLS

    section = f"upstream:{upstream.name}"
    resolved = withFilesFromConfigDirectory(config, upstream)
    if resolved.etcdCA is not None:
        try:
            trustRootFor(resolved.etcdCA)
        except (OSError, ValueError) as e:
            fail(section, "etcd_ca", upstream.etcdCA, _cannotUse(resolved.etcdCA, e))
    try:
        etcdTLS(resolved)
    except CertificateError as e:
        fail(section, "etcd_certificate", upstream.etcdCertificate, str(e))
    try:
        credentials = etcdCredentials(resolved)
    except (OSError, ValueError) as e:
        credentials = None
        fail(
            section,
            "etcd_password_file",
            upstream.etcdPasswordFile,
            _cannotUse(resolved.etcdPasswordFile, e),
        )
    secrets = [(resolved.etcdKey or resolved.etcdCertificate, "key file")]
    if credentials is not None:
        secrets.append((resolved.etcdPasswordFile, "password file"))
    for path, what in secrets:
        warning = None if path is None else othersCanRead(path, what)
        if warning is not None:
            warn(f"[{section}] {warning}")


def httpsPort(proxy: Any) -> Optional[int]:
    """
    The port of the first C{listen_tls} listener of C{proxy} (a
    L{lbproxy._config.ProxyConfig}), which C{redirect_https} sends clients
    to; L{None} when there is none or it is not a C{tcp:} or C{tcp6:} one.
    """
    from lbproxy._listeners import parseTCPDescription
    from lbproxy._proxyprotocol import withoutPrefix

    for description in proxy.listenTLS:
        try:
            return parseTCPDescription(withoutPrefix(description)).port
        except ValueError:
            return None
    return None


class TLSUnavailable(RuntimeError):
    """
    The installed Twisted and pyOpenSSL cannot serve HTTPS as lbproxy sets
    it up; the message names both versions and what failed.
    """


class _HandshakeProbe:
    """
    Stands in for the L{TLSMemoryBIOProtocol} of a probe connection (what
    Twisted's ALPN callback asks about: its factory).
    """

    def __init__(self, factory: Any) -> None:
        self.factory = factory


def _versions() -> str:
    import OpenSSL

    from twisted import version as twistedVersion

    if hasattr(SSL, "OpenSSL_version"):
        library = SSL.OpenSSL_version(SSL.OPENSSL_VERSION)
    else:  # pyOpenSSL before 22
        library = SSL.SSLeay_version(SSL.SSLEAY_VERSION)
    return (
        f"Twisted {twistedVersion.short()} and pyOpenSSL {OpenSSL.__version__} "
        f"({library.decode('ascii', 'replace')})"
    )


def probeHandshake(factory: TLSServerFactory, serverName: Optional[str] = None) -> None:
    """
    Make one TLS handshake in memory with what C{factory}'s listeners
    serve, before any client does: a client offering the site's protocols
    (and sending C{serverName} in SNI) must complete it, on the context
    SNI picks, with the first protocol chosen by ALPN.

    @raise TLSUnavailable: when it does not, naming the versions of
        Twisted and pyOpenSSL: such a pair would fail every handshake.
    """
    creator = factory.creator
    table = creator.table
    assert table is not None
    protocols = list(IProtocolNegotiationFactory(factory.site).acceptableProtocols())
    try:
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        client.set_connect_state()
        if serverName is not None:
            client.set_tlsext_host_name(serverName.encode("idna"))
        if protocols:
            client.set_alpn_protos(protocols)
        server = creator.serverConnectionForTLS(_HandshakeProbe(factory))
        server.set_accept_state()
        done = set()
        for _ in range(10):
            for name, connection in (("client", client), ("server", server)):
                try:
                    connection.do_handshake()
                except SSL.WantReadError:
                    pass
                else:
                    done.add(name)
            for source, target in ((client, server), (server, client)):
                try:
                    target.bio_write(source.bio_read(65536))
                except SSL.WantReadError:
                    pass
            if len(done) == 2:
                break
        problem = None
        if len(done) != 2:
            problem = "the handshake did not complete"
        elif server.get_context() is not table.contextFor(
            None if serverName is None else serverName.encode("idna")
        ):
            problem = "SNI did not select the certificate's context"
        elif protocols and client.get_alpn_proto_negotiated() != protocols[0]:
            problem = f"ALPN chose {client.get_alpn_proto_negotiated()!r}, not {protocols[0]!r}"
    except Exception as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        raise TLSUnavailable(
            f"HTTPS cannot work with {_versions()}: {problem}; install a pair "
            "lbproxy is tested with (Twisted 24.7 and pyOpenSSL 21.0, Twisted "
            "25.5 and pyOpenSSL 25.1, Twisted 26.10 and pyOpenSSL 26.4)"
        )
