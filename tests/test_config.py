"""
Tests for L{lbproxy._config}: every value parser and every class of error.
"""

from __future__ import annotations

import ast
import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import MISSING
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

import lbproxy
from lbproxy._config import (
    _NOT_YET,
    DEFAULT_ADMIN_LISTEN,
    AdminConfig,
    defaultOf,
    parseServer,
    sectionKeys,
)
from lbproxy._values import (
    BadItems,
    closestName,
    didYouMean,
    editDistance,
    listOf,
    parseBool,
    parseOptionalPercent,
    parsePercent,
    parseStatusRanges,
    parseStatusSet,
)
from lbproxy.config import (
    ConfigError,
    DemoConfig,
    HealthCheckConfig,
    ProxyConfig,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
    VHostConfig,
    parseConfig,
    parseConfigText,
    parseDuration,
    parseSize,
)

_GOOD = """
[lbproxy]
listen = tcp:8080          ; inline comments are allowed
    tcp:8081:interface=127.0.0.1
access_log = off
client_header_timeout = 500ms
keepalive_timeout = 1m
max_body_size = 10m
max_header_size = 8k

[upstream:app]
balancer = round_robin
servers =
    127.0.0.1:9001 weight=2
    127.0.0.1:9002
    127.0.0.1:9003 backup
    https://API.internal:8443 max_fails=3 fail_timeout=30s
    [::1]:9004 down
max_fails = 2
fail_timeout = 5s
connect_timeout = 1s
read_timeout = 2m
next_upstream_tries = 2
keepalive = 8

[upstream:static]
servers = 127.0.0.1:9101

[vhost:app]
server_names = app.example.com *.App.Example.com
default = yes
upstream = app
routes =
    /api/ app
    /static/ static
preserve_host = no

[demo:blue]
listen = tcp:9001:interface=127.0.0.1
"""


#: What a server line that does not parse is said to be expected as.
_SERVER_LINE = (
    "[http://|https://]HOST:PORT followed by any of weight=N, backup, "
    "down, max_fails=N, fail_timeout=T, max_conns=N, resolve, service=NAME"
)


def _errors(text):
    try:
        parseConfigText(text, "site.ini")
    except ConfigError as e:
        return e.errors
    raise AssertionError("no ConfigError")


