"""
C{knocker knock --timeout 2} as a real process against stalling servers on
loopback (the fake servers of tests/client/test_deadline.py): the exit
status and the time taken, as a script would see them.
"""

import os
import time

from twisted.trial.unittest import TestCase

from knocker.core.knockgen import format_knockfile
from knocker.files import write_private
from tests.client.test_deadline import (
    GRACE,
    TIMEOUT,
    FakeServer,
    central_port_full,
    drip_challenge,
    knock_file,
    over_long_line,
)
from tests.helpers.processes import knocker

# Starting the interpreter and importing the client, on a loaded machine.
STARTUP = 1.5


class KnockCommandDeadlineTests(TestCase):
    def knock(self, server, *extra):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "alice.knock")
        write_private(path, format_knockfile(knock_file()))
        started = time.monotonic()
        done = knocker("knock", "--server", f"tcp:host=127.0.0.1:port={server.port}",
                       "--knock-file", path, "--log-file", os.path.join(directory, "log"),
                       "--timeout", f"{TIMEOUT:g}", *extra, timeout=60)
        return done, time.monotonic() - started

    def test_dripping_server_exits_14_at_the_timeout(self):
        done, elapsed = self.knock(FakeServer(self, drip_challenge))
        self.assertLessEqual(elapsed, TIMEOUT + GRACE + STARTUP, done.stderr)
        self.assertEqual(done.returncode, 14, done.stderr)
        self.assertIn("timeout of 2s passed", done.stderr)

    def test_full_central_port_exits_14_within_the_timeout(self):
        done, elapsed = self.knock(FakeServer(self, central_port_full), "--busy-retries", "5")
        self.assertEqual(done.returncode, 14, done.stderr)
        self.assertLessEqual(elapsed, TIMEOUT + GRACE + STARTUP, done.stderr)

    def test_over_long_line_exits_13(self):
        done, _ = self.knock(FakeServer(self, over_long_line))
        self.assertEqual(done.returncode, 13, done.stderr)
        self.assertIn("over-long line", done.stderr)
