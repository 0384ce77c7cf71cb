"""
`knocker demo`, the README's first command: a real daemon and a real knock
on this machine, whether or not the default central port is free.
"""

import socket
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests.helpers.processes import environment


class DemoTests(TestCase):
    def demo(self) -> subprocess.CompletedProcess:
        where = tempfile.mkdtemp(prefix="knocker-test-demo-")
        self.addCleanup(subprocess.run, ["rm", "-rf", where])
        env = environment()
        env["TMPDIR"] = where  # the demo's own folder goes in there
        return subprocess.run([sys.executable, "-m", "knocker.main", "demo"], env=env,
                              capture_output=True, text=True, timeout=120)

    def assertOpened(self, done: subprocess.CompletedProcess) -> None:
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("knocker knock exited 0: knocker: OPEN", done.stdout)
        self.assertIn('"event": "open"', done.stdout)
        self.assertTrue(done.stdout.rstrip().endswith("verdict: OPEN"), done.stdout)

    def test_a_real_knock(self):
        self.assertOpened(self.demo())

    def test_the_default_central_port_taken(self):
        """
        A knockserver already on 127.0.0.1:7000 (or anything else there):
        the demo's daemon takes a free port and the knock still opens.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        try:
            holder.bind(("127.0.0.1", 7000))
            holder.listen(1)
        except OSError:
            pass  # taken already: the case this test is about
        done = self.demo()
        self.assertOpened(done)
        self.assertIn("port 7000 is taken here", done.stdout)