class ValueParserTests(SynchronousTestCase):
    def test_durations(self):
        """
        Durations take ms, s, m, h, d; a bare number is seconds.
        """
        self.assertEqual(parseDuration("500ms"), 0.5)
        self.assertEqual(parseDuration("2s"), 2)
        self.assertEqual(parseDuration("1m"), 60)
        self.assertEqual(parseDuration("1h"), 3600)
        self.assertEqual(parseDuration("1.5"), 1.5)
        for bad in ("", "2x", "-1s", "s", "1 s s"):
            self.assertRaises(ValueError, parseDuration, bad)

    def test_sizes(self):
        """
        Sizes take k, m, g (powers of 1024); a bare number is bytes.
        """
        self.assertEqual(parseSize("512"), 512)
        self.assertEqual(parseSize("16k"), 16384)
        self.assertEqual(parseSize("100M"), 100 * 1024 * 1024)
        self.assertEqual(parseSize("1g"), 1024**3)
        for bad in ("1.5k", "k", "10t", "-1"):
            self.assertRaises(ValueError, parseSize, bad)

    def test_booleans(self):
        self.assertTrue(parseBool("Yes"))
        self.assertFalse(parseBool("off"))
        self.assertRaises(ValueError, parseBool, "maybe")

    def test_serverLines(self):
        """
        A server line is an optional scheme, HOST:PORT and parameters.
        """
        self.assertEqual(
            parseServer("https://Api.Internal:8443 max_fails=3 fail_timeout=30s"),
            ServerConfig("api.internal", 8443, "https", maxFails=3, failTimeout=30.0),
        )
        self.assertEqual(
            parseServer("[::1]:9000 weight=5 backup"),
            ServerConfig("::1", 9000, weight=5, backup=True),
        )
        self.assertEqual(parseServer("example.com").port, 80)
        self.assertEqual(parseServer("https://example.com").port, 443)
        self.assertEqual(parseServer("h:80 max_conns=4").maxConns, 4)
        self.assertIsNone(parseServer("h:80").maxConns)
        for bad in (
            "127.0.0.1:80 max_conns=0",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:80 weight=0",
            "127.0.0.1:80 weight=x",
            "127.0.0.1:80 heavy",
            "127.0.0.1:80 backup down",
            "ftp://example.com:21",
            "bad_host!:80",
        ):
            self.assertRaises(ValueError, parseServer, bad)

    def assertServerLineRefused(self, line: str, message: str) -> None:
        """
        L{parseServer} refuses C{line}, saying C{message}.
        """
        with self.assertRaises(ValueError) as caught:
            parseServer(line)
        self.assertEqual(str(caught.exception), message)

    def test_serverLineHosts(self):
        """
        An IPv6 address in brackets is kept in its canonical form, so
        that one address written two ways is one server; brackets around
        anything else, and a wildcard, are refused.  (They were taken as
        they were written: C{[::::]} and C{*.example.com} as hosts, and
        C{[0:0::1]} and C{[::1]} as two servers.)
        """
        self.assertEqual(parseServer("[0:0::1]:80").host, "::1")
        self.assertEqual(parseServer("[2001:DB8::7]:80").host, "2001:db8::7")
        self.assertEqual(parseServer("[::ffff:c000:201]:80").host, "::ffff:192.0.2.1")
        for line, message in [
            ("[::::]:80", f"an IPv6 address in [brackets] in {_SERVER_LINE}"),
            ("[1.2.3.4]:80", f"an IPv6 address in [brackets] in {_SERVER_LINE}"),
            ("*.example.com:80", f"a valid host name in {_SERVER_LINE}"),
        ]:
            self.assertServerLineRefused(line, message)

    def test_serverLineWeight(self):
        """
        A weight is at most 1000000: a larger one is refused, rather than
        make a backend whose weight (a float for the balancers) cannot be
        held, which raised OverflowError when lbproxy started (or, from
        etcd, at each change of the prefix).
        """
        self.assertEqual(parseServer("h:80 weight=1000000").weight, 1000000)
        for weight in ("1000001", "1" + "0" * 400):
            self.assertServerLineRefused(
                f"h:80 weight={weight}", f"a weight of at most 1000000, got 'weight={weight}'"
            )

    def test_serverLineErrors(self):
        """
        A bad option of a server line is named after what was expected,
        with a "did you mean" when it is one or two letters from an
        option's name.
        """
        for line, message in [
            ("h:80 weight=0", "a whole number of at least 1, got 'weight=0'"),
            ("h:80 weight=x", "a whole number of at least 1, got 'weight=x'"),
            ("h:80 max_fails=-1", "a whole number of at least 0, got 'max_fails=-1'"),
            (
                "h:80 fail_timeout=soon",
                "a duration such as 500ms, 2s, 1m or 1h, got 'fail_timeout=soon'",
            ),
            ("h:80 slow", f"{_SERVER_LINE}, got 'slow'"),
            ("h:80 bakup", f"{_SERVER_LINE}, got 'bakup'; did you mean 'backup'?"),
            ("h:80 wieght=2", f"{_SERVER_LINE}, got 'wieght=2'; did you mean 'weight=2'?"),
            ("h:80 max_fail=3", f"{_SERVER_LINE}, got 'max_fail=3'; did you mean 'max_fails=3'?"),
            ("h:80 weight", f"{_SERVER_LINE}, got 'weight'"),
            ("h:80 backup=yes", f"{_SERVER_LINE}, got 'backup=yes'"),
        ]:
            self.assertServerLineRefused(line, message)

    def test_editDistance(self):
        """
        An insertion, a deletion, a replacement and a swap of neighbours
        are one edit each.
        """
        for a, b, distance in [
            ("read_timeout", "read_timeout", 0),
            ("read_timout", "read_timeout", 1),
            ("read_timeoutt", "read_timeout", 1),
            ("read_timeouf", "read_timeout", 1),
            ("raed_timeout", "read_timeout", 1),
            ("round-robni", "round_robin", 2),
            ("", "abc", 3),
            ("abc", "", 3),
            ("ca", "abc", 3),
        ]:
            self.assertEqual(editDistance(a, b), distance, (a, b))
            self.assertEqual(editDistance(b, a), distance, (b, a))

    def test_closestName(self):
        """
        The nearest candidate within two edits (one for a word of three
        letters or fewer), ties to the first in alphabetical order, case
        ignored; none when nothing is that close.
        """
        names = ["keepalive", "max_fails", "fail_timeout", "read_timeout", "p2c"]
        self.assertEqual(closestName("keep_alive", names), "keepalive")
        self.assertEqual(closestName("Max_Fails", names), "max_fails")
        self.assertEqual(closestName("p2x", names), "p2c")
        self.assertIsNone(closestName("pxx", names))
        self.assertIsNone(closestName("colour", names))
        self.assertIsNone(closestName("keepalive", names))
        self.assertEqual(closestName("ab", ["ac", "ab_", "aa"]), "aa")
        self.assertEqual(didYouMean("keep_alive", names), "; did you mean 'keepalive'?")
        self.assertEqual(didYouMean("colour", names), "")
        self.assertEqual(
            didYouMean("p2x", names, lambda n: f"[{n}]"), "; did you mean [p2c]?"
        )

    def test_statusSets(self):
        """
        C{eject_on} takes status classes, codes and ranges, or C{none}.
        """
        self.assertEqual(parseStatusSet("5xx"), frozenset(range(500, 600)))
        self.assertEqual(parseStatusSet("500 502-503"), frozenset({500, 502, 503}))
        self.assertEqual(parseStatusSet("4XX 503"), frozenset(range(400, 500)) | {503})
        self.assertEqual(parseStatusSet("none"), frozenset())
        for bad in ("", "6xx", "x5xx", "99", "5xx 600", "none 500"):
            self.assertRaises(ValueError, parseStatusSet, bad)

    def test_percentages(self):
        """
        C{max_ejection} and C{retry_budget} are percentages; C{retry_budget}
        may be C{off}.
        """
        self.assertEqual(parsePercent("50%"), 0.5)
        self.assertEqual(parsePercent(" 12.5% "), 0.125)
        self.assertEqual(parsePercent("0%"), 0.0)
        self.assertEqual(parseOptionalPercent("off"), None)
        self.assertEqual(parseOptionalPercent("20%"), 0.2)
        for bad in ("50", "101%", "-1%", "%", "x%", "50%%"):
            self.assertRaises(ValueError, parsePercent, bad)
        with self.assertRaises(ValueError) as caught:
            parseOptionalPercent("lots")
        self.assertIn("or off", str(caught.exception))

    def test_statusRanges(self):
        self.assertEqual(parseStatusRanges("200-399 404"), ((200, 399), (404, 404)))
        for bad in ("", "99", "400-300", "2xx"):
            self.assertRaises(ValueError, parseStatusRanges, bad)

    def test_lists(self):
        """
        A list parser parses each item and names every bad one with what was
        expected of it; C{nonEmpty} refuses a list of no item.
        """
        parse = listOf(parseSize)
        self.assertEqual(parse("1k 2\n 3"), (1024, 2, 3))
        self.assertEqual(parse(""), ())
        with self.assertRaises(BadItems) as caught:
            parse("1k big 2 huge")
        self.assertEqual(
            caught.exception.items,
            [
                ("big", "a size such as 512, 16k, 100m or 1g"),
                ("huge", "a size such as 512, 16k, 100m or 1g"),
            ],
        )
        with self.assertRaises(ValueError) as refused:
            listOf(parseSize, nonEmpty="one size or more")("")
        self.assertEqual(str(refused.exception), "one size or more")


