"""
The knocker commands on the daemon's state: which configuration they use
(--config, else /etc/knocker/knockserver.conf, else a refusal, never a
state in the working directory), and, run as root on a state directory
that belongs to the daemon's user, files that user can still use: a
daemon running as its own user serves a client root generated meanwhile.
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from knocker.admin import cli
from tests.helpers.processes import ROOT, Daemon, knocker, write_config


def nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


class ConfigChoiceTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="knocker-admin-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def test_no_config_is_refused_and_makes_nothing(self):
        if os.path.exists(cli.DEFAULT_CONFIG):
            raise SkipTest(f"{cli.DEFAULT_CONFIG} exists here")
        for command in (["status"], ["generate", "alice"]):
            done = knocker(*command, cwd=self.dir)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertIn("--config", done.stderr)
            self.assertIn(cli.DEFAULT_CONFIG, done.stderr)
            self.assertEqual(os.listdir(self.dir), [], "no knocker-state, no alice.knock")

    def test_state_dir_alone_will_do(self):
        state = os.path.join(self.dir, "state")
        done = knocker("status", "--state-dir", state, "--json", cwd=self.dir)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["state_dir"], state)

    def test_the_default_configuration_is_used(self):
        state = os.path.join(self.dir, "state")
        conf = write_config(os.path.join(self.dir, "knockserver.conf"), "server",
                            state_dir=state, pool_size=10, pool_range="3000-3099")
        self.patch(cli, "DEFAULT_CONFIG", conf)
        out = os.path.join(self.dir, "alice.knock")
        previous = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, previous)
        self.assertEqual(cli.main(["generate", "alice", "--knocks", "3", "-o", out]), 0)
        self.assertTrue(os.path.exists(os.path.join(state, "clients", "alice.knock")))
        self.assertEqual(sorted(os.listdir(self.dir)), ["alice.knock", "knockserver.conf",
                                                        "state"])

    def test_a_failed_force_leaves_the_clients_old_file(self):
        """
        generate --force whose server side fails (its clients folder is a
        file here) exits 1 and leaves -o FILE as it was: the old file the
        server still knows, not a new one it never took.
        """
        state = os.path.join(self.dir, "state")
        conf = write_config(os.path.join(self.dir, "knockserver.conf"), "server",
                            state_dir=state, pool_size=10, pool_range="3000-3099")
        out = os.path.join(self.dir, "alice.knock")
        done = knocker("generate", "alice", "--config", conf, "--knocks", "3", "-o", out)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(out) as handle:
            before = handle.read()
        clients = os.path.join(state, "clients")
        shutil.rmtree(clients)
        with open(clients, "w") as handle:
            handle.write("in the way")
        done = knocker("generate", "alice", "--config", conf, "--knocks", "3", "-o", out,
                       "--force")
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        with open(out) as handle:
            self.assertEqual(handle.read(), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["alice.knock", "knockserver.conf",
                                                        "state"], "nothing staged left")

    def test_a_force_the_state_refuses_leaves_the_old_file_working(self):
        """
        generate --force whose counter cannot be written (the database
        locked, the disk full) takes the server's new copy back as well: the
        old file, which the client keeps, still proves itself.
        """
        import sqlite3

        from knocker.admin.clients import generate_client
        from knocker.core.serverconfig import load_server_config
        from knocker.state.book import ClientBook
        from knocker.state.sqlite import SQLiteStore

        state = os.path.join(self.dir, "state")
        config = load_server_config(None, {"state-dir": state, "pool-size": "10",
                                           "pool-range": "3000-3099"})
        out = os.path.join(self.dir, "alice.knock")
        generate_client(config, "alice", 3, 2, out)

        def locked(*_):
            raise sqlite3.OperationalError("database is locked")

        self.patch(SQLiteStore, "register", locked)
        self.assertRaises(sqlite3.OperationalError, generate_client, config, "alice", 3, 2,
                          out, force=True)
        self.patch(SQLiteStore, "register", SQLiteStore.__dict__["register"])
        store = SQLiteStore(state)
        self.addCleanup(store.close)
        book = ClientBook(state, store.pool())
        book.load()
        from knocker.core.knockfile import parse_knockfile
        from knocker.files import read_private

        secret = book.secret("alice", store.client("alice").secret_id)
        self.assertEqual(secret, parse_knockfile(read_private(out), out).secret)

    def test_force_mends_a_damaged_server_copy(self):
        """What the daemon's refusal tells the administrator to run."""
        from knocker.admin.clients import generate_client
        from knocker.core.serverconfig import load_server_config
        state = os.path.join(self.dir, "state")
        config = load_server_config(None, {"state-dir": state, "pool-size": "10",
                                           "pool-range": "3000-3099"})
        out = os.path.join(self.dir, "alice.knock")
        generate_client(config, "alice", 3, 2, out)
        copy = os.path.join(state, "clients", "alice.knock")
        with open(copy, "wb") as handle:
            handle.write(b"\xff\xfe broken")
        generate_client(config, "alice", 3, 2, out, force=True)
        os.unlink(copy)
        os.mkfifo(copy, 0o600)  # no read may hang on it
        generate_client(config, "alice", 3, 2, out, force=True)
        self.assertTrue(stat.S_ISREG(os.stat(copy).st_mode))

    def test_an_output_that_is_a_folder_is_refused_before_the_server_takes_anything(self):
        state = os.path.join(self.dir, "state")
        conf = write_config(os.path.join(self.dir, "knockserver.conf"), "server",
                            state_dir=state, pool_size=10, pool_range="3000-3099")
        folder = os.path.join(self.dir, "keys")
        os.makedirs(folder)
        for output in (folder, folder + os.sep):
            done = knocker("generate", "bob", "--config", conf, "--knocks", "3", "-o", output,
                           "--force")
            self.assertEqual(done.returncode, 2, done.stdout + done.stderr)
            self.assertIn("a folder; name the file", done.stderr)
        done = knocker("status", "--config", conf, "--json")
        self.assertEqual(json.loads(done.stdout)["clients"], [], "bob was not registered")
        self.assertEqual(os.listdir(folder), [])

    def test_unreadable_state_is_a_message(self):
        state = os.path.join(self.dir, "state")
        os.makedirs(state)
        with open(os.path.join(state, "state.sqlite"), "w") as handle:
            handle.write("not a database, at all, not even close" * 100)
        done = knocker("status", "--state-dir", state, cwd=self.dir)
        self.assertEqual(done.returncode, 1)
        self.assertIn(f"knocker status: the state ({state}/state.sqlite):", done.stderr)
        self.assertNotIn("Traceback", done.stderr)


