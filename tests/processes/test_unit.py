"""
etc/knocker.service as systemd sees it: hardened to an exposure of 2.5 or
less in `systemd-analyze security`, valid for `systemd-analyze verify`, and
running the documented command with nothing that overrides the
configuration file.
"""

import os
import re
import shutil
import subprocess
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from tests.helpers.processes import ROOT

UNIT = os.path.join(ROOT, "etc", "knocker.service")
EXEC_START = ("/opt/knocker/bin/twistd -n --pidfile= knockserver "
              "--config /etc/knocker/knockserver.conf")
MAX_EXPOSURE = 2.5


def settings(path: str = UNIT) -> dict[str, list[str]]:
    """
    KEY -> every value it has in the unit (comments and sections left out).
    """
    found: dict[str, list[str]] = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line or line[0] in "#;[":
                continue
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        raise SkipTest("systemd-analyze is not installed (Debian package systemd)")
    return path


class UnitTests(TestCase):
    def test_security_exposure(self):
        """
        `systemd-analyze security --offline=yes etc/knocker.service`: 2.5 or
        less, while the daemon keeps CAP_NET_ADMIN for nft.
        """
        done = subprocess.run([analyze(), "security", "--offline=yes", UNIT],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        found = re.search(r"Overall exposure level for knocker\.service: ([0-9.]+)",
                          done.stdout + done.stderr)
        if found is None:
            raise SkipTest(f"systemd-analyze security --offline is not supported here: "
                           f"{(done.stdout + done.stderr).strip()[-500:]}")
        self.assertLessEqual(float(found.group(1)), MAX_EXPOSURE, done.stdout)

    def test_verify(self):
        """
        `systemd-analyze verify` on the unit installed in a scratch root that
        holds the programs it names (stubs) and systemd's own units.
        """
        analyze()
        root = tempfile.mkdtemp(prefix="knocker-unit-")
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        units = "/usr/lib/systemd/system" if os.path.isdir("/usr/lib/systemd/system") \
            else "/lib/systemd/system"
        if not os.path.isdir(units):
            raise SkipTest("systemd's units are not installed")
        shutil.copytree(units, os.path.join(root, "usr/lib/systemd/system"), symlinks=True)
        os.makedirs(os.path.join(root, "etc/systemd/system"))
        shutil.copy(UNIT, os.path.join(root, "etc/systemd/system/knocker.service"))
        unit = settings()
        programs = [value.lstrip("-+!@:").split()[0]
                    for key in ("ExecStartPre", "ExecStart", "ExecReload")
                    for value in unit.get(key, [])]
        for path in programs + [value.lstrip("-") for value in unit["EnvironmentFile"]]:
            stub = os.path.join(root, path.lstrip("/"))
            os.makedirs(os.path.dirname(stub), exist_ok=True)
            with open(stub, "w") as handle:
                handle.write("#!/bin/sh\n")
            os.chmod(stub, 0o755)
        done = subprocess.run([analyze(), "verify", f"--root={root}", "knocker.service"],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertNotIn("knocker.service", done.stdout + done.stderr)

    def test_runs_the_documented_command_with_no_overrides(self):
        unit = settings()
        self.assertEqual(unit["ExecStart"], [EXEC_START])
        self.assertNotIn("--", EXEC_START.split("--config")[1])
        with open(os.path.join(ROOT, "README.md")) as handle:
            readme = " ".join(handle.read().split())
        self.assertIn(EXEC_START, readme)

    def test_keeps_only_cap_net_admin(self):
        unit = settings()
        self.assertEqual(unit["User"], ["knocker"])
        self.assertEqual(unit["AmbientCapabilities"], ["CAP_NET_ADMIN"])
        self.assertEqual(unit["CapabilityBoundingSet"], ["CAP_NET_ADMIN"])
        self.assertIn("AF_NETLINK", unit["RestrictAddressFamilies"][0].split())

    def test_stop_lets_the_daemon_run_its_closes(self):
        """
        Only the daemon gets SIGTERM (its closes at stop are not killed),
        and the nftables settings come from one file.
        """
        unit = settings()
        self.assertEqual(unit["KillMode"], ["mixed"])
        self.assertEqual(unit["EnvironmentFile"], ["/etc/knocker/knocker.env"])
        self.assertNotIn("PartOf", unit)