class ParseConfigTests(SynchronousTestCase):
    def test_good(self):
        """
        A complete file becomes frozen objects with every value converted.
        """
        config = parseConfigText(_GOOD, "site.ini")
        self.assertEqual(
            config.proxy.listen, ("tcp:8080", "tcp:8081:interface=127.0.0.1")
        )
        self.assertIsNone(config.proxy.accessLog)
        self.assertEqual(config.proxy.clientHeaderTimeout, 0.5)
        self.assertEqual(config.proxy.maxHeaderSize, 8192)
        app = config.upstreams["app"]
        self.assertEqual(len(app.servers), 5)
        self.assertEqual(app.servers[0].weight, 2)
        self.assertTrue(app.servers[2].backup)
        self.assertEqual(app.servers[3].scheme, "https")
        self.assertTrue(app.servers[4].down)
        self.assertEqual(
            (app.maxFails, app.failTimeout, app.connectTimeout, app.readTimeout),
            (2, 5.0, 1.0, 120.0),
        )
        self.assertEqual((app.nextUpstreamTries, app.keepalive), (2, 8))
        (vhost,) = config.vhosts
        self.assertEqual(vhost.serverNames, ("app.example.com", "*.app.example.com"))
        self.assertEqual(
            vhost.routes,
            (RouteConfig("/api/", "upstream", "app"), RouteConfig("/static/", "upstream", "static")),
        )
        self.assertFalse(vhost.preserveHost)
        self.assertTrue(vhost.default)
        self.assertEqual(config.demos[0].listen, ("tcp:9001:interface=127.0.0.1",))
        from dataclasses import FrozenInstanceError

        with self.assertRaises(FrozenInstanceError):
            config.proxy.listen = ()  # type: ignore[misc]

    def test_errorNamesEverything(self):
        """
        An error names the file, the section, the key, the bad value and
        what was expected.
        """
        (error,) = _errors(_GOOD.replace("read_timeout = 2m", "read_timeout = 2 minutes"))
        self.assertEqual(
            error,
            "site.ini: [upstream:app] read_timeout = '2 minutes': bad value; "
            "expected a duration such as 500ms, 2s, 1m or 1h",
        )

    def test_everyErrorReported(self):
        """
        All errors are reported at once, not just the first.
        """
        errors = _errors(
            _GOOD.replace("keepalive = 8", "keepalive = -1").replace(
                "max_body_size = 10m", "max_body_size = big"
            )
        )
        self.assertEqual(len(errors), 2)

    def test_unknownKey(self):
        """
        An unknown key is named with the keys of its kind of section, and
        the one it is likely a misspelling of.
        """
        (error,) = _errors(_GOOD.replace("keepalive = 8", "keepalive = 8\nkeep_alive = 8"))
        self.assertTrue(
            error.startswith(
                "site.ini: [upstream:app] keep_alive = '8': unknown key; expected one "
                "of the keys of [upstream:NAME]: balancer, connect_timeout, "
            ),
            error,
        )
        self.assertTrue(error.endswith(", upgrade_protocols; did you mean 'keepalive'?"), error)
        (error,) = _errors(_GOOD.replace("access_log = off", "access_log = off\nacess_log = -"))
        self.assertTrue(error.endswith("; did you mean 'access_log'?"), error)

    def test_unknownSection(self):
        (error,) = _errors(_GOOD + "\n[server]\nlisten = 80\n")
        self.assertEqual(
            error,
            "site.ini: [server]: unknown section; expected [lbproxy], [admin], [upstream:NAME], "
            "[vhost:NAME], [route:VHOST:PREFIX] or [demo:NAME] with NAME and VHOST "
            "made of letters, digits, '_', '.' and '-' and PREFIX a path prefix "
            "starting with /",
        )

    def test_misspeltSection(self):
        """
        A section whose kind is one or two letters from a known kind gets
        a "did you mean" with the name it has; C{[lbproxy]} has no name.
        """
        for section, suggested in [
            ("upstrem:b", "[upstream:b]"),
            ("Upstream:b", "[upstream:b]"),
            ("vhots:b", "[vhost:b]"),
            ("lbproy", "[lbproxy]"),
            ("demos:b", "[demo:b]"),
        ]:
            (error,) = _errors(_GOOD + f"\n[{section}]\nlisten = tcp:80\n")
            self.assertTrue(error.startswith(f"site.ini: [{section}]: unknown section; "), error)
            self.assertTrue(error.endswith(f"; did you mean {suggested}?"), error)
        for section in ["admins:b", "vhost", "lbproxy:b", "proxy:b"]:
            (error,) = _errors(_GOOD + f"\n[{section}]\nlisten = tcp:80\n")
            self.assertNotIn("did you mean", error)

    def test_undefinedUpstream(self):
        (error,) = _errors(_GOOD.replace("/static/ static", "/static/ assets"))
        self.assertIn("[vhost:app] routes = '/static/ assets'", error)
        self.assertIn("no [upstream:assets]", error)

    def test_admin(self):
        """
        An C{[admin]} section gives an L{AdminConfig} listening on
        loopback unless told otherwise, with no token when C{token} is
        empty; without the section there is none.
        """
        self.assertIsNone(parseConfigText(_GOOD).admin)
        admin = parseConfigText(_GOOD + "\n[admin]\ntoken =\n").admin
        self.assertEqual(admin, AdminConfig("tcp:9000:interface=127.0.0.1", None))
        admin = parseConfigText(_GOOD + "\n[admin]\nlisten = tcp:9100\ntoken = t0k\n").admin
        self.assertEqual(admin, AdminConfig("tcp:9100", "t0k"))

    def test_adminErrors(self):
        """
        A bad C{[admin] listen} is reported as any bad key; C{[admin]}
        goes with several workers (their parent serves it).
        """
        (error,) = _errors(_GOOD + "\n[admin]\nlisten = 127.0.0.1:9000\n")
        self.assertTrue(
            error.startswith(
                "site.ini: [admin] listen = '127.0.0.1:9000': bad value; "
                "expected a Twisted server endpoint description"
            ),
            error,
        )
        config = parseConfigText(
            _GOOD.replace("[lbproxy]\n", "[lbproxy]\nworkers = 2\n", 1) + "\n[admin]\n"
        )
        self.assertEqual(
            (config.proxy.workers, config.admin.listen), (2, DEFAULT_ADMIN_LISTEN)
        )

    def test_badListen(self):
        (error,) = _errors(_GOOD.replace("listen = tcp:8080", "listen = tcp:http"))
        self.assertIn("[lbproxy] listen = 'tcp:http'", error)
        self.assertIn("Twisted server endpoint", error)

    def test_unknownBalancer(self):
        """
        An unknown balancer name is an error listing the balancers found.
        """
        (error,) = _errors(_GOOD.replace("= round_robin", "= fastest"))
        self.assertEqual(
            error,
            "site.ini: [upstream:app] balancer = 'fastest': bad value; expected the "
            "name of a balancer plugin: consistent_hash, ewma, ip_hash, least_conn, "
            "p2c, random, round_robin, sticky",
        )

    def test_misspeltBalancer(self):
        """
        A balancer name one or two letters from a plugin's gets a "did you
        mean".
        """
        for name, meant in [("round-robin", "round_robin"), ("leastconn", "least_conn"), ("ewm", "ewma")]:
            (error,) = _errors(_GOOD.replace("= round_robin", f"= {name}"))
            self.assertTrue(error.startswith(f"site.ini: [upstream:app] balancer = {name!r}: bad value; "), error)
            self.assertTrue(error.endswith(f", sticky; did you mean {meant!r}?"), error)

    def test_misspeltUpstream(self):
        """
        A reference to an upstream one or two letters from a defined one
        gets a "did you mean" naming its section.
        """
        (error,) = _errors(_GOOD.replace("/static/ static", "/static/ statc"))
        self.assertEqual(
            error,
            "site.ini: [vhost:app] routes = '/static/ statc': undefined section; "
            "expected the name of an [upstream:NAME] section, but there is no "
            "[upstream:statc]; did you mean [upstream:static]?",
        )

    def test_unknownBalancerOption(self):
        (error,) = _errors(_GOOD.replace("balancer = round_robin", "balancer = round_robin\nbalancer.speed = 11"))
        self.assertIn("balancer.speed", error)

    def test_twoDefaults(self):
        (error,) = _errors(_GOOD + "\n[vhost:other]\ndefault = yes\nupstream = app\n")
        self.assertIn("[vhost:other] default", error)
        self.assertIn("only one default vhost", error)

    def test_sharedServerName(self):
        (error,) = _errors(_GOOD + "\n[vhost:other]\nserver_names = APP.example.com\nupstream = app\n")
        self.assertIn("[vhost:other] server_names = 'app.example.com'", error)

    def test_missingServers(self):
        (error,) = _errors(_GOOD.replace("servers = 127.0.0.1:9101", ""))
        self.assertIn("[upstream:static] servers", error)

    def test_duplicateKey(self):
        """
        A key given twice in a section is an error naming the file and line.
        """
        (error,) = _errors(_GOOD.replace("keepalive = 8", "keepalive = 8\nkeepalive = 9"))
        self.assertIn("site.ini", error)
        self.assertIn("keepalive", error)

    def test_syntaxError(self):
        (error,) = _errors("this is not ini\n")
        self.assertTrue(error.startswith("site.ini: "))

    def test_tlsValues(self):
        """
        The TLS keys refuse what they cannot mean: a TLS version below 1.2,
        a Strict-Transport-Security value without C{max-age}, a wildcard
        as an upstream's C{tls_server_name}; each error says what was
        expected.
        """
        for key, value, expected in [
            ("tls_min_version = 1.1", "[lbproxy] tls_min_version = '1.1'", "expected 1.2 or 1.3"),
            ("hsts = 1 year", "hsts = '1 year'", "expected max-age=SECONDS"),
            ("tls_server_name = *.internal", "tls_server_name = '*.internal'", "a host name"),
        ]:
            section = "[vhost:app]" if key.startswith("hsts") else (
                "[upstream:app]" if key.startswith("tls_server") else "[lbproxy]"
            )
            text = _GOOD.replace(section + "\n", f"{section}\n{key}\n", 1)
            self.assertNotEqual(text, _GOOD, section)
            (error,) = _errors(text)
            self.assertIn(value, error)
            self.assertIn(expected, error)

    def test_certificateNames(self):
        """
        An C{https} server whose certificate is checked against its host
        name needs a name that check takes: C{my_app} (an underscore) was
        accepted, and lbproxy then failed to start with a traceback.  It is
        fine with C{tls_verify = no} or a C{tls_server_name}, which must
        itself be such a name when certificates are checked.
        """
        text = _GOOD.replace("https://API.internal:8443", "https://my_app:8443")
        (error,) = _errors(text)
        # Between the brackets, the idna package's words, which differ
        # between its releases.
        self.assertTrue(
            error.startswith(
                "site.ini: [upstream:app] servers = 'https://my_app:8443': bad value; "
                "expected a host name a certificate can be checked against ("
            ),
            error,
        )
        self.assertTrue(error.endswith("); or tls_server_name = NAME, or tls_verify = no"), error)
        for key in ["tls_verify = no", "tls_server_name = api.internal"]:
            config = parseConfigText(text.replace("[upstream:app]\n", f"[upstream:app]\n{key}\n", 1))
            self.assertEqual(config.upstreams["app"].servers[3].host, "my_app", key)
        (error,) = _errors(
            _GOOD.replace("[upstream:app]\n", "[upstream:app]\ntls_server_name = my_app\n", 1)
        )
        self.assertIn("tls_server_name = 'my_app': bad value; expected a host name a certificate", error)
        parseConfigText(
            _GOOD.replace("[upstream:app]\n", "[upstream:app]\ntls_server_name = my_app\ntls_verify = no\n", 1)
        )

    def test_tlsVersionSpellings(self):
        """
        C{tls_min_version} takes C{1.2}, C{1.3} and the same with
        C{TLSv} before.
        """
        from lbproxy._values import parseTLSVersion

        self.assertEqual(
            [parseTLSVersion(t) for t in ("1.2", " TLSv1.3 ", "tlsv1.2")], ["1.2", "1.3", "1.2"]
        )

    def test_listenRequiredWithVhosts(self):
        (error,) = _errors(_GOOD.replace("listen = tcp:8080          ; inline comments are allowed\n    tcp:8081:interface=127.0.0.1\n", ""))
        self.assertIn("[lbproxy] listen", error)

    def test_listenListOnOneLine(self):
        """
        Lists may be whitespace separated on one line, as well as one item
        per line.
        """
        config = parseConfigText(
            _GOOD.replace(
                "listen = tcp:8080          ; inline comments are allowed\n    tcp:8081:interface=127.0.0.1",
                "listen = tcp:8080 tcp:8081:interface=127.0.0.1",
            ),
            "site.ini",
        )
        self.assertEqual(
            config.proxy.listen, ("tcp:8080", "tcp:8081:interface=127.0.0.1")
        )

    def test_readFile(self):
        path = FilePath(self.mktemp())
        path.setContent(_GOOD.encode("utf-8"))
        self.assertEqual(parseConfig(path.path).source, path.path)

    def test_unreadableFile(self):
        path = self.mktemp()
        with self.assertRaises(ConfigError) as caught:
            parseConfig(path)
        self.assertIn(path, str(caught.exception))


