"""
A third-party balancer plugin, for real: the example package in
C{examples/plugins/lbproxy-spillover} is put on the path the way an
installation would put it, found by L{twisted.plugin.getPlugins}, and
selected from a site.ini, both in this process and by C{twistd lbproxy} in
a fresh one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any, Optional, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import lbproxy
from lbproxy.balancers import BalancerNotFound, findBalancerFactory
from lbproxy.balancers import _builtins as builtins
from lbproxy.config import ConfigError, parseConfigText
from lbproxy.interfaces import IBalancer, IBalancerFactory
from lbproxy.service import buildPool

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples",
    "plugins",
    "lbproxy-spillover",
)

#: Where lbproxy itself is imported from (src/ in a checkout).
LBPROXY_PATH = os.path.dirname(os.path.dirname(os.path.abspath(lbproxy.__file__)))

SITE = """\
[lbproxy]
listen = tcp:0:interface=127.0.0.1

[upstream:app]
balancer = spillover
{options}
servers =
    127.0.0.1:9001
    127.0.0.1:9002 weight=2

[vhost:app]
server_names = app.example
default = yes
upstream = app
"""


def _offlineBuildSkip() -> Optional[str]:
    """
    Why the example cannot be built into a wheel here without a network,
    or L{None} when it can (setuptools 70.1 and later build wheels by
    themselves; older ones need the C{wheel} package).
    """
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    try:
        import wheel  # noqa: F401
    except ImportError:
        major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
        if (major, minor) < (70, 1):
            return f"setuptools {setuptools.__version__} needs the wheel package"
    return None


def copyExample(testCase: SynchronousTestCase) -> str:
    """
    Copy the example distribution into a fresh directory, as a user would
    unpack or install it (so that Twisted's C{dropin.cache} is written there
    and not into the checkout).

    @return: the directory to put on C{sys.path}.
    """
    target = os.path.abspath(testCase.mktemp())
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("dropin.cache", "__pycache__")
    )
    return target


class InProcessTests(SynchronousTestCase):
    """
    The example plugin on this process's path.
    """

    def putOnPath(self, target: Optional[str] = None, first: bool = False) -> str:
        """
        Put a copy of the example (or C{target}) on C{sys.path} and its
        dropin directory on C{twisted.plugins.__path__}, which is what
        Twisted does for every C{sys.path} entry when C{twisted.plugins} is
        first imported; undo both at cleanup.
        """
        import twisted.plugins

        if target is None:
            target = copyExample(self)
        dropins = os.path.join(target, "twisted", "plugins")
        sys.path.insert(0, target)
        if first:
            twisted.plugins.__path__.insert(0, dropins)
        else:
            twisted.plugins.__path__.append(dropins)
        before = set(sys.modules)

        def undo() -> None:
            sys.path.remove(target)
            twisted.plugins.__path__.remove(dropins)
            for name in ("lbproxy_spillover", "twisted.plugins.spillover_balancer"):
                sys.modules.pop(name, None)
            for name in set(sys.modules) - before:
                if name.startswith("twisted.plugins."):
                    del sys.modules[name]

        self.addCleanup(undo)
        return target

    def test_builtinNameWins(self) -> None:
        """
        A third-party plugin that takes a built-in's name does not replace
        it; the clash is logged.
        """
        target = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(target, "twisted", "plugins"))
        with open(os.path.join(target, "twisted", "plugins", "clash_lb.py"), "w") as f:
            f.write(
                "from lbproxy.balancers import BalancerFactory, LeastConn\n"
                "impostor = BalancerFactory(\n"
                "    'round_robin', 'not round robin', lambda o, r: LeastConn())\n"
            )
        self.putOnPath(target, first=True)
        events: list[Any] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        factory = findBalancerFactory("round_robin")
        self.assertIs(factory, builtins.roundRobin)
        self.assertEqual(len(events), 1)
        self.assertIn("round_robin", formatEvent(events[0]))
        self.assertIn(
            "not round robin", [f.description for f in getPlugins(IBalancerFactory)]
        )

    def test_notFoundWithoutIt(self) -> None:
        """
        Without the example's dropin, there is no C{spillover} balancer.
        """
        error = self.assertRaises(BalancerNotFound, findBalancerFactory, "spillover")
        self.assertIn("round_robin", error.available)
        self.assertNotIn("spillover", error.available)

    def test_found(self) -> None:
        """
        With the example on the path, L{getPlugins} finds its factory next
        to the built-ins, and it builds a proper L{IBalancer}.
        """
        target = self.putOnPath()
        factory = findBalancerFactory("spillover")
        verifyObject(IPlugin, factory)
        verifyObject(IBalancerFactory, factory)
        location = sys.modules[type(factory).__module__].__file__ or ""
        self.assertTrue(location.startswith(target), location)
        findBalancerFactory("round_robin")
        verifyObject(IBalancer, factory.buildBalancer({}, None))

    def test_selectedFromSiteIni(self) -> None:
        """
        C{balancer = spillover} in a site.ini builds a pool whose balancer
        fills the first backend up to C{balancer.limit} per unit of weight,
        then the next.
        """
        self.putOnPath()
        config = parseConfigText(SITE.format(options="balancer.limit = 2"), "site.ini")
        upstream = config.upstreams["app"]
        self.assertEqual(upstream.balancer, "spillover")
        self.assertEqual(dict(upstream.balancerOptions), {"limit": "2"})
        pool = buildPool(upstream, MemoryReactorClock())
        self.assertEqual(type(pool.balancer).__name__, "Spillover")
        first, second = pool.backends
        picked = []
        for _ in range(7):
            backend: Any = pool.pick(None)
            pool.requestStarted(backend, None)
            picked.append(backend)
        # 2 on the first (weight 1), 4 on the second (weight 2), then the
        # least loaded relative to its limit.
        self.assertEqual(picked[:6], [first] * 2 + [second] * 4)
        self.assertIs(picked[6], first)
        pool.requestFinished(second, None, lbproxy.Outcome.SUCCESS, 0.01)
        pool.requestFinished(first, None, lbproxy.Outcome.SUCCESS, 0.01)
        pool.requestFinished(first, None, lbproxy.Outcome.SUCCESS, 0.01)
        self.assertIs(pool.pick(None), first)
        pool.markDown(first, "test")
        self.assertIs(pool.pick(None), second)

    def test_badOptions(self) -> None:
        """
        The plugin's unknown or bad options are configuration errors.
        """
        self.putOnPath()
        for options, expected in [
            ("balancer.limit = none", "balancer.limit = 'none'"),
            ("balancer.limit = 0", "positive integer"),
            ("balancer.size = 3", "balancer.size"),
        ]:
            error = self.assertRaises(
                ConfigError, parseConfigText, SITE.format(options=options), "site.ini"
            )
            self.assertIn(expected, str(error))
            self.assertIn("site.ini", str(error))


class TwistdTests(SynchronousTestCase):
    """
    C{twistd lbproxy --check} in a fresh process, with the example on its
    C{PYTHONPATH} as an installation would have put it.
    """

    def check(
        self, options: str, extraPath: Optional[str], *twistdOptions: str
    ) -> tuple[int, str]:
        """
        Run C{twistd [twistdOptions] -n lbproxy --config site.ini --check}.

        @return: the exit status and everything it wrote.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        with open(os.path.join(workdir, "site.ini"), "w") as f:
            f.write(SITE.format(options=options))
        path = [LBPROXY_PATH] + ([extraPath] if extraPath else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        process = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from twisted.scripts.twistd import run; "
                "sys.argv[0] = 'twistd'; run()",
                *twistdOptions,
                "-n",
                "lbproxy",
                "--config",
                "site.ini",
                "--check",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
        return process.returncode, process.stdout.decode("utf-8", "replace")

    def test_installedPluginSelected(self) -> None:
        """
        With the example installed, a site.ini choosing it is valid.
        """
        status, output = self.check("balancer.limit = 5", copyExample(self))
        self.assertEqual((status, output.strip()), (0, "site.ini: OK"))

    def test_pipInstalled(self) -> None:
        """
        The example is a real distribution: pip installs it (offline, with
        this environment's setuptools) into a directory whose
        C{twisted/plugins} holds the dropin and no C{__init__.py}, and
        C{twistd lbproxy} finds it there.
        """
        target = os.path.abspath(self.mktemp())
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--target",
                target,
                copyExample(self),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        self.assertEqual(
            process.returncode, 0, process.stdout.decode("utf-8", "replace")
        )
        dropins = os.listdir(os.path.join(target, "twisted", "plugins"))
        self.assertEqual(
            sorted(name for name in dropins if name.endswith(".py")),
            ["spillover_balancer.py"],
        )
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "__init__.py")))
        status, output = self.check("balancer.limit = 5", target)
        self.assertEqual((status, output.strip()), (0, "site.ini: OK"))

    if _offlineBuildSkip() is not None:
        test_pipInstalled.skip = _offlineBuildSkip()  # type: ignore[attr-defined]

    def test_reactorChoiceKept(self) -> None:
        """
        Loading the balancer dropins (twistd imports every dropin to list
        its subcommands, before it installs the reactor) installs no
        reactor, so C{twistd --reactor} still works.
        """
        status, output = self.check("", copyExample(self), "--reactor=poll")
        self.assertEqual((status, output.strip()), (0, "site.ini: OK"))

    def test_missingPluginReported(self) -> None:
        """
        Without it, the same file is invalid and the error lists the
        balancers that were found.
        """
        status, output = self.check("balancer.limit = 5", None)
        self.assertEqual(status, 1, output)
        self.assertIn("spillover", output)
        self.assertIn("round_robin", output)
        self.assertIn("least_conn", output)
