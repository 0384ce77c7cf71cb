"""
The programs the daemon runs, and the configuration that names them, must
be out of reach of everyone but root and the daemon's own user
(knocker/daemon/paths.py, check_trusted): whoever could change them would
run code as the daemon.
"""

import os
import pwd
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from knocker.daemon.paths import PathError, check_program, check_trusted

NOBODY = "nobody"


def other_user() -> tuple[int, int]:
    """A uid and gid that are not this process's: only root can hand files to them."""
    if os.geteuid() != 0:
        raise SkipTest("giving a file to another user takes root (CI runs the suite as root)")
    entry = pwd.getpwnam(NOBODY)
    return entry.pw_uid, entry.pw_gid


class TrustedPathTests(TestCase):
    def setUp(self):
        # A private folder of our own, out of the test runner's tree, so
        # that only what each test changes is in question.
        self.dir = tempfile.mkdtemp(prefix="knocker-trust-")
        self.addCleanup(self._remove)
        self.program = self.make_program(self.dir, "open-door")

    def _remove(self):
        for root, dirs, files in os.walk(self.dir, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                path = os.path.join(root, name)
                (os.unlink if os.path.islink(path) else os.rmdir)(path)
        os.rmdir(self.dir)

    def make_program(self, folder: str, name: str) -> str:
        path = os.path.join(folder, name)
        with open(path, "w") as handle:
            handle.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o755)
        return path

    def refused(self, path: str, *words: str, key: str = "on-success") -> str:
        message = str(self.assertRaises(PathError, check_program, key, path))
        self.assertTrue(message.startswith(f"{key} = {path}"), message)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_program_of_our_own_in_a_private_folder(self):
        check_program("on-success", self.program)

    def test_program_anyone_can_write(self):
        os.chmod(self.program, 0o777)
        self.refused(self.program, "anyone can change the file", "mode 0777",
                     f"chmod o-w {self.program}")

    def test_folder_anyone_can_write(self):
        """Anyone could put another program in its place."""
        folder = os.path.join(self.dir, "scripts")
        os.mkdir(folder)
        os.chmod(folder, 0o777)
        program = self.make_program(folder, "open-door")
        self.refused(program, f"anyone can change the folder {folder}", f"chmod o-w {folder}")

    def test_sticky_folder_anyone_can_write(self):
        """Like /tmp: others cannot rename or remove what is not theirs."""
        folder = os.path.join(self.dir, "shared")
        os.mkdir(folder)
        os.chmod(folder, 0o1777)
        check_program("on-success", self.make_program(folder, "open-door"))

    def test_a_link_of_another_user_in_a_sticky_folder(self):
        """
        In /tmp a link's owner may replace it whenever it likes: a link
        there must be root's or the daemon's user's, like a file there.
        """
        uid, _ = other_user()
        folder = os.path.join(self.dir, "shared")
        os.mkdir(folder)
        os.chmod(folder, 0o1777)
        link = os.path.join(folder, "door-link")
        os.symlink(self.program, link)
        check_program("on-success", link)  # ours: fine
        os.lchown(link, uid, -1)
        self.refused(link, f"the link {link} belongs to user {NOBODY}", "sticky folder")

    def test_group_of_our_own_may_write(self):
        os.chmod(self.program, 0o775)
        os.chown(self.program, -1, os.getegid())
        check_program("on-success", self.program)

    def test_the_helper_the_shipped_scripts_run_is_checked_too(self):
        """
        etc/scripts/nft-open and its kin exec knocker-nft from their folder:
        a careless mode on that file is refused as on the program itself.
        """
        helper = self.make_program(self.dir, "knocker-nft")
        check_program("on-success", self.program)
        os.chmod(helper, 0o777)
        message = self.refused(self.program, f"which runs {helper}",
                               f"anyone can change the file {helper}", f"chmod o-w {helper}")
        self.assertIn("what open-door runs, as the daemon and as root", message)

    def test_the_helper_is_roots_even_for_a_daemon_with_a_user_of_its_own(self):
        """
        The daemon's user may own its own on-success, which runs as that
        user; not knocker-nft, which root runs too (the firewall units,
        nft-setup by hand): its owner would run code as root.
        """
        uid, gid = other_user()
        helper = self.make_program(self.dir, "knocker-nft")
        os.chown(self.program, uid, gid)
        check_program("on-success", self.program, runs_as=(uid, gid))
        os.chown(helper, uid, gid)
        message = str(self.assertRaises(PathError, check_program, "on-success", self.program,
                                        runs_as=(uid, gid)))
        self.assertIn(f"which runs {helper}", message)
        self.assertIn(f"belongs to user {NOBODY}", message)
        self.assertIn(f"chown root: {helper}", message)
        self.assertNotIn("or the daemon's", message)

    def test_the_helper_beside_a_links_target_is_checked(self):
        safe = os.path.join(self.dir, "safe")
        os.mkdir(safe)
        link = os.path.join(safe, "open-door")
        os.symlink(self.program, link)
        helper = self.make_program(self.dir, "knocker-nft")
        os.chmod(helper, 0o777)
        self.refused(link, f"which runs {helper}")

    def test_another_group_may_not_write(self):
        _, gid = other_user()
        os.chown(self.program, -1, gid)
        os.chmod(self.program, 0o775)
        self.refused(self.program, "group", "can change the file", f"chmod g-w {self.program}")

    def test_program_of_another_user(self):
        uid, _ = other_user()
        os.chown(self.program, uid, -1)
        message = self.refused(self.program, f"belongs to user {NOBODY} (uid {uid})",
                               f"chown root: {self.program}")
        self.assertNotIn("such as /etc/knocker/scripts", message)

    def test_folder_of_another_user(self):
        """Its owner could rename the program and put another in its place."""
        uid, _ = other_user()
        folder = os.path.join(self.dir, "theirs")
        os.mkdir(folder, 0o755)
        program = self.make_program(folder, "open-door")
        os.chown(folder, uid, -1)
        self.refused(program, f"the folder {folder} belongs to user {NOBODY}")

    def test_link_to_a_program_anyone_can_write(self):
        """Links are followed: what runs is the file they lead to."""
        loose = os.path.join(self.dir, "loose")
        os.mkdir(loose)
        os.chmod(loose, 0o777)
        target = self.make_program(loose, "real-door")
        link = os.path.join(self.dir, "open-door-link")
        os.symlink(target, link)
        message = self.refused(link, f"(that is {target})", f"the folder {loose}")
        self.assertNotIn("not an executable", message)

    def test_missing_program_still_says_so_first(self):
        missing = os.path.join(self.dir, "no-such-program")
        self.refused(missing, "not an executable file")

    def test_configuration_file_checked_the_same_way(self):
        config = os.path.join(self.dir, "knockserver.conf")
        with open(config, "w") as handle:
            handle.write("[server]\n")
        os.chmod(config, 0o644)
        check_trusted("--config", config)
        os.chmod(config, 0o666)
        message = str(self.assertRaises(PathError, check_trusted, "--config", config))
        self.assertIn(f"--config = {config}: anyone can change the file", message)

    def test_every_folder_up_to_the_root_is_looked_at(self):
        """A world-writable folder high above still lets anyone swap the tree."""
        top = os.path.join(self.dir, "a")
        deep = os.path.join(top, "b", "c")
        os.makedirs(deep)
        program = self.make_program(deep, "open-door")
        check_program("on-success", program)
        os.chmod(top, 0o777)
        self.refused(program, f"the folder {top}", "such as /etc/knocker/scripts")

    def test_link_in_a_folder_anyone_can_write(self):
        """
        The link is what runs: whoever can write its folder can point it
        at another program, however safe the one it points at now.
        """
        drop = os.path.join(self.dir, "drop")
        os.mkdir(drop)
        os.chmod(drop, 0o777)
        link = os.path.join(drop, "open-door")
        os.symlink(self.program, link)
        self.refused(link, f"(that is {self.program})", f"anyone can change the folder {drop}")

    def test_relative_link_through_folders(self):
        """A relative link is followed from its own folder, "..", included."""
        safe = os.path.join(self.dir, "safe")
        loose = os.path.join(self.dir, "loose")
        os.mkdir(safe)
        os.mkdir(loose)
        target = self.make_program(loose, "real-door")
        link = os.path.join(safe, "open-door")
        os.symlink("../loose/real-door", link)
        check_program("on-success", link)
        os.chmod(loose, 0o777)
        self.refused(link, f"(that is {target})", f"the folder {loose}")

    def test_the_user_twistd_switches_to(self):
        """
        Started as root with twistd --uid, the daemon runs as that user: its
        files and its group are as good as root's, and the message names it.
        """
        uid, gid = other_user()
        os.chown(self.program, uid, gid)
        os.chmod(self.program, 0o775)
        check_program("on-success", self.program, runs_as=(uid, gid))
        message = self.refused(self.program, f"belongs to user {NOBODY}")
        self.assertIn("runs as user root (uid 0)", message)
        os.chown(self.program, 0, gid)
        message = str(self.assertRaises(PathError, check_program, "on-success", self.program,
                                        runs_as=(uid, 0)))
        self.assertIn(f"runs as user {NOBODY} (uid {uid})", message)
        self.assertIn(f"chmod g-w {self.program}", message)


