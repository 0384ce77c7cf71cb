"""
The paths the daemon needs are checked first, and a bad one stops it with
a message naming the key, the path and the remedy (knocker/daemon/paths.py),
not a bare "[Errno 2] ... audit.log".
"""

import os
import pwd
import stat

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from knocker.daemon.service import KnockServerService
from tests.helpers.harness import server_config


class StartupPathTests(TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def start(self, **keys):
        values = {"state_dir": os.path.join(self.dir, "state"), "central": "tcp:0"}
        values.update(keys)
        state_dir = values.pop("state_dir")
        service = KnockServerService(server_config(state_dir, **values), MemoryReactorClock())
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        return service

    def refused(self, *words, **keys) -> str:
        error = self.assertRaises(SystemExit, self.start, **keys)
        message = str(error)
        self.assertTrue(message.startswith("knockserver cannot start: "), message)
        for word in words:
            self.assertIn(word, message)
        return message

    def crash_left_a_close_and_a_damaged_file(self, state):
        """A door the last run left open, and a client file a start refuses."""
        from knocker.state.sqlite import SQLiteStore

        store = SQLiteStore(state)
        store.add_close(1000.0, "192.0.2.7", "alice", 4)
        store.close()
        with open(os.path.join(state, "clients", "stray.knock"), "w") as handle:
            handle.write("not registered\n")
        os.chmod(os.path.join(state, "clients", "stray.knock"), 0o600)

    def test_a_refused_start_still_closes_the_doors_a_crash_left_open(self):
        """
        A daemon killed with a door open leaves its close pending; if the
        next start is refused (here a damaged client copy), that close runs
        before the exit, as it would have at a start that went through.
        """
        from knocker.state.sqlite import SQLiteStore
        from tests.helpers.processes import read_lines, write_recorder

        close, closed = write_recorder(self.dir, "on-close")
        state = os.path.join(self.dir, "state")
        first = self.start(on_close=close)
        first.stopService()
        self.crash_left_a_close_and_a_damaged_file(state)
        message = self.refused("stray.knock, line 1: header is missing",
                               "of the 1 doors an earlier run left open, on-close closed 1",
                               on_close=close)
        self.assertEqual([run["argv"][1:] for run in read_lines(closed)],
                         [["192.0.2.7", "alice", "4"]], message)
        store = SQLiteStore(state)
        self.assertEqual(store.pending_closes(), [], "done, so not run again")
        store.close()

    def test_a_refused_start_audits_what_on_close_said(self):
        """
        An on-close that fails at a refused start leaves its door open: the
        audit log says why (its exit and output), as it does for every
        program the running daemon runs, not only that it failed.
        """
        from knocker.daemon.audit import read_audit

        close = os.path.join(self.dir, "on-close")
        with open(close, "w") as handle:
            handle.write("#!/bin/sh\necho removing $1\necho 'nft: permission denied' >&2\n"
                         "exit 3\n")
        os.chmod(close, 0o755)
        audit = os.path.join(self.dir, "audit.log")
        state = os.path.join(self.dir, "state")
        self.start(on_close=close, audit_log=audit).stopService()
        self.crash_left_a_close_and_a_damaged_file(state)
        self.refused("on-close closed 0", on_close=close, audit_log=audit)
        script = [e for e in read_audit(audit) if e["event"] == "script"]
        self.assertEqual(len(script), 1, script)
        self.assertEqual((script[0]["action"], script[0]["ip"], script[0]["exit_code"],
                          script[0]["stdout"], script[0]["stderr"]),
                         ("on-close", "192.0.2.7", 3, "removing 192.0.2.7\n",
                          "nft: permission denied\n"))
        self.assertEqual([e["ok"] for e in read_audit(audit) if e["event"] == "close"], [False])

    def test_a_refused_start_runs_the_closes_as_twistds_uid(self):
        """
        twistd --uid starts the service as root and switches after: the
        closes a refused start runs are run as that user, as they would
        have been at a start that went through, never as root.
        """
        from twisted.trial.unittest import SkipTest


        if os.geteuid() != 0:
            raise SkipTest("switching to another user takes root (CI runs the suite as root)")
        import shutil
        import tempfile

        nobody = pwd.getpwnam("nobody")
        shared = tempfile.mkdtemp(prefix="knocker-runs-as-")  # a folder nobody may enter
        self.addCleanup(shutil.rmtree, shared, ignore_errors=True)
        os.chmod(shared, 0o755)
        ran_as = os.path.join(shared, "ran-as")
        open(ran_as, "w").close()
        os.chown(ran_as, nobody.pw_uid, nobody.pw_gid)
        close = os.path.join(shared, "on-close")
        with open(close, "w") as handle:
            handle.write(f"#!/bin/sh\nid -u > {ran_as}\n")
        os.chmod(close, 0o755)
        state = os.path.join(shared, "state")
        self.start(state_dir=state, on_close=close).stopService()
        self.crash_left_a_close_and_a_damaged_file(state)
        for folder, _, names in os.walk(state):  # the daemon's user's, as it must be
            for path in [folder] + [os.path.join(folder, name) for name in names]:
                os.lchown(path, nobody.pw_uid, nobody.pw_gid)
        service = KnockServerService(server_config(state, central="tcp:0", on_close=close),
                                     MemoryReactorClock(), runs_as=(nobody.pw_uid, nobody.pw_gid))
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn("on-close closed 1", str(error))
        with open(ran_as) as handle:
            self.assertEqual(handle.read().strip(), str(nobody.pw_uid))

    def test_with_twistds_uid_the_start_makes_its_files_as_that_user(self):
        """
        twistd --uid starts the service as root: its state, lock and
        audit log are made as the user it switches to (root's files would
        be unwritable after the switch), and a link that user planted in
        its own folder is not followed by root to a root file.
        """
        runs_as, shared, state = self.runs_as_nobody()
        nobody = pwd.getpwnam("nobody")
        audit = os.path.join(state, "audit.log")
        service = KnockServerService(
            server_config(state, central="tcp:0", audit_log=audit), MemoryReactorClock(),
            runs_as=runs_as)
        service.privilegedStartService()
        service.stopService()
        for name in ("state.sqlite", "daemon.lock", "audit.log"):
            self.assertEqual(os.stat(os.path.join(state, name)).st_uid, nobody.pw_uid, name)
        self.assertEqual(os.geteuid(), 0, "root again after the start")

        victim = os.path.join(shared, "root-file")
        with open(victim, "w") as handle:
            handle.write("important\n")
        os.remove(os.path.join(state, "daemon.lock"))
        os.symlink(victim, os.path.join(state, "daemon.lock"))
        os.lchown(os.path.join(state, "daemon.lock"), *runs_as)
        service = KnockServerService(
            server_config(state, central="tcp:0", audit_log=audit), MemoryReactorClock(),
            runs_as=runs_as)
        try:
            service.privilegedStartService()
        except SystemExit:
            pass  # refused: the lock could not be taken
        else:
            service.stopService()
        with open(victim) as handle:
            self.assertEqual(handle.read(), "important\n")

    def runs_as_nobody(self):
        """(uid, gid) of nobody, and a state-dir of theirs in a folder they may enter."""
        from twisted.trial.unittest import SkipTest

        if os.geteuid() != 0:
            raise SkipTest("switching to another user takes root (CI runs the suite as root)")
        import shutil
        import tempfile

        # A start as root first, for the modules a start imports: this
        # machine's Python may live where nobody can read (a deployment's
        # cannot: the daemon runs as that user).
        self.start(state_dir=os.path.join(self.dir, "warm")).stopService()
        nobody = pwd.getpwnam("nobody")
        shared = tempfile.mkdtemp(prefix="knocker-runs-as-")
        self.addCleanup(shutil.rmtree, shared, ignore_errors=True)
        os.chmod(shared, 0o755)
        state = os.path.join(shared, "state")
        os.mkdir(state, 0o700)
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        return (nobody.pw_uid, nobody.pw_gid), shared, state

    def test_a_refused_start_opens_the_audit_log_as_twistds_user_too(self):
        """
        A start refused before the audit log was opened opens it for the
        closes' lines: as the daemon's user too, so that a log made then is
        theirs (and no link of theirs is followed as root).
        """
        runs_as, shared, state = self.runs_as_nobody()
        close = os.path.join(shared, "on-close")
        with open(close, "w") as handle:
            handle.write("#!/bin/sh\nexit 0\n")
        os.chmod(close, 0o755)
        audit = os.path.join(state, "audit.log")
        service = KnockServerService(
            server_config(state, central="tcp:0", on_close=close, audit_log=audit),
            MemoryReactorClock(), runs_as=runs_as)
        service.privilegedStartService()
        service.stopService()
        self.crash_left_a_close_and_a_damaged_file(state)
        for folder, _, names in os.walk(state):  # (the closes' store and files, theirs)
            for path in [folder] + [os.path.join(folder, name) for name in names]:
                os.lchown(path, *runs_as)
        os.remove(audit)  # moved away by logrotate, say
        service = KnockServerService(
            server_config(state, central="tcp:0", on_close=close, audit_log=audit),
            MemoryReactorClock(), runs_as=runs_as)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn("on-close closed 1", str(error))
        # Root's, it would refuse every later start (the daemon could not write it).
        self.assertEqual(os.stat(audit).st_uid, runs_as[0])

    def test_files_left_root_s_by_an_earlier_start_are_named_with_the_mend(self):
        """
        Upgrading from a start that made the state as root: the files the
        daemon's user cannot write are named with the chown that mends
        them (the check judged root's real ids, to whom all is allowed).
        """
        runs_as, shared, state = self.runs_as_nobody()
        lock = os.path.join(state, "daemon.lock")
        open(lock, "w").close()  # root's, 0644
        service = KnockServerService(server_config(state, central="tcp:0"),
                                     MemoryReactorClock(), runs_as=runs_as)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn(f"cannot write {lock}", str(error))
        self.assertIn("chown -R", str(error))

    def test_with_twistds_uid_a_console_key_only_root_reads_still_serves(self):
        """
        The admin endpoint is built, and bound, as root, as the central
        one is: a TLS key only root may read (a port below 1024) is no
        reason for the console not to start under twistd --uid.
        """
        from tests.network.tls import make_ca, make_server

        runs_as, shared, state = self.runs_as_nobody()
        keys = os.path.join(shared, "keys")
        os.mkdir(keys, 0o700)  # root's alone
        files = make_server(keys, make_ca(keys))
        admin = f"ssl:0:interface=127.0.0.1:privateKey={files.key_path}:certKey={files.cert_path}"
        # The console's modules too (see runs_as_nobody).
        self.start(state_dir=os.path.join(self.dir, "warm-console"), admin=admin).stopService()
        service = KnockServerService(server_config(state, central="tcp:0", admin=admin),
                                     MemoryReactorClock(), runs_as=runs_as)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertIsNotNone(service.console.port)

    def test_a_refused_start_follows_no_link_of_the_users_to_clean_up(self):
        """
        The console's folder in the state-dir is the user's: swapped for a
        link to a root folder during the start, it must not get root to
        delete that folder's daemon.json as the refused start cleans up.
        """
        admin = "tcp:0:interface=127.0.0.1"
        self.start(state_dir=os.path.join(self.dir, "warm-console"), admin=admin).stopService()
        runs_as, shared, state = self.runs_as_nobody()
        elsewhere = os.path.join(shared, "etc-something")
        os.mkdir(elsewhere, 0o755)
        precious = os.path.join(elsewhere, "daemon.json")
        with open(precious, "w") as handle:
            handle.write("{}\n")
        console = os.path.join(state, "console")
        os.mkdir(console, 0o700)  # theirs, as the checks want it
        os.chown(console, *runs_as)
        from knocker.daemon import service as service_module

        def swapped_then_refused(reactor, key, description):
            # The user swaps the folder for a link once the checks are done;
            # then the start is refused (a port taken, say).
            os.rmdir(console)
            os.symlink(elsewhere, console)
            os.lchown(console, *runs_as)
            raise service_module.StartupError("central: a port taken")

        self.patch(service_module, "_listening_endpoint", swapped_then_refused)
        service = KnockServerService(server_config(state, central="tcp:0", admin=admin),
                                     MemoryReactorClock(), runs_as=runs_as)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn("a port taken", str(error))
        self.assertTrue(os.path.exists(precious), "root deleted a file through the user's link")

    def test_a_console_folder_left_roots_is_named_with_the_mend(self):
        admin = "tcp:0:interface=127.0.0.1"
        self.start(state_dir=os.path.join(self.dir, "warm-console"), admin=admin).stopService()
        runs_as, shared, state = self.runs_as_nobody()
        os.mkdir(os.path.join(state, "console"), 0o700)  # root's, from a start as root
        service = KnockServerService(server_config(state, central="tcp:0", admin=admin),
                                     MemoryReactorClock(), runs_as=runs_as)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn("console", str(error))
        self.assertIn("chown -R", str(error))

    def test_with_twistds_uid_a_fleet_key_only_root_reaches_is_read(self):
        """
        database-key-file in a folder only root may enter (as a TLS key
        may be): read as root, once, at start; one the user may read is
        read as the user.
        """
        from knocker.daemon.privileges import acting_as
        from knocker.daemon.service import _read_key

        runs_as, shared, state = self.runs_as_nobody()
        hidden = os.path.join(shared, "root-only")
        os.mkdir(hidden, 0o700)
        key = os.path.join(hidden, "fleet.key")
        with open(key, "w") as handle:
            handle.write("k\n")
        os.chmod(key, 0o600)
        theirs = os.path.join(state, "fleet.key")
        with open(theirs, "w") as handle:
            handle.write("t\n")
        os.chown(theirs, *runs_as)
        seen = []

        def load_key(path):
            with open(path) as handle:
                seen.append((handle.read().strip(), os.geteuid()))

        with acting_as(runs_as):
            _read_key(key, load_key)
            _read_key(theirs, load_key)
        self.assertEqual(seen, [("k", 0), ("t", runs_as[0])])

    def test_a_second_daemon_touches_no_state(self):
        """
        The lock is taken before the state is opened: a second daemon on
        the same state-dir does not create or write the database the
        first one uses (here: not yet made) before it learns of the lock.
        """
        from knocker.state.lock import StateLock

        state = os.path.join(self.dir, "state")
        os.mkdir(state, 0o700)
        first = StateLock(state)
        first.acquire()
        self.addCleanup(first.release)
        self.refused("another knockserver", state_dir=state)
        self.assertFalse(os.path.exists(os.path.join(state, "state.sqlite")))

    def test_a_start_refused_for_the_lock_runs_no_close(self):
        """The other daemon holding the state has those doors open on purpose."""
        from knocker.state.lock import StateLock
        from knocker.state.sqlite import SQLiteStore
        from tests.helpers.processes import read_lines, write_recorder

        close, closed = write_recorder(self.dir, "on-close")
        state = os.path.join(self.dir, "state")
        self.start(on_close=close).stopService()
        store = SQLiteStore(state)
        store.add_close(1000.0, "192.0.2.7", "alice", 4)
        store.close()
        other = StateLock(state)
        other.acquire()
        self.addCleanup(other.release)
        self.refused("another knockserver", on_close=close)
        self.assertEqual(read_lines(closed), [])

    def test_a_state_dir_made_where_others_can_change_it_is_refused(self):
        """
        The options judge a state-dir that exists; one the start makes is
        judged once made, with the folder it was made in.
        """
        shared = os.path.join(self.dir, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)  # not sticky: anyone could swap the state
        state = os.path.join(shared, "state")
        self.refused(f"state-dir = {state}", f"anyone can change the folder {shared}",
                     state_dir=state)

    def test_a_kept_pool_holding_the_central_port(self):
        """
        The pool is drawn once and kept; moving pool-range away later does
        not move it, so a central port among its ports is named as such,
        not left to fail as "address already in use".
        """
        from knocker.state.sqlite import SQLiteStore

        first = self.start(pool_range="20000-20009", pool_size=8)
        first.stopService()
        store = SQLiteStore(os.path.join(self.dir, "state"))
        taken = sorted(store.pool())[0]
        store.close()
        self.refused(f"central listens on port {taken}, which is one of the pool's",
                     "move central", pool_range="30000-30009", pool_size=8,
                     central=f"tcp:{taken}:interface=127.0.0.1")

    def test_an_endpoint_twisted_refuses_is_named_by_its_key_before_anything_listens(self):
        """
        Values the configuration's parser lets through but Twisted cannot
        listen on: the refusal names the key and its value (not only
        "Unknown endpoint type"), and comes before any port is bound.
        """
        for central, words in (
            ("foo:bar", ("central = foo:bar", "tcp:, tcp6: or ssl:", "not foo:")),
            ("unix:/tmp/knocker-central.sock", ("central = unix:", "not unix:")),
            ("tcp:0:interface=127.0.0.1:bogus=1", ("central = tcp:0:interface=127.0.0.1:bogus=1:",
                                                    "not an endpoint to listen on")),
            ("tcp:0:backlog=x", ("central = tcp:0:backlog=x:", "not an endpoint")),
        ):
            with self.subTest(central=central):
                self.refused(*words, central=central)
        self.assertFalse(os.path.exists("/tmp/knocker-central.sock"))
        self.refused("admin = tcp:0:interface=127.0.0.1:backlog=x:", "not an endpoint",
                     admin="tcp:0:interface=127.0.0.1:backlog=x")

    def test_audit_folder_made_0700_when_its_parent_exists(self):
        audit = os.path.join(self.dir, "logs", "audit.log")
        self.start(audit_log=audit)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(audit)).st_mode), 0o700)
        self.assertTrue(os.path.exists(audit))

    def test_audit_folder_and_its_parent_missing(self):
        audit = os.path.join(self.dir, "var", "log", "knocker", "audit.log")
        message = self.refused(f"audit-log = {audit}", "does not exist", "install -d",
                               audit_log=audit)
        self.assertNotIn("Errno", message)
        user = pwd.getpwuid(os.geteuid()).pw_name  # the user it runs as, not always knocker
        self.assertIn(f"-o {user} -g {user}", message)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "var")), "nothing made")

    def test_audit_folder_is_a_file(self):
        open(os.path.join(self.dir, "logs"), "w").close()
        self.refused("audit-log = ", "not a directory",
                     audit_log=os.path.join(self.dir, "logs", "audit.log"))

    def test_state_dir_is_a_file(self):
        path = os.path.join(self.dir, "state")
        open(path, "w").close()
        self.refused(f"state-dir = {path}", "not a directory", state_dir=path)

    def test_state_dir_cannot_be_made(self):
        open(os.path.join(self.dir, "file"), "w").close()
        path = os.path.join(self.dir, "file", "state")
        self.refused(f"state-dir = {path}", "cannot create it", "set state-dir", state_dir=path)

    def test_state_dir_made_0700(self):
        path = os.path.join(self.dir, "a", "b", "state")
        self.start(state_dir=path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
        self.assertTrue(os.path.exists(os.path.join(path, "audit.log")))

    def test_on_check_must_be_executable(self):
        path = os.path.join(self.dir, "check")
        open(path, "w").close()
        self.refused(f"on-check = {path}", "not an executable file", on_check=path)

    def test_on_check_sets_up_the_watch(self):
        service = self.start(on_check="/bin/true", check_interval=5)
        self.assertIsNotNone(service.firewall)
        # Both services hold their pools at once: draw the second elsewhere.
        other = self.start(state_dir=os.path.join(self.dir, "other"), pool_range="21000-21999")
        self.assertIsNone(other.firewall)

    def test_a_tls_key_anyone_can_read_is_refused(self):
        """
        Whoever reads the central port's (or the console's) private key can
        pass for the server: a key readable or writable by others is
        refused at start, naming it; its group may read it (0640).
        """
        from tests.network.tls import make_ca, make_server

        files = make_server(self.dir, make_ca(self.dir))
        central = f"ssl:0:interface=127.0.0.1:privateKey={files.key_path}:certKey={files.cert_path}"
        os.chmod(files.key_path, 0o644)
        message = self.refused(f"central: its private key {files.key_path} can be read",
                               "(mode 0644)", f"chmod 0640 {files.key_path}", central=central)
        self.assertNotIn("admin", message)
        self.refused("admin: its private key", admin=central)
        os.chmod(files.key_path, 0o640)
        self.start(central=central, state_dir=os.path.join(self.dir, "another")).stopService()

    def test_the_pool_poller_tells_the_tracker_of_floods(self):
        # (so that a knock timing out in a flood locks nobody out)
        service = self.start(interface="127.0.0.1")
        self.assertEqual(service._poller._on_flood, service.server.tracker.flooding)


class FleetStartupTests(TestCase):

    def test_database_without_gateway_refused(self):
        """
        With C{database} set, C{gateway} must be set too: a made-up name
        could change, or be shared, and closes would be lost or stolen.
        """
        base = self.mktemp()
        os.makedirs(base)
        config = server_config(os.path.join(base, "state"),
                               database="postgresql:///knocker?host=/nonexistent")
        service = KnockServerService(config, MemoryReactorClock())
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn("gateway", str(error))
        self.assertIn("database is set", str(error))
