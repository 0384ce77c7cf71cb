"""
Who may use the console (docs/console.md, "Access").

Everything lives in C{state-dir/console/} (0700, files 0600), so whoever
can read the daemon's state can log in, and nobody else:

  - C{login-HASH}: a one-time login token made by C{knocker console}, named
    by its SHA-256 and holding its expiry.  The daemon redeems it by
    deleting the file: a second use finds nothing.
  - C{tokens}: the SHA-256 of each bearer token (C{knocker console --token})
    for the API and C{/metrics}; the tokens themselves are shown once.
  - C{daemon.json}: written by the running daemon: the console's URL and a
    bearer token of its own, for C{knocker unlock} and C{knocker revoke};
    removed when it stops, so its absence says the daemon is not running.

Sessions are in the daemon's memory only: a restart logs everyone out.
"""

import hashlib
import hmac
import json
import os
import secrets

from knocker.files import ensure_private_dir, read_private, write_private

LOGIN_SECONDS = 300
SESSION_SECONDS = 8 * 3600
COOKIE = b"knocker_session"
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def cookie_name(host: bytes | None) -> bytes:
    """
    The session cookie's name for a console reached at C{host} (the
    request's Host header): one per port.  Browsers keep cookies by host
    name, not by port, so two gateways' consoles tunnelled to
    localhost:8750 and localhost:8751 would otherwise log each other out.
    """
    head, colon, port = (host or b"").rpartition(b":")
    if colon and port.isdigit() and len(port) <= 5 and (b":" not in head or head.endswith(b"]")):
        return COOKIE + b"_" + port
    return COOKIE


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _well_formed(token) -> bool:
    return isinstance(token, str) and 20 <= len(token) <= 100 and _TOKEN_CHARS.issuperset(token)


class Credentials:
    """
    The files of C{state-dir/console/} (see above).
    """

    def __init__(self, state_dir: str):
        self.directory = os.path.join(state_dir, "console")

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    # One-time logins.

    def new_login(self, now: float, seconds: float = LOGIN_SECONDS) -> str:
        ensure_private_dir(self.directory)
        self._forget_expired(now)
        token = secrets.token_urlsafe(32)
        write_private(self._path("login-" + _digest(token)), f"{now + seconds}\n")
        return token

    def _forget_expired(self, now: float) -> None:
        """
        Delete the login files nobody used in time.
        """
        for name in os.listdir(self.directory):
            if name.startswith("login-"):
                try:
                    if float(read_private(self._path(name), limit=64).strip() or 0) <= now:
                        os.unlink(self._path(name))
                except (OSError, ValueError):
                    pass

    def redeem_login(self, token, now: float) -> bool:
        """
        Use C{token} up: C{True} once, if it exists and has not expired.
        """
        if not _well_formed(token):
            return False
        path = self._path("login-" + _digest(token))
        try:
            expires = float(read_private(path, limit=64).strip() or 0)
            os.unlink(path)
        except (OSError, ValueError):
            return False
        return now < expires

    # Bearer tokens.

    def new_bearer(self) -> str:
        ensure_private_dir(self.directory)
        token = secrets.token_urlsafe(32)
        hashes = self._bearer_hashes()
        write_private(self._path("tokens"), "".join(h + "\n" for h in [*hashes, _digest(token)]))
        return token

    def _bearer_hashes(self) -> list[str]:
        try:
            return read_private(self._path("tokens")).split()
        except (OSError, ValueError):
            return []

    def bearer_ok(self, token, daemon_token: str | None = None) -> bool:
        if not _well_formed(token):
            return False
        digest = _digest(token)
        found = False
        for known in self._bearer_hashes():
            found |= hmac.compare_digest(known, digest)
        if daemon_token is not None:
            found |= hmac.compare_digest(daemon_token, token)
        return found

    # The running daemon's address and own token.

    def command_socket(self) -> str:
        """
        Where the daemon listens for the operator's commands (C{unlock},
        C{revoke}): a UNIX socket in this private folder.
        """
        return self._path("commands.sock")

    def publish(self, url: str) -> str:
        """
        Write C{daemon.json} (the daemon at start); return its token.
        """
        ensure_private_dir(self.directory)
        token = secrets.token_urlsafe(32)
        write_private(self._path("daemon.json"), json.dumps({"url": url, "token": token}) + "\n")
        return token

    def unpublish(self) -> None:
        """
        Remove C{daemon.json} (the daemon at stop).  One it may not remove
        (the folder swapped for someone else's) is left and said: the stop
        goes on.
        """
        try:
            os.unlink(self._path("daemon.json"))
        except FileNotFoundError:
            pass
        except OSError as error:
            from twisted.logger import Logger

            Logger().warn("console: cannot remove {path} ({error})",
                          path=self._path("daemon.json"), error=error.strerror)

    def daemon(self) -> dict | None:
        """
        C{{"url", "token"}} of the running daemon's console, or C{None}.
        """
        try:
            return json.loads(read_private(self._path("daemon.json")))
        except FileNotFoundError:
            return None


class Sessions:
    """
    Open sessions: id -> (expiry, CSRF token), on C{clock}.
    """

    def __init__(self, clock, seconds: float = SESSION_SECONDS):
        self._clock = clock
        self.seconds = seconds
        self._open: dict[str, tuple[float, str]] = {}
        # (session, page) -> what the session's last change there did
        self._notices: dict[tuple[str, str], str] = {}

    def notice(self, session, page: str, text: str) -> None:
        """
        Keep C{text}, what a change just did, for the session's next visit
        to C{page} (after the redirect): a notice read from the query could
        say anything a link from another page of the same site put there.
        """
        if self.csrf(session) is not None:
            self._notices[session, page] = text

    def take_notice(self, session, page: str) -> str:
        """The notice kept for C{session} on C{page}, once; empty if none."""
        return self._notices.pop((session, page), "") if isinstance(session, str) else ""

    def open(self) -> tuple[str, str]:
        now = self._clock.seconds()
        self._open = {k: v for k, v in self._open.items() if v[0] > now}
        self._notices = {k: v for k, v in self._notices.items() if k[0] in self._open}
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._open[session] = (now + self.seconds, csrf)
        return session, csrf

    def csrf(self, session) -> str | None:
        """
        The CSRF token of C{session} if it is open, else C{None}.
        """
        if not isinstance(session, str):
            return None
        entry = self._open.get(session)
        if entry is None:
            return None
        if entry[0] <= self._clock.seconds():
            del self._open[session]
            return None
        return entry[1]

    def expiry(self, session) -> float | None:
        """
        When C{session} ends (C{clock}'s seconds), if it is open.
        """
        return self._open[session][0] if self.csrf(session) is not None else None

    def close(self, session) -> None:
        self._open.pop(session, None)
        self._notices = {k: v for k, v in self._notices.items() if k[0] != session}
