"""
One daemon per state directory.

Two daemons on one SQLite state would each keep their own lockouts and
slots, and one would see the other's burns as a false EXHAUSTED; sharing
state between gateways is what the PostgreSQL state is for.  So the daemon
holds an exclusive C{flock} on C{state-dir/daemon.lock} while it runs.  The
kernel drops the lock when the process dies, even by kill -9, so a crash
never leaves a stale lock.  Commands (generate, status) do not take it.
"""

import fcntl
import os

from knocker.state.interface import StateError


class StateLock:
    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "daemon.lock")
        self._fd = None

    def acquire(self) -> None:
        """
        @raise StateError: another daemon holds the lock; the message names
            its pid and the directory.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"another knockserver (pid {holder}) is running on the state directory "
                f"{os.path.dirname(self.path)}; stop it first, or give this one its own "
                f"state-dir (gateways that share state use a PostgreSQL database)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
