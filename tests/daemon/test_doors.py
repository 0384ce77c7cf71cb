"""
Doors never outlive the daemon, and a firewall that lost them gets them
back: the open doors a CloseSchedule knows, re-opening them (never behind a
close's back), running every pending close at stop, and the coordinator's
side of it (reopen_doors, close_doors, the actions' environment).
"""

import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from knocker.daemon.actionenv import action_env, check_env, passed_env
from knocker.daemon.actions import ActionResult, MemoryRunner
from knocker.daemon.audit import MemoryAudit
from knocker.daemon.clock import WallTime
from knocker.daemon.closes import CloseSchedule
from knocker.state.memory import MemoryStore
from tests.helpers.harness import Harness

IP = "192.0.2.10"


def result(ok: bool = True) -> ActionResult:
    return ActionResult(("/x", IP, "alice", "1"), 0 if ok else 1, None, False, "", "")


class Actions:
    """
    A run_close or run_open that records the order of every start and end,
    and finishes only when the test says so.
    """

    def __init__(self, name: str, log: list):
        self.name = name
        self.log = log
        self.pending: list[defer.Deferred] = []

    def __call__(self, ip, client, index):
        self.log.append((self.name, "start", index))
        d = defer.Deferred()
        d.addCallback(lambda r: (self.log.append((self.name, "end", index)), r)[1])
        self.pending.append(d)
        return d

    def finish(self, ok: bool = True) -> None:
        self.pending.pop(0).callback(result(ok))


class DoorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore()
        self.audit = MemoryAudit()
        self.log: list = []
        self.closer = Actions("close", self.log)
        self.opener = Actions("open", self.log)
        self.closes = CloseSchedule(self.clock, WallTime(self.clock), self.store, self.closer,
                                    self.audit, retry=60)

    def open_door(self, index=1, due=1300.0, ok=True) -> int:
        close_id = self.closes.record(due + 10, IP, "alice", index)
        self.closes.opened(close_id, due, IP, "alice", index, ok=ok)
        return close_id

    def test_an_open_door_is_known_until_its_close_falls_due(self):
        self.open_door()
        self.assertEqual(self.closes.open_doors(), [(IP, "alice", 1)])
        self.clock.advance(299)
        self.assertEqual(self.closes.open_doors(), [(IP, "alice", 1)])
        self.clock.advance(1)
        self.assertEqual(self.closes.open_doors(), [], "due: no longer open, whatever the close")
        self.assertEqual(self.log, [("close", "start", 1)])

    def test_a_failed_open_is_no_open_door_but_is_closed(self):
        self.open_door(ok=False)
        self.assertEqual(self.closes.open_doors(), [])
        self.clock.advance(300)
        self.assertEqual(self.log, [("close", "start", 1)], "closed all the same")

    def test_reopen_runs_the_open_again_once_an_address(self):
        """
        A door is an address: each address with a door open gets its latest
        knock's on-success again, once.
        """
        self.open_door(1)
        self.open_door(2, due=1400.0)
        other = self.closes.record(1410.0, "198.51.100.7", "bob", 5)
        self.closes.opened(other, 1400.0, "198.51.100.7", "bob", 5, ok=True)
        self.assertEqual(self.closes.reopen(self.opener), 2)
        self.assertEqual(self.log, [("open", "start", 2), ("open", "start", 5)])
        self.opener.finish()
        self.opener.finish()
        self.assertEqual(self.closes.open_doors(),
                         [(IP, "alice", 1), (IP, "alice", 2), ("198.51.100.7", "bob", 5)])

    def test_a_close_falling_due_waits_for_a_reopen(self):
        """
        A close never runs while an open of its door still runs, so the
        open cannot land after the close and leave the door open.
        """
        self.open_door(1)
        self.clock.advance(299)
        self.closes.reopen(self.opener)
        self.clock.advance(1)
        self.assertEqual(self.log, [("open", "start", 1)], "the close waits")
        self.opener.finish()
        self.assertEqual(self.log, [("open", "start", 1), ("open", "end", 1),
                                    ("close", "start", 1)])
        self.closer.finish()
        self.assertEqual(self.store.pending_closes(), [])

    def test_close_now_runs_every_pending_close(self):
        self.open_door(1)
        self.open_door(2, due=5000.0)
        self.store.add_close(900.0, "198.51.100.7", "bob", 9)  # left by an earlier run
        done = self.closes.close_now()
        self.assertEqual(sorted(entry[2] for entry in self.log), [1, 2, 9])
        self.assertNoResult(done)
        for _ in range(3):
            self.closer.finish()
        self.assertEqual(self.successResultOf(done), 3)
        self.assertEqual(self.store.pending_closes(), [])
        self.assertEqual(self.closes.open_doors(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timer left")

    def test_close_now_of_nothing(self):
        self.assertEqual(self.successResultOf(self.closes.close_now()), 0)

    def test_close_now_keeps_a_failed_close_for_the_next_start(self):
        close_id = self.open_door(1)
        done = self.closes.close_now()
        self.closer.finish(ok=False)
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual([c.id for c in self.store.pending_closes()], [close_id])
        self.clock.advance(600)
        self.assertEqual([e for e in self.log if e[1] == "start"], [("close", "start", 1)],
                         "not retried after stop")

    def test_close_now_waits_for_an_on_success_still_running(self):
        """
        Stopping while on-success runs: its close runs once it has ended,
        whatever it did.
        """
        close_id = self.closes.record(1310.0, IP, "alice", 1)
        done = self.closes.close_now()
        self.assertEqual(self.log, [], "on-success still runs")
        self.assertNoResult(done)
        self.closes.opened(close_id, 1300.0, IP, "alice", 1, ok=True)
        self.assertEqual(self.log, [("close", "start", 1)])
        self.assertEqual(self.closes.open_doors(), [], "stopped: not an open door")
        self.closer.finish()
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_now_does_not_run_a_running_close_twice(self):
        self.open_door(1)
        self.clock.advance(300)
        self.assertEqual(self.log, [("close", "start", 1)])
        done = self.closes.close_now()
        self.assertEqual(self.log, [("close", "start", 1)], "waited for, not run again")
        self.assertNoResult(done)
        self.closer.finish()
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(self.store.pending_closes(), [])

    def test_close_now_waits_for_a_reopen(self):
        self.open_door(1)
        self.closes.reopen(self.opener)
        done = self.closes.close_now()
        self.assertEqual(self.log, [("open", "start", 1)])
        self.opener.finish()
        self.closer.finish()
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual([entry[:2] for entry in self.log],
                         [("open", "start"), ("open", "end"), ("close", "start"),
                          ("close", "end")])


class EnvironmentTests(SynchronousTestCase):
    def test_passed_env_takes_only_the_names_that_are_set(self):
        environ = {"KNOCKER_NFT_TABLE": "door", "SECRET": "x", "KNOCKER_NFT": ""}
        self.assertEqual(passed_env(("KNOCKER_NFT_TABLE", "KNOCKER_NFT", "UNSET"), environ),
                         {"KNOCKER_NFT_TABLE": "door", "KNOCKER_NFT": ""})

    def test_action_env(self):
        env = action_env(IP, "alice", 3, {"KNOCKER_NFT_TABLE": "door"})
        self.assertEqual(set(env), {"PATH", "KNOCKER_NFT_TABLE", "KNOCKER_CLIENT_IP",
                                    "KNOCKER_CLIENT", "KNOCKER_INDEX"})
        self.assertEqual(env["KNOCKER_INDEX"], "3")
        self.assertEqual(set(check_env({"A": "1"})), {"PATH", "A"})
        self.assertEqual(set(action_env(IP, "alice", 3)),
                         {"PATH", "KNOCKER_CLIENT_IP", "KNOCKER_CLIENT", "KNOCKER_INDEX"})


class ConfigKeyTests(SynchronousTestCase):
    """
    The keys this needs: action-env, on-check, check-interval.
    """

    def server(self, body: str):
        from knocker.core.serverconfig import parse_server_config

        return parse_server_config("[server]\n" + body, "/etc/knocker/knockserver.conf")

    def test_defaults(self):
        config = self.server("")
        self.assertEqual(config.action_env, ("KNOCKER_PROTECTED_PORTS", "KNOCKER_NFT_TABLE",
                                             "KNOCKER_NFT_TIMEOUT", "KNOCKER_NFT"))
        self.assertEqual((config.on_check, config.check_interval), (None, 2.0))

    def test_action_env_forms(self):
        self.assertEqual(self.server("action-env =\n").action_env, ())
        self.assertEqual(self.server("action-env = A_1, b  A_1,_x\n").action_env,
                         ("A_1", "b", "_x"))

    def test_action_env_refusals(self):
        from knocker.core.config import ConfigError

        for bad in ("1A", "A-B", "A=1", "PATH", "KNOCKER_CLIENT_IP", "KNOCKER_INDEX"):
            error = self.assertRaises(ConfigError, self.server, f"action-env = X {bad}\n")
            self.assertIn("action-env", str(error))
            self.assertIn("the daemon sets those", str(error))

    def test_on_check_is_a_path_beside_the_file(self):
        config = self.server("on-check = scripts/nft-check\ncheck-interval = 0.5\n")
        self.assertEqual(config.on_check, "/etc/knocker/scripts/nft-check")
        self.assertEqual(config.check_interval, 0.5)
        from knocker.core.config import ConfigError

        self.assertRaises(ConfigError, self.server, "check-interval = 0.1\n")


class CoordinatorDoorTests(SynchronousTestCase):
    def setUp(self):
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        for name in ("KNOCKER_PROTECTED_PORTS", "KNOCKER_NFT_TABLE", "KNOCKER_NFT_TIMEOUT",
                     "KNOCKER_NFT"):
            os.environ.pop(name, None)
        os.environ.update({"KNOCKER_NFT_TABLE": "door", "KNOCKER_NFT_TIMEOUT": "1h",
                           "DAEMON_SECRET": "never passed on"})

    def test_actions_get_the_action_env_names_and_nothing_else(self):
        h = Harness(self, on_close="/bin/true", open_duration=10)
        h.knock()
        h.clock.advance(10)
        [(_, success), (_, close)] = h.runner.calls
        for env in (success, close):
            self.assertEqual(set(env), {"PATH", "KNOCKER_NFT_TABLE", "KNOCKER_NFT_TIMEOUT",
                                        "KNOCKER_CLIENT_IP", "KNOCKER_CLIENT", "KNOCKER_INDEX"})
            self.assertEqual((env["KNOCKER_NFT_TABLE"], env["KNOCKER_NFT_TIMEOUT"]),
                             ("door", "1h"))

    def test_action_env_empty_passes_nothing(self):
        h = Harness(self, action_env="")
        h.knock()
        [(_, env)] = h.runner.calls
        self.assertEqual(set(env), {"PATH", "KNOCKER_CLIENT_IP", "KNOCKER_CLIENT",
                                    "KNOCKER_INDEX"})

    def test_reopen_doors_runs_on_success_again(self):
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        h.knock()
        self.assertEqual(h.server.reopen_doors(), 1)
        self.assertEqual([argv for argv, _ in h.runner.calls],
                         [["/bin/echo", IP, "alice", "1"]] * 2)
        [first, again] = h.audit.of("script")
        self.assertNotIn("reopen", first)
        self.assertEqual((again["action"], again["reopen"]), ("on-success", True))
        self.assertEqual(len(h.audit.of("open")), 1, "no second OPEN")
        self.assertEqual(len(h.store.pending_closes()), 1, "no second close")

    def test_an_open_waits_for_a_close_of_its_address_still_running(self):
        """
        Knock 1's close runs (nft takes the address out) when knock 2 from
        the same address completes: knock 2's on-success starts after the
        close has finished, so the door ends open, and OPEN says so then.
        """
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        h.knock()
        h.runner.hold = True
        h.clock.advance(300)
        self.assertEqual(h.runner.calls[-1][0], ["/bin/true", IP, "alice", "1"])
        _, transport = h.knock()
        self.assertEqual(h.runner.calls[-1][0], ["/bin/true", IP, "alice", "1"],
                         "on-success waits for the close")
        self.assertEqual(transport.value(), b"")
        h.runner.finish(0)  # the close ends
        self.assertEqual(h.runner.calls[-1][0], ["/bin/echo", IP, "alice", "2"])
        h.runner.finish(0)
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertEqual(h.server.closes.open_doors(), [(IP, "alice", 2)])

    def test_no_doors_to_reopen_without_on_close(self):
        h = Harness(self)
        h.knock()
        self.assertEqual(h.server.reopen_doors(), 0)

    def test_close_doors_at_stop(self):
        h = Harness(self, on_close="/bin/true", open_duration=300)
        h.knock()
        h.server.stop()
        done = h.server.close_doors()
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(h.runner.calls[-1][0], ["/bin/true", IP, "alice", "1"])
        self.assertEqual(h.store.pending_closes(), [])
        self.assertEqual([e["ok"] for e in h.audit.of("close")], [True])

    def test_close_doors_waits_for_on_success(self):
        h = Harness(self, on_close="/bin/true", open_duration=300)
        h.runner.hold = True
        h.knock()
        h.server.stop()
        done = h.server.close_doors()
        self.assertEqual(len(h.runner.calls), 1, "on-success still runs: no close yet")
        h.runner.finish(0)
        self.assertEqual(h.runner.calls[-1][0], ["/bin/true", IP, "alice", "1"])
        h.runner.finish(0)
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(h.store.pending_closes(), [])

    def test_runner_is_memory(self):
        self.assertIsInstance(Harness(self).runner, MemoryRunner)