class ClientLimitsTests(SynchronousTestCase):
    """
    The client-side limits of C{[lbproxy]}: max_connections and the client
    timeouts.
    """

    def test_defaults(self):
        """
        Without the keys, the documented defaults apply.
        """
        proxy = parseConfigText("[lbproxy]\nlisten = tcp:8080\n", "site.ini").proxy
        self.assertEqual(proxy.maxConnections, 10000)
        self.assertEqual(proxy.clientHeaderTimeout, 10.0)
        self.assertEqual(proxy.clientBodyTimeout, 60.0)

    def test_maxConnections(self):
        """
        max_connections is a whole number; 0 means no limit.
        """
        for text, expected in [("250", 250), ("0", 0)]:
            proxy = parseConfigText(
                f"[lbproxy]\nlisten = tcp:8080\nmax_connections = {text}\n", "site.ini"
            ).proxy
            self.assertEqual(proxy.maxConnections, expected)

    def test_badMaxConnections(self):
        """
        A negative or non-numeric max_connections is an error naming it.
        """
        for text in ["-1", "many", "1.5"]:
            (error,) = _errors(f"[lbproxy]\nlisten = tcp:8080\nmax_connections = {text}\n")
            self.assertIn(f"[lbproxy] max_connections = '{text}'", error)

    def test_clientTimeouts(self):
        """
        client_header_timeout and client_body_timeout take durations.
        """
        proxy = parseConfigText(
            "[lbproxy]\nlisten = tcp:8080\nclient_header_timeout = 2s\n"
            "client_body_timeout = 750ms\n",
            "site.ini",
        ).proxy
        self.assertEqual((proxy.clientHeaderTimeout, proxy.clientBodyTimeout), (2.0, 0.75))


#: A minimal valid section of each kind, to which a test adds keys.
_MINIMAL = {
    "lbproxy": "[lbproxy]\n",
    "upstream": "[upstream:app]\nservers = 127.0.0.1:9001\n",
    "vhost": "[upstream:app]\nservers = 127.0.0.1:9001\n[lbproxy]\nlisten = tcp:8080\n"
    "[vhost:site]\nupstream = app\ndefault = yes\n",
    "route": "[upstream:app]\nservers = 127.0.0.1:9001\n[lbproxy]\nlisten = tcp:8080\n"
    "[vhost:site]\nupstream = app\ndefault = yes\n[route:site:/]\n",
    "demo": "[demo:blue]\nlisten = tcp:9001\n",
    "admin": "[admin]\n",
}

