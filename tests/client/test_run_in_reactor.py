"""
run_in_reactor (the Twisted path of `knocker knock`, `connect` and
`enroll`) and signals, each in a process of its own: a reactor runs once.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from twisted.trial.unittest import SynchronousTestCase

from knocker.core.knockfile import KnockFile
from knocker.core.knockgen import format_knockfile
from knocker.files import write_private

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# A knock that signals itself once the reactor runs (with its own handlers in).
SIGNALLED = """\
async def slow(driver):
    await driver.sleep(0.2)
    os.kill(os.getpid(), signal.{signal})
    await driver.sleep(20)
    return "knocked"
"""


def run(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""\
        import os, signal, sys
        from knocker.client.twisted_driver import run_in_reactor
        """) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=30)


class RunInReactorTests(SynchronousTestCase):
    def test_the_signal_handlers_are_given_back_after_the_reactor(self):
        # ^C in the relay that follows a TLS knock must still stop it.
        done = run("""\
            async def quick(driver):
                return "knocked"
            print(run_in_reactor(quick))
            print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                  signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            """)
        assert done.stdout.splitlines() == ["knocked", "True True"], done.stderr
        assert done.returncode in (130, -signal.SIGINT), done.stderr
        assert "KeyboardInterrupt" in done.stderr

    def test_interrupt_during_the_knock_is_a_keyboard_interrupt(self):
        # Not an IndexError (exit 1) nor a knock that seems to have had no verdict.
        done = run(SIGNALLED.format(signal="SIGINT") + textwrap.dedent("""\
            try:
                run_in_reactor(slow)
            except KeyboardInterrupt:
                print("interrupted")
                sys.exit(130)
            """))
        assert done.stdout.strip() == "interrupted", done.stderr
        assert done.returncode == 130
        assert "Traceback" not in done.stderr

    def test_terminate_during_the_knock_ends_the_process_by_that_signal(self):
        done = run(SIGNALLED.format(signal="SIGTERM")
                   + 'run_in_reactor(slow)\nprint("went on")\n')
        assert done.returncode == -signal.SIGTERM, (done.returncode, done.stderr)
        assert "went on" not in done.stdout

    def test_verbose_says_each_step_on_standard_error(self):
        # knocker knock -v on a tls: server, as on plain TCP.
        done = run("""\
            async def chatty(driver):
                driver.say("connected to the central port")
                return "knocked"
            print(run_in_reactor(chatty, verbose=True))
            """)
        self.assertEqual(done.stdout.strip(), "knocked", done.stderr)
        self.assertIn("knocker: connected to the central port", done.stderr)

    def test_an_ignored_interrupt_stays_ignored(self):
        # A background job of a non-interactive shell: SIGINT ignored.
        done = run("""\
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            async def slow(driver):
                await driver.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)
                await driver.sleep(0.2)
                return "knocked"
            print(run_in_reactor(slow))
            print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
            """)
        self.assertEqual(done.stdout.split(), ["knocked", "True"], done.stderr)


class SilentResolverTests(SynchronousTestCase):
    """
    Over C{tls:}, a resolver that never answers (the C library's getaddrinfo
    has no deadline of its own) holds the command no longer than the knock's
    timeout.  Twisted's own resolver runs in the reactor's thread pool, whose
    threads are joined as the reactor stops: the command ended only once
    getaddrinfo did (12 s past a 2 s timeout, against a real silent server).
    """

    def test_a_tls_knock_ends_at_its_timeout(self):
        code = textwrap.dedent("""\
            import os, socket, time
            socket.getaddrinfo = lambda *args, **kwargs: time.sleep(20) or []
            from knocker.client.command import run_knock
            from knocker.core.config import parse_client_config
            from knocker.core.knockfile import KnockFile
            config = parse_client_config(overrides={
                "server": "tls:host=door.example.org:port=7000", "timeout": "2",
                "connect-timeout": "1", "log-file": os.devnull})
            knock_file = KnockFile("alice", b"s" * 32, 1, "2026-11-25T10:00:00Z", ((7001,),))
            result = run_knock(config, knock_file)
            print(result.outcome.name)
            print(result.detail)
            """)
        env = dict(os.environ, PYTHONPATH=ROOT)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60)
        elapsed = time.monotonic() - started
        lines = done.stdout.splitlines()
        self.assertEqual(lines[:1], ["UNREACHABLE"], done.stderr)
        self.assertIn("tls:host=door.example.org:port=7000", lines[1])
        self.assertIn("no answer from the resolver within 1.0s", lines[1])
        self.assertLess(elapsed, 5, "the command should end near its 2 s timeout")

    def test_twistd_knockclient_ends_at_its_timeout(self):
        # The same knock under twistd, whose reactor joins its pool as well.
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        knock_file = os.path.join(directory, "alice.knock")
        write_private(knock_file, format_knockfile(
            KnockFile("alice", b"s" * 32, 1, "2026-11-25T10:00:00Z", ((7001,),))))
        conf = os.path.join(directory, "client.conf")
        with open(conf, "w") as f:
            f.write(f"[client]\nserver = tls:host=door.example.org:port=7000\n"
                    f"knock-file = {knock_file}\ntimeout = 2\nconnect-timeout = 1\n"
                    f"log-file = {os.devnull}\n")
        code = textwrap.dedent(f"""\
            import socket, sys, time
            socket.getaddrinfo = lambda *args, **kwargs: time.sleep(20) or []
            from twisted.scripts.twistd import run
            sys.argv = ["twistd", "-n", "--pidfile=", "knockclient", "--config", {conf!r}]
            run()
            """)
        env = dict(os.environ, PYTHONPATH=ROOT)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, cwd=directory)
        elapsed = time.monotonic() - started
        self.assertIn("UNREACHABLE", done.stdout + done.stderr)
        self.assertIn("no answer from the resolver within 1.0s", done.stdout + done.stderr)
        self.assertLess(elapsed, 5, "twistd knockclient should stop near the knock's 2 s timeout")
