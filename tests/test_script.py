"""
bin/knocker, the script pip installs as the C{knocker} command: it sends
C{knock} and C{connect} straight to their modules (and leaves with
C{os._exit}), everything else to L{knocker.main}, and users must not be able
to tell the two routes apart.
"""

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests.helpers.processes import environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bin", "knocker")


def run(*argv):
    done = subprocess.run([sys.executable, *argv], env=environment(), capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    return done.returncode, done.stdout, done.stderr


class ScriptTests(TestCase):
    def test_the_script_answers_as_knocker_main_does(self):
        for args in (["knock", "--no-such-key", "1"],
                     ["knock", "--knock-file", "/nonexistent/alice.knock",
                      "--server", "tcp:127.0.0.1:9"],
                     ["knock", "--help"],
                     ["connect", "--no-such-key", "1", "127.0.0.1", "22"],
                     ["no-such-command"]):
            with self.subTest(args=args):
                by_script = run(SCRIPT, *args)
                self.assertEqual(by_script, run("-m", "knocker.main", *args))
                # a refusal is not a success (and the help is)
                self.assertEqual(by_script[0] == 0, args[-1] == "--help", by_script[2][-300:])
