"""
What an action started, found in /proc and killed only while it is still
the same process: real processes, started here.
"""

import errno
import signal
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from knocker.daemon import proctree
from knocker.daemon.proctree import descendants, kill_if_same, start_time


def wait_for_children(parent: int, count: int) -> list[tuple[int, int]]:
    """C{descendants(parent)} once it holds C{count} processes (a few seconds at most)."""
    for _ in range(200):
        found = descendants(parent)
        if len(found) >= count:
            return found
        time.sleep(0.01)
    raise AssertionError(f"{parent} did not start {count} processes: {found}")


class KillIfSameTests(SynchronousTestCase):
    def sleeper(self) -> subprocess.Popen:
        process = subprocess.Popen(["sleep", "30"])
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        return process

    def test_the_same_process_is_killed(self):
        process = self.sleeper()
        self.assertTrue(kill_if_same(process.pid, start_time(process.pid)))
        self.assertEqual(process.wait(10), -signal.SIGKILL)

    def test_another_process_under_the_same_pid_is_left_alone(self):
        """
        The pid now names a process that started at another time than the
        one found (the one found ended, its pid was given again).
        """
        process = self.sleeper()
        self.assertFalse(kill_if_same(process.pid, start_time(process.pid) - 1))
        self.assertIsNone(process.poll())
        time.sleep(0.05)
        self.assertIsNone(process.poll(), "the signal reached it")

    def test_a_process_gone_is_no_error(self):
        process = self.sleeper()
        started = start_time(process.pid)
        process.kill()
        process.wait(10)
        self.assertIsNone(start_time(process.pid))
        self.assertFalse(kill_if_same(process.pid, started))

    def test_without_pidfds_the_check_still_holds(self):
        def no_pidfds(pid, flags=0):
            raise OSError(errno.ENOSYS, "pidfd_open")

        self.patch(proctree.os, "pidfd_open", no_pidfds)
        process, other = self.sleeper(), self.sleeper()
        self.assertFalse(kill_if_same(other.pid, start_time(other.pid) + 1))
        self.assertTrue(kill_if_same(process.pid, start_time(process.pid)))
        self.assertEqual(process.wait(10), -signal.SIGKILL)
        self.assertIsNone(other.poll())


class DescendantsTests(SynchronousTestCase):
    def test_children_and_grandchildren_with_their_start_times(self):
        shell = subprocess.Popen(["/bin/sh", "-c", "sh -c 'sleep 30 & wait' & wait"])
        self.addCleanup(shell.wait)
        found = wait_for_children(shell.pid, 2)
        self.addCleanup(lambda: [kill_if_same(pid, started) for pid, started in found])
        self.addCleanup(shell.kill)
        self.assertEqual([start_time(pid) for pid, _ in found], [s for _, s in found])
        child, grandchild = found[0][0], found[1][0]
        self.assertEqual([pid for pid, _ in descendants(child)], [grandchild])
        self.assertEqual(descendants(grandchild), [])
