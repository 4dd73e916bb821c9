"""
The files of the production page (C{docs/production/}) are what the tools
they are written for accept: the systemd unit passes C{systemd-analyze
verify}, the logrotate file C{logrotate --debug}.  Each test is skipped
where its tool is not installed.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

_HERE = FilePath(__file__).parent().parent().parent().child("docs").child("production")

#: The longest a tool may take, in seconds.
_WAIT = 60


def _tool(name):
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SkipTest(f"{name} is not installed")
    return path


class ProductionFilesTests(SynchronousTestCase):
    def test_unitVerifies(self):
        """
        C{systemd-analyze verify} has nothing to say of the unit, once its
        C{twistd} is one that exists (this Python's).
        """
        analyze = _tool("systemd-analyze")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.access(twistd, os.X_OK):
            raise SkipTest(f"no twistd next to {sys.executable}")
        unit = _HERE.child("lbproxy.service").getContent().decode()
        self.assertEqual(unit.count("/opt/lbproxy/bin/twistd "), 3)
        directory = FilePath(self.mktemp())
        directory.makedirs()
        copy = directory.child("lbproxy.service")
        copy.setContent(unit.replace("/opt/lbproxy/bin/twistd", twistd).encode())
        copy.chmod(0o644)
        result = subprocess.run(
            [analyze, "verify", copy.path],
            capture_output=True,
            text=True,
            timeout=_WAIT,
            cwd=directory.path,
        )
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))

    def test_logrotateParses(self):
        """
        logrotate reads the file without an error (in debug mode, which
        changes nothing), with the user and group of its C{create} line made
        ones that exist.
        """
        logrotate = _tool("logrotate")
        directory = FilePath(self.mktemp())
        directory.makedirs()
        # logrotate refuses a user that does not exist: the one running.
        text = _HERE.child("logrotate.conf").getContent().decode()
        create = "create 0640 lbproxy lbproxy"
        self.assertIn(create, text)
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        copy = directory.child("logrotate.conf")
        copy.setContent(text.replace(create, f"create 0640 {user} {group}").encode())
        result = subprocess.run(
            [
                logrotate,
                "--debug",
                "--state",
                directory.child("state").path,
                copy.path,
            ],
            capture_output=True,
            text=True,
            timeout=_WAIT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("error", result.stderr.lower())
        self.assertIn("rotating pattern: /var/log/lbproxy/access.log", result.stderr)
