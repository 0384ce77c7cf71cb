"""
The server's durable state (docs/spec.md section 7) in SQLite, the
default: the pool, each client's next knock number, pending close actions
and lockouts, in C{state-dir/state.sqlite}.

Every change is committed (WAL, C{synchronous=FULL}: fsync'd) before the
call returns, so the caller may act on it: in particular L{burn} has made
the number unusable before anyone sends GRANT.  Calls block for the commit;
they are few and small, and a grant must not race its own burn.
"""

import os
import sqlite3
from contextlib import contextmanager

from zope.interface import implementer

from knocker.files import ensure_private_dir
from knocker.state.interface import (
    MAX_LOCKOUT_ROWS,
    WHOLE_SERVER,
    ClientState,
    Invitation,  # section 10's part
    IStore,
    PendingClose,
    StateError,
    free_slot,
    secret_id,
)

SCHEMA_VERSION = 1

DAEMON_BUSY_TIMEOUT = 0.25


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY,
    next_index INTEGER NOT NULL,
    knocks INTEGER NOT NULL,
    secret_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS closes (
    id INTEGER PRIMARY KEY,
    due REAL NOT NULL,
    ip TEXT NOT NULL,
    client TEXT NOT NULL,
    knock INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lockouts (key TEXT PRIMARY KEY, until REAL NOT NULL);
-- Pruning by end (prune_lockouts) reads this, not the whole table: 3 ms, not 85,
-- for 100,000 rows.  Made on open, so a state from before gets it too.
CREATE INDEX IF NOT EXISTS lockouts_until ON lockouts (until);
CREATE TABLE IF NOT EXISTS pending (
    id TEXT PRIMARY KEY,
    knocks INTEGER NOT NULL,
    secret_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invitations (
    slot INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    code TEXT NOT NULL,
    expires REAL NOT NULL,
    tries INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    used INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked (id TEXT PRIMARY KEY, secret_id TEXT NOT NULL);
"""


@implementer(IStore)
class SQLiteStore:
    """
    The state database in C{state_dir}/state.sqlite.

    Calls block their thread, the reactor's in the daemon, for the commit,
    and for C{busy_timeout} seconds at most while another process holds
    the write lock: the daemon passes L{DAEMON_BUSY_TIMEOUT}, so a command
    or a backup holding the lock costs a grant an C{ERROR server-error}
    (no burn, so no GRANT: it fails closed) instead of stalling every
    port for seconds.
    """

    def __init__(self, state_dir: str, busy_timeout: float = 5.0):
        ensure_private_dir(state_dir)
        self.path = os.path.join(state_dir, "state.sqlite")
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        try:
            self._create()
        except BaseException:
            self._db.close()  # now, not whenever it is collected (it deletes its WAL file)
            raise

    def _create(self) -> None:
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version != SCHEMA_VERSION and tables:
                raise StateError(
                    f"{self.path}: state schema {version}, this knocker reads {SCHEMA_VERSION}; "
                    f"move the state directory aside and generate the clients again"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _typed(self, table: str, row: tuple) -> tuple:
        """
        C{row} of C{table}, as read, once each column holds what it must.

        @raise StateError: a column holds something else (the file edited
            by hand, or damaged); the message names the file, the table,
            the row and the column.
        """
        for value, (column, kind) in zip(row, _COLUMNS[table]):
            if not isinstance(value, kind):
                raise StateError(
                    f"{self.path}: table {table}, row {row[0]!r}: {column} holds {value!r}, "
                    f"not {_KIND_NAMES[kind]} (edited by hand, or damaged): restore the state "
                    f"from a backup"
                )
        return row

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (a busy lock, a full disk, an fsync error)
            # may leave the transaction open: every later BEGIN would fail,
            # and the daemon would grant nothing until restarted.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # The pool.

    def pool(self) -> tuple[int, ...] | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'pool'").fetchone()
        return tuple(int(port) for port in row[0].split(",")) if row else None

    def set_pool(self, ports: tuple[int, ...]) -> None:
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('pool', ?)",
                    (",".join(map(str, ports)),),
                )
        except sqlite3.IntegrityError:
            raise StateError(f"{self.path}: the pool is drawn once and kept") from None

    # Clients and their knock numbers.

    def register(self, client: str, knocks: int, secret: bytes) -> None:
        """
        Start C{client} at knock 1 of C{knocks} of the file with C{secret}
        (a new or regenerated file: numbers restart only with a new secret).
        """
        with self._transaction():
            self._db.execute(
                "INSERT INTO clients (id, next_index, knocks, secret_id) VALUES (?, 1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET next_index = 1, knocks = excluded.knocks, "
                "secret_id = excluded.secret_id",
                (client, knocks, secret_id(secret)),
            )
            self._cancel_offers(client)

    def cancel_offers(self, client: str) -> None:
        with self._transaction():
            self._cancel_offers(client)

    def client(self, client: str) -> ClientState | None:
        row = self._db.execute(
            "SELECT id, next_index, knocks, secret_id FROM clients WHERE id = ?", (client,)
        ).fetchone()
        return ClientState(*self._typed("clients", row)) if row else None

    def clients(self) -> list[ClientState]:
        rows = self._db.execute("SELECT id, next_index, knocks, secret_id FROM clients ORDER BY id")
        return [ClientState(*self._typed("clients", row)) for row in rows]

    def burn(self, client: str, secret_id: str | None = None) -> int | None:
        """
        Take C{client}'s next knock number for good and return it, or
        C{None} when every number is used (or, with C{secret_id}, when the
        counter is no longer that secret's).  Committed before it returns.
        """
        with self._transaction():
            row = self._db.execute(
                "UPDATE clients SET next_index = next_index + 1 "
                "WHERE id = ? AND next_index <= knocks AND (? IS NULL OR secret_id = ?) "
                "RETURNING next_index - 1",
                (client, secret_id, secret_id),
            ).fetchall()
        return row[0][0] if row else None

    # Pending close actions.

    def add_close(self, due: float, ip: str, client: str, index: int) -> int:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO closes (due, ip, client, knock) VALUES (?, ?, ?, ?)",
                (due, ip, client, index),
            )
        return cursor.lastrowid

    def remove_close(self, close_id: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM closes WHERE id = ?", (close_id,))

    def pending_closes(self) -> list[PendingClose]:
        rows = self._db.execute("SELECT id, due, ip, client, knock FROM closes ORDER BY due")
        return [PendingClose(*self._typed("closes", row)) for row in rows]

    # Lockouts, so that a restart does not lift one.

    def set_lockout(self, key: str, until: float) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO lockouts (key, until) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET until = excluded.until",
                (key, until),
            )

    def save_lockouts(self, lockouts: dict[str, float], steps=None) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO lockouts (key, until) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET until = excluded.until",
                lockouts.items(),
            )

    def lockouts(self, now: float) -> dict[str, float]:
        self.prune_lockouts(now)
        return dict(self._typed("lockouts", row)
                    for row in self._db.execute("SELECT key, until FROM lockouts"))

    def prune_lockouts(self, now: float, keep: int = MAX_LOCKOUT_ROWS) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM lockouts WHERE until <= ?", (now,))
            self._db.execute(
                # (the whole server's row spared outside the subquery, which
                # then walks the index on until alone: 10 times faster)
                "DELETE FROM lockouts WHERE key <> ? AND key IN (SELECT key FROM lockouts "
                "ORDER BY until DESC LIMIT -1 OFFSET ?)", (WHOLE_SERVER, keep))

    # Invitations (docs/spec.md section 10).

    _INVITATION = "SELECT slot, client, code, expires, tries, attempts, used FROM invitations"

    def add_invitation(self, client: str, code: str, expires: float, tries: int,
                       now: float) -> int:
        with self._transaction():
            held = {row[0] for row in self._db.execute(
                "SELECT slot FROM invitations WHERE expires > ?", (now,))}
            slot = free_slot(held)
            self._db.execute(
                "INSERT OR REPLACE INTO invitations "
                "(slot, client, code, expires, tries, attempts, used) VALUES (?, ?, ?, ?, ?, 0, 0)",
                (slot, client, code, expires, tries))
        return slot

    def invitation(self, slot: int) -> Invitation | None:
        row = self._db.execute(self._INVITATION + " WHERE slot = ?", (slot,)).fetchone()
        return _invitation(self._typed("invitations", row)) if row else None

    def invitations(self) -> list[Invitation]:
        return [_invitation(self._typed("invitations", row))
                for row in self._db.execute(self._INVITATION + " ORDER BY slot")]

    def invitation_attempt(self, slot: int, now: float) -> Invitation | None:
        with self._transaction():
            row = self._db.execute(
                "UPDATE invitations SET attempts = attempts + 1 "
                "WHERE slot = ? AND NOT used AND attempts < tries AND expires > ? "
                "RETURNING slot, client, code, expires, tries, attempts, used",
                (slot, now)).fetchone()
        return _invitation(row) if row else None

    def use_invitation(self, slot: int, client: str, code: str, now: float) -> bool:
        with self._transaction():
            rows = self._db.execute(
                "UPDATE invitations SET used = 1 "
                "WHERE slot = ? AND NOT used AND client = ? AND code = ? AND tries > 0 "
                "AND expires > ? RETURNING slot",
                (slot, client, code, now)).fetchall()
        return bool(rows)

    # Renewal: one pending generation per client.

    def set_pending(self, client: str, knocks: int, secret: bytes,
                    current_id: str | None = None) -> bool:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO pending (id, knocks, secret_id) SELECT ?1, ?2, ?3 "
                "WHERE ?4 IS NULL OR (EXISTS "
                "(SELECT 1 FROM clients WHERE id = ?1 AND secret_id = ?4) AND NOT EXISTS "
                "(SELECT 1 FROM revoked WHERE id = ?1 AND secret_id = ?4)) "
                "ON CONFLICT (id) DO UPDATE SET knocks = excluded.knocks, "
                "secret_id = excluded.secret_id",
                (client, knocks, secret_id(secret), current_id))
        return cursor.rowcount > 0

    def pending(self, client: str) -> ClientState | None:
        row = self._db.execute(
            "SELECT id, 1, knocks, secret_id FROM pending WHERE id = ?", (client,)).fetchone()
        return ClientState(*self._typed("pending", row)) if row else None

    def promote(self, client: str, wanted_id: str) -> bool:
        with self._transaction():
            revoked = self._db.execute(
                "SELECT 1 FROM clients JOIN revoked ON revoked.id = clients.id "
                "AND revoked.secret_id = clients.secret_id WHERE clients.id = ?",
                (client,)).fetchone()
            if revoked:
                self._db.execute("DELETE FROM pending WHERE id = ?", (client,))
                return False
            rows = self._db.execute(
                "DELETE FROM pending WHERE id = ? AND secret_id = ? RETURNING knocks",
                (client, wanted_id)).fetchall()
            if not rows:
                return False
            updated = self._db.execute(
                "UPDATE clients SET next_index = 1, knocks = ?, secret_id = ? WHERE id = ? "
                "RETURNING id", (rows[0][0], wanted_id, client)).fetchall()
            if not updated:
                raise StateError(f"{self.path}: a pending generation of unknown {client!r}")
        return True

    # The operator's changes.  (Revocations: a table of its own, created if
    # missing: a state written before it existed opens unchanged, so the
    # schema version stays 1.)

    def lift_lockouts(self, key: str | None = None) -> None:
        with self._transaction():
            if key is None:
                self._db.execute("DELETE FROM lockouts")
            else:
                self._db.execute("DELETE FROM lockouts WHERE key = ?", (key,))

    def revoke(self, client: str) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO revoked (id, secret_id) SELECT id, secret_id FROM clients "
                "WHERE id = ? ON CONFLICT (id) DO UPDATE SET secret_id = excluded.secret_id",
                (client,))
            self._cancel_offers(client)

    def revoked(self) -> dict[str, str]:
        return dict(self._typed("revoked", row)
                    for row in self._db.execute("SELECT id, secret_id FROM revoked"))

    def _cancel_offers(self, client: str) -> None:
        """L{cancel_offers}, inside the caller's transaction."""
        self._db.execute("DELETE FROM pending WHERE id = ?", (client,))
        self._db.execute(
            "UPDATE invitations SET tries = 0, attempts = 0 "
            "WHERE client = ? AND NOT used AND tries > 0", (client,))


# What each table's columns must hold, in the order they are read: SQLite
# keeps whatever a hand edit puts in a column (text in an INTEGER one), and
# a row read as it is would fail far from here, in a traceback.
_NUMBER = (int, float)
_KIND_NAMES = {str: "text", int: "a whole number", _NUMBER: "a number"}
_COLUMNS = {
    "clients": (("id", str), ("next_index", int), ("knocks", int), ("secret_id", str)),
    "pending": (("id", str), ("1", int), ("knocks", int), ("secret_id", str)),
    "closes": (("id", int), ("due", _NUMBER), ("ip", str), ("client", str), ("knock", int)),
    "lockouts": (("key", str), ("until", _NUMBER)),
    "revoked": (("id", str), ("secret_id", str)),
    "invitations": (("slot", int), ("client", str), ("code", str), ("expires", _NUMBER),
                    ("tries", int), ("attempts", int), ("used", int)),
}


def _invitation(row) -> Invitation:
    return Invitation(*row[:6], bool(row[6]))
