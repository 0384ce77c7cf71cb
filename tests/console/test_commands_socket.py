"""
How C{knocker unlock} and C{knocker revoke} reach the daemon
(knocker/console/cli.py): its commands socket first, the console's URL
where there is no socket for them, and a clear word when the daemon is
gone.  The real daemon and socket: tests/processes/test_console.py.
"""

import io
import json
import os
import socket
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from knocker.console.cli import (
    SOCKET_NAME_MAX,
    DaemonFailed,
    NotRunning,
    _answer,
    _call_socket,
)


class CommandsSocketTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="knocker-cmd-")
        self.addCleanup(self._remove)

    def _remove(self):
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def call(self, path):
        return _call_socket(path, "/revoke", b"client=alice", "t" * 43)

    def test_no_socket_means_the_console(self):
        self.assertIsNone(self.call(os.path.join(self.dir, "commands.sock")))

    def test_a_name_too_long_for_a_socket_means_the_console(self):
        """A daemon whose state-dir is deep could not make the socket either."""
        deep = os.path.join(self.dir, "d" * (SOCKET_NAME_MAX - len(self.dir)), "commands.sock")
        self.assertGreater(len(deep), SOCKET_NAME_MAX)
        self.assertIsNone(self.call(deep))

    def test_a_socket_a_killed_daemon_left(self):
        """
        Nothing listens on it: the daemon is not running, and whatever is
        on the console's port is not the daemon whose token we hold.
        """
        path = os.path.join(self.dir, "commands.sock")
        left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        left.bind(path)
        left.close()
        error = self.assertRaises(NotRunning, self.call, path)
        self.assertIn("the daemon is not running", str(error))
        self.assertIn(path, str(error))

    def test_a_plain_text_refusal_is_shown(self):
        error = self.assertRaises(DaemonFailed, _answer, 503,
                                  b"too many connections to the console\n")
        self.assertEqual(str(error), "HTTP 503: too many connections to the console")
        error = self.assertRaises(ValueError, _answer, 404, b'{"error": "no client \'x\'"}\n')
        self.assertEqual(str(error), "no client 'x'")

    def test_a_revoke_not_saved_exits_1_saying_so(self):
        """
        The daemon refused the file but its state could not record it
        (503): knocker revoke says what the daemon said and exits 1, not
        2, which would tell the operator they typed the command wrong.
        """
        from knocker.console import cli

        said = "alice is refused by the running daemon, but the state could not record it"

        def call(config, path, fields):
            return _answer(503, json.dumps({"error": said}).encode())

        self.patch(cli, "call", call)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        args = type("Args", (), {"client": "alice"})()
        self.assertEqual(cli.revoke_command(None, args), 1)
        self.assertIn(said, err.getvalue())
