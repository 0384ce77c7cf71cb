"""
The server's copies of the portknock files, one per client, in
C{state-dir/clients/CLIENT.knock}.

Startup reads only each file's header (secret and size), so ten thousand
clients cost ten thousand small reads, not ten million knock lines; at each
grant only the granted knock's line is checked (format, and every port in
the pool), read from the file then, or after the client's previous verdict
and taken if a stat finds the file unchanged since.  Files come from
'knocker generate', which writes them whole and checked.
"""

import os

from twisted.logger import Logger

from knocker.core.knockfile import (
    HEADER_LIMIT,
    KnockFile,
    KnockFileError,
    find_knock,
    parse_header,
)
from knocker.core.knockgen import format_knockfile
from knocker.files import (
    PrivateFileError,
    ensure_private_dir,
    open_private,
    read_private,
    write_private,
)
from knocker.state.interface import secret_id

log = Logger()

_HEADER_BYTES = HEADER_LIMIT
_CHUNK_BYTES = 4096


class ClientBook:
    def __init__(self, state_dir: str, pool: tuple[int, ...]):
        self.directory = os.path.join(state_dir, "clients")
        self._pool = frozenset(pool)
        self._headers: dict[str, KnockFile] = {}
        self._hints: dict[str, int] = {}  # client: offset of the last granted line's end
        # client: (index, file signature, secret, ports) of the knock read ahead
        self._ahead: dict[str, tuple] = {}

    def path(self, client: str) -> str:
        return os.path.join(self.directory, client + ".knock")

    def text(self, client: str) -> str:
        """The whole server's copy of C{client}'s file (to enrol it)."""
        return read_private(self.path(client))

    def load(self) -> None:
        """
        Index every client file's header.

        @raise KnockFileError: a file is unsafe or malformed; the message
            names it.  The daemon must not start with a half-read book.
        """
        ensure_private_dir(self.directory)
        headers = {}
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".knock"):
                continue
            path = os.path.join(self.directory, name)
            header = parse_header(_read(path, _HEADER_BYTES), path)
            if header.client + ".knock" != name:
                raise KnockFileError(
                    f"{path}: holds client {header.client!r}, "
                    f"but its name says {name[:-6]!r}"
                )
            headers[header.client] = header
        self._headers = headers

    def clients(self) -> list[str]:
        return sorted(self._headers)

    def secret(self, client: str, wanted_id: str) -> bytes:
        """
        C{client}'s secret, as long as it is the one the state's counter
        belongs to (C{wanted_id}, see L{knocker.state.interface.secret_id}).
        A file added or regenerated since startup is read again, so clients
        can be added without a restart and a regenerated file never
        inherits the old file's numbering.

        @raise KnockFileError: the server's copy is missing, unreadable
            (its owner or mode), malformed, or not the file the counter
            belongs to; the message names the path.
        """
        header = self._headers.get(client)
        if header is None or secret_id(header.secret) != wanted_id:
            path = self.path(client)
            header = parse_header(_read(path, _HEADER_BYTES), path)
            if header.client != client or secret_id(header.secret) != wanted_id:
                if self._finish_promotion(client, wanted_id):
                    return self._headers[client].secret
                raise KnockFileError(
                    f"{path} is not the file the state's counter for {client!r} belongs to; "
                    f"run 'knocker generate {client} --force' again"
                )
            self._headers[client] = header
        return header.secret

    def knock(self, client: str, index: int) -> tuple[int, ...]:
        """
        The ports of knock C{index} of C{client}, read from its file: the
        header (to check the secret) and the granted line only (format,
        every port in the pool).  Knocks are granted in order, so the line
        is looked for first just after the previous one; the whole file is
        read only when that guess misses (first grant, or a changed file).
        A knock read ahead (L{read_ahead}) is taken instead while the file
        is as it was then: the same inode, size, times, mode and owner, one
        C{stat} rather than an open and two reads on the way to a GRANT.
        Nothing else is cached but that offset, so nothing can go stale.

        @raise KnockFileError: the file changed under us, lacks the knock,
            or names a port outside the pool.
        """
        ahead = self._ahead.pop(client, None)
        if ahead is not None:
            ahead_index, seen, secret, ports = ahead
            header = self._headers.get(client)
            if (ahead_index == index and header is not None and header.secret == secret
                    and seen == _signature(self.path(client))):
                return ports
        return self._read_knock(client, index)[0]

    def read_ahead(self, client: str, index: int) -> None:
        """
        Read knock C{index} of C{client} now, while no client waits (after a
        verdict, for the next knock); a file that cannot give it is left to
        L{knock} to refuse, with its reasons.
        """
        try:
            ports, seen = self._read_knock(client, index)
        except (KnockFileError, IndexError, KeyError):
            return
        self._ahead[client] = (index, seen, self._headers[client].secret, ports)

    def _read_knock(self, client: str, index: int):
        """C{(ports, signature of the file read)} of knock C{index}."""
        path = self.path(client)
        try:
            with open_private(path) as handle:
                seen = _identity(os.fstat(handle.fileno()))
                header = parse_header(handle.read(_HEADER_BYTES).decode("utf-8", "ignore"), path)
                if header.secret != self._headers[client].secret:
                    raise KnockFileError(f"{path}: the secret changed since it was indexed")
                found = self._near_hint(handle, client, index, header.ports_per_knock)
                if found is None:
                    handle.seek(0)
                    text = handle.read().decode("utf-8", "replace")
                    found = find_knock(text, path, index, header.ports_per_knock)
        except PrivateFileError as error:
            raise KnockFileError(str(error)) from None
        except OSError as error:
            raise KnockFileError(f"{path}: cannot read: {error.strerror}") from None
        ports, end = found
        self._hints[client] = end
        outside = set(ports) - self._pool
        if outside:
            raise KnockFileError(
                f"{path}: knock {index} names ports {sorted(outside)} outside the server's pool"
            )
        return ports, seen

    def _near_hint(self, handle, client, index, size):
        hint = self._hints.get(client)
        if hint is None:
            return None
        handle.seek(hint)
        chunk = handle.read(_CHUNK_BYTES).decode("utf-8", "replace")
        start = chunk.find(f"\n{index} ")
        if start < 0 or chunk.find("\n", start + 1) < 0:
            return None
        try:
            ports, end = find_knock(chunk, "", index, size)
        except KnockFileError:
            return None  # let the full read name the file and line
        return ports, hint + end

    def add(self, kf: KnockFile) -> str:
        """
        Write the server's copy of a new portknock file and index it.
        """
        ensure_private_dir(self.directory)
        path = self.path(kf.client)
        write_private(path, format_knockfile(kf))
        self._headers[kf.client] = KnockFile(
            kf.client, kf.secret, kf.ports_per_knock, kf.created, ()
        )
        self._ahead.pop(kf.client, None)
        return path


    # Renewal: a pending generation's copy, C{clients/CLIENT.pending}, not
    # indexed by load() (which reads *.knock only).

    def pending_path(self, client: str) -> str:
        return os.path.join(self.directory, client + ".pending")

    def add_pending(self, kf: KnockFile, current_id: str | None = None) -> str:
        """
        Write the pending copy; returns its text.  (C{current_id} is for a
        fleet's book; here the state's L{set_pending} checks it.)
        """
        text = format_knockfile(kf)
        self.write_pending(kf.client, text)
        return text

    def drop_pending(self, client: str, text: str) -> None:
        """Remove C{client}'s pending copy if it is still C{text}."""
        if self.pending_text(client) == text:
            try:
                os.unlink(self.pending_path(client))
            except FileNotFoundError:
                pass

    def write_pending(self, client: str, text: str) -> None:
        """Write C{text} as C{client}'s pending copy (0600, atomically)."""
        ensure_private_dir(self.directory)
        write_private(self.pending_path(client), text)

    def pending_text(self, client: str) -> str | None:
        """The pending copy's text, or C{None} if there is none."""
        try:
            return read_private(self.pending_path(client))
        except OSError:
            return None

    def ports_per_knock(self, client: str) -> int:
        path = self.path(client)
        return parse_header(_read(path, _HEADER_BYTES), path).ports_per_knock

    @staticmethod
    def pending_id(text: str) -> str:
        return secret_id(parse_header(text, "pending").secret)

    def pending_secret(self, client: str, wanted_id: str) -> bytes | None:
        """
        The pending generation's secret, if its copy is there and is the
        one the state's pending row belongs to.
        """
        path = self.pending_path(client)
        try:
            header = parse_header(_read(path, _HEADER_BYTES), path)
        except KnockFileError:
            return None
        if header.client != client or secret_id(header.secret) != wanted_id:
            return None
        return header.secret

    def promote(self, client: str) -> None:
        """
        The pending copy becomes the client's file (the state promoted it
        first; L{secret} finishes this after a crash in between).
        """
        path = self.pending_path(client)
        header = parse_header(_read(path, _HEADER_BYTES), path)
        os.replace(path, self.path(client))
        self._headers[client] = header
        self._hints.pop(client, None)
        self._ahead.pop(client, None)

    def _finish_promotion(self, client: str, wanted_id: str) -> bool:
        if self.pending_secret(client, wanted_id) is None:
            return False
        log.warn("finishing the promotion of {client}'s renewed file", client=client)
        self.promote(client)
        return True


def _identity(info: os.stat_result) -> tuple:
    """What changes when a file is replaced, written, or has its mode or owner changed."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns,
            info.st_mode, info.st_uid)


def _signature(path: str) -> tuple | None:
    try:
        return _identity(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


def _read(path: str, limit: int | None = None) -> str:
    try:
        return read_private(path, limit)
    except PrivateFileError as error:
        raise KnockFileError(str(error)) from None
    except OSError as error:
        raise KnockFileError(f"{path}: cannot read: {error.strerror}") from None
