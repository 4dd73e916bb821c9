"""
Real processes for the integration tests of the etcd source and the fleet:
Debian's C{etcd} (3.4) on loopback with a temporary data directory, and
C{twistd lbproxy}, each started with C{spawnProcess} and stopped by its own
PID.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest
from twisted.web.resource import Resource

from lbproxy._etcd import prefixEnd
from tests.integration.ports import ReservedPort

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


@inlineCallbacks
def waitUntil(condition: Any, what: str, seconds: float = 10.0, step: float = 0.02) -> Any:
    """
    Poll C{condition} (which may return a L{Deferred}) until it is true,
    for at most C{seconds}.

    @return: a L{Deferred} firing with the seconds it took.
    @raise AssertionError: when it never became true.
    """
    start = reactor.seconds()
    for _ in range(int(seconds / step) + 1):
        result = yield condition()
        if result:
            return reactor.seconds() - start
        yield deferLater(reactor, step, lambda: None)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


class Watched(ProcessProtocol):
    """
    A child process: its output, and L{Deferred}s for patterns in it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = b""
        self.ended: Deferred[Any] = Deferred()
        self.waiting: list[tuple[bytes, Deferred[Any]]] = []
        self.pid: Optional[int] = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pattern, d in list(self.waiting):
            match = re.search(pattern, self.output)
            if match:
                self.waiting.remove((pattern, d))
                d.callback(match)

    errReceived = outReceived

    def waitFor(self, pattern: bytes, seconds: float = 30.0) -> Deferred[Any]:
        """
        Fire with the first match of C{pattern} in the output, or fail after
        C{seconds} or when the process ends first.
        """
        match = re.search(pattern, self.output)
        d: Deferred[Any] = Deferred()
        if match:
            d.callback(match)
            return d
        self.waiting.append((pattern, d))

        def expire() -> None:
            if (pattern, d) in self.waiting:
                self.waiting.remove((pattern, d))
                d.errback(
                    AssertionError(
                        f"{self.name}: no {pattern!r} within {seconds}s; output:\n"
                        + self.output[-3000:].decode("utf-8", "replace")
                    )
                )

        call = reactor.callLater(seconds, expire)
        return d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])

    def processEnded(self, reason: Any) -> None:
        for pattern, d in self.waiting:
            d.errback(AssertionError(f"{self.name} ended before {pattern!r}"))
        self.waiting = []
        self.ended.callback(reason.value)

    def stop(self, signal: str = "TERM") -> Deferred[Any]:
        """
        Signal the process (by its PID) and fire once it has ended.
        """
        if not self.ended.called and self.transport is not None:
            self.transport.signalProcess(signal)  # type: ignore[attr-defined]
        ended: Deferred[Any] = Deferred()

        def done(reason: Any) -> Any:
            ended.callback(None)
            return reason

        if self.ended.called:
            ended.callback(None)
        else:
            self.ended.addBoth(done)
        return ended


def spawn(name: str, argv: list[str], env: Optional[dict[str, str]] = None) -> Watched:
    protocol = Watched(name)
    reactor.spawnProcess(protocol, argv[0], argv, env=env or dict(os.environ))
    return protocol


