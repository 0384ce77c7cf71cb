"""
Running the administrator's programs for real: background children,
timeouts, output capture.
"""

import json
import os
import signal
import stat
import sys
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase


class BuiltinActionTests(TestCase):
    def test_the_working_directory_cannot_plant_it(self):
        """
        The built-in on-success runs knocker's own module, not one that
        someone planted in the daemon's working directory.
        """
        import subprocess

        from knocker.daemon.coordinator import BUILTIN_SUCCESS

        where = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(where, "knocker", "daemon"))
        for name in ("knocker/__init__.py", "knocker/daemon/__init__.py"):
            open(os.path.join(where, name), "w").close()
        with open(os.path.join(where, "knocker", "daemon", "logaction.py"), "w") as handle:
            handle.write("print('PLANTED')\n")
        done = subprocess.run([*BUILTIN_SUCCESS, "192.0.2.7", "alice", "3"], cwd=where,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("PLANTED", done.stdout)
        self.assertIn("knock 3 of alice from 192.0.2.7 accepted", done.stdout)


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether C{pid} ends (exits or is a zombie) within C{within} seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            return True
        if state in (b"Z", b"X"):
            return True
        time.sleep(0.02)
    return False


class ActionRunnerTests(TestCase):
    async def test_what_the_program_leaves_running_is_killed_when_it_exits(self):
        """
        An action is over when its program is: a child it left in its
        process group does not live on (README: later work is on-close's).
        """
        from knocker.daemon.actions import ProcessRunner

        pid_file = os.path.abspath(self.mktemp())
        result = await ProcessRunner(reactor, 30).run(
            ["/bin/sh", "-c", f"sleep 1013 & echo $! > {pid_file}; exit 0"], {})
        self.assertTrue(result.ok, result)
        with open(pid_file) as handle:
            child = int(handle.read())
        self.addCleanup(lambda: gone(child, 0) or os.kill(child, signal.SIGKILL))
        self.assertTrue(gone(child), f"the background child {child} outlived its program")

    async def test_background_child_does_not_hold_the_verdict(self):
        """
        A program that exits 0 leaving a child in the background (holding
        its output) is a success, reported when the program exits.
        """
        from knocker.daemon.actions import ProcessRunner

        script = os.path.join(os.path.abspath(self.mktemp()))
        with open(script, "w") as handle:
            handle.write("#!/bin/sh\necho added\nsleep 30 &\nexit 0\n")
        os.chmod(script, stat.S_IRWXU)
        started = reactor.seconds()
        result = await ProcessRunner(reactor, 5).run([script], {"PATH": "/usr/bin:/bin"})
        self.assertTrue(result.ok, result)
        self.assertEqual(result.stdout, "added\n")
        self.assertLess(reactor.seconds() - started, 3)

    def script(self, body):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write(f"#!{sys.executable}\n" + body)
        os.chmod(path, stat.S_IRWXU)
        return path

    async def test_child_gets_a_session_and_three_descriptors(self):
        """
        What the program sees: only the environment given, stdin empty,
        no descriptor of the daemon's (not even one it inherited), and a
        session of its own.
        """
        from knocker.daemon.actions import ProcessRunner

        leaked = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(leaked, True)
        self.addCleanup(os.close, leaked)
        script = self.script(
            "import json, os, sys\n"
            "fds = []\n"
            "for fd in range(1024):\n"
            "    try:\n"
            "        os.fstat(fd)\n"
            "        fds.append(fd)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(json.dumps({'fds': fds, 'leader': os.getsid(0) == os.getpid(),\n"
            "    'stdin': sys.stdin.read(), 'env': sorted(os.environ)}))\n"
            "print('to stderr', file=sys.stderr)\n"
            "sys.exit(3)\n"
        )
        runner = ProcessRunner(reactor, 5)
        result = await runner.run([script], {"ONLY": "this"})
        seen = json.loads(result.stdout)
        self.assertEqual((result.exit_code, result.signal, result.ok), (3, None, False))
        self.assertEqual(result.stderr, "to stderr\n")
        self.assertEqual(seen["fds"], [0, 1, 2])
        self.assertTrue(seen["leader"])
        self.assertEqual(seen["stdin"], "")
        self.assertEqual([name for name in seen["env"] if name != "LC_CTYPE"], ["ONLY"])

    async def test_child_does_not_inherit_ignored_signals(self):
        """
        Python ignores SIGPIPE and SIGXFSZ; an action (a shell script, say)
        must get the default, or a broken pipe would not end it.
        """
        import signal

        from knocker.daemon.actions import ProcessRunner

        self.assertEqual(signal.getsignal(signal.SIGPIPE), signal.SIG_IGN, "premise")
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as handle:
            handle.write("#!/bin/sh\nexec grep SigIgn /proc/$$/status\n")
        os.chmod(script, stat.S_IRWXU)
        result = await ProcessRunner(reactor, 5).run([script], {"PATH": "/usr/bin:/bin"})
        ignored = int(result.stdout.split()[1], 16)
        for number in (signal.SIGPIPE, signal.SIGXFSZ):
            self.assertFalse(ignored & (1 << (number - 1)), f"signal {number} ignored")

    async def test_timeout_kills_the_program_and_what_it_started(self):
        from knocker.daemon.actions import ProcessRunner

        pid_file = os.path.abspath(self.mktemp())
        script = self.script(
            "import subprocess, time\n"
            f"child = subprocess.Popen(['sleep', '60'])\n"
            f"open({pid_file!r}, 'w').write(str(child.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(60)\n"
        )
        started = reactor.seconds()
        result = await ProcessRunner(reactor, 1).run([script], {"PATH": "/usr/bin:/bin"})
        self.assertLess(reactor.seconds() - started, 5)
        self.assertEqual((result.timed_out, result.signal, result.exit_code), (True, 9, None))
        self.assertEqual(result.stdout, "started\n")
        with open(pid_file) as handle:
            child = int(handle.read())
        for _ in range(50):
            try:
                with open(f"/proc/{child}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                break
            if state == "Z":  # killed, waiting for its reaper
                break
            await deferLater(reactor, 0.05)
        else:
            self.fail(f"the background child {child} survived the timeout")

    async def test_timeout_kills_a_grandchild_in_a_session_of_its_own(self):
        """
        A grandchild that left the action's group with setsid (its parent
        still alive) is found through its parent links and killed too.
        """
        from knocker.daemon.actions import ProcessRunner

        pid_file = os.path.abspath(self.mktemp())
        script = self.script(
            "import subprocess, time\n"
            "child = subprocess.Popen(['setsid', 'sleep', '60'])\n"
            f"open({pid_file!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n"
        )
        result = await ProcessRunner(reactor, 1).run([script], {"PATH": "/usr/bin:/bin"})
        self.assertTrue(result.timed_out)
        with open(pid_file) as handle:
            grandchild = int(handle.read())
        for _ in range(50):
            try:
                with open(f"/proc/{grandchild}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                break
            if state == "Z":
                break
            await deferLater(reactor, 0.05)
        else:
            self.fail(f"the setsid grandchild {grandchild} survived the timeout")

    async def test_reported_at_exit_not_after_the_grace(self):
        """
        The grace for pipes held by a background child is only for that
        case: a program that exits, closing its output, is reported then.
        """
        from knocker.daemon import actions

        self.patch(actions, "PIPE_GRACE", 60.0)
        for program in (["/bin/true"], [self.script("print('out')\n")]):
            started = reactor.seconds()
            result = await actions.ProcessRunner(reactor, 90).run(program, {})
            self.assertTrue(result.ok, result)
            self.assertLess(reactor.seconds() - started, 30, program)

    async def test_output_beyond_the_limit_is_dropped_not_blocking(self):
        from knocker.daemon.actions import OUTPUT_LIMIT, ProcessRunner

        script = self.script("import sys\nsys.stdout.write('x' * (4 * 65536))\nsys.exit(0)\n")
        result = await ProcessRunner(reactor, 5).run([script], {})
        self.assertTrue(result.ok, result)
        self.assertEqual(len(result.stdout), OUTPUT_LIMIT)

    async def test_exit_seen_only_at_the_timeout_is_not_a_timeout(self):
        """
        The program ended in time, but the reactor had not yet noticed when
        the timeout fired (here: polling with a long interval).
        """
        from knocker.daemon import actions

        self.patch(actions, "EXIT_POLL", 60.0)
        result = await actions.ProcessRunner(reactor, 0.5, use_pidfd=False).run(["/bin/true"], {})
        self.assertEqual((result.ok, result.timed_out, result.exit_code), (True, False, 0))

    async def test_failure_to_watch_a_started_program_kills_it_and_leaks_nothing(self):
        from knocker.daemon import actions

        class RefusingReactor:
            """The real reactor, except that it takes no second reader."""

            def __init__(self):
                self.readers = 0

            def addReader(self, reader):
                self.readers += 1
                if self.readers == 2:
                    raise OSError("no more watches")
                reactor.addReader(reader)

            def __getattr__(self, name):
                return getattr(reactor, name)

        started = []
        real_spawn = actions._spawn
        self.patch(actions, "_spawn", lambda *a: started.append(real_spawn(*a)) or started[-1])
        script = self.script("import time\ntime.sleep(60)\n")
        before = sorted(os.listdir("/proc/self/fd"))
        runner = actions.ProcessRunner(RefusingReactor(), 30)
        result = await runner.run([script], {})
        self.assertIn("no more watches", result.spawn_error)
        self.assertEqual(sorted(os.listdir("/proc/self/fd")), before)
        self.assertEqual(len(started), 1)
        self.assertFalse(os.path.exists(f"/proc/{started[0]}"), "still running, or unreaped")

    async def test_without_pidfd_the_exit_is_polled(self):
        from knocker.daemon.actions import ProcessRunner

        script = self.script("print('polled')\nraise SystemExit(4)\n")
        result = await ProcessRunner(reactor, 5, use_pidfd=False).run([script], {})
        self.assertEqual((result.exit_code, result.stdout), (4, "polled\n"))

    async def test_program_killed_by_a_signal(self):
        from knocker.daemon.actions import ProcessRunner

        script = self.script("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
        result = await ProcessRunner(reactor, 5).run([script], {})
        self.assertEqual((result.exit_code, result.signal, result.timed_out), (None, 15, False))

    async def test_missing_program_is_a_failed_result(self):
        from knocker.daemon.actions import ProcessRunner

        result = await ProcessRunner(reactor, 5).run(["/nonexistent/program"], {})
        self.assertFalse(result.ok)
        self.assertIn("No such file", result.spawn_error)

    async def test_unstartable_program_is_a_failed_result(self):
        from knocker.daemon.actions import ProcessRunner

        result = await ProcessRunner(reactor, 5).run([None, "x"], {})
        self.assertFalse(result.ok)
        self.assertTrue(result.spawn_error)


class RunBlockingTests(TestCase):
    """
    L{run_blocking}, which runs on-close when a start is refused (no
    reactor yet): the same hygiene as the reactor's runner.
    """

    def test_a_daemon_with_descriptors_past_1024_still_collects_output(self):
        """
        A big pool holds more than 1024 descriptors; the program's pipes
        land past them (select() refused those: the close was reported as
        never started while it ran on, unreaped).
        """
        code = (
            "import os, resource\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n"
            "held = [os.open('/dev/null', os.O_RDONLY) for _ in range(1100)]\n"
            "from knocker.daemon.actions import run_blocking\n"
            "r = run_blocking(['/bin/sh', '-c', 'echo hi'], {}, 5)\n"
            "print(r.ok, repr(r.stdout), r.spawn_error)\n")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import subprocess

        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=root), timeout=30)
        self.assertEqual(done.stdout.strip(), "True 'hi\\n' None", done.stderr)

    def test_with_sigchld_ignored_the_status_is_kept_and_leftovers_killed(self):
        """
        Whatever started the daemon may leave SIGCHLD ignored; the kernel
        would then reap the program itself, losing its status (and the
        right moment to kill what it left behind).
        """
        pid_file = os.path.abspath(self.mktemp())
        code = (
            "import signal\n"
            "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
            "from knocker.daemon.actions import run_blocking\n"
            f"r = run_blocking(['/bin/sh', '-c', 'sleep 1015 & echo $! > {pid_file}; exit 3'],"
            " {}, 10)\n"
            "print(r.exit_code, signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN)\n")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import subprocess

        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=root), timeout=30)
        with open(pid_file) as handle:
            child = int(handle.read())
        self.addCleanup(lambda: gone(child, 0) or os.kill(child, signal.SIGKILL))
        self.assertEqual(done.stdout.split(), ["3", "True"], done.stderr)
        self.assertTrue(gone(child), f"the background child {child} outlived its program")

    def test_what_the_program_leaves_running_is_killed_when_it_exits(self):
        from knocker.daemon.actions import run_blocking

        pid_file = os.path.abspath(self.mktemp())
        result = run_blocking(["/bin/sh", "-c", f"sleep 1014 & echo $! > {pid_file}; exit 0"],
                              {}, 30)
        self.assertTrue(result.ok, result)
        with open(pid_file) as handle:
            child = int(handle.read())
        self.addCleanup(lambda: gone(child, 0) or os.kill(child, signal.SIGKILL))
        self.assertTrue(gone(child), f"the background child {child} outlived its program")

    def test_no_descriptor_of_the_daemon_reaches_the_program(self):
        from knocker.daemon.actions import run_blocking

        reader, writer = os.pipe()
        self.addCleanup(os.close, reader)
        self.addCleanup(os.close, writer)
        os.set_inheritable(writer, True)  # as one inherited from whatever started the daemon
        listing = os.path.abspath(self.mktemp())
        result = run_blocking(["/bin/sh", "-c", f"ls /proc/self/fd > {listing}"],
                              {"PATH": "/usr/bin:/bin"}, 10)
        self.assertTrue(result.ok)
        with open(listing) as handle:
            fds = {int(name) for name in handle.read().split()}
        self.assertNotIn(writer, fds)
        self.assertLessEqual(fds - {0, 1, 2}, {3}, "only ls's own listing")

    def test_what_the_program_said_is_kept(self):
        from knocker.daemon.actions import OUTPUT_LIMIT, run_blocking

        result = run_blocking(["/bin/sh", "-c", "echo out; echo err >&2; exit 4"],
                              {"PATH": "/usr/bin:/bin"}, 10)
        self.assertEqual((result.exit_code, result.signal, result.timed_out, result.stdout,
                          result.stderr), (4, None, False, "out\n", "err\n"))
        flood = run_blocking(["/bin/sh", "-c", "echo start; head -c 300000 /dev/zero | tr '\\0' x"],
                             {"PATH": "/usr/bin:/bin"}, 10)
        self.assertTrue(flood.ok, "read to its end: never blocked on a full pipe")
        self.assertEqual(len(flood.stdout), OUTPUT_LIMIT, "bounded")
        self.assertTrue(flood.stdout.startswith("start\nxxx"), "the first of it, as in the reactor")
        missing = run_blocking(["/nonexistent/on-close"], {}, 10)
        self.assertFalse(missing.ok)
        self.assertIn("No such file", missing.spawn_error)

    def test_out_of_descriptors_is_a_result_and_leaks_none(self):
        import resource

        from knocker.daemon.actions import run_blocking

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        fillers = []
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for _ in range(3):  # room for the first pipe only (and the listing of /proc/self/fd)
            os.close(fillers.pop())
        try:
            before = len(fillers)
            result = run_blocking(["/bin/true"], {}, 10)
            probe = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
            for fd in probe:
                os.close(fd)
        finally:
            for fd in fillers:
                os.close(fd)
        self.assertFalse(result.ok)
        self.assertIn("Too many open files", result.spawn_error)
        self.assertEqual((before, len(probe)), (len(fillers), 3), "every descriptor given back")

    def test_a_timeout_kills_a_descendant_in_a_session_of_its_own(self):
        from knocker.daemon.actions import run_blocking

        pid_file = os.path.abspath(self.mktemp())
        result = run_blocking(
            ["/bin/sh", "-c", f"setsid sleep 1011 & echo $! > {pid_file}; sleep 1012"],
            {"PATH": "/usr/bin:/bin"}, 1.0)
        self.assertFalse(result.ok)
        self.assertTrue(result.timed_out)
        with open(pid_file) as handle:
            pid = int(handle.read())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    state = handle.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                break  # gone
            if state == b"Z":
                break  # killed, not yet reaped by init
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            self.fail("the setsid'd sleep outlived the timeout")