class RootOnDaemonStateTests(TestCase):
    """
    Root runs the commands on a state directory owned by another user
    (nobody, here; the installation's is knocker).
    """

    timeout = 90

    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("needs root (to act as root on another user's state)")
        if shutil.which("setpriv") is None:
            raise SkipTest("setpriv (util-linux) is not installed")
        self.uid, self.gid = nobody()
        self.dir = tempfile.mkdtemp(prefix="knocker-owner-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        os.chmod(self.dir, 0o755)
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.state, 0o700)
        os.chown(self.state, self.uid, self.gid)
        self.conf = write_config(os.path.join(self.dir, "knockserver.conf"), "server",
                                 state_dir=self.state, pool_size=20, pool_range="22000-31999",
                                 central="tcp:0:interface=127.0.0.1",
                                 audit_log=os.path.join(self.state, "audit.log"))

    def owners(self) -> dict[str, tuple[int, int]]:
        found = {}
        for folder, folders, files in os.walk(self.state):
            for name in folders + files:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                found[os.path.relpath(path, self.state)] = (info.st_uid, info.st_gid)
        return found

    def generate(self, client):
        out = os.path.join(self.dir, client + ".knock")
        done = knocker("generate", client, "--config", self.conf, "--knocks", "5", "-o", out)
        self.assertEqual(done.returncode, 0, done.stderr)
        return out

    def test_acting_as_the_owner_takes_none_of_roots_groups(self):
        """
        Root's supplementary groups (0 at least) are dropped while acting
        as the state's owner, and given back after: else a link the owner
        put in the state could lead a write where only root's group may.
        """
        from knocker.admin.owner import StateOwner

        owner = StateOwner(self.state)
        self.assertTrue(owner.switching)
        before = os.getgroups()
        os.setgroups([0, *before])
        self.addCleanup(os.setgroups, before)
        with owner:
            self.assertEqual((os.geteuid(), os.getegid(), os.getgroups()),
                             (self.uid, self.gid, [self.gid]))
        self.assertEqual((os.geteuid(), set(os.getgroups())), (0, {0, *before}))

    def test_what_root_writes_in_the_state_is_the_owners(self):
        out = self.generate("alice")
        owners = self.owners()
        self.assertIn(os.path.join("clients", "alice.knock"), owners)
        self.assertIn("state.sqlite", owners)
        self.assertEqual({path for path, ids in owners.items() if ids != (self.uid, self.gid)},
                         set(), "everything in the state belongs to the state's owner")
        copy = os.path.join(self.state, "clients", "alice.knock")
        self.assertEqual(stat.S_IMODE(os.stat(copy).st_mode), 0o600)
        self.assertEqual(os.stat(out).st_uid, 0, "the client's copy stays the caller's")
        status = knocker("status", "--config", self.conf, "--json")
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertEqual(self.owners(), owners, "status changes no owner")

    def test_files_root_left_earlier_are_given_back(self):
        os.chown(self.state, 0, 0)
        self.generate("alice")
        self.assertEqual({ids for ids in self.owners().values()}, {(0, 0)})
        os.chown(self.state, self.uid, self.gid)
        self.generate("bob")
        self.assertEqual({ids for ids in self.owners().values()}, {(self.uid, self.gid)})

    def test_the_consoles_files_root_left_earlier_are_given_back(self):
        """
        console/ and its tokens, made by a start as root: given back with
        the rest, or the daemon (as its user) could not read the tokens
        and would refuse every bearer without a word.
        """
        console = os.path.join(self.state, "console")
        os.mkdir(console, 0o700)
        with open(os.path.join(console, "tokens"), "w") as handle:
            handle.write("\n")
        os.chmod(os.path.join(console, "tokens"), 0o600)
        self.generate("alice")
        owners = self.owners()
        self.assertEqual(owners["console"], (self.uid, self.gid))
        self.assertEqual(owners[os.path.join("console", "tokens")], (self.uid, self.gid))

    def test_a_symlink_in_the_state_is_not_followed(self):
        victim = os.path.join(self.dir, "victim")
        open(victim, "w").close()
        os.symlink(victim, os.path.join(self.state, "daemon.lock"))
        self.generate("alice")
        self.assertEqual(os.stat(victim).st_uid, 0)

    def test_a_name_swapped_for_a_hard_link_after_the_look_is_not_given(self):
        """
        The state's owner swaps a file root left for a hard link to a file
        of root's elsewhere, between the look at the name and the change
        (the race, forced here at the open): that file keeps its owner;
        what was not swapped is given back.
        """
        from knocker.admin import owner as owner_module

        for name in ("audit.log", "daemon.lock"):
            open(os.path.join(self.state, name), "w").close()
        victim = os.path.join(self.dir, "root-file")
        open(victim, "w").close()
        real_open, swapped = os.open, []

        def racing_open(path, flags, mode=0o777, *, dir_fd=None):
            if path == "audit.log" and not swapped:
                os.unlink(path, dir_fd=dir_fd)
                os.link(victim, path, dst_dir_fd=dir_fd)
                swapped.append(path)
            return real_open(path, flags, mode, dir_fd=dir_fd)

        self.patch(owner_module.os, "open", racing_open)
        owner_module.StateOwner(self.state)
        self.assertEqual(swapped, ["audit.log"])
        self.assertEqual(os.stat(victim).st_uid, 0)
        self.assertEqual(os.stat(os.path.join(self.state, "daemon.lock")).st_uid, self.uid)

    def test_daemon_as_its_own_user_serves_a_client_root_generated_meanwhile(self):
        probe = subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
             sys.executable, "-c", "import knocker, twisted"],
            env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            raise SkipTest(f"nobody cannot run this checkout: {probe.stderr.strip()}")
        success = os.path.join(self.dir, "on-success")  # /bin/sh: nobody may run it
        with open(success, "w") as handle:
            handle.write("#!/bin/sh\nexit 0\n")
        os.chmod(success, 0o755)
        with open(self.conf, "a") as handle:
            handle.write(f"on-success = {success}\n")
        self.generate("alice")
        daemon = Daemon(self.conf, os.path.join(self.state, "audit.log"), self.dir,
                        wrapper=["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                                 "--clear-groups"])
        self.addCleanup(daemon.stop)
        port = daemon.wait_ready()["central_port"]
        bob = self.generate("bob")  # while it runs, as root
        done = knocker("knock", "--server", f"tcp:host=127.0.0.1:port={port}",
                       "--knock-file", bob, "--log-file", os.path.join(self.dir, "client.log"))
        self.assertEqual(done.returncode, 0, f"{done.stdout}{done.stderr}\n{daemon.log()}")
        self.assertNotIn("server-error", daemon.log())

    def test_a_symlinked_clients_folder_is_not_entered(self):
        """
        The state's owner replaced clients/ by a link to a folder of root's:
        nothing in that folder changes owner.
        """
        self.generate("alice")
        victim = os.path.join(self.dir, "root-folder")
        os.mkdir(victim)
        open(os.path.join(victim, "secret"), "w").close()
        shutil.rmtree(os.path.join(self.state, "clients"))
        os.symlink(victim, os.path.join(self.state, "clients"))
        knocker("status", "--config", self.conf)
        self.assertEqual(os.stat(os.path.join(victim, "secret")).st_uid, 0)
        self.assertEqual(os.stat(victim).st_uid, 0)
