"""
An operator's first hour with C{twistd -n lbproxy}, as real processes: the
mistakes that stop it from starting (a port in use or below 1024, a
configuration that cannot be read, an access log that cannot be written)
each print one line and exit 1 without a traceback; a second SIGINT stops
it at once while a request is in flight; C{--version} names lbproxy; and
the access log's lines are the ones nginx writes for the same request.

Every wait is on an event (output seen, a process ended) and bounded.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy._startup import unopenablePort
from lbproxy.testing import startServer
from tests.integration.ports import ReservedPort

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

#: The longest a process may take to start or to end, in seconds.
_WAIT = 30.0

_SITE = """
[lbproxy]
listen = {listen}
access_log = {accessLog}
workers = {workers}

[upstream:app]
servers = 127.0.0.1:{backend}

[vhost:app]
default = yes
upstream = app
"""

_NGINX = "/usr/sbin/nginx"


class _Twistd(ProcessProtocol):
    """
    A C{twistd} process: its output, its exit status, and a L{Deferred}
    for a pattern in its output.
    """

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = Deferred()
        self.code = None
        self.waiting = []

    def outReceived(self, data):
        self.out += data
        self.check()

    def errReceived(self, data):
        self.err += data
        self.check()

    def check(self):
        for pattern, d in list(self.waiting):
            match = re.search(pattern, self.out + self.err)
            if match:
                self.waiting.remove((pattern, d))
                d.callback(match)

    def waitFor(self, pattern):
        d = Deferred()
        self.waiting.append((pattern, d))
        self.check()
        return d

    def processEnded(self, reason):
        self.code = reason.value.exitCode
        for pattern, d in self.waiting:
            d.errback(AssertionError(f"process ended before {pattern!r}"))
        self.waiting = []
        self.ended.callback(self.code)


def _nobody():
    """
    The uid and gid of C{nobody}, to run twistd unprivileged when the tests
    run as root; L{None} when they do not (they are unprivileged already).
    """
    if os.getuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        raise SkipTest("running as root and there is no user nobody") from None
    return entry.pw_uid, entry.pw_gid


class _Hold(Protocol):
    """
    A backend that reads requests and never answers.
    """

    def connectionMade(self):
        self.factory.connected.append(self)
        waiting, self.factory.waiting = self.factory.waiting, []
        for d in waiting:
            d.callback(self)


class _Hello(Resource):
    """
    A backend that answers every C{GET} with a 200.
    """

    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class _Raw(Protocol):
    def __init__(self):
        self.data = b""
        self.closed = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data)


class FirstHourTests(TestCase):
    timeout = 120

    def writeConfig(
        self, listen="tcp:0:interface=127.0.0.1", accessLog="off", backend=9, workers=1
    ):
        path = FilePath(self.mktemp())
        path.setContent(
            _SITE.format(
                listen=listen, accessLog=accessLog, backend=backend, workers=workers
            ).encode()
        )
        return path.path

    def holdingBackend(self):
        """
        Listen on 127.0.0.1 as a backend that accepts requests and never
        answers them.

        @return: its factory and its port.
        """
        factory = Factory.forProtocol(_Hold)
        factory.connected = []
        factory.waiting = []
        backend = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        return factory, backend.getHost().port

    @inlineCallbacks
    def requestInFlight(self, port, factory):
        """
        Connect a client to the proxy on C{port} and send it a request; fire
        with the client once the request has reached the holding backend of
        C{factory}.
        """
        client = _Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.transport.abortConnection())
        atBackend = Deferred()
        factory.waiting.append(atBackend)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        yield atBackend
        return client

    @inlineCallbacks
    def stopTwice(self, process, transport, client, firstStop):
        """
        SIGINT C{process}; once it says C{firstStop} (a regular expression)
        and is still running, SIGINT it again: it must end within 10 s,
        without a traceback, and the C{client} connection be closed.

        @return: a L{Deferred} firing with the process's output.
        """
        transport.signalProcess("INT")
        yield process.waitFor(firstStop)
        self.assertIsNone(process.code)
        transport.signalProcess("INT")
        start = reactor.seconds()
        yield process.ended
        took = reactor.seconds() - start
        output = process.out + process.err
        self.assertLess(took, 10, output)
        self.assertNotIn(b"Traceback", output)
        self.assertNotIn(b"ReactorNotRunning", output)
        self.assertEqual((yield client.closed), b"")
        return output

    def spawn(self, *args, user=None, twistdOptions=("-n", "--pidfile=")):
        """
        Start C{twistd -n --pidfile= ARGS} (C{twistdOptions} instead of
        C{-n --pidfile=} if given), as C{user} (a uid and gid) if given; it
        is killed at the end of the test if still running.
        """
        process = _Twistd()
        kwargs = {}
        if user is not None:
            kwargs = dict(uid=user[0], gid=user[1])
        transport = reactor.spawnProcess(
            process,
            _TWISTD[0],
            _TWISTD + list(twistdOptions) + list(args),
            env=_ENV,
            path=os.getcwd(),
            **kwargs,
        )
        timer = reactor.callLater(_WAIT, transport.signalProcess, "KILL")

        def cancel(result):
            if timer.active():
                timer.cancel()
            return result

        process.ended.addBoth(cancel)

        def stop():
            if transport.pid is not None:
                transport.signalProcess("KILL")
            return process.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))

        self.addCleanup(stop)
        return process, transport

    @inlineCallbacks
    def assertOneLine(self, process, expected):
        """
        The process ends with status 1 and, on standard error, one line:
        C{twistd lbproxy: } and C{expected}; no traceback anywhere.
        """
        code = yield process.ended
        output = process.out + process.err
        self.assertNotIn(b"Traceback", output)
        self.assertNotIn(b"#critical", process.out)
        lines = process.err.decode().splitlines()
        self.assertEqual(len(lines), 1, process.err)
        self.assertEqual(lines[0], "twistd lbproxy: " + expected)
        self.assertEqual(code, 1, output)

    @inlineCallbacks
    def unprivileged(self):
        """
        The uid and gid to run twistd as so that it is not root: C{nobody}'s
        when the tests run as root (skipped when C{nobody} cannot run this
        Python), else L{None} (the tests' own user is unprivileged).
        """
        user = _nobody()
        if user is not None:
            probe = _Twistd()
            reactor.spawnProcess(
                probe,
                sys.executable,
                [sys.executable, "-c", "import twisted"],
                env=_ENV,
                path="/",
                uid=user[0],
                gid=user[1],
            )
            if (yield probe.ended) != 0:
                raise SkipTest(f"user nobody cannot run {sys.executable} here")
        return user

    def test_portInUse(self):
        """
        A port already in use: one line naming the address, status 1.
        """
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        path = self.writeConfig(listen=f"tcp:{port}:interface=127.0.0.1")
        process, _ = self.spawn("lbproxy", "--config", path)
        return self.assertOneLine(
            process, f"cannot listen on 127.0.0.1:{port}: Address already in use"
        )

    @inlineCallbacks
    def test_privilegedPort(self):
        """
        A port below 1024 for a user that may not bind it: one line saying
        so and what to do, status 1.
        """
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            if int(f.read()) <= 1023:
                raise SkipTest("any user may bind port 1023 here")
        user = yield self.unprivileged()
        path = self.writeConfig(listen="tcp:1023:interface=127.0.0.1")
        os.chmod(os.path.dirname(os.path.abspath(path)), 0o755)
        process, _ = self.spawn("lbproxy", "--config", path, user=user)
        yield self.assertOneLine(
            process,
            "cannot listen on 127.0.0.1:1023: Permission denied (a port below "
            "1024 needs root, with --uid and --gid to run as another user once "
            "listening, or CAP_NET_BIND_SERVICE)",
        )

    def test_missingConfig(self):
        """
        A configuration file that is not there: one line, status 1.
        """
        path = os.path.abspath(self.mktemp())
        process, _ = self.spawn("lbproxy", "--config", path)
        return self.assertOneLine(
            process, f"cannot read the configuration {path}: No such file or directory"
        )

    @inlineCallbacks
    def test_unreadableConfig(self):
        """
        A configuration file that the user cannot read: one line, status 1.
        """
        user = yield self.unprivileged()
        path = self.writeConfig()
        os.chmod(os.path.dirname(os.path.abspath(path)), 0o755)
        os.chmod(path, 0)
        process, _ = self.spawn("lbproxy", "--config", path, user=user)
        yield self.assertOneLine(
            process, f"cannot read the configuration {path}: Permission denied"
        )

    def test_accessLogDirectoryMissing(self):
        """
        An access log in a directory that does not exist: one line, status 1,
        found before anything starts.
        """
        log = os.path.abspath(os.path.join(self.mktemp(), "access.log"))
        path = self.writeConfig(accessLog=log)
        process, _ = self.spawn("lbproxy", "--config", path)
        return self.assertOneLine(
            process, f"cannot write the access log {log}: No such file or directory"
        )

    def test_accessLogUnwritableAfterUid(self):
        """
        Run as root with C{--uid}: the access log is opened once the
        privileges are dropped, and a file the user may not write stops the
        start with one line, status 1.
        """
        if os.getuid() != 0:
            raise SkipTest("needs root, to drop privileges with --uid")
        uid, gid = _nobody()
        directory = FilePath(self.mktemp())
        directory.makedirs()
        os.chmod(directory.path, 0o700)
        log = directory.child("access.log").path
        path = self.writeConfig(accessLog=log)
        process, _ = self.spawn(
            "--uid", str(uid), "--gid", str(gid), "lbproxy", "--config", path
        )
        return self.assertOneLine(process, f"cannot open {log}: Permission denied")

    @inlineCallbacks
    def test_version(self):
        """
        C{twistd lbproxy --version} names lbproxy's version and Twisted's.
        """
        import twisted
        from lbproxy import __version__

        process, _ = self.spawn("lbproxy", "--version")
        code = yield process.ended
        self.assertEqual(code, 0, process.err)
        self.assertIn(
            f"lbproxy {__version__} (Twisted {twisted.__version__}, ".encode(),
            process.out,
        )

    @inlineCallbacks
    def test_cleanDrainExitsZero(self):
        """
        SIGTERM with a request in flight: the process waits for it (the
        client gets its whole response) and then ends with status 0, not
        by the signal.
        """
        factory, backendPort = self.holdingBackend()
        path = self.writeConfig(backend=backendPort)
        process, transport = self.spawn("lbproxy", "--config", path)
        match = yield process.waitFor(rb"ProxySite starting on (\d+)")
        port = int(match.group(1))
        client = yield self.requestInFlight(port, factory)
        transport.signalProcess("TERM")
        yield process.waitFor(rb"a second SIGINT or SIGTERM stops at once")
        self.assertIsNone(process.code)
        factory.connected[0].transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ndrain"
        )
        code = yield process.ended
        output = process.out + process.err
        self.assertEqual(code, 0, output)
        self.assertNotIn(b"Traceback", output)
        received = yield client.closed
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"), received)
        self.assertTrue(received.endswith(b"\r\n\r\ndrain"), received)

    @inlineCallbacks
    def loggingToFile(self):
        """
        Start C{twistd -n lbproxy} with its access log in a new directory
        and a backend of this process's.

        @return: a L{Deferred} that fires, once it listens, with the
            directory, the access log's L{FilePath}, the L{_Twistd}, its
            process transport and the port it listens on.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        log = directory.child("access.log")
        backend = yield startServer(_Hello(), reactor)
        self.addCleanup(backend.stop)
        path = directory.child("site.ini")
        path.setContent(
            _SITE.format(
                listen="tcp:0:interface=127.0.0.1",
                accessLog=log.path,
                backend=backend.port,
                workers=1,
            ).encode()
        )
        process, transport = self.spawn("lbproxy", "--config", path.path)
        match = yield process.waitFor(rb"ProxySite starting on (\d+)")
        port = int(match.group(1))
        return directory, log, process, transport, port

    @inlineCallbacks
    def getOK(self, port, target):
        """
        GET C{target} from 127.0.0.1:C{port} on a connection of its own,
        and check that the answer is a 200.
        """
        client = _Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(
            b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % target
        )
        response = yield client.closed
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response)

    @inlineCallbacks
    def test_userSignalReopensAccessLog(self):
        """
        logrotate's way: the access log is moved away, lines go on into
        the moved file, and after SIGUSR1 into a new file of the old name;
        nothing else happens (no reload), and the process goes on serving.
        """
        directory, log, process, transport, port = yield self.loggingToFile()

        def get(target):
            return self.getOK(port, target)

        def lines(f):
            return f.getContent().count(b"\n") if f.exists() else 0

        yield get(b"/first")
        yield _waitUntil(self, lambda: lines(log) == 1, "the first line")
        moved = directory.child("access.log.1")
        log.moveTo(moved)
        yield get(b"/second")
        yield _waitUntil(self, lambda: lines(moved) == 2, "the second line, in the moved file")
        transport.signalProcess(signal.SIGUSR1)
        yield _waitUntil(self, log.exists, "a new access.log")
        yield get(b"/third")
        yield _waitUntil(self, lambda: lines(log) == 1, "the third line, in the new file")
        self.assertIn(b"/third", log.getContent())
        self.assertEqual(lines(moved), 2)
        self.assertIsNone(process.code)
        output = process.out + process.err
        self.assertNotIn(b"reloaded", output)
        self.assertNotIn(b"Traceback", output)

    @inlineCallbacks
    def test_stopWritesEveryLine(self):
        """
        The access log is written in batches (up to 1 s late); SIGTERM
        right after the last response still leaves a line for every
        request in the file once the process has ended.
        """
        directory, log, process, transport, port = yield self.loggingToFile()
        count = 40
        for n in range(count):
            yield self.getOK(port, b"/%d" % n)
        transport.signalProcess("TERM")
        code = yield process.ended
        self.assertEqual(code, 0, process.out + process.err)
        lines = log.getContent().decode("ascii").splitlines()
        self.assertEqual(
            [line.split('"')[1] for line in lines],
            ["GET /%d HTTP/1.1" % n for n in range(count)],
        )

    @inlineCallbacks
    def test_secondSigintStopsAtOnce(self):
        """
        A first SIGINT waits for the request in flight (to a backend that
        never answers); a second one aborts it, and the process ends at once
        without a traceback.
        """
        factory, backendPort = self.holdingBackend()
        path = self.writeConfig(backend=backendPort)
        process, transport = self.spawn("lbproxy", "--config", path)
        match = yield process.waitFor(rb"ProxySite starting on (\d+)")
        port = int(match.group(1))
        client = yield self.requestInFlight(port, factory)

        output = yield self.stopTwice(
            process, transport, client, rb"a second SIGINT or SIGTERM stops at once"
        )
        self.assertIn(b"stopping at once: aborting 1 client connection(s)", output)

    @inlineCallbacks
    def test_portInUseWithWorkers(self):
        """
        With C{workers = 2}, the parent opens the port: in use, it is the
        same one line and status 1.
        """
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        path = self.writeConfig(listen=f"tcp:{port}:interface=127.0.0.1", workers=2)
        process, _ = self.spawn("lbproxy", "--config", path)
        yield self.assertOneLine(
            process, f"cannot listen on 127.0.0.1:{port}: Address already in use"
        )

    def inTheBackground(self, path):
        """
        Start C{twistd lbproxy --config PATH} without C{-n}, with its PID
        file and log file in a new directory; the daemon it leaves, if any,
        is killed by the PID in its PID file at the end of the test.

        @return: the C{twistd} process (which ends once the daemon has
            started, or failed to), the PID file and the log file.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        pidfile, logfile = directory.child("twistd.pid"), directory.child("twistd.log")

        def killDaemon():
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.getContent()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass

        self.addCleanup(killDaemon)
        process, _ = self.spawn(
            "lbproxy",
            "--config",
            path,
            twistdOptions=(f"--pidfile={pidfile.path}", f"--logfile={logfile.path}"),
        )
        return process, pidfile, logfile

    @inlineCallbacks
    def test_portInUseInTheBackground(self):
        """
        Without C{-n}, a port in use is the same one line and status 1,
        said before twistd goes into the background (instead of twistd's
        two lines about a log file): no daemon is left, no PID file, no log.
        """
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        path = self.writeConfig(listen=f"tcp:{port}:interface=127.0.0.1")
        process, pidfile, logfile = self.inTheBackground(path)
        yield self.assertOneLine(
            process, f"cannot listen on 127.0.0.1:{port}: Address already in use"
        )
        self.assertFalse(pidfile.exists())
        self.assertFalse(logfile.exists())

    def test_unopenablePort(self):
        """
        The check made before twistd goes into the background reads the
        TCP port of C{tcp:}, C{tcp6:}, C{ssl:} and C{haproxy:} listeners,
        leaves other kinds alone, and names the first port it cannot open;
        the ports it opens are closed again.
        """
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        busy = taken.getHost().port
        # Reserved: a port that can be opened, every time, and that nothing
        # but this test listens on.
        reserved = ReservedPort()
        self.addCleanup(reserved.close)
        free = reserved.port
        line = f"cannot listen on 127.0.0.1:{busy}: Address already in use"
        self.assertIsNone(
            unopenablePort([f"tcp:{free}:interface=127.0.0.1", "unix:/nonexistent/x.sock"])
        )
        for description in [
            f"tcp:{busy}:interface=127.0.0.1",
            f"ssl:{busy}:interface=127.0.0.1:privateKey=key.pem",
            f"haproxy:tcp:{busy}:interface=127.0.0.1",
            f"haproxy:ssl:port={busy}:interface=127.0.0.1",
        ]:
            self.assertEqual(
                unopenablePort([f"tcp:{free}:interface=127.0.0.1", description]), line
            )
        # Nothing listens on it any more: with SO_REUSEADDR (as the check
        # opens it), only a listening socket would stop this.
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", free))
            again.listen()

    @inlineCallbacks
    def test_inTheBackground(self):
        """
        Without C{-n}, twistd ends with status 0 once the daemon listens;
        the daemon's log says that C{access_log = -} goes nowhere, it
        answers, and SIGTERM to the PID of its PID file stops it and
        removes the file.
        """
        path = self.writeConfig(accessLog="-")
        process, pidfile, logfile = self.inTheBackground(path)
        self.assertEqual((yield process.ended), 0, process.out + process.err)
        self.assertEqual(process.out + process.err, b"")
        pid = int(pidfile.getContent())
        self.assertTrue(_running(pid))
        # tcp:0: the port is the one the daemon's log names.
        listening = re.compile(rb"ProxySite starting on (\d+)\n")
        yield _waitUntil(
            self, lambda: listening.search(logfile.getContent()), "the port in the log", _WAIT
        )
        (port,) = [int(number) for number in listening.findall(logfile.getContent())]
        self.assertIn(
            b"[lbproxy.tap#warn] access_log = - writes to standard output, which "
            b"twistd sends to /dev/null once it runs in the background",
            logfile.getContent(),
        )
        client = _Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertTrue((yield client.closed).startswith(b"HTTP/1.1 502 "))
        os.kill(pid, signal.SIGTERM)
        for _ in range(int(_WAIT / 0.05)):
            if not _running(pid):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(_running(pid))
        self.assertFalse(pidfile.exists())
        self.assertIn(b"Server Shut Down.", logfile.getContent())

    @inlineCallbacks
    def test_secondSigintStopsWorkersAtOnce(self):
        """
        With C{workers = 2}, a first SIGINT to the parent stops the workers
        gracefully (the request in flight is waited for); a second one ends
        them at once, and every process ends without a traceback.
        """
        factory, backendPort = self.holdingBackend()
        path = self.writeConfig(backend=backendPort, workers=2)
        process, transport = self.spawn("lbproxy", "--config", path)
        pids = set()

        def killWorkers():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

        self.addCleanup(killWorkers)
        yield process.waitFor(rb"(?s)(Starting factory <lbproxy._site.ProxySite.*){2}")
        pids.update(
            int(pid) for pid in re.findall(rb"worker \d+ started, pid (\d+)", process.out + process.err)
        )
        self.assertEqual(len(pids), 2)
        # tcp:0: the parent's socket, which each worker names as it adopts it.
        ports = re.findall(rb"ProxySite starting on (\d+)\n", process.out + process.err)
        self.assertEqual(len(ports), 2)
        self.assertEqual(len(set(ports)), 1, ports)
        port = int(ports[0])

        client = yield self.requestInFlight(port, factory)

        yield self.stopTwice(process, transport, client, rb"passing signal \S+ on to 2 worker")
        for pid in pids:
            self.assertFalse(os.path.exists(f"/proc/{pid}") and _running(pid), pid)


def _running(pid):
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


_NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log combined;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "hello\\n"; }}
        location /missing {{ return 404; }}
    }}
}}
"""


