"""
The whole system over real loopback: the daemon's service and the client
coroutine in one reactor, real sockets, real SQLite, real action processes.
"""

import json
import os
import stat
import sys

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from knocker.daemon.audit import read_audit
from knocker.client.twisted_driver import Outcome, knock
from knocker.core.config import parse_client_config
from knocker.files import read_private
from knocker.core.knockfile import parse_knockfile
from knocker.daemon.service import KnockServerService
from tests.support import server_config
from knocker.admin.clients import generate_client

RECORDER = """#!{python}
import json, os, sys
with open({out!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv,
        "env": {{k: v for k, v in os.environ.items() if k.startswith("KNOCKER_")}}}}) + "\\n")
sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
"""


def write_recorder(directory: str, name: str) -> tuple[str, str]:
    script = os.path.join(directory, name)
    out = script + ".jsonl"
    with open(script, "w") as handle:
        handle.write(RECORDER.format(python=sys.executable, out=out))
    os.chmod(script, stat.S_IRWXU)
    return script, out


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle]


class LoopbackTests(TestCase):
    timeout = 60

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.success, self.success_out = write_recorder(self.dir, "on-success")
        self.state = os.path.join(self.dir, "state")
        self.audit_path = os.path.join(self.dir, "audit.log")

    def config(self, **extra):
        values = dict(
            central="tcp:0:interface=127.0.0.1",
            pool_range="3000-9999",
            on_success=self.success,
            audit_log=self.audit_path,
            knock_window=5,
        )
        values.update(extra)
        return server_config(self.state, **values)

    def start(self, **extra):
        config = self.config(**extra)
        service = KnockServerService(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(self.stop, service)
        self.service = service
        return service

    def stop(self, service):
        if service.running:
            return service.stopService()

    def generate(self, *names):
        for name in names:
            generate_client(self.config(), name, 20, 6, os.path.join(self.dir, name + ".knock"))

    def client(self, name="alice", **extra):
        out = os.path.join(self.dir, name + ".knock")
        port = self.service.central_port.getHost().port
        values = {"server": f"tcp:host=127.0.0.1:port={port}",
                  "log-file": os.path.join(self.dir, "client.log"), "timeout": "20"}
        values.update({k.replace("_", "-"): str(v) for k, v in extra.items()})
        return parse_client_config(overrides=values), parse_knockfile(read_private(out), out)

    async def test_knock_opens_runs_script_and_numbers_continue(self):
        self.generate("alice")
        self.start()
        config, kf = self.client()
        first = await knock(reactor, config, kf)
        second = await knock(reactor, config, kf)
        self.assertEqual((first.outcome, first.index), (Outcome.OPEN, 1))
        self.assertEqual((second.outcome, second.index), (Outcome.OPEN, 2))
        self.assertEqual(first.ports, kf.knock(1))
        runs = read_lines(self.success_out)
        self.assertEqual([r["argv"][1:] for r in runs],
                         [["127.0.0.1", "alice", "1"], ["127.0.0.1", "alice", "2"]])
        self.assertEqual(runs[0]["env"], {"KNOCKER_CLIENT_IP": "127.0.0.1",
                                          "KNOCKER_CLIENT": "alice", "KNOCKER_INDEX": "1"})

        await self.stop(self.service)
        self.start()
        config, kf = self.client()
        third = await knock(reactor, config, kf)
        self.assertEqual((third.outcome, third.index), (Outcome.OPEN, 3))

        events = read_audit(self.audit_path)
        hits = [e for e in events if e["event"] == "hit"]
        self.assertEqual([h["port"] for h in hits], list(kf.knock(1) + kf.knock(2) + kf.knock(3)))
        self.assertTrue(all(h["ip"] == "127.0.0.1" and h["src_port"] > 0 for h in hits))
        self.assertEqual([e["index"] for e in events if e["event"] == "open"], [1, 2, 3])
        self.assertTrue(all(e["time"].endswith("Z") for e in events))
        log = read_lines(os.path.join(self.dir, "client.log"))
        self.assertEqual([(entry["index"], entry["verdict"]) for entry in log],
                         [(1, "open"), (2, "open"), (3, "open")])
        self.assertEqual(log[0]["ports"], list(kf.knock(1)))

    async def test_wrong_knock_fails_then_locked(self):
        self.generate("alice")
        self.start()
        config, kf = self.client()
        # The client's copy of knock 1 gets a decoy as its second port.
        pool = self.service.server._book._pool
        ports = list(kf.knock(1))
        ports[1] = next(p for p in sorted(pool) if p not in ports)
        bad = kf.replace(knocks=(tuple(ports),) + kf.knocks[1:])
        result = await knock(reactor, config, bad)
        self.assertEqual((result.outcome, result.detail), (Outcome.WRONG_PORT, "wrong-port"))
        again = await knock(reactor, config, kf)
        self.assertEqual(again.outcome, Outcome.LOCKED)
        self.assertEqual(read_lines(self.success_out), [])
        events = [e["event"] for e in read_audit(self.audit_path)]
        self.assertIn("lockout", events)
        self.assertIn("locked", events)

    async def test_bad_proof_and_unknown_client_denied_alike(self):
        self.generate("alice")
        self.start(lockout_scope="source")
        config, kf = self.client()
        bad_secret = kf.replace(secret=b"\x42" * 32)
        unknown = kf.replace(client="mallory")
        first = await knock(reactor, config, bad_secret)
        self.assertEqual(first.outcome, Outcome.DENIED)
        self.service.server.tracker._lockouts.clear()  # the next attempt must reach the proof
        second = await knock(reactor, config, unknown)
        self.assertEqual(second.outcome, Outcome.DENIED)
        denied = [e for e in read_audit(self.audit_path) if e["event"] == "denied"]
        self.assertEqual([e["reason"] for e in denied], ["bad-proof", "unknown-client"])

    async def test_unreachable(self):
        self.generate("alice")
        self.start()
        config, kf = self.client()
        port = self.service.central_port.getHost().port
        await self.stop(self.service)
        result = await knock(reactor, config.replace(server=f"tcp:host=127.0.0.1:port={port}"), kf)
        self.assertEqual(result.outcome, Outcome.UNREACHABLE)
        self.assertEqual(result.outcome.exit_code, 3)

    async def test_busy_retried_until_bound(self):
        self.generate("alice", "bob")
        self.start(knock_window=2)
        config_a, kf_a = self.client()
        config_b, kf_b = self.client("bob", busy_retries=0)
        # Alice takes the only slot and sits on it (handshake only).
        from knocker.core import handshake as hs
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from knocker.client.twisted_driver import _Lines

        lines = _Lines()
        port = self.service.central_port.getHost().port
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), lines)
        machine = hs.ClientHandshake(kf_a)
        lines.sendLine(machine.hello().line[:-1])
        lines.sendLine(machine.receive(await lines.lines.get()).line[:-1])
        granted = machine.receive(await lines.lines.get())
        self.assertIsInstance(granted, hs.KnockPorts)
        result = await knock(reactor, config_b, kf_b)
        self.assertEqual(result.outcome, Outcome.BUSY)
        self.assertEqual(result.attempts, 1)
        lines.transport.loseConnection()
        await lines.closed


    async def test_action_killed_at_script_timeout(self):
        self.generate("alice")
        slow = os.path.join(self.dir, "slow")
        with open(slow, "w") as handle:
            handle.write("#!/bin/sh\necho starting; sleep 30\n")
        os.chmod(slow, stat.S_IRWXU)
        self.start(on_success=slow, script_timeout=0.5)
        config, kf = self.client()
        result = await knock(reactor, config, kf)
        self.assertEqual((result.outcome, result.detail), (Outcome.ACTION_FAILED, "action-failed"))
        [script] = [e for e in read_audit(self.audit_path) if e["event"] == "script"]
        self.assertEqual((script["timed_out"], script["signal"], script["stdout"]),
                         (True, 9, "starting\n"))

    async def test_on_close_runs_after_open_duration(self):
        self.generate("alice")
        on_close, close_out = write_recorder(self.dir, "on-close")
        self.start(on_close=on_close, open_duration=0.3)
        config, kf = self.client()
        result = await knock(reactor, config, kf)
        self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(read_lines(close_out), [])
        for _ in range(100):
            if read_lines(close_out):
                break
            await deferLater(reactor, 0.05)
        self.assertEqual([r["argv"][1:] for r in read_lines(close_out)], [["127.0.0.1", "alice", "1"]])
        for _ in range(40):
            if self.service.server._store.pending_closes() == []:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(self.service.server._store.pending_closes(), [])
        closes = [e for e in read_audit(self.audit_path) if e["event"] == "close"]
        self.assertEqual([(c["index"], c["ok"]) for c in closes], [(1, True)])


    async def test_malformed_line_anywhere_knocks_nothing(self):
        """
        docs/spec.md section 3: a file that breaks a rule is refused, naming the line, and
        nothing is knocked, whether the bad line is the one the server
        grants next or any other.
        """
        from knocker.core.knockfile import KnockFileText

        self.generate("alice")
        self.start()
        config, kf = self.client()
        path = os.path.join(self.dir, "alice.knock")
        text = read_private(path)
        for number in (1, 7):
            lineno = text.count("\n", 0, text.index(f"\n{number} ") + 1) + 1
            broken = KnockFileText(text.replace(f"\n{number} ", f"\n{number} 99999,"), path)
            result = await knock(reactor, config, broken)
            self.assertEqual((result.outcome.name, result.outcome.exit_code), ("BAD_FILE", 2))
            self.assertIn(f"{path}, line {lineno}: ", result.detail)
        events = read_audit(self.audit_path)
        self.assertEqual([e for e in events if e["event"] == "hit"], [], "nothing was knocked")
        # Whether the server saw each PROOF before the client hung up is a
        # race; at most one number each is spent.
        self.assertLessEqual(len([e for e in events if e["event"] == "grant"]), 2)