#: For every declared key, a value that is not its default and what it
#: becomes.  A key declared without an entry here fails
#: L{DeclarationTests.test_everyKeyReachesItsAttribute}.
_SAMPLES: dict[str, dict[str, tuple[Any, Any]]] = {
    "lbproxy": {
        "listen": ("tcp:8080 tcp:8081", ("tcp:8080", "tcp:8081")),
        "access_log": ("/var/log/lbproxy.log", "/var/log/lbproxy.log"),
        "workers": ("4", 4),
        "client_header_timeout": ("2s", 2.0),
        "client_body_timeout": ("750ms", 0.75),
        "keepalive_timeout": ("1m", 60.0),
        "send_timeout": ("30s", 30.0),
        "shutdown_timeout": ("0", 0.0),
        "access_log_format": ("upstream", "upstream"),
        "max_body_size": ("1g", 1024**3),
        "max_header_size": ("8k", 8192),
        "max_connections": ("0", 0),
        "trusted_proxies": (
            "10.0.0.0/8 ::1 unix:",
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"), "unix:"),
        ),
        "listen_tls": ("tcp:8443 tcp6:8443", ("tcp:8443", "tcp6:8443")),
        "tls_certificate": ("certs/default.pem", "certs/default.pem"),
        "tls_key": ("certs/default.key", "certs/default.key"),
        "tls_min_version": ("1.3", "1.3"),
        "http2": ("no", False),
        "resolver": ("127.0.0.1:5353 [::1]", (("127.0.0.1", 5353), ("::1", 53))),
    },
    "upstream": {
        "servers": (
            "127.0.0.1:9001\n  127.0.0.1:9002 backup",
            (ServerConfig("127.0.0.1", 9001), ServerConfig("127.0.0.1", 9002, backup=True)),
        ),
        "balancer": ("least_conn", "least_conn"),
        "balancer.": (None, None),  # see test_prefixKeys
        "max_fails": ("0", 0),
        "fail_timeout": ("30s", 30.0),
        "connect_timeout": ("1s", 1.0),
        "read_timeout": ("2m", 120.0),
        "next_upstream_tries": ("3", 3),
        "keepalive": ("0", 0),
        "slow_start": ("30s", 30.0),
        "tls_verify": ("no", False),
        "tls_ca": ("/etc/ca.pem", "/etc/ca.pem"),
        "tls_server_name": ("API.internal.", "api.internal"),
        "upgrade_protocols": ("WebSocket h2c", ("websocket", "h2c")),
        "tunnel_timeout": ("10m", 600.0),
        "request_buffering": ("no", False),
        "send_proxy_protocol": ("V2", 2),
        "servers_from": ("ETCD", "etcd"),
        "etcd_endpoints": (
            "http://10.0.0.1:2379 http://[fd00::2]:2379/",
            ("http://10.0.0.1:2379", "http://[fd00::2]:2379"),
        ),
        "etcd_prefix": (" /lb/app/ ", "/lb/app/"),
        "etcd_ca": ("etcd/ca.pem", "etcd/ca.pem"),
        "etcd_certificate": ("etcd/client.pem", "etcd/client.pem"),
        "etcd_key": ("etcd/client.key", "etcd/client.key"),
        "etcd_username": ("lbproxy", "lbproxy"),
        "etcd_password_file": ("etcd/password", "etcd/password"),
        "queue": ("0", 0),
        "queue_timeout": ("30s", 30.0),
        "eject_on": ("5xx 429", frozenset(range(500, 600)) | {429}),
        "max_ejection": ("100%", 1.0),
        "retry_budget": ("20%", 0.2),
        "resolve_min": ("5s", 5.0),
        "resolve_max": ("1m", 60.0),
        "health_check": ("/healthz", "/healthz"),
        "health_interval": ("1s", 1.0),
        "health_timeout": ("500ms", 0.5),
        "health_rise": ("5", 5),
        "health_fall": ("1", 1),
        "health_status": ("200 204", ((200, 200), (204, 204))),
        "health_body": ("ok", "ok"),
        "health_mandatory": ("yes", True),
    },
    "vhost": {
        "server_names": ("A.example.com *.b.example.com", ("a.example.com", "*.b.example.com")),
        "default": ("yes", True),
        "upstream": ("app", "app"),
        "routes": ("/api/ app", (RouteConfig("/api/", "upstream", "app"),)),
        "preserve_host": ("no", False),
        "request_headers": (
            "set X-Env prod",
            (("set", "X-Env", ((False, "prod"),)),),
        ),
        "response_headers": ("remove Server", (("remove", "Server", ()),)),
        "request_id": ("yes", True),
        "gzip": ("yes", True),
        "gzip_types": ("text/html Application/JSON text/*", ("text/html", "application/json", "text/*")),
        "gzip_min_length": ("2k", 2048),
        "gzip_comp_level": ("6", 6),
        "tls_certificate": ("/etc/letsencrypt/live/a/fullchain.pem", "/etc/letsencrypt/live/a/fullchain.pem"),
        "tls_key": ("/etc/letsencrypt/live/a/privkey.pem", "/etc/letsencrypt/live/a/privkey.pem"),
        "redirect_https": ("yes", True),
        "hsts": ("max-age=31536000; includeSubDomains", "max-age=31536000; includeSubDomains"),
        "limit_rate": ("30r/m", 0.5),
        "limit_burst": ("40", 40),
        "limit_delay": ("yes", True),
        "limit_conn": ("10", 10),
        "limit_key": ("header:X-API-Key", ("header", "x-api-key")),
        "limit_per_worker": ("each", "each"),
        "limit_keys": ("500", 500),
    },
    "route": {
        "request_headers": ("remove X-Env", (("remove", "X-Env", ()),)),
        "response_headers": ("", ()),
    },
    "demo": {"listen": ("tcp:9002 tcp:9003", ("tcp:9002", "tcp:9003"))},
    "admin": {
        "listen": ("unix:/run/lbproxy-admin.sock", "unix:/run/lbproxy-admin.sock"),
        "token": ("  s3cret ", "s3cret"),
    },
}


def _sectionOf(kind, text):
    """
    Parse C{text} and return the object of the section of C{kind} it tests
    (for an upstream, its health check when C{cls} is L{HealthCheckConfig}).
    """
    config = parseConfigText(text, "site.ini")
    return {
        "lbproxy": config.proxy,
        "upstream": config.upstreams.get("app"),
        "vhost": config.vhosts[0] if config.vhosts else None,
        "route": config.vhosts[0].routeOverrides.get("/") if config.vhosts else None,
        "demo": config.demos[0] if config.demos else None,
        "admin": config.admin,
    }[kind]


