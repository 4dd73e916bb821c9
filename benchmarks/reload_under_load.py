"""
Reloads and admin changes under steady load: does lbproxy drop a request?

    python benchmarks/reload_under_load.py                 # both modes
    python benchmarks/reload_under_load.py --mode hup      # SIGHUPs only
    python benchmarks/reload_under_load.py --mode patch    # API changes only
    python benchmarks/reload_under_load.py --workers 2     # workers mode

Loopback only (127.0.0.1, ports chosen by the OS), bounded in time (each
mode takes about 15 s, and a guard stops the reactor after 120 s), and
every process it starts is stopped by its PID at the end.  Each mode
starts, as subprocesses:

  - four backends, the C{[demo:b1]} to C{[demo:b4]} sections of one
    C{twistd -n lbproxy} (each answers with its name);
  - lbproxy, C{twistd -n --pidfile= lbproxy} on a file of this script's
    making, balancing over three of them, with an C{[admin]} listener.

Then C{--clients} clients (Twisted's L{Agent} on persistent keep-alive
connections, one request in flight each) send GETs for the whole run,
while:

  - C{hup}: 20 SIGHUPs, one every C{--every} seconds, each waited for in
    lbproxy's log (reloaded, or refused) before the next: half of them
    (the even ones) after a change of the file, to another set of three
    backends or other weights; the others to the same file, but one of
    those (the 14th) to a broken file, which must be refused while the
    running configuration goes on serving (the next one restores a good
    file);
  - C{patch}: 20 C{PATCH} requests to the admin API, draining a backend
    and enabling it again, in turn over the three.

It reports the requests sent, the answers by status and the failed
requests (target: 0 non-2xx), which backend answered how many, and the
state each backend ended in, as the admin API shows it (target: that of
the last good file, every backend up).  The exit status is 0 when every
target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The soak's helpers: free ports, waiting for a listener, stopping by PID.
from soak import _freePort, _stop, _twistd, _waitListening  # noqa: E402

#: SIGHUPs or PATCH requests per mode.
CHANGES = 20
#: The SIGHUP (counted from 0) that follows a broken file.
BROKEN = 13
#: Seconds of load before the first change and after the last.
SETTLE = 2.0
#: The most a whole run may take before the reactor is stopped.
GUARD = 120.0
#: The token of the admin API.
TOKEN = "bench"
#: The backends: names of the demo sections.
NAMES = ["b1", "b2", "b3", "b4"]


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """
    Start C{twistd -n lbproxy} on C{config}, its output going to C{log}.
    """
    with open(log, "ab") as out:
        return subprocess.Popen(
            [_twistd(), "-n", "--pidfile=", "lbproxy", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )


def _version(step: int) -> tuple[list[str], dict[str, int]]:
    """
    The backends and weights of the C{step}th change of the file: three of
    the four backends, in turn, with weights from 1 to 3.
    """
    left = NAMES[step % 4]
    names = [n for n in NAMES if n != left]
    return names, {n: 1 + (step + i) % 3 for i, n in enumerate(names)}


def _proxyConfig(
    port: int,
    adminPort: int,
    backends: dict[str, int],
    names: list[str],
    weights: dict[str, int],
    workers: int,
    broken: bool = False,
) -> str:
    servers = "".join(
        f"    127.0.0.1:{backends[n]} weight={'heavy' if broken else weights[n]}\n"
        for n in names
    )
    return (
        f"[lbproxy]\nlisten = tcp:{port}:interface=127.0.0.1\naccess_log = off\n"
        f"workers = {workers}\n"
        f"[upstream:app]\nservers =\n{servers}"
        "[vhost:app]\ndefault = yes\nupstream = app\n"
        f"[admin]\nlisten = tcp:{adminPort}:interface=127.0.0.1\ntoken = {TOKEN}\n"
    )


def _write(path: Path, text: str) -> None:
    """
    Replace C{path} with C{text} at once (a reload never reads half).
    """
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@inlineCallbacks
def run(mode: str, args: argparse.Namespace) -> Any:
    """
    One mode's run, in the running reactor.

    @return: a L{Deferred} that fires with its figures.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"lbproxy-reload-{mode}-"))
    backendPorts = {n: _freePort() for n in NAMES}
    demos = directory / "backends.ini"
    demos.write_text(
        "".join(
            f"[demo:{n}]\nlisten = tcp:{p}:interface=127.0.0.1\n"
            for n, p in backendPorts.items()
        )
    )
    proxyPort, adminPort = _freePort(), _freePort()
    config = directory / "site.ini"
    names, weights = _version(0)
    lastGood = (names, weights)
    _write(
        config,
        _proxyConfig(proxyPort, adminPort, backendPorts, names, weights, args.workers),
    )
    log = directory / "lbproxy.log"
    backends: Optional[subprocess.Popen[bytes]] = None
    proxy: Optional[subprocess.Popen[bytes]] = None
    figures: dict[str, Any] = {"mode": mode, "workers": args.workers, "clients": args.clients}
    try:
        backends = _start(demos, directory / "backends.log")
        for port in backendPorts.values():
            _waitListening(port, backends, 30)
        proxy = _start(config, log)
        _waitListening(proxyPort, proxy, 30)
        _waitListening(adminPort, proxy, 30)

        url = b"http://127.0.0.1:%d/" % proxyPort
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = args.clients
        pool.retryAutomatically = False
        agent = Agent(reactor, pool=pool)
        admin = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        statuses: Counter[str] = Counter()
        answeredBy: Counter[str] = Counter()
        failures: list[tuple[float, str]] = []
        changes: list[tuple[float, str]] = []
        state = {"running": True}
        began = time.monotonic()

        @inlineCallbacks
        def client() -> Any:
            while state["running"]:
                try:
                    d = agent.request(b"GET", url)
                    d.addTimeout(10, reactor)
                    response = yield d
                    body = readBody(response)
                    body.addTimeout(10, reactor)
                    content = yield body
                    status = str(response.code)
                    if 200 <= response.code < 300:
                        answeredBy[content.decode("ascii", "replace").strip()] += 1
                except Exception as e:
                    status = type(e).__name__
                statuses[status] += 1
                if not status.startswith("2"):
                    failures.append((time.monotonic() - began, status))

        def logCount(what: bytes) -> int:
            return log.read_bytes().count(what)

        @inlineCallbacks
        def waitLog(what: bytes, count: int) -> Any:
            for _ in range(200):
                if logCount(what) >= count:
                    return True
                yield deferLater(reactor, 0.025, lambda: None)
            return False

        @inlineCallbacks
        def adminRequest(method: bytes, path: str, body: Optional[dict[str, Any]] = None) -> Any:
            producer = None
            if body is not None:
                producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
            d = admin.request(
                method,
                b"http://127.0.0.1:%d%s" % (adminPort, path.encode()),
                Headers({b"Authorization": [f"Bearer {TOKEN}".encode()]}),
                producer,
            )
            d.addTimeout(10, reactor)
            response = yield d
            content = yield readBody(response)
            return response.code, json.loads(content)

        @inlineCallbacks
        def hups() -> Any:
            nonlocal lastGood
            taken = refused = 0
            wrong = []
            for step in range(CHANGES):
                broken = step == BROKEN
                if step % 2 == 0:
                    lastGood = _version(step // 2 + 1)
                    what = "change: " + ", ".join(
                        f"{n} weight={w}" for n, w in lastGood[1].items()
                    )
                elif broken:
                    what = "broken file"
                else:
                    what = "same file"
                _write(
                    config,
                    _proxyConfig(
                        proxyPort,
                        adminPort,
                        backendPorts,
                        *lastGood,
                        args.workers,
                        broken=broken,
                    ),
                )
                before = logCount(b"reloaded "), logCount(b"refused, the running")
                os.kill(proxy.pid, signal.SIGHUP)
                changes.append((time.monotonic() - began, what))
                if broken:
                    ok = yield waitLog(b"refused, the running", before[1] + args.workers)
                    refused += 1
                else:
                    ok = yield waitLog(b"reloaded ", before[0] + args.workers)
                    taken += 1
                if not ok:
                    wrong.append(f"SIGHUP {step} ({what}) not seen in the log")
                yield deferLater(reactor, args.every, lambda: None)
            figures["reloads_taken"] = logCount(b"reloaded ") // args.workers
            figures["reloads_refused"] = logCount(b"refused, the running") // args.workers
            figures["reloads_expected"] = (taken, refused)
            figures["unseen"] = wrong

        @inlineCallbacks
        def patches() -> Any:
            names = lastGood[0]
            codes: Counter[int] = Counter()
            errors = []
            for step in range(CHANGES):
                name = names[(step // 2) % len(names)]
                wanted = "drain" if step % 2 == 0 else "up"
                code, answer = yield adminRequest(
                    b"PATCH",
                    f"/api/upstreams/app/servers/127.0.0.1:{backendPorts[name]}",
                    {"state": wanted},
                )
                codes[code] += 1
                changes.append((time.monotonic() - began, f"{wanted} {name}: {code}"))
                if code != 200:
                    errors.append(f"PATCH {step} ({wanted} {name}): {code} {answer.get('error')}")
                yield deferLater(reactor, args.every, lambda: None)
            figures["patch_answers"] = dict(codes)
            figures["unseen"] = errors

        @inlineCallbacks
        def ready() -> Any:
            """
            Wait until every worker answers the admin API (the parent
            listens before its workers have started).
            """
            for _ in range(300):
                try:
                    code, listing = yield adminRequest(b"GET", "/api/upstreams")
                except Exception:
                    code, listing = None, {}
                workers = listing.get("workers", [{"answered": True}])
                if code == 200 and all(w["answered"] for w in workers):
                    return
                yield deferLater(reactor, 0.1, lambda: None)
            raise RuntimeError("the workers never all answered the admin API")

        @inlineCallbacks
        def main() -> Any:
            yield ready()
            clients = [client() for _ in range(args.clients)]
            yield deferLater(reactor, SETTLE, lambda: None)
            yield (hups() if mode == "hup" else patches())
            yield deferLater(reactor, SETTLE, lambda: None)
            state["running"] = False
            yield DeferredList(clients)
            figures["seconds"] = round(time.monotonic() - began, 1)
            yield pool.closeCachedConnections()
            code, listing = yield adminRequest(b"GET", "/api/upstreams/app")
            figures["end"] = listing["backends"]

        done: Deferred[Any] = main()
        yield done
        figures["statuses"] = dict(statuses)
        figures["sent"] = sum(statuses.values())
        figures["non_2xx"] = sum(n for s, n in statuses.items() if not s.startswith("2"))
        figures["failures"] = failures[:20]
        figures["answered_by"] = {
            f"{n} (127.0.0.1:{backendPorts[n]})": answeredBy[n] for n in NAMES
        }
        figures["changes"] = changes
        expected = {f"127.0.0.1:{backendPorts[n]}": lastGood[1][n] for n in lastGood[0]}
        figures["expected_end"] = expected
        return figures
    finally:
        _stop(proxy)
        _stop(backends)
        if args.keep_logs:
            print(f"(logs kept in {directory})")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def report(figures: dict[str, Any]) -> bool:
    """
    Print one mode's figures; whether its targets are met.
    """
    mode = figures["mode"]
    print(
        f"== mode {mode}: {CHANGES} "
        + ("SIGHUPs" if mode == "hup" else "PATCH drains and enables")
        + f", {figures['clients']} keep-alive clients, workers = {figures['workers']}"
    )
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(figures["statuses"].items()))
    print(
        f"requests sent: {figures['sent']} in {figures['seconds']} s ({statuses}); "
        f"non-2xx or failed: {figures['non_2xx']}"
    )
    for t, status in figures["failures"]:
        print(f"  at {t:.2f} s: {status}")
    ok = figures["non_2xx"] == 0
    if mode == "hup":
        taken, refused = figures["reloads_expected"]
        print(
            f"reloads: {figures['reloads_taken']} taken (expected {taken}), "
            f"{figures['reloads_refused']} refused (expected {refused}: the broken file)"
        )
        for line in figures["unseen"]:
            print("  " + line)
        ok = ok and (figures["reloads_taken"], figures["reloads_refused"]) == (taken, refused)
        ok = ok and not figures["unseen"]
    else:
        print(f"PATCH answers: {figures['patch_answers']}")
        for line in figures["unseen"]:
            print("  " + line)
        ok = ok and figures["patch_answers"] == {200: CHANGES}
    print("answers by backend: " + ", ".join(f"{k} {v}" for k, v in figures["answered_by"].items()))
    print("backends at the end (admin API), expected: the last good file, all up:")
    expected = figures["expected_end"]
    seen = {}
    for b in figures["end"]:
        seen[b["name"]] = b["weight"]
        print(f"  {b['name']}: state {b['state']}, weight {b['weight']}")
        ok = ok and b["state"] == "up"
    if seen != expected:
        print(f"  expected {expected}")
        ok = False
    print("targets met" if ok else "TARGETS MISSED")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["hup", "patch", "both"], default="both")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive clients")
    parser.add_argument("--workers", type=int, default=1, help="lbproxy's workers setting")
    parser.add_argument(
        "--every", type=float, default=0.4, help="seconds between changes (after each is seen)"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if not (1 <= args.clients <= 32 and 1 <= args.workers <= 4 and 0 <= args.every <= 2):
        parser.error("--clients 1..32, --workers 1..4, --every 0..2")
    # Agent's transports on Twisted 24.7 lack abortConnection; readBody
    # warns about it for every response.
    warnings.filterwarnings("ignore", category=DeprecationWarning, message="Using readBody")
    modes = ["hup", "patch"] if args.mode == "both" else [args.mode]
    results: list[dict[str, Any]] = []
    problems: list[Any] = []

    @inlineCallbacks
    def everyMode() -> Any:
        for mode in modes:
            results.append((yield run(mode, args)))

    def start() -> None:
        done = everyMode()
        done.addErrback(problems.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    guard = reactor.callLater(GUARD * len(modes), reactor.stop)
    reactor.run()
    if guard.active():
        guard.cancel()
    if problems:
        problems[0].raiseException()
    if len(results) != len(modes):
        print(f"TARGETS MISSED: stopped after {GUARD * len(modes):g} s")
        return 1
    ok = True
    for figures in results:
        ok = report(figures) and ok
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