class TrustedStateTests(TestCase):
    """
    The state directory holds the client files and their counters: whoever
    can change it decides who may open the firewall.
    """

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="knocker-trust-state-")
        self.addCleanup(os.rmdir, self.dir)
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.state, 0o700)
        self.addCleanup(os.rmdir, self.state)

    def refused(self, *words, runs_as=None) -> str:
        from knocker.daemon.paths import check_state_trusted

        message = str(self.assertRaises(PathError, check_state_trusted, self.state, runs_as))
        self.assertTrue(message.startswith(f"state-dir = {self.state}"), message)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_a_private_state_of_our_own(self):
        from knocker.daemon.paths import check_state_trusted

        check_state_trusted(self.state)
        check_state_trusted(os.path.join(self.dir, "not-made-yet"))

    def test_a_state_anyone_can_write(self):
        os.chmod(self.state, 0o777)
        self.refused("anyone can change the folder", "mode 0777",
                     "which clients the daemon lets in", f"chmod o-w {self.state}")

    def test_a_sticky_state_anyone_can_write(self):
        """Sticky is no defence here: anyone could add a client file."""
        os.chmod(self.state, 0o1777)
        self.refused("anyone can change the folder")

    def test_a_state_of_another_user(self):
        uid, gid = other_user()
        os.chown(self.state, uid, gid)
        self.refused(f"belongs to user {NOBODY}", f"chown root: {self.state}")

    def test_the_daemons_own_user_may_own_it(self):
        from knocker.daemon.paths import check_state_trusted

        uid, gid = other_user()
        os.chown(self.state, uid, gid)
        check_state_trusted(self.state, runs_as=(uid, gid))  # twistd --uid nobody
