"""
etc/knocker.logrotate with a real logrotate and a real daemon: a reopen
that happens passes, one that does not fails logrotate instead of hiding,
and a daemon that is not running is nothing to reopen.  The file's paths
are pointed at a scratch folder, its user at root, and systemctl is a stub
that does what the unit's ExecReload does (SIGHUP to the daemon).
"""

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest

from tests.helpers.processes import ROOT, DaemonCase

SYSTEMCTL = """#!/bin/sh
# systemctl [--quiet] is-active UNIT | reload UNIT, as the test needs them
[ "$1" = --quiet ] && shift
case "$1" in
is-active) [ -n "$KNOCKER_PID" ] && kill -0 "$KNOCKER_PID" 2>/dev/null ;;
reload) case "$RELOAD" in
        ignore) ;;
        fifo) rm -f "$AUDIT" && mkfifo "$AUDIT" ;;  # what the folder's owner could do
        *) kill -HUP "$KNOCKER_PID" ;;
        esac ;;
*) exit 2 ;;
esac
"""


class LogrotateTests(DaemonCase):
    timeout = 60

    def setUp(self):
        super().setUp()
        self.logrotate = shutil.which("logrotate") or (
            "/usr/sbin/logrotate" if os.access("/usr/sbin/logrotate", os.X_OK) else None)
        if self.logrotate is None:
            raise SkipTest("logrotate is not installed")
        if os.geteuid() != 0:
            raise SkipTest("logrotate's create and the config's owner need root")
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.bin)
        with open(os.path.join(self.bin, "systemctl"), "w") as handle:
            handle.write(SYSTEMCTL)
        os.chmod(os.path.join(self.bin, "systemctl"), 0o755)
        with open(os.path.join(ROOT, "etc", "knocker.logrotate")) as handle:
            text = handle.read()
        self.assertIn("/var/log/knocker/audit.log", text)
        self.assertIn("create 0600 knocker knocker", text)
        self.assertIn("su knocker knocker", text)
        text = text.replace("/var/log/knocker/audit.log", self.audit)
        text = text.replace("create 0600 knocker knocker", "create 0600 root root")
        text = text.replace("su knocker knocker", "su root root")
        self.conf = os.path.join(self.dir, "knocker.logrotate")
        with open(self.conf, "w") as handle:
            handle.write(text)
        os.chmod(self.conf, 0o644)
        self.configure(pool_range="22000-31999")

    def rotate(self, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.logrotate, "--force", "--state", os.path.join(self.dir, "state.logrotate"),
             self.conf],
            env={**os.environ, "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                 **env},
            capture_output=True, text=True, timeout=40, stdin=subprocess.DEVNULL)

    def test_reopened(self):
        self.start()
        done = self.rotate(KNOCKER_PID=str(self.daemon.process.pid))
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertTrue(os.path.exists(self.audit + ".1"))
        self.assertEqual([e["event"] for e in self.events()], ["audit-reopened"])

    def test_a_reopen_that_does_not_happen_fails(self):
        self.start()
        done = self.rotate(KNOCKER_PID=str(self.daemon.process.pid), RELOAD="ignore")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("did not reopen", done.stderr)

    def test_no_daemon_nothing_to_reopen(self):
        self.start()
        self.daemon.stop()
        done = self.rotate(KNOCKER_PID="")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)

    def test_a_fifo_in_place_of_the_new_file_does_not_hold_logrotate(self):
        """
        The folder is the daemon's user's: a FIFO put where the new file
        was is skipped by the script's look (it used to block there for
        ever), and the reopen is reported missing.
        """
        self.start()
        done = self.rotate(KNOCKER_PID=str(self.daemon.process.pid), RELOAD="fifo",
                           AUDIT=self.audit)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("did not reopen", done.stderr)
