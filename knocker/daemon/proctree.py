"""
Finding what an action started, to kill all of it at its timeout.

An action runs in a session of its own, so killing its process group kills
what it started, unless a descendant made a session of its own (setsid):
that one leaves the group.  L{descendants} walks the parent links in
/proc, which still lead to such a process as long as its parent lives.  A
process whose parent already exited has been handed to init (or to a
subreaper) and is no longer linked to the action; nothing here can find
it, and the README says so.

A process found is named by its pid and its start time: between the walk
and the kill it may end and its pid be given to another program, which
L{kill_if_same} then leaves alone.
"""

import os
import signal


def _stat_fields(pid) -> list[bytes] | None:
    """The fields of C{/proc/PID/stat} from the state on, or C{None} if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The name (field 2) is in parentheses and may hold spaces.
    return stat[stat.rfind(b")") + 2:].split()


def start_time(pid: int) -> int | None:
    """When C{pid} started (clock ticks after boot), or C{None} if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def descendants(root: int) -> list[tuple[int, int]]:
    """
    C{(pid, start time)} of each process whose chain of parents leads to
    C{root}, children before grandchildren; empty where /proc cannot be
    read.
    """
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is None:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append((int(name), int(fields[19])))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(0), ()):
            found.append(child)
            todo.append(child[0])
    return found


def kill_if_same(pid: int, started: int, number: int = signal.SIGKILL) -> bool:
    """
    Send signal C{number} to C{pid} if it is still the process that
    started at C{started}; whether it was sent.  A pidfd holds on to the
    process while its start time is read again, so the signal cannot reach
    a process that took the pid after the check.  Where there are no
    pidfds (an old kernel, a sandbox), the check is made just before an
    ordinary kill, which leaves the race only that short a window.
    """
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:
        handle = None
    try:
        if start_time(pid) != started:
            return False
        if handle is None:
            os.kill(pid, number)
        else:
            signal.pidfd_send_signal(handle, number)
        return True
    except OSError:
        return False
    finally:
        if handle is not None:
            os.close(handle)