class DeclarationTests(SynchronousTestCase):
    """
    Each key is declared once, on the attribute it fills; the accepted keys,
    the defaults and the parsing all come from the declarations.
    """

    def test_declaredOnce(self):
        """
        Within a kind of section, each key name is declared once, with a
        line of documentation, and none is also refused as not supported.
        """
        for kind in _MINIMAL:
            names = [key.name for _, key in sectionKeys(kind)]
            self.assertEqual(len(names), len(set(names)), kind)
            self.assertFalse(set(names) & _NOT_YET.get(kind, set()), kind)
            for _, key in sectionKeys(kind):
                self.assertTrue(key.doc.strip(), key.name)
                self.assertNotIn("\n", key.doc, key.name)

    def test_unknownKeyListsTheDeclaredKeys(self):
        """
        The unknown-key error of each kind of section lists exactly the
        declared keys (a prefix such as C{balancer.} is not listed).
        """
        for kind, text in _MINIMAL.items():
            names = sorted(key.name for _, key in sectionKeys(kind) if not key.isPrefix)
            (error,) = _errors(text + "colour = blue\n")
            self.assertTrue(
                error.endswith(": " + ", ".join(names)), (kind, error)
            )

    def test_everyKeyReachesItsAttribute(self):
        """
        Every declared key, given a value that is not its default, sets the
        attribute it declares, parsed.
        """
        for kind, samples in _SAMPLES.items():
            self.assertEqual(
                sorted(samples), sorted(key.name for _, key in sectionKeys(kind)), kind
            )
        for kind in _SAMPLES:
            for cls, key in sectionKeys(kind):
                if key.isPrefix:
                    continue
                text, expected = _SAMPLES[kind][key.name]
                self.assertNotEqual(expected, defaultOf(cls, key), key.name)
                source = "".join(
                    line
                    for line in _MINIMAL[kind].splitlines(True)
                    if not line.startswith(f"{key.name} = ")
                )
                if cls is HealthCheckConfig and key.name != "health_check":
                    source += "health_check = /\n"
                if key.name == "servers_from" or key.name.startswith("etcd_"):
                    source = source.replace("servers = 127.0.0.1:9001\n", "")
                    if key.name != "servers_from":
                        source += "servers_from = etcd\n"
                    source += {
                        "etcd_ca": "etcd_endpoints = https://127.0.0.1:2379\n",
                        "etcd_certificate": "etcd_endpoints = https://127.0.0.1:2379\n",
                        "etcd_key": "etcd_endpoints = https://127.0.0.1:2379\n"
                        "etcd_certificate = c.pem\n",
                        "etcd_username": "etcd_password_file = p\n",
                        "etcd_password_file": "etcd_username = u\n",
                    }.get(key.name, "")
                if key.name.startswith("limit_") and key.name != "limit_rate":
                    # The other limit_* keys tune limit_rate.
                    source += "limit_rate = 1/s\n"
                section = _sectionOf(kind, f"{source}\n{key.name} = {text}\n")
                if cls is HealthCheckConfig:
                    section = section.healthCheck
                self.assertEqual(getattr(section, key.attribute), expected, key.name)

    def test_prefixKeys(self):
        """
        Every C{balancer.*} key goes, without its prefix, to the upstream's
        C{balancerOptions}.
        """
        upstream = _sectionOf(
            "upstream",
            _MINIMAL["upstream"] + "balancer = sticky\nbalancer.cookie = c\n"
            "balancer.max_age = 1h\n",
        )
        self.assertEqual(upstream.balancerOptions, {"cookie": "c", "max_age": "1h"})

    def test_defaults(self):
        """
        A section that gives only its required keys gets the attributes'
        defaults.
        """
        self.assertEqual(_sectionOf("lbproxy", _MINIMAL["lbproxy"]), ProxyConfig())
        self.assertEqual(
            _sectionOf("upstream", _MINIMAL["upstream"]),
            UpstreamConfig("app", (ServerConfig("127.0.0.1", 9001),)),
        )
        self.assertEqual(
            _sectionOf("vhost", _MINIMAL["vhost"]),
            VHostConfig("site", default=True, upstream="app"),
        )
        self.assertEqual(
            _sectionOf("demo", _MINIMAL["demo"]), DemoConfig("blue", ("tcp:9001",))
        )

    def test_etcdKeys(self):
        """
        C{servers_from = etcd} replaces C{servers}; the C{etcd_*} keys need
        it; the prefix defaults to C{/lbproxy/upstreams/NAME/}; endpoints
        are C{http://HOST:PORT} or C{https://HOST:PORT} URLs; the TLS keys
        need an C{https://} endpoint, a key its certificate, and a user
        name its password file and the other way round.
        """
        upstream = parseConfigText(
            "[upstream:app]\nservers_from = etcd\n", "site.ini"
        ).upstreams["app"]
        self.assertEqual(
            (upstream.servers, upstream.etcdEndpoints, upstream.etcdKeyPrefix),
            ((), ("http://127.0.0.1:2379",), "/lbproxy/upstreams/app/"),
        )
        self.assertEqual(
            _errors(
                "[upstream:app]\nservers_from = etcd\nservers = 127.0.0.1:80\n"
                "etcd_endpoints = ftp://e:2379 http://e http://e:2379/x\n"
                "[upstream:b]\nservers = 127.0.0.1:80\netcd_prefix = /b/\n"
                "etcd_username = u\n"
                "[upstream:c]\nservers_from = consul\n"
                "[upstream:d]\nservers_from = etcd\netcd_ca = ca.pem\n"
                "etcd_key = k.pem\netcd_password_file = p\n"
            ),
            [
                "site.ini: [upstream:app] etcd_endpoints = 'ftp://e:2379': bad "
                "value; expected an etcd client URL such as http://127.0.0.1:2379 "
                "or https://etcd-1:2379",
                "site.ini: [upstream:app] etcd_endpoints = 'http://e': bad value; "
                "expected an etcd client URL such as http://127.0.0.1:2379 or "
                "https://etcd-1:2379",
                "site.ini: [upstream:app] etcd_endpoints = 'http://e:2379/x': bad "
                "value; expected an etcd client URL such as http://127.0.0.1:2379 "
                "or https://etcd-1:2379",
                "site.ini: [upstream:app] servers = '127.0.0.1:80': bad value; "
                "expected no servers with servers_from = etcd: the backends are "
                "the values of the keys under /lbproxy/upstreams/app/",
                "site.ini: [upstream:b] etcd_prefix = '/b/': bad value; expected "
                "servers_from = etcd to be set as well",
                "site.ini: [upstream:b] etcd_username = 'u': bad value; expected "
                "servers_from = etcd to be set as well",
                "site.ini: [upstream:c] servers_from = 'consul': bad value; "
                "expected etcd (backends from the keys under etcd_prefix)",
                "site.ini: [upstream:d] etcd_username = '': missing key; expected "
                "etcd_username, as etcd_password_file is set",
                "site.ini: [upstream:d] etcd_certificate = '': missing key; "
                "expected etcd_certificate, as etcd_key is set",
                "site.ini: [upstream:d] etcd_ca = 'ca.pem': bad value; expected an "
                "https:// endpoint in etcd_endpoints as well (TLS is only for those)",
            ],
        )
        upstream = parseConfigText(
            "[upstream:app]\nservers_from = etcd\n"
            "etcd_endpoints = HTTPS://e:2379 http://[::1]:2379/\n",
            "site.ini",
        ).upstreams["app"]
        self.assertEqual(upstream.etcdEndpoints, ("https://e:2379", "http://[::1]:2379"))

    def test_requiredKeys(self):
        """
        A required key that is missing is named with what was expected.
        """
        self.assertEqual(
            _errors("[upstream:app]\n"),
            [
                "site.ini: [upstream:app] servers = '': missing key; "
                "expected one or more HOST:PORT lines (or servers_from = etcd)"
            ],
        )
        self.assertEqual(
            _errors("[demo:blue]\n"),
            [
                "site.ini: [demo:blue] listen = '': missing key; "
                "expected a server endpoint such as tcp:9001"
            ],
        )

    def test_badValueReportedOnce(self):
        """
        A key whose value is bad is reported once: the checks across
        sections do not report it again as missing.
        """
        self.assertEqual(
            _errors(_MINIMAL["vhost"].replace("upstream = app", "upstream = app two")),
            [
                "site.ini: [vhost:site] upstream = 'app two': bad value; "
                "expected the name of an [upstream:NAME] section"
            ],
        )
        (error,) = _errors(_MINIMAL["vhost"].replace("tcp:8080", "tcp:http"))
        self.assertIn("[lbproxy] listen = 'tcp:http': bad value", error)
        (error,) = _errors(
            _MINIMAL["vhost"].replace("default = yes", "server_names = bad!name")
        )
        self.assertIn("[vhost:site] server_names = 'bad!name': bad value", error)

    def test_emptyBalancer(self):
        """
        An empty C{balancer} is an error listing the balancers, as any other
        name that no plugin has.
        """
        (error,) = _errors(_MINIMAL["upstream"] + "balancer =\n")
        self.assertIn("[upstream:app] balancer = '': bad value", error)
        self.assertIn("round_robin", error)

    def test_healthKeysNeedHealthCheck(self):
        """
        A C{health_*} key without C{health_check} is an error naming it,
        whatever its value.
        """
        self.assertEqual(
            _errors(_MINIMAL["upstream"] + "health_rise = 2\nhealth_fall = none\n"),
            [
                "site.ini: [upstream:app] health_rise = '2': bad value; "
                "expected health_check = PATH to be set as well",
                "site.ini: [upstream:app] health_fall = 'none': bad value; "
                "expected health_check = PATH to be set as well",
            ],
        )

    def test_limitKeysNeedLimitRate(self):
        """
        C{limit_burst}, C{limit_delay}, C{limit_per_worker} and
        C{limit_keys} without C{limit_rate} are errors naming it (once
        each: a bad value is reported as such), and so is C{limit_key}
        without C{limit_rate} or C{limit_conn}.
        """
        self.assertEqual(
            _errors(
                _MINIMAL["vhost"] + "limit_burst = 5\nlimit_delay = maybe\n"
                "limit_key = header:X-Key\n"
            ),
            [
                "site.ini: [vhost:site] limit_delay = 'maybe': bad value; "
                "expected yes or no",
                "site.ini: [vhost:site] limit_burst = '5': bad value; "
                "expected limit_rate to be set as well",
                "site.ini: [vhost:site] limit_key = 'header:X-Key': bad value; "
                "expected limit_rate or limit_conn to be set as well",
            ],
        )
        vhost = _sectionOf("vhost", _MINIMAL["vhost"] + "limit_conn = 3\nlimit_key = cookie:sid\n")
        self.assertEqual((vhost.limitConn, vhost.limitKey), (3, ("cookie", "sid")))

    def test_limitValues(self):
        """
        C{limit_rate} is a positive number of requests per second or
        minute; C{limit_key} names C{remote_addr} or a header or cookie
        by a token; C{limit_per_worker} is C{divide} or C{each}.
        """
        for text, rate in [("20/s", 20.0), ("20r/s", 20.0), ("0.5/s", 0.5), ("90/m", 1.5)]:
            vhost = _sectionOf("vhost", _MINIMAL["vhost"] + f"limit_rate = {text}\n")
            self.assertEqual(vhost.limitRate, rate, text)
        self.assertEqual(
            _errors(
                _MINIMAL["vhost"] + "limit_rate = 0/s\nlimit_key = header:\n"
                "limit_per_worker = half\n"
            ),
            [
                "site.ini: [vhost:site] limit_rate = '0/s': bad value; "
                "expected a rate greater than zero such as 20/s or 30/m",
                "site.ini: [vhost:site] limit_key = 'header:': bad value; "
                "expected remote_addr, header:NAME or cookie:NAME",
                "site.ini: [vhost:site] limit_per_worker = 'half': bad value; "
                "expected divide or each",
            ],
        )
        for text in ["20", "20/h", "-1/s", "fast"]:
            (error,) = _errors(_MINIMAL["vhost"] + f"limit_rate = {text}\n")
            self.assertIn("expected a rate greater than zero", error)
        for text in ["cookie:a b", "query:x", "remote"]:
            (error,) = _errors(_MINIMAL["vhost"] + f"limit_conn = 1\nlimit_key = {text}\n")
            self.assertIn("expected remote_addr, header:NAME or cookie:NAME", error)