class Etcd:
    """
    One etcd member on 127.0.0.1, its data in C{dataDir}, its client and
    peer ports reserved once (L{ReservedPort}) so that it restarts on the
    same ones, which no other process is given meanwhile, until L{close}.

    Not port 0: etcd 3.4 listens on it and logs the port it got, but its
    JSON gateway (which lbproxy and L{call} use) dials the client address
    it was given, C{127.0.0.1:0}, and answers every request with
    "connection refused".
    """

    def __init__(self, dataDir: str, tls: Optional[EtcdTLSFiles] = None) -> None:
        """
        @param tls: when given, etcd serves its clients over TLS with these
            files and asks them for a certificate (C{--client-cert-auth});
            the test's own calls show the client certificate too.
        """
        if shutil.which("etcd") is None:
            raise SkipTest("etcd is not installed: sh .ci/tools.sh etcd-server")
        self.dataDir = dataDir
        self.tls = tls
        self._reserved = [ReservedPort(), ReservedPort()]
        self.clientPort = self._reserved[0].port
        self.peerPort = self._reserved[1].port
        self.process: Optional[Watched] = None
        #: The root user's token once L{enableAuth} has run: the test's
        #: own calls send it.
        self.token: Optional[str] = None

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.clientPort}"

    @inlineCallbacks
    def start(self) -> Any:
        """
        Start etcd and wait until it serves its gateway.
        """
        client = self.url
        peer = f"http://127.0.0.1:{self.peerPort}"
        self.process = spawn(
            "etcd",
            [
                shutil.which("etcd") or "etcd",
                "--name",
                "test",
                "--data-dir",
                self.dataDir,
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"test={peer}",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ]
            + ([] if self.tls is None else self.tls.serverArguments()),
        )
        yield waitUntil(self.ready, "etcd to serve", seconds=30)

    @inlineCallbacks
    def ready(self) -> Any:
        try:
            yield self.call("/v3/kv/range", {"key": _b64(b"/")})
        except _Refused:
            # Serving, but refusing the call: with auth enabled, the token
            # of before a restart is forgotten.
            return True
        except Exception:
            return False
        return True

    def stop(self, signal: str = "TERM") -> Deferred[Any]:
        """
        Stop etcd by its PID (C{KILL} to kill it outright).
        """
        if self.process is None:
            from twisted.internet.defer import succeed

            return succeed(None)
        return self.process.stop(signal)

    def close(self) -> Deferred[Any]:
        """
        Kill etcd by its PID and give its ports back, once it has ended:
        the clean-up of a test.
        """

        def release(result: Any) -> Any:
            for reserved in self._reserved:
                reserved.close()
            return result

        return self.stop("KILL").addBoth(release)

    @inlineCallbacks
    def call(self, path: str, body: dict[str, Any]) -> Any:
        """
        POST C{body} to the gateway and return the JSON answer.
        """
        import treq
        from twisted.web.client import Agent, HTTPConnectionPool

        from lbproxy._etcd import EtcdTLS, _QuietEndpoints

        # As lbproxy's own client reaches etcd, so that a test can check
        # that nothing logs a line for each call.
        policy = EtcdTLS(None) if self.tls is None else self.tls.clientPolicy()
        http = treq.client.HTTPClient(
            Agent.usingEndpointFactory(
                reactor,
                _QuietEndpoints(reactor, policy),
                pool=HTTPConnectionPool(reactor, persistent=False),
            )
        )
        headers: dict[bytes | str, bytes | str] = (
            {} if self.token is None else {"Authorization": self.token}
        )
        response = yield http.post(self.url + path, json=body, headers=headers, timeout=5)
        content = yield response.content()
        try:
            answer = json.loads(content)
        except ValueError:
            answer = content
        if response.code != 200:
            raise _Refused(f"etcd answered {path} with {response.code}: {answer}")
        return answer

    @inlineCallbacks
    def enableAuth(self, user: str, password: str, prefix: str) -> Any:
        """
        Turn etcd's auth on: a root user (password C{root}) whose token
        the test's calls send from now on, and C{user}, who may only read
        the keys under C{prefix}.
        """
        calls: list[tuple[str, dict[str, Any]]] = [
            ("/v3/auth/user/add", {"name": "root", "password": "root"}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/role/add", {"name": "reader"}),
            (
                "/v3/auth/role/grant",
                {
                    "name": "reader",
                    "perm": {
                        "permType": "READ",
                        "key": _b64(prefix.encode()),
                        "range_end": _b64(prefixEnd(prefix.encode())),
                    },
                },
            ),
            ("/v3/auth/user/grant", {"user": user, "role": "reader"}),
            ("/v3/auth/enable", {}),
        ]
        for path, body in calls:
            yield self.call(path, body)
        yield self.authenticate()

    @inlineCallbacks
    def authenticate(self) -> Any:
        """
        Take a new root token (a restarted member forgets the old ones).
        """
        self.token = None
        answer = yield self.call("/v3/auth/authenticate", {"name": "root", "password": "root"})
        self.token = answer["token"]

    def put(self, key: str, value: str) -> Deferred[Any]:
        return self.call("/v3/kv/put", {"key": _b64(key.encode()), "value": _b64(value.encode())})

    def delete(self, key: str) -> Deferred[Any]:
        return self.call("/v3/kv/deleterange", {"key": _b64(key.encode())})

    def putAll(self, values: dict[str, str]) -> Deferred[Any]:
        """
        Put every key of C{values} in one transaction: at one revision.
        """
        puts = [
            {"request_put": {"key": _b64(k.encode()), "value": _b64(v.encode())}}
            for k, v in values.items()
        ]
        return self.call("/v3/kv/txn", {"success": puts})

    def deletePrefix(self, prefix: str) -> Deferred[Any]:
        """
        Delete every key under C{prefix} at once, as C{etcdctl del --prefix}.
        """
        key = prefix.encode()
        return self.call(
            "/v3/kv/deleterange", {"key": _b64(key), "range_end": _b64(prefixEnd(key))}
        )

    @inlineCallbacks
    def compact(self) -> Any:
        """
        Compact etcd's history up to its current revision.
        """
        answer = yield self.call("/v3/kv/range", {"key": _b64(b"/")})
        revision = int(answer["header"]["revision"])
        yield self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


class _Refused(AssertionError):
    """
    etcd answered a call of the test with another status than 200.
    """


class EtcdTLSFiles:
    """
    The certificates of an etcd member that serves its clients over TLS
    and asks them for a certificate, written in C{directory} from a new
    test authority (L{tests.certificates.Authority}):

    @ivar root: the root certificate, which clients trust.
    @ivar clientCertificate: a client certificate for lbproxy (and the
        test's calls), and C{clientKey} its key.
    """

    def __init__(self, directory: str) -> None:
        from tests.certificates import Authority, keyPEM, pem, writeSecret

        os.makedirs(directory, exist_ok=True)
        authority = Authority("etcd test")

        def write(name: str, data: bytes) -> str:
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(data)
            return path

        # etcd's gateway dials etcd's own gRPC with the server's
        # certificate as its client certificate: it must be good for both.
        server, serverKey = authority.issue(["127.0.0.1"], client=True)
        self.serverChain = write("server.pem", pem(server) + pem(authority.intermediate))
        self.serverKey = writeSecret(os.path.join(directory, "server-key.pem"), keyPEM(serverKey))
        # etcd trusts the root only: clients send the intermediate after
        # their certificate.
        self.root = write("ca.pem", pem(authority.root))
        # etcd 3.4's gateway answers 400 to a client certificate with a
        # common name ("CommonName of client sending a request against
        # gateway will be ignored"): its subject is left empty.
        client, clientKey = authority.issue(["lbproxy"], client=True, commonName=False)
        self.clientCertificate = write("client.pem", pem(client) + pem(authority.intermediate))
        self.clientKey = writeSecret(os.path.join(directory, "client-key.pem"), keyPEM(clientKey))

    def serverArguments(self) -> list[str]:
        """
        etcd's arguments for these files.
        """
        return [
            "--cert-file", self.serverChain,
            "--key-file", self.serverKey,
            "--trusted-ca-file", self.root,
            "--client-cert-auth",
        ]

    def clientPolicy(self) -> Any:
        """
        An L{IPolicyForHTTPS} that trusts the root and shows the client
        certificate.
        """
        from lbproxy._config import UpstreamConfig
        from lbproxy._etcd import EtcdTLS
        from lbproxy._etcdsource import etcdTLS

        tls = etcdTLS(
            UpstreamConfig(
                "etcd",
                (),
                etcdEndpoints=("https://127.0.0.1:1",),
                etcdCA=self.root,
                etcdCertificate=self.clientCertificate,
                etcdKey=self.clientKey,
            )
        )
        assert isinstance(tls, EtcdTLS)
        return tls


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def lbproxy(name: str, configPath: str) -> Watched:
    """
    Start C{twistd -n lbproxy --config configPath}.
    """
    return spawn(
        name,
        _TWISTD + ["-n", "--pidfile=", "lbproxy", "--config", configPath],
        env=_ENV,
    )


__all__ = ["Etcd", "Watched", "json", "lbproxy", "spawn", "waitUntil"]


class NamedBackend(Resource):
    """
    A backend of the etcd and fleet tests: answers C{GET} with its name,
    so that a response says which backend it came from.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Any) -> bytes:
        return self.name
