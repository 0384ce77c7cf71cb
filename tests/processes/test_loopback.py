"""
The whole system over real loopback: the daemon's service and the client
coroutine in one reactor, real sockets, real SQLite, real action processes.
"""

import os
import stat

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from knocker.admin.clients import generate_client
from knocker.client.twisted_driver import Outcome, knock
from knocker.core.config import parse_client_config
from knocker.core.knockfile import parse_knockfile
from knocker.daemon.audit import read_audit
from knocker.daemon.service import KnockServerService
from knocker.files import read_private
from tests.helpers.harness import server_config
from tests.helpers.processes import read_lines, write_recorder


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
        self.service.server.tracker.lift()  # the next attempt must reach the proof
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
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from knocker.client.twisted_driver import _Lines
        from knocker.core import handshake as hs

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
