"""
Finding what an action started, to kill all of it at its timeout.

An action runs in a session of its own, so killing its process group kills
what it started, unless a descendant made a session of its own (setsid):
that one leaves the group.  L{descendants} walks the parent links in
/proc, which still lead to such a process as long as its parent lives.  A
process whose parent already exited has been handed to init (or to a
subreaper) and is no longer linked to the action; nothing here can find
it, and the README says so.
"""

import os


def descendants(root: int) -> list[int]:
    """
    The pids whose chain of parents leads to C{root}, children before
    grandchildren; empty where /proc cannot be read.
    """
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # gone meanwhile
        # The name (field 2) is in parentheses and may hold spaces.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(0), ()):
            found.append(child)
            todo.append(child)
    return found