@inlineCallbacks
def _waitUntil(testCase, condition, what, timeout=10.0):
    """
    Poll C{condition} every 20 ms until it holds; fail C{testCase} after
    C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            testCase.fail(f"timed out waiting for {what}")
        yield deferLater(reactor, 0.02, lambda: None)


def _masked(line):
    """
    C{line} with its time (the first bracketed field) masked.
    """
    return re.sub(r"\[[^]]*\]", "[TIME]", line, count=1)


class NginxAccessLogTests(TestCase):
    """
    lbproxy in front of a real nginx: for each request, the line lbproxy
    logs and the line nginx logs for the same request (forwarded by
    lbproxy, so the same request line, headers, status and body) are the
    same, the time apart.
    """

    timeout = 60

    def waitFor(self, condition, what, timeout=10.0):
        return _waitUntil(self, condition, what, timeout)

    @inlineCallbacks
    def startNginx(self):
        nginx = shutil.which("nginx") or (_NGINX if os.path.exists(_NGINX) else None)
        if nginx is None:
            raise SkipTest("nginx is not installed")
        directory = FilePath(self.mktemp())
        directory.makedirs()
        # Reserved until the end of the test: nginx refuses port 0.
        reserved = ReservedPort()
        self.addCleanup(reserved.close)
        port = reserved.port
        conf = directory.child("nginx.conf")
        conf.setContent(_NGINX_CONF.format(dir=directory.path, port=port).encode())
        process = _Twistd()
        transport = reactor.spawnProcess(
            process,
            nginx,
            [nginx, "-p", directory.path, "-c", conf.path, "-e", directory.child("error.log").path],
            env=dict(os.environ),
        )
        timer = reactor.callLater(_WAIT, transport.signalProcess, "KILL")

        def stop():
            if timer.active():
                timer.cancel()
            if transport.pid is not None:
                transport.signalProcess(signal.SIGQUIT)
            return process.ended

        self.addCleanup(stop)

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        yield self.waitFor(lambda: listening() or process.code is not None, "nginx")
        if process.code is not None:
            self.fail(f"nginx did not start: {process.err!r}")
        return port, directory.child("access.log")

    @inlineCallbacks
    def test_sameLinesAsNginx(self):
        backend, nginxLog = yield self.startNginx()
        ours = FilePath(self.mktemp())
        config = parseConfigText(
            _SITE.format(
                listen="tcp:0:interface=127.0.0.1",
                accessLog=ours.path,
                backend=backend,
                workers=1,
            ),
            "site.ini",
        )
        service = LoadBalancerService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        (listening,) = yield service.whenListening()
        port = listening.getHost().port

        requests = [
            b"GET /a/b?c=d&e=%22x HTTP/1.1\r\nHost: example.com\r\n"
            b"User-Agent: t\"e\\st \xc3\xa9\r\nReferer: http://ref.example/x\r\n"
            b"Authorization: Basic YWxpY2U6c2VjcmV0\r\nConnection: close\r\n\r\n",
            b"GET /missing HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        ]
        for number, request in enumerate(requests, 1):
            client = _Raw()
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            client.transport.write(request)
            response = yield client.closed
            self.assertTrue(response.startswith(b"HTTP/1."), response)

            def logged(number=number):
                return all(
                    f.exists() and f.getContent().count(b"\n") >= number
                    for f in (ours, nginxLog)
                )

            yield self.waitFor(logged, f"line {number} in both logs")
        theirs = nginxLog.getContent().decode("ascii").splitlines()
        mine = ours.getContent().decode("ascii").splitlines()
        self.assertEqual(len(mine), len(requests))
        self.assertEqual([_masked(line) for line in mine], [_masked(line) for line in theirs])
        self.assertIn('"GET /missing HTTP/1.1" 404 ', mine[1])
        time = re.compile(r"^\S+ - \S+ \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] ")
        for line in mine + theirs:
            self.assertTrue(time.match(line), line)