#: The reference documentation of site.ini.
_DOCS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "docs",
    "configuration.rst",
)


def _documentedKeys():
    """
    Read the key tables of docs/configuration.rst.

    @return: for each kind of section, the key names of its table (the
        first list-table under its heading whose first column is C{Key}),
        mapped to the text of their Default cell.
    """
    with open(_DOCS, encoding="utf-8") as f:
        lines = f.read().splitlines()
    heading = re.compile(r"^``\[(\w+)(?::NAME|:VHOST:PREFIX)?\]``")
    tables = {}
    kind = None
    rows = []
    for number, line in enumerate(lines):
        if line.startswith("   * - "):
            rows.append([line[len("   * - ") :]])
        elif line.startswith("     - ") and rows:
            rows[-1].append(line[len("     - ") :])
        elif line.startswith("       ") and rows:
            rows[-1][-1] += " " + line.strip()
        elif line.strip() and not line.startswith("   "):
            if rows and rows[0][0] == "Key" and kind and kind not in tables:
                tables[kind] = {row[0].strip("`"): row[1] for row in rows[1:]}
            rows = []
            match = heading.match(line)
            following = lines[number + 1] if number + 1 < len(lines) else ""
            if match and following.startswith("---"):
                kind = match.group(1)
    return tables


class DocumentationTests(SynchronousTestCase):
    """
    docs/configuration.rst cannot drift from the declarations.
    """

    def test_everyKeyDocumented(self):
        """
        The table of each kind of section lists exactly its declared keys,
        each with the declared default: C{(required)} for a required key,
        C{(none)} for one with no value by default, else a value that parses
        to the default.
        """
        documented = _documentedKeys()
        self.assertEqual(sorted(documented), sorted(_MINIMAL))
        for kind, table in documented.items():
            declared = {
                key.name + ("OPTION" if key.isPrefix else ""): (cls, key)
                for cls, key in sectionKeys(kind)
            }
            self.assertEqual(sorted(table), sorted(declared), kind)
            for name, cell in table.items():
                cls, key = declared[name]
                default = defaultOf(cls, key)
                if cell == "(required)":
                    self.assertTrue(key.required, name)
                elif cell == "(none)":
                    self.assertFalse(key.required, name)
                    self.assertIn(default, (None, (), {}, MISSING), name)
                else:
                    text = re.fullmatch(r"``([^`]+)``", cell)
                    if text is None:
                        self.fail(f"{name}: default {cell!r} is not ``VALUE``")
                    self.assertEqual(key.parse(text.group(1)), default, name)

    def test_notSupportedYetDocumented(self):
        """
        The keys refused as not supported yet are listed in the
        documentation's section about them.
        """
        with open(_DOCS, encoding="utf-8") as f:
            text = f.read()
        section = text[text.index("Not supported yet\n") :]
        section = section[: section.index("Reloading")]
        for kind, names in _NOT_YET.items():
            line = next(
                line for line in section.split(";") if f"``[{kind}" in line
            )
            for name in names:
                self.assertIn(f"``{name}``", line, (kind, name))

    def test_nginxExample(self):
        """
        The site.ini of the nginx page's example is valid, given the
        upstream and the directory it leaves out.
        """
        with open(os.path.join(os.path.dirname(_DOCS), "nginx.rst"), encoding="utf-8") as f:
            text = f.read()
        ini = text[text.index(".. code-block:: ini") :]
        ini = ini[: ini.index("\n(")]
        ini = "\n".join(line[3:] for line in ini.splitlines()[2:])
        assets = FilePath(self.mktemp())
        assets.makedirs()
        self.assertIn("files:/srv/www/assets", ini)
        config = parseConfigText(
            ini.replace("files:/srv/www/assets", f"files:{assets.path}")
            + "\n[upstream:api]\nservers = 10.0.0.9:8080\n",
            "nginx.ini",
        )
        (vhost,) = config.vhosts
        self.assertEqual(
            [(r.prefix, r.kind, r.stripPrefix) for r in vhost.routes],
            [("/api/", "upstream", True), ("/assets/", "files", False), ("/old/", "redirect", False)],
        )
        self.assertEqual(config.upstreams["app"].balancer, "least_conn")
        self.assertEqual(config.proxy.maxBodySize, 10 * 1024 * 1024)

    def test_errorExample(self):
        """
        The file of nine mistakes in the documentation gives exactly the
        errors it shows.
        """
        with open(_DOCS, encoding="utf-8") as f:
            text = f.read()
        example = text[text.index("This file has nine mistakes") :]
        ini = example[example.index(".. code-block:: ini") :]
        ini = ini[: ini.index(".. code-block:: console")]
        ini = "\n".join(line[3:] for line in ini.splitlines()[2:])
        output = example[example.index(".. code-block:: console") :]
        output = output[: output.index("$ echo")]
        shown = [
            line.strip()
            for line in output.splitlines()
            if line.startswith("     broken.ini: ")
        ]
        with self.assertRaises(ConfigError) as caught:
            parseConfigText(ini, "broken.ini")
        self.assertEqual(len(shown), 9)
        self.assertEqual(caught.exception.errors, shown)


