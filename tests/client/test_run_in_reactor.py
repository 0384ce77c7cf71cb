"""
run_in_reactor (the Twisted path of `knocker knock`, `connect` and
`enroll`) and signals, each in a process of its own: a reactor runs once.
"""

import os
import signal
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

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