class TwistedDriverTests(TestCase):
    async def test_hit_on_a_closed_port_is_trouble(self):
        import socket

        from knocker.client.twisted_driver import TwistedIO
        from knocker.client.knock import Trouble

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        with self.assertRaises(Trouble) as caught:
            await TwistedIO(reactor).hit("127.0.0.1", port, 2)
        self.assertIn(f"knock on port {port}", str(caught.exception))

    async def test_hit_waits_for_the_server_to_close(self):
        from twisted.internet import protocol

        from knocker.client.twisted_driver import TwistedIO

        closed = []

        class CloseLater(protocol.Protocol):
            def connectionMade(self):
                reactor.callLater(0.2, self.transport.loseConnection)
                closed.append(reactor.seconds() + 0.2)

        factory = protocol.Factory.forProtocol(CloseLater)
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        await TwistedIO(reactor).hit("127.0.0.1", listening.getHost().port, 5)
        self.assertGreaterEqual(reactor.seconds(), closed[0] - 0.01)


class AuditLogTests(TestCase):
    def test_hit_lines_match_record_lines(self):
        """
        The hot-path hit line is the same JSON as the general one.
        """
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        clock = Clock()
        clock.advance(1764028800.25)
        path = self.mktemp()
        audit = AuditLog(path, clock)
        audit.hit("192.0.2.1", 40000, 20001, "no-slot")
        audit.record("hit", ip="192.0.2.1", src_port=40000, port=20001, outcome="no-slot")
        clock.advance(1)
        audit.hit("2001:db8::1", 1, 2, "locked")
        audit.close()
        first, second, third = read_audit(path)
        self.assertEqual(first, second)
        self.assertEqual(first["time"], "2025-11-25T00:00:00.250000Z")
        self.assertEqual(third["time"], "2025-11-25T00:00:01.250000Z")
        self.assertEqual(third["ip"], "2001:db8::1")
        self.assertEqual(oct(os.stat(path).st_mode & 0o777), "0o600")

    def test_torn_last_line_is_skipped(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write('{"event":"start"}\n{"event":"hit","ip":"1.2')
        self.assertEqual(read_audit(path), [{"event": "start"}])
        with open(path, "w") as handle:
            handle.write('{"event":"start"}\nnot json\n{"event":"stop"}\n')
        self.assertRaises(ValueError, read_audit, path)

    def test_reopen_that_fails_keeps_the_old_file(self):
        """
        Rotated into a directory that is gone: nothing is lost, the events
        keep going to the file already open.
        """
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "audit.log")
        audit = AuditLog(path, Clock())
        audit.record("start")
        moved = directory + ".moved"
        os.rename(directory, moved)
        audit.reopen()
        audit.record("stop")
        audit.close()
        self.assertEqual([e["event"] for e in read_audit(os.path.join(moved, "audit.log"))],
                         ["start", "stop"])
        self.assertFalse(os.path.exists(path))



class TornAuditTests(TestCase):
    def test_reopening_after_a_torn_line_keeps_every_line_json(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write('{"event":"start"}\n{"event":"hit","ip":"19')
        audit = AuditLog(path, Clock())
        audit.record("start")
        audit.close()
        events = read_audit(path)
        self.assertEqual([e["event"] for e in events], ["start", "audit-repaired", "start"])
        self.assertEqual(events[1]["fragment"], '{"event":"hit","ip":"19')
        with open(path) as handle:
            for line in handle:
                json.loads(line)


class ActionRunnerTests(TestCase):
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
