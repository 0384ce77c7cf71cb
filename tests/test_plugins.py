"""
The twistd plugins and their option parsing, without running a reactor.
"""

import os

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from knocker.admin.clients import generate_client
from knocker.client import tap as client_tap
from knocker.daemon import tap as server_tap
from knocker.daemon.service import KnockServerService
from tests.helpers.harness import epoll_watches, server_config


class PluginTests(SynchronousTestCase):
    def test_twistd_finds_both(self):
        names = {plugin.tapname for plugin in getPlugins(IServiceMaker)}
        self.assertTrue({"knockserver", "knockclient"} <= names)

    def test_server_options_override_file(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("[server]\nlockout = 30\nlockout-scope = source\n")
        options = server_tap.Options()
        options.parseOptions(["--config", path, "--lockout", "5"])
        self.assertEqual((options.config.lockout, options.config.lockout_scope), (5.0, "source"))

    def test_server_bad_value_exits_naming_key(self):
        """
        A value twistd cannot start with ends it with status 1 and the
        problem alone (not twistd's option list, which a UsageError prints).
        """
        options = server_tap.Options()
        error = self.assertRaises(SystemExit, options.parseOptions,
                                  ["--lockout-scope", "planet"])
        self.assertNotIsInstance(error, usage.UsageError)
        self.assertTrue(error.code.startswith("twistd knockserver: "), error.code)
        self.assertIn("lockout-scope", error.code)
        self.assertIn("global, source", error.code)

    def test_server_mistyped_option_is_still_a_usage_error(self):
        options = server_tap.Options()
        self.assertRaises(usage.UsageError, options.parseOptions, ["--lockotu", "5"])

    def test_server_refuses_missing_program(self):
        options = server_tap.Options()
        error = self.assertRaises(SystemExit, options.parseOptions,
                                  ["--on-success", "/nonexistent/open-door"])
        self.assertIn("on-success = /nonexistent/open-door: not an executable file", error.code)

    def program(self, name: str, mode: int) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        program = os.path.join(folder, name)
        with open(program, "w") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(program, mode)
        return program

    def test_server_options_refuse_a_program_anyone_can_change(self):
        program = self.program("open-door", 0o777)
        error = self.assertRaises(SystemExit, server_tap.Options().parseOptions,
                                  ["--on-success", program])
        self.assertIn(f"on-success = {program}: anyone can change the file", error.code)
        self.assertTrue(error.code.startswith("twistd knockserver: "), error.code)

    def test_server_options_refuse_a_state_anyone_can_change(self):
        state = os.path.join(os.path.dirname(self.program("unused", 0o755)), "state")
        os.mkdir(state)
        os.chmod(state, 0o777)
        error = self.assertRaises(SystemExit, server_tap.Options().parseOptions,
                                  ["--state-dir", state])
        self.assertIn(f"state-dir = {state}: anyone can change the folder", error.code)

    def test_server_options_judge_programs_for_twistds_uid(self):
        """
        twistd --uid USER reads the options as root and then switches: a
        program (here on-check, relative to where twistd was started)
        owned by that user is as good as root's.
        """
        import pwd

        from twisted.scripts._twistd_unix import ServerOptions

        if os.geteuid() != 0:
            raise SkipTest("handing a file to another user takes root (CI runs as root)")
        nobody = pwd.getpwnam("nobody")
        program = self.program("check-door", 0o755)
        os.chown(program, nobody.pw_uid, -1)
        relative = os.path.relpath(program)
        twistd = ServerOptions()
        twistd.parseOptions(["--uid", str(nobody.pw_uid), "knockserver", "--on-check", relative])
        self.assertEqual(twistd.subOptions.config.on_check, program)
        error = self.assertRaises(SystemExit, ServerOptions().parseOptions,
                                  ["knockserver", "--on-check", relative])
        self.assertIn(f"on-check = {program}: the file {program} belongs to user nobody",
                      error.code)

    def test_server_options_refuse_euid(self):
        """
        twistd --euid changes the effective ids alone: the programs the
        daemon starts would run with the real ones, root's.
        """
        from twisted.scripts._twistd_unix import ServerOptions

        error = self.assertRaises(SystemExit, ServerOptions().parseOptions,
                                  ["--uid", "65534", "--euid", "knockserver"])
        self.assertIn("--euid leaves the real user root", error.code)
        ServerOptions().parseOptions(["--uid", "65534", "knockserver"])  # without it: fine

    def test_make_server_service_binds_on_start(self):
        state = os.path.abspath(self.mktemp())
        options = server_tap.Options()
        options.parseOptions(["--state-dir", state, "--pool-size", "8",
                              "--pool-range", "3000-3100", "--central", "tcp:7123"])
        reactor = MemoryReactorClock()
        import signal

        # makeService notes SIGHUPs for the daemon it makes: not this process's.
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        service = server_tap.makeService(options, reactor)
        self.assertIsInstance(service, KnockServerService)
        self.assertEqual(reactor.tcpServers, [], "makeService must not bind")
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        # the central port, then the console on its default admin port
        self.assertEqual([server[0] for server in reactor.tcpServers], [7123, 8750])
        self.assertEqual(reactor.tcpServers[1][3], "127.0.0.1")
        # the pool's ports, watched through one epoll of the pool's own
        [poller] = reactor.getReaders()
        self.assertEqual(epoll_watches(poller),
                         {listener.fileno() for listener in service.pool_ports})
        pool = sorted(listener.getHost().port for listener in service.pool_ports)
        self.assertEqual(len(pool), 8)
        self.assertTrue(all(3000 <= port <= 3100 for port in pool))

    def test_client_options_need_a_knock_file(self):
        options = client_tap.Options()
        error = self.assertRaises(SystemExit, options.parseOptions, [])
        self.assertTrue(error.code.startswith("twistd knockclient: "), error.code)
        self.assertIn("knock-file", error.code)

    def test_client_options_refuse_an_unusable_server(self):
        """
        As C{knocker knock} does: named, not a traceback from Twisted's
        parser when the knock starts.
        """
        state = os.path.abspath(self.mktemp())
        out = os.path.join(os.path.dirname(state), "alice.knock")
        generate_client(server_config(state), "alice", 3, 3, out)
        for server, why in [("tls:127.0.0.1:7000\\", "a backslash at the end"),
                            ("tcp6:host=::1:port=7000", "Unknown endpoint type")]:
            error = self.assertRaises(SystemExit, client_tap.Options().parseOptions,
                                      ["--knock-file", out, "--server", server])
            self.assertTrue(error.code.startswith("twistd knockclient: "), error.code)
            self.assertIn(f"server = {server}: not a usable endpoint", error.code)
            self.assertIn(why, error.code)

    def test_client_options_refuse_readable_knock_file(self):
        state = os.path.abspath(self.mktemp())
        out = os.path.join(os.path.dirname(state), "alice.knock")
        generate_client(server_config(state), "alice", 3, 3, out)
        os.chmod(out, 0o644)
        options = client_tap.Options()
        error = self.assertRaises(SystemExit, options.parseOptions, ["--knock-file", out])
        self.assertIn(out, error.code)
        self.assertIn("0644", error.code)
        os.chmod(out, 0o600)
        options.parseOptions(["--knock-file", out])
        service = client_tap.makeService(options, MemoryReactorClock())
        self.assertEqual(service.name, "knockclient")