def _group_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


class UnkillableProgramTests(TestCase):
    """
    A program that made itself another user's (sudo does, as root) cannot
    be killed at its timeout by a daemon running as a user of its own: the
    daemon says so, naming it, rather than nothing.  (Played here by
    refusing the kill of that one process: the tests run as root, who may
    kill anyone.)
    """

    def setUp(self):
        from knocker.daemon import actions

        self.refused = set()
        real_kill = os.kill

        def kill(pid, number):
            if pid in self.refused:
                raise PermissionError(1, "Operation not permitted")
            return real_kill(pid, number)

        def killpg(group, number):
            # As the kernel does: every member that may be signalled is, and
            # the call fails only if none could be.
            members = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                       if _group_of(pid) == group]
            allowed = [pid for pid in members if pid not in self.refused]
            if members and not allowed:
                raise PermissionError(1, "Operation not permitted")
            for pid in allowed:
                try:
                    real_kill(pid, number)
                except ProcessLookupError:
                    pass
            if not members:
                raise ProcessLookupError(3, "No such process")

        self.patch(actions.os, "kill", kill)
        self.patch(actions.os, "killpg", killpg)
        self.warnings = []
        from twisted.logger import globalLogPublisher

        def observe(event):
            if event.get("log_namespace") == "knocker.daemon.actions":
                from twisted.logger import formatEvent

                self.warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def kill_if_left(self, pid):
        self.refused.discard(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # reaped

    async def test_the_daemon_says_which_program_it_cannot_kill(self):
        from knocker.daemon.actions import ProcessRunner

        # With a child in its group that may be killed: the group's kill
        # succeeds, and must not hide that the program itself was not.
        child_file = os.path.abspath(self.mktemp())
        script = ActionRunnerTests.script(
            self, "import subprocess, time\n"
            f"open({child_file!r}, 'w').write(str(subprocess.Popen(['sleep', '60']).pid))\n"
            "print('started', flush=True)\ntime.sleep(60)\n")
        runner = ProcessRunner(reactor, 1)
        spawn = runner.run  # the program's pid, as it starts: refused from then on
        from knocker.daemon import actions

        real_spawn = actions._spawn

        def spawn_refused(*args):
            pid = real_spawn(*args)
            self.refused.add(pid)
            self.addCleanup(self.kill_if_left, pid)
            return pid

        self.patch(actions, "_spawn", spawn_refused)
        running = spawn([script], {"PATH": "/usr/bin:/bin"})
        await deferLater(reactor, 1.5)
        self.assertFalse(running.called, "a program that could not be killed has not ended")
        [pid] = self.refused
        self.assertEqual(len(self.warnings), 1, self.warnings)
        self.assertIn(f"{script} (pid {pid}) is still running after 1s and cannot be killed",
                      self.warnings[0])
        self.assertIn("Operation not permitted", self.warnings[0])
        with open(child_file) as handle:
            self.assertTrue(gone(int(handle.read())), "its child, which could be, was not killed")
        # Once it ends (here: killed as root can), the result says it timed out.
        self.refused.clear()
        os.kill(pid, signal.SIGKILL)
        result = await running
        self.assertEqual((result.timed_out, result.signal), (True, signal.SIGKILL))

    def test_run_blocking_says_it_too(self):
        from knocker.daemon import actions

        script = ActionRunnerTests.script(self, "import time\ntime.sleep(3)\n")
        real_spawn = actions._spawn

        def spawn_refused(*args):
            pid = real_spawn(*args)
            self.refused.add(pid)
            return pid

        self.patch(actions, "_spawn", spawn_refused)
        result = actions.run_blocking([script], {"PATH": "/usr/bin:/bin"}, 0.5)
        [pid] = self.refused
        self.assertTrue(result.timed_out)
        self.assertEqual(result.exit_code, 0, "it ran on to its own end")
        self.assertEqual(len(self.warnings), 1, self.warnings)
        self.assertIn(f"(pid {pid}) is still running after 0.5s and cannot be killed",
                      self.warnings[0])
