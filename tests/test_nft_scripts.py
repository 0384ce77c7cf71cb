"""
How the nftables scripts in etc/scripts find their parts, as an
administrator installs them: nft-open and its kin find knocker-nft beside
the path they were run by, or through a link; knocker-nft finds nft on
PATH, in order.  No nftables needed: a stand-in nft records what it is
asked (the real thing is in tests/network/test_firewall.py).
"""

import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "etc", "scripts")

STAND_IN = """#!/bin/sh
printf '%s|' "$0" "$@" >> "$NFT_CALLS"
echo >> "$NFT_CALLS"
"""


class ScriptLookupTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.calls = os.path.join(self.dir, "calls")

    def stand_in(self, folder: str) -> str:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "nft")
        with open(path, "w") as handle:
            handle.write(STAND_IN)
        os.chmod(path, 0o755)
        return path

    def run_script(self, path: str, *args: str, search: str):
        env = {"PATH": search, "NFT_CALLS": self.calls, "KNOCKER_NFT": "",
               "KNOCKER_NFT_TABLE": "knocker", "KNOCKER_NFT_TIMEOUT": ""}
        return subprocess.run([path, *args], env=env, capture_output=True, text=True,
                              timeout=30, cwd=self.dir)

    def called(self) -> list[list[str]]:
        with open(self.calls) as handle:
            return [line.rstrip("|\n").split("|") for line in handle if line.strip()]

    def test_open_beside_its_helper(self):
        nft = self.stand_in(os.path.join(self.dir, "bin"))
        done = self.run_script(os.path.join(SCRIPTS, "nft-open"), "192.0.2.7", "alice", "3",
                               search=f"{os.path.dirname(nft)}:/usr/bin:/bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.called(), [[nft, "create", "element", "inet", "knocker",
                                          "allowed_v4", '{ 192.0.2.7 comment "knocker alice #3" }']])

    def test_open_through_a_link_elsewhere(self):
        """
        A link to nft-open in another folder (one without knocker-nft)
        still finds the helper where the link points.
        """
        links = os.path.join(self.dir, "links")
        os.makedirs(links)
        for name in ("nft-open", "nft-close"):
            os.symlink(os.path.join(SCRIPTS, name), os.path.join(links, name))
        nft = self.stand_in(os.path.join(self.dir, "bin"))
        search = f"{os.path.dirname(nft)}:/usr/bin:/bin"
        done = self.run_script(os.path.join(links, "nft-open"), "192.0.2.7", search=search)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.called()[0][:2], [nft, "create"])

    def test_a_folder_named_like_the_helper_is_passed_over(self):
        links = os.path.join(self.dir, "links")
        os.makedirs(os.path.join(links, "knocker-nft"))
        os.symlink(os.path.join(SCRIPTS, "nft-open"), os.path.join(links, "nft-open"))
        nft = self.stand_in(os.path.join(self.dir, "bin"))
        done = self.run_script(os.path.join(links, "nft-open"), "192.0.2.7",
                               search=f"{os.path.dirname(nft)}:/usr/bin:/bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.called()[0][:2], [nft, "create"])

    def test_a_copy_without_its_helper_fails_naming_it(self):
        alone = os.path.join(self.dir, "alone")
        os.makedirs(alone)
        shutil.copy(os.path.join(SCRIPTS, "nft-open"), alone)
        done = self.run_script(os.path.join(alone, "nft-open"), "192.0.2.7",
                               search="/usr/bin:/bin")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("knocker-nft", done.stderr)

    def test_nft_is_the_first_program_on_path_in_an_absolute_folder(self):
        os.makedirs(os.path.join(self.dir, "relative"))
        self.stand_in(os.path.join(self.dir, "relative"))
        first = self.stand_in(os.path.join(self.dir, "first"))
        self.stand_in(os.path.join(self.dir, "second"))
        os.makedirs(os.path.join(self.dir, "folder", "nft"))  # a folder, not a program
        search = ":".join(["relative", "", os.path.join(self.dir, "folder"),
                           os.path.dirname(first),
                           os.path.join(self.dir, "second"), "/usr/bin", "/bin"])
        done = self.run_script(os.path.join(SCRIPTS, "nft-open"), "192.0.2.7", search=search)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual([call[0] for call in self.called()], [first])
