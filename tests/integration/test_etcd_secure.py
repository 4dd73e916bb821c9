"""
C{servers_from = etcd} against a real etcd (Debian's C{etcd-server}, 3.4)
that serves its clients over TLS only, asks them for a certificate, and
has auth enabled: lbproxy in this process follows the keys with its
C{etcd_ca}, C{etcd_certificate}, C{etcd_key}, C{etcd_username} and
C{etcd_password_file}, and takes a new token after etcd restarts and
forgets the old one.
"""

from __future__ import annotations

import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from lbproxy import ConfigError, LoadBalancerService, parseConfigText
from lbproxy.testing import startServer
from tests.certificates import writeSecret
from tests.integration.etcdprocess import Etcd, EtcdTLSFiles, NamedBackend, waitUntil
from tests.integration.test_etcd_live import _CONFIG as LIVE_CONFIG
from tests.integration.test_etcd_live import InProcessProxy

PREFIX = "/lbproxy/upstreams/app/"
PASSWORD = "a password of lbproxy's"

#: The live tests' configuration, with the keys that reach a secured etcd.
_CONFIG = LIVE_CONFIG.replace(
    "etcd_prefix = {prefix}\n",
    "etcd_prefix = {prefix}\n"
    "etcd_ca = {ca}\n"
    "etcd_certificate = {certificate}\n"
    "etcd_key = {key}\n"
    "etcd_username = lbproxy\n"
    "etcd_password_file = {password}\n",
)


class SecureEtcdTests(InProcessProxy, TestCase):
    """
    One lbproxy, one etcd member with TLS, client certificates and auth,
    two backends.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = self.mktemp()
        self.files = EtcdTLSFiles(os.path.join(directory, "tls"))
        self.etcd = Etcd(os.path.join(directory, "data"), tls=self.files)
        self.addCleanup(self.etcd.close)
        yield self.etcd.start()
        yield self.etcd.enableAuth("lbproxy", PASSWORD, PREFIX)
        self.password = writeSecret(os.path.join(directory, "password"), PASSWORD.encode() + b"\n")
        self.backends = []
        for name in (b"a", b"b"):
            server = yield startServer(NamedBackend(name), reactor)
            self.addCleanup(server.stop)
            self.backends.append(server)
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def config(self, **changes: str) -> Any:
        values = {
            "endpoints": self.etcd.url,
            "prefix": PREFIX,
            "ca": self.files.root,
            "certificate": self.files.clientCertificate,
            "key": self.files.clientKey,
            "password": self.password,
        }
        values.update(changes)
        return parseConfigText(_CONFIG.format(**values), "etcd.ini")

    def startProxy(self) -> Any:
        return self.serve(LoadBalancerService(self.config(), reactor))

    @inlineCallbacks
    def test_followsKeys(self) -> Any:
        """
        lbproxy reads and follows the prefix over TLS with its client
        certificate and token, and, once etcd has restarted and forgotten
        every token, authenticates again and goes on following it.  Its
        log never holds the password.
        """
        yield self.etcd.put(PREFIX + "a", self.address(0))
        yield self.startProxy()
        yield self.converge([self.address(0)], "the first read", 5.0)
        http = treq.client.HTTPClient(
            Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        )
        response = yield http.get(self.url, timeout=5)
        body = yield response.content()
        self.assertEqual((response.code, body), (200, b"a"))
        yield self.etcd.put(PREFIX + "b", self.address(1))
        yield self.converge([self.address(0), self.address(1)], "b to join", 5.0)

        yield self.etcd.stop()
        yield self.etcd.start()
        yield self.etcd.authenticate()
        yield self.etcd.delete(PREFIX + "a")
        # As long as the watch's backoff may take (up to 10 s between
        # attempts).
        yield self.converge([self.address(1)], "a to leave after the restart", 15.0)
        text = "\n".join(str(event) for event in self.logged)
        self.assertNotIn(PASSWORD, text)
        # No "Starting factory" line for each call to etcd: Twisted's TLS
        # wrapper starts the factory it wraps, the Agent's being noisy.
        # (The test's own request to the proxy above, through a plain
        # Agent, logs its two.)
        started = [
            e["factory"]
            for e in self.logged
            if "factory" in e
            and type(e["factory"]).__module__.startswith("twisted.web")
            and self.url.split("/")[2] not in repr(e["factory"])
        ]
        self.assertEqual(started, [])

    def test_badFiles(self) -> None:
        """
        A client certificate whose key is another's, or a password file
        that does not exist, is a configuration error naming the key.
        """
        with self.assertRaises(ConfigError) as caught:
            LoadBalancerService(
                self.config(key=self.files.serverKey, password=self.password + ".missing"),
                reactor,
            )
        errors = "\n".join(caught.exception.errors)
        self.assertIn("etcd_certificate = ", errors)
        self.assertIn("does not match the certificate", errors)
        self.assertIn("etcd_password_file = ", errors)
        self.assertIn("No such file or directory", errors)

    @inlineCallbacks
    def test_wrongPassword(self) -> Any:
        """
        A password etcd refuses leaves the upstream without backends, and
        the log says which user etcd refused, not the password.
        """
        yield self.etcd.put(PREFIX + "a", self.address(0))
        writeSecret(self.password, b"not the password\n")
        yield self.startProxy()
        yield waitUntil(
            lambda: any(
                "refused to authenticate user 'lbproxy'" in str(event) for event in self.logged
            ),
            "the refusal to be logged",
            10.0,
        )
        self.assertEqual(self.members(), [])
        self.assertNotIn("not the password", "\n".join(str(e) for e in self.logged))
