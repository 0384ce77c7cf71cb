"""
Commands run as root on a state directory that belongs to the daemon's
user (C{knocker generate} by an administrator while the daemon runs as
C{knocker}): whatever they write there must stay usable by that user.

L{StateOwner} does it two ways.  Before the command touches the state, it
gives the files that root left there earlier (the database and its
journal files, C{clients/} and the server's copies) back to the
directory's owner; and while the command works on the state, it runs with
the directory's owner and group as its effective ids, so every file it
creates there (a new server copy, the database's C{-wal} and C{-shm}) is
theirs from the start.  Files outside the state (the client's copy, C{-o})
are written as the caller.  Run by anyone else, or on a directory root
owns, it changes nothing.
"""

import os
import stat

#: What knocker keeps in a state directory (and the daemon must read or write).
STATE_FILES = ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "state.sqlite-journal",
               "daemon.lock", "audit.log", "clients", "console")


class StateOwner:
    """
    C{with owner:} runs the block as the owner of C{state_dir} (see above).
    """

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.uid = self.gid = None
        if os.geteuid() != 0:
            return
        try:
            info = os.stat(state_dir)
        except OSError:
            return  # made by this command: root's, like the rest then
        if info.st_uid == 0 and info.st_gid == 0:
            return
        self.uid, self.gid = info.st_uid, info.st_gid
        self.repair()

    @property
    def switching(self) -> bool:
        return self.uid is not None

    def repair(self) -> list[str]:
        """
        Give what root left in the state directory to its owner; returns
        the paths changed.  Everything is reached through directory
        descriptors and nothing is followed (the directory's owner could
        have put a symbolic link where a file was), and only regular files
        with one link and directories are changed.
        """
        changed = []
        try:
            top = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return changed
        try:
            changed += [os.path.join(self.state_dir, name) for name in STATE_FILES
                        if self._give(top, name)]
            for folder in ("clients", "console"):  # and what each holds
                try:
                    inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=top)
                except OSError:
                    continue
                try:
                    changed += [os.path.join(self.state_dir, folder, name)
                                for name in sorted(os.listdir(inner)) if self._give(inner, name)]
                finally:
                    os.close(inner)
        finally:
            os.close(top)
        return changed

    def _give(self, directory: int, name: str) -> bool:
        """
        Change the owner of what C{name} is now, not of what it was when
        looked at: it is opened, and what is checked and changed is what
        the descriptor holds.  Else the directory's owner could swap the
        name, between the look and the change, for a hard link to a file
        of root's (where the kernel lets anyone link to others' files).
        Only a name that was a regular file or a folder is opened (no
        device, no FIFO), and only when it is still the same one.
        """
        try:
            seen = os.stat(name, dir_fd=directory, follow_symlinks=False)
        except OSError:
            return False
        if not (stat.S_ISREG(seen.st_mode) or stat.S_ISDIR(seen.st_mode)):
            return False
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC, dir_fd=directory)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            plain = stat.S_ISREG(info.st_mode) and info.st_nlink == 1
            same = (info.st_dev, info.st_ino) == (seen.st_dev, seen.st_ino)
            if not same or info.st_uid != 0 or not (plain or stat.S_ISDIR(info.st_mode)):
                return False
            os.fchown(fd, self.uid, self.gid)
            return True
        finally:
            os.close(fd)

    def __enter__(self):
        if self.switching:
            if os.geteuid() != 0:
                raise RuntimeError("StateOwner entered twice")
            # The groups too: root's supplementary groups (0 at least) would
            # let the owner's links lead a write where only they may write.
            self._saved = (os.geteuid(), os.getegid(), os.getgroups())
            os.setgroups([self.gid])
            try:
                os.setegid(self.gid)
                os.seteuid(self.uid)
            except BaseException:
                os.setegid(self._saved[1])
                os.setgroups(self._saved[2])
                raise
        return self

    def __exit__(self, *exc_info):
        if self.switching:
            os.seteuid(self._saved[0])
            os.setegid(self._saved[1])
            os.setgroups(self._saved[2])
        return False
