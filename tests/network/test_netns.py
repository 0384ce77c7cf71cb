"""
The namespace helper itself: it builds what it says and leaves nothing
behind, also when a step fails or a run was killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, TestCase

from . import netns


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return {line.split(" ", 1)[0] for line in out.splitlines()}


def gone(pid: int, seconds: float = 5.0) -> bool:
    """
    Whether process C{pid} has ended (or is a zombie) within C{seconds}.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


class TopologyTests(TestCase):
    def setUp(self) -> None:
        ok, reason = netns.available(need_nft=False)
        if not ok:
            raise SkipTest(reason)

    def test_build_and_destroy(self) -> None:
        """
        Three namespaces with the documented addresses, reachable from one
        another; destroy removes them and stops spawned processes, twice
        without harm.
        """
        net = netns.Topology()
        self.addCleanup(net.destroy)
        net.create()
        self.assertTrue(set(net.names.values()) <= namespaces())
        out = net.run("client", ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
        self.assertIn("10.231.0.2/24", out)
        self.assertIn("fd00:6b6e:6f63::2/64", out)
        sleeper = net.spawn("attacker", ["sleep", "60"])
        net.listen("server", 5000)
        self.assertEqual(net.connect("attacker", net.address6["server"], 5000), "ok")
        self.assertEqual(net.connect("client", net.address4["server"], 5001), "refused")
        # nothing of this is on the host
        host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                              timeout=10).stdout
        self.assertNotIn("10.231.0.", host)
        net.destroy()
        net.destroy()
        self.assertFalse(set(net.names.values()) & namespaces())
        self.assertTrue(gone(sleeper.pid))

    def test_stray_process_killed(self) -> None:
        """
        A process left in a namespace that spawn did not track (a daemon's
        child, say) is killed too.
        """
        net = netns.Topology()
        self.addCleanup(net.destroy)
        net.create()
        out = net.run("server", ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"]).stdout
        stray = int(out.strip())
        self.assertFalse(gone(stray, 0.2))
        net.destroy()
        self.assertTrue(gone(stray))

    def test_failed_create_cleans_up(self) -> None:
        """
        A step that fails half way through create leaves no namespace.
        """
        net = netns.Topology()
        self.addCleanup(net.destroy)

        def broken(role, dev):
            raise netns.NetnsError("broken on purpose")

        net._address = broken
        self.assertRaises(netns.NetnsError, net.create)
        self.assertFalse(set(net.names.values()) & namespaces())

    def test_remove_stale(self) -> None:
        """
        Namespaces of a run whose process is gone are removed; ours are not.
        """
        child = subprocess.Popen([sys.executable, "-c", ""])
        child.wait(10)
        stale = f"{netns.PREFIX}-{child.pid}-00000000-server"
        mine = f"{netns.PREFIX}-{os.getpid()}-00000000-server"
        for name in (stale, mine):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
            self.addCleanup(subprocess.run, ["ip", "netns", "del", name], capture_output=True)
        removed = netns.remove_stale()
        self.assertIn(stale, removed)
        self.assertNotIn(mine, removed)
        self.assertEqual({stale, mine} & namespaces(), {mine})