#: Where lbproxy is imported from (src/ in a checkout).
_SOURCE = os.path.dirname(os.path.abspath(lbproxy.__file__))


def _lbproxyImports(path: str) -> set[str]:
    """
    The lbproxy modules that the module at C{path} imports anywhere in it,
    at module level or inside a function.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = "lbproxy.balancers" if os.path.basename(os.path.dirname(path)) == "balancers" else "lbproxy"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = base + ("." + node.module if node.module else "")
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "lbproxy" or name.startswith("lbproxy.")}


def _modulesAfter(statements: str) -> list[str]:
    """
    Run C{statements} in a fresh interpreter and return the lbproxy modules
    it then has imported.
    """
    code = (
        statements
        + "\nimport sys\n"
        + "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'lbproxy')))"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(_SOURCE))
    output = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    return output.decode("ascii").split()


class ImportTests(SynchronousTestCase):
    """
    The configuration reader imports the balancers (to check an upstream's
    C{balancer}) and the balancers parse durations: both take the value
    parsers from L{lbproxy._values}, which imports nothing of lbproxy, so
    there is no import cycle, not even one hidden in a function.
    """

    def test_valuesIsALeaf(self):
        """
        L{lbproxy._values} imports no lbproxy module, and importing it alone
        imports nothing of lbproxy beyond the package.
        """
        self.assertEqual(_lbproxyImports(os.path.join(_SOURCE, "_values.py")), set())
        self.assertEqual(
            _modulesAfter("import lbproxy._values"),
            ["lbproxy", "lbproxy._values", "lbproxy._version"],
        )

    def test_balancersDoNotImportTheConfiguration(self):
        """
        No module of L{lbproxy.balancers} imports the configuration reader,
        and building every built-in balancer, with the options that take
        durations, leaves it unimported.
        """
        directory = os.path.join(_SOURCE, "balancers")
        for name in sorted(os.listdir(directory)):
            if name.endswith(".py"):
                imported = _lbproxyImports(os.path.join(directory, name))
                self.assertEqual(
                    {m for m in imported if "config" in m}, set(), name
                )
        modules = _modulesAfter(
            "from lbproxy.balancers import buildBalancer, findBalancerFactories\n"
            "for name in findBalancerFactories():\n"
            "    options = {'consistent_hash': {'key': 'uri'},\n"
            "               'ewma': {'decay': '2s'},\n"
            "               'sticky': {'max_age': '1h'}}.get(name, {})\n"
            "    buildBalancer(name, options)\n"
        )
        self.assertIn("lbproxy._values", modules)
        self.assertNotIn("lbproxy._config", modules)

    def test_eitherOrder(self):
        """
        The configuration reader and the balancers import in either order.
        """
        for statements in [
            "import lbproxy._config\nimport lbproxy.balancers",
            "import lbproxy.balancers\nimport lbproxy._config",
        ]:
            modules = _modulesAfter(statements)
            self.assertIn("lbproxy._config", modules)
            self.assertIn("lbproxy.balancers", modules)
