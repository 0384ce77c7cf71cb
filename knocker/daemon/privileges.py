"""
Doing the start's file work as the user twistd will switch to.

C{twistd --uid USER} starts the service as root and switches only after
its privileged start, where the daemon opens its state, lock and audit
log.  Done as root there, a link the daemon's user planted in its own
folders (a C{daemon.lock} pointing at a root file) would be followed by
root, and the files made would be root's, unwritable once the daemon
runs as its user.  So that work runs with the user's effective ids and
groups (L{acting_as}), and root comes back only to bind the ports
(L{as_root}); the real uid stays root until twistd's switch.
"""

import os
from contextlib import contextmanager


def _groups_of(uid: int, gid: int) -> list[int]:
    import pwd

    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except (KeyError, OSError):
        return [gid]  # a uid with no name: its own group alone


@contextmanager
def acting_as(runs_as: tuple[int, int] | None):
    """
    Effective uid, gid and groups those of C{runs_as} within the block,
    when this process is root and is to run as someone else; as it is
    otherwise.
    """
    if runs_as is None or os.geteuid() != 0 or runs_as[0] == 0:
        yield
        return
    uid, gid = runs_as
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(_groups_of(uid, gid))
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


@contextmanager
def as_root():
    """Root's effective uid back within the block (to bind a port below 1024)."""
    if os.getuid() != 0 or os.geteuid() == 0:
        yield
        return
    euid = os.geteuid()
    os.seteuid(0)
    try:
        yield
    finally:
        os.seteuid(euid)
