"""
bin/knocker, the script pip installs as the C{knocker} command, and
L{knocker.command_line}, which it calls: C{knock} and C{connect} go
straight to their modules (and leave with C{os._exit}), everything else to
L{knocker.main}, and users must not be able to tell the two routes apart.
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

    def test_nothing_is_imported_from_the_scripts_folder(self):
        """
        The script's folder (a venv's bin/, where anyone who can write
        there could leave a module) is not on the import path: a package
        named knocker beside the script is not the one imported.
        """
        import shutil

        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "knocker"))
        with open(os.path.join(folder, "knocker", "__init__.py"), "w") as handle:
            handle.write("raise SystemExit('imported from the script folder')\n")
        script = os.path.join(folder, "knocker-copy")
        shutil.copy(SCRIPT, script)
        status, out, err = run(script, "knock", "--help")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("usage: knocker knock", out)

    def test_with_python_P_the_path_is_left_alone(self):
        """
        Under python -P the script's folder was never added: the first
        entry is someone else's (here PYTHONPATH's, where knocker is), and
        stays.
        """
        status, out, err = run("-P", SCRIPT, "knock", "--help")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("usage: knocker knock", out)

    def test_through_a_link_the_real_folder_leaves_the_path(self):
        """
        A link on the PATH (README's /usr/local/bin/knocker, pipx's) to the
        script: Python puts the folder the link leads to on the path, and
        that is the one that goes.
        """
        folder = os.path.abspath(self.mktemp())
        real, elsewhere = os.path.join(folder, "real"), os.path.join(folder, "elsewhere")
        os.makedirs(os.path.join(real, "knocker"))
        os.makedirs(elsewhere)
        with open(os.path.join(real, "knocker", "__init__.py"), "w") as handle:
            handle.write("raise SystemExit('imported from the script folder')\n")
        import shutil

        shutil.copy(SCRIPT, os.path.join(real, "knocker-copy"))
        os.symlink(os.path.join(real, "knocker-copy"), os.path.join(elsewhere, "knocker"))
        status, out, err = run(os.path.join(elsewhere, "knocker"), "knock", "--help")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("usage: knocker knock", out)


class InterruptTests(TestCase):
    def test_ctrl_c_during_a_knock_is_a_line_and_status_130(self):
        """
        Ctrl-C while the server is silent: 'interrupted' and the shell's
        status for SIGINT, not a KeyboardInterrupt traceback.
        """
        import signal
        import socket
        import time

        from knocker.core.knockfile import KnockFile
        from knocker.core.knockgen import format_knockfile
        from knocker.files import write_private

        silent = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(silent.close)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        knock_file = os.path.join(folder, "alice.knock")
        write_private(knock_file, format_knockfile(KnockFile(
            "alice", bytes(32), 2, "2026-11-25T10:00:00Z", ((40001, 40002),))))
        knock = subprocess.Popen(
            [sys.executable, SCRIPT, "knock", "--knock-file", knock_file, "--log-file",
             os.path.join(folder, "client.log"), "--server",
             f"tcp:127.0.0.1:{silent.getsockname()[1]}"],
            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        silent.settimeout(20)
        held, _ = silent.accept()  # it connected, and waits for its CHALLENGE
        self.addCleanup(held.close)
        time.sleep(0.3)
        knock.send_signal(signal.SIGINT)
        out, err = knock.communicate(timeout=30)
        self.assertEqual(knock.returncode, 130, err)
        self.assertIn("knocker knock: interrupted", err)
        self.assertNotIn("Traceback", err)
