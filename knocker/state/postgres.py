"""
The state of a fleet of gateways (docs/spec.md section 11) in PostgreSQL:
the pool, the clients and their knock numbers, the server's copies of
their files (encrypted), lockouts and pending closes, invitations and
renewed files not yet proven (section 10), shared by every gateway given
the same C{database}.  Nothing secret is stored in the clear: the server's
copies (current and pending) and the invitation codes are sealed with
C{database-key-file}, the secrets named only by their L{secret_id}, so a
dump of the database holds no secret and no code.

Every method is synchronous and blocks its thread: the commands call it
directly, the daemon only from its database threads
(L{knocker.daemon.fleet.ThreadedStore}), never from the reactor.  Each
thread has its own connection, in autocommit: every write is one
statement or one short transaction, committed when the call returns.  A
connection that fails is dropped and the call raises L{StateError}; the
next call connects again, so a gateway recovers by itself.

L{burn} is one statement, C{UPDATE ... RETURNING}: PostgreSQL's row lock
serialises the gateways, so each number is handed out once across the
fleet; if the call raises, nobody knows whether the commit happened, and
the caller grants nothing (the number may be lost, never reused).
"""

import hmac
import os
import re
import threading
import time

from zope.interface import implementer

from knocker.state.interface import (
    MAX_LOCKOUT_ROWS,
    WHOLE_SERVER,
    ClientState,
    Invitation,
    IStore,
    PendingClose,
    StateError,
    free_slot,
    secret_id,
)

STATEMENT_TIMEOUT_MS = 2000
CONNECT_TIMEOUT = 3
LOCKOUT_CHANNEL = "knocker_lockout"
#: Notices on LOCKOUT_CHANNEL besides a lockout's ("UNTIL KEY") and
#: "reread": a lockout lifted ("lift KEY", or "lift" for every one), and
#: a client revoked (the others read the revocations again).
LIFT_NOTICE = "lift"
REVOKED_NOTICE = "revoked"
KEY_BYTES = 32
MAX_LOCKOUT_BATCH = 10000
INVITATION_LOCK = 7171002
#: Lifts take it alone, lockout writes shared: a lift and a write never
#: interleave, so a write that does not see a lift's row ran wholly before it.
LIFT_LOCK = 7171003
_PUT_BOOK = ("INSERT INTO books (client, secret_id, sealed) VALUES (%s, %s, %s) "
             "ON CONFLICT (client) DO UPDATE SET secret_id = excluded.secret_id, "
             "sealed = excluded.sealed")

#: Migration 1: the escalation step travels with the lockout; seq, taken
#: from a sequence on every change, lets a gateway read only the rows changed
#: since its last read.  Idempotent, as migration 2 runs it again (see there).
_LOCKOUTS_STEP_AND_SEQ = """
    CREATE SEQUENCE IF NOT EXISTS lockouts_seq;
    ALTER TABLE lockouts ADD COLUMN IF NOT EXISTS step integer NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS seq bigint NOT NULL DEFAULT nextval('lockouts_seq');
    CREATE INDEX IF NOT EXISTS lockouts_by_seq ON lockouts (seq);
    CREATE INDEX IF NOT EXISTS lockouts_by_until ON lockouts (until);
    """

#: The schema, as migrations: MIGRATIONS[n] takes version n to n + 1.
MIGRATIONS = (
    """
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE clients (
        id text PRIMARY KEY,
        next_index integer NOT NULL,
        knocks integer NOT NULL,
        secret_id text NOT NULL,
        CHECK (next_index >= 1 AND next_index <= knocks + 1)
    );
    CREATE TABLE books (
        client text PRIMARY KEY REFERENCES clients (id) ON DELETE CASCADE,
        secret_id text NOT NULL,
        sealed bytea NOT NULL
    );
    CREATE TABLE closes (
        id bigserial PRIMARY KEY,
        gateway text NOT NULL,
        due double precision NOT NULL,
        ip text NOT NULL,
        client text NOT NULL,
        knock integer NOT NULL
    );
    CREATE INDEX closes_gateway ON closes (gateway, due);
    CREATE TABLE lockouts (key text PRIMARY KEY, until double precision NOT NULL);
    """,
    # 1: lockouts: step and seq (see _LOCKOUTS_STEP_AND_SEQ).
    _LOCKOUTS_STEP_AND_SEQ,
    # 2: section 10.  The invitation code is sealed, not hashed: SPAKE2 needs
    # it.  A pending generation's copy is sealed as a current one is, so
    # promote() moves it into books in the same transaction.
    #
    # Two branches each numbered their change "2" before they were merged: a
    # database at version 2 may hold the lockouts' step and seq (the fleet's
    # fixes) or the invitations and pending tables (enrolment) but not both.
    # So every statement here is idempotent and migration 1 runs again: from
    # either version 2, this one leaves the same schema.
    """
    CREATE TABLE IF NOT EXISTS invitations (
        slot integer PRIMARY KEY,
        client text NOT NULL,
        sealed_code bytea NOT NULL,
        expires double precision NOT NULL,
        tries integer NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        used boolean NOT NULL DEFAULT false
    );
    CREATE TABLE IF NOT EXISTS pending (
        client text PRIMARY KEY REFERENCES clients (id) ON DELETE CASCADE,
        knocks integer NOT NULL,
        secret_id text NOT NULL,
        sealed bytea
    );
    """ + _LOCKOUTS_STEP_AND_SEQ,
    # 3: console: revocations.  The revoked file of each client, named by its
    # secret_id (a digest, as in clients: no secret is kept here), for good;
    # a new file (generate --force) is not revoked.
    """
    CREATE TABLE IF NOT EXISTS revocations (client text PRIMARY KEY, secret_id text NOT NULL);
    """,
)
# 4: the same clash again, one number up: the console's branch numbered
# its revocations "3", on top of a version 2 without the invitations and
# pending tables, and migration 3 alone took such a database to 4 without
# them (every invitation, every renewal and every wrong PROOF then failed
# with ERROR server-error).  Every earlier statement is idempotent: run them
# all again, so that any database at 3 or 4 ends with the whole schema.
MIGRATIONS += (MIGRATIONS[2] + MIGRATIONS[3],)
# 5: lifts as rows.  A NOTIFY can come from any role that may connect to
# the database; a gateway lifts a lockout on a lift row it reads (which
# only the fleet's role can write), not on the notice.  Rows older than an
# hour are pruned with the lockouts.
MIGRATIONS += ("""
    CREATE TABLE IF NOT EXISTS lifts (
        seq bigserial PRIMARY KEY,
        key text,
        at double precision NOT NULL
    );
    """,)
#: How long a lift row is kept (seconds): far longer than a notice takes.
LIFT_KEPT = 3600.0
SCHEMA_VERSION = len(MIGRATIONS)


def lift_notice(key: str | None) -> str:
    return LIFT_NOTICE if key is None else f"{LIFT_NOTICE} {key}"


_SECRET_PARAMS = re.compile(r"((?:^|[?&])(?:ssl)?password=)[^&]*", re.IGNORECASE)


def _secrets_in(uri: str) -> list[str]:
    """The password and sslpassword of C{uri} as libpq reads them, if it can."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(uri)
    except Exception:
        return []
    return [value for key, value in params.items()
            if key in ("password", "sslpassword") and value]


def redact(uri: str) -> str:
    """
    The URI without its passwords (in the user part, and C{password} or
    C{sslpassword} in the query string), for messages and logs.  When
    libpq cannot parse it, everything between C{//} and C{@} is masked.
    """
    scheme, sep, rest = uri.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    if at and not _parses(uri):
        userinfo = "***"
    host = _SECRET_PARAMS.sub(r"\1***", host)
    return scrub(f"{scheme}{sep}{userinfo}{at}{host}", uri)


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def unverified_tls(uri: str) -> str | None:
    """
    Why the gateway's link to the database at C{uri} could be answered by
    someone else, or C{None}: a host reached over TCP (not a socket
    folder, not loopback) without C{sslmode} C{verify-ca} or
    C{verify-full}.  libpq's default, C{prefer}, falls back to plain TCP
    (and C{require} checks no certificate): a man in the middle could then
    answer the burns, and grant knocks the database never counted.
    """
    import os

    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(uri)
    except Exception:
        return None  # the connection itself will say what is wrong
    hosts = [h for h in (params.get("host") or os.environ.get("PGHOST", "")).split(",") if h]
    remote = [h for h in hosts if not h.startswith("/") and h not in _LOOPBACK_HOSTS
              and not h.startswith("127.")]
    mode = params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer"
    if not remote or mode in ("verify-ca", "verify-full"):
        return None
    return (f"the database at {', '.join(remote)} is reached with sslmode={mode}, which "
            f"checks no certificate: whoever sits on that link could answer the burns. "
            f"Set sslmode=verify-full (and sslrootcert) in the database URI (docs/fleet.md)")


def _parses(uri: str) -> bool:
    try:
        from psycopg.conninfo import conninfo_to_dict

        conninfo_to_dict(uri)
    except ImportError:
        return True
    except Exception:
        return False
    return True


def scrub(text: str, uri: str) -> str:
    """C{text} with every password of C{uri} (as written or decoded) masked."""
    from urllib.parse import quote

    for secret in _secrets_in(uri):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text


class SecretBox:
    """
    Seals the server's copies of portknock files with AES-256-GCM under
    the key in C{database-key-file}, the client's id as associated data
    (a sealed copy moved to another client's row does not open).
    """

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != KEY_BYTES:
            raise StateError(f"the database key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._key = key

    def check_value(self) -> str:
        """Names the key without revealing it: an HMAC of a constant under it."""
        import hmac

        return hmac.digest(self._key, b"knocker database key check", "sha256").hex()

    def seal(self, client: str, plain: bytes, context: str | None = None) -> bytes:
        """
        C{plain} sealed for C{client}; C{context} (default: the client id,
        as for the server's copies) is what the seal is bound to.
        """
        nonce = os.urandom(12)
        aad = (context or client).encode()
        return b"\x01" + nonce + self._aead.encrypt(nonce, plain, aad)

    def open(self, client: str, sealed: bytes, context: str | None = None,
             what: str = "the server's copy") -> bytes:
        from cryptography.exceptions import InvalidTag

        sealed = bytes(sealed)
        if sealed[:1] != b"\x01":
            raise StateError(f"{what} for {client!r}: unknown format")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], (context or client).encode())
        except InvalidTag:
            raise StateError(
                f"{what} for {client!r} does not open with database-key-file "
                f"(another fleet's key, or altered)") from None


def _code_context(slot: int, client: str) -> str:
    """What an invitation's sealed code is bound to: its slot and client."""
    return f"invitation|{slot}|{client}"


def create_key(path: str, owner: tuple[int, int] | None = None) -> None:
    """
    Make the key file C{path}: 32 random bytes as hex, mode 0600, given to
    C{owner} (uid, gid) before it is put in place.  The commands make it
    (the daemon never does: a fresh key opens no existing copy), as
    whoever runs them, root as a rule, in a folder of root's such as
    C{/etc/knocker} that the daemon's user could not write to, for the
    daemon's user to read.
    """
    from knocker.files import commit_private, discard_private, stage_private

    staged = stage_private(path, os.urandom(KEY_BYTES).hex() + "\n", owner)
    try:
        commit_private(staged, path)
    except BaseException:
        discard_private(staged)
        raise


def load_key(path: str | None) -> bytes:
    """
    The 32-byte key in C{path} (0600, owner only): 64 hex digits (what
    L{create_key} writes, and C{openssl rand -hex 32} makes) or 32 raw
    bytes.
    """
    from knocker.files import PrivateFileError, open_private

    if not path:
        raise StateError("database-key-file is not set; a database needs it (docs/fleet.md)")
    try:
        with open_private(path) as handle:
            data = handle.read(200)
    except PrivateFileError as error:
        raise StateError(f"database-key-file = {path}: {error}") from None
    except OSError as error:
        raise StateError(f"database-key-file = {path}: {error.strerror}") from None
    if len(data) != KEY_BYTES:
        try:
            data = bytes.fromhex(data.decode("ascii").strip())
        except ValueError:
            data = b""
    if len(data) != KEY_BYTES:
        raise StateError(f"database-key-file = {path}: not a key: {KEY_BYTES * 2} hex digits "
                         f"or {KEY_BYTES} raw bytes are needed")
    return data


@implementer(IStore)
class PostgresStore:
    """
    The state in the PostgreSQL database at C{uri} (a libpq URI), as seen
    by gateway C{gateway} (its pending closes are its own).
    """

    def __init__(self, uri: str, key: bytes | None = None, gateway: str = "",
                 statement_timeout_ms: int = STATEMENT_TIMEOUT_MS, migrate: bool = True):
        import psycopg

        self._psycopg = psycopg
        self.uri = uri
        self.path = redact(uri)
        self.gateway = gateway
        self._box = SecretBox(key) if key is not None else None
        self._timeout = statement_timeout_ms
        self._local = threading.local()
        self._all: list = []
        self._all_lock = threading.Lock()
        if migrate:
            self.migrate()

    # Connections.

    def connect(self, autocommit: bool = True):
        """
        A new connection with the fleet's settings: statement and lock
        timeouts, synchronous commit (a burn is on disk before GRANT), TCP
        keepalives both ways: so that this side notices a vanished server,
        and the server a vanished gateway (a power cut sends no FIN: with
        the system's keepalive of two hours, the session and its gateway
        name lock would outlive the host that long, and the gateway could
        not start again).
        """
        if not _parses(self.uri):
            # libpq's parse error may quote the URI, password and all.
            raise StateError(f"{self.path}: not a libpq connection URI that parses "
                             f"(check its syntax and percent-encoding)")
        try:
            return self._psycopg.connect(
                self.uri, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT,
                options=(f"-c statement_timeout={self._timeout} "
                         f"-c lock_timeout={self._timeout} "
                         f"-c idle_in_transaction_session_timeout={self._timeout * 5} "
                         f"-c synchronous_commit=on "
                         f"-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
                         f"-c tcp_keepalives_count=2 -c tcp_user_timeout={self._timeout * 2}"),
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
                tcp_user_timeout=self._timeout * 2,
            )
        except self._psycopg.Error as error:
            raise StateError(f"{self.path}: cannot connect: "
                             f"{scrub(_first_line(error), self.uri)}") from None

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.connect()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _run(self, work):
        """
        C{work(connection)} on this thread's connection; any database error
        drops the connection and becomes a L{StateError}.
        """
        conn = self._conn()
        try:
            return work(conn)
        except self._psycopg.Error as error:
            if conn.closed or conn.broken or isinstance(error, self._psycopg.OperationalError):
                self._drop(conn)
            elif not conn.autocommit or conn.info.transaction_status:
                conn.rollback()
            raise StateError(f"{self.path}: {scrub(_first_line(error), self.uri)}") from None

    def release_thread(self) -> None:
        """Close the calling thread's connection: a thread about to end."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._drop(conn)

    def _drop(self, conn) -> None:
        try:
            conn.close()
        except Exception:
            pass
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)

    def hold_gateway(self) -> None:
        """
        Take, for as long as this store is open, a session advisory lock on
        a hash of C{gateway} on a connection of its own: a second gateway
        given the same name (it would run, and delete, the first one's
        pending closes) cannot start.
        """
        import hashlib

        digest = hashlib.sha256(b"knocker gateway|" + self.gateway.encode()).digest()
        lock_id = int.from_bytes(digest[:8], "big", signed=True)
        conn = self.connect()
        try:
            held = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()[0]
        except self._psycopg.Error as error:
            conn.close()
            raise StateError(f"{self.path}: {scrub(_first_line(error), self.uri)}") from None
        if not held:
            conn.close()
            raise StateError(
                f"gateway = {self.gateway}: another gateway of this name is running on "
                f"{self.path}; give each gateway its own 'gateway' name")
        self._gateway_conn = conn

    def close(self) -> None:
        conn, self._gateway_conn = getattr(self, "_gateway_conn", None), None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        self._local = threading.local()

    def migrate(self) -> int:
        """
        Bring the schema to L{SCHEMA_VERSION}, one migration per
        transaction, under an advisory lock so that gateways starting
        together migrate once.  Returns the version found.
        """
        def work(conn):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(7171001)")
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
                row = conn.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    conn.execute("INSERT INTO schema_version VALUES (0)")
                    found = 0
                else:
                    found = row[0]
                if found > SCHEMA_VERSION:
                    raise StateError(
                        f"{self.path}: schema version {found} is newer than this knocker's "
                        f"{SCHEMA_VERSION}; upgrade knocker on this gateway")
                for version in range(found, SCHEMA_VERSION):
                    conn.execute(MIGRATIONS[version])
                    conn.execute("UPDATE schema_version SET version = %s", (version + 1,))
                return found

        return self._run(work)

    def schema_version(self) -> int:
        return self._run(lambda c: c.execute("SELECT version FROM schema_version").fetchone()[0])

    # The pool.

    def pool(self):
        row = self._run(lambda c: c.execute("SELECT value FROM meta WHERE key = 'pool'").fetchone())
        return tuple(int(port) for port in row[0].split(",")) if row else None

    def set_pool(self, ports) -> None:
        value = ",".join(map(str, ports))
        row = self._run(lambda c: c.execute(
            "INSERT INTO meta (key, value) VALUES ('pool', %s) ON CONFLICT (key) DO NOTHING "
            "RETURNING key", (value,)).fetchone())
        if row is None:
            raise StateError(f"{self.path}: the pool is drawn once and kept")

    # Clients and their knock numbers.

    def register(self, client, knocks, secret) -> None:
        def work(conn):
            with conn.transaction():
                self._register(conn, client, knocks, secret)

        self._run(work)

    @staticmethod
    def _register(conn, client, knocks, secret) -> None:
        """
        A new file's counter from 1; a pending generation is forgotten and
        the unused invitations cancelled.
        """
        conn.execute(
            "INSERT INTO clients (id, next_index, knocks, secret_id) VALUES (%s, 1, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET next_index = 1, knocks = excluded.knocks, "
            "secret_id = excluded.secret_id",
            (client, knocks, secret_id(secret)))
        _cancel_offers(conn, client)

    def cancel_offers(self, client) -> None:
        def work(conn):
            with conn.transaction():
                _cancel_offers(conn, client)

        self._run(work)

    def client(self, client):
        row = self._run(lambda c: c.execute(
            "SELECT id, next_index, knocks, secret_id FROM clients WHERE id = %s",
            (client,)).fetchone())
        return ClientState(*row) if row else None

    def clients(self):
        rows = self._run(lambda c: c.execute(
            "SELECT id, next_index, knocks, secret_id FROM clients ORDER BY id").fetchall())
        return [ClientState(*row) for row in rows]

    def burn(self, client, secret_id=None):
        """
        One statement, committed when it returns (autocommit): the row lock
        orders gateways burning for one client, each gets its own number.
        With C{secret_id}, only from the counter of that secret (the one
        the client proved): after a C{generate --force} nothing is taken.
        Nothing either from a revoked file's counter: another gateway's
        revocation reaches this one's memory by a notice or a re-read,
        seconds later at worst, and the burn must not grant meanwhile.
        A L{StateError} means the outcome is unknown: grant nothing.
        """
        row = self._run(lambda c: c.execute(
            "UPDATE clients SET next_index = next_index + 1 "
            "WHERE id = %s AND next_index <= knocks AND (%s::text IS NULL OR secret_id = %s) "
            "AND NOT EXISTS (SELECT 1 FROM revocations r "
            "WHERE r.client = clients.id AND r.secret_id = clients.secret_id) "
            "RETURNING next_index - 1, secret_id",
            (client, secret_id, secret_id)).fetchone())
        if row is None:
            return None
        # A burn that waited for a revoke's row lock went on with the
        # snapshot it began with, where the revocation was not yet: asked
        # again, in a statement of its own, the number taken is spent and
        # nothing is granted.
        if self.is_revoked(client, row[1]):
            raise StateError(f"{client!r} was revoked while its knock was burned; "
                             f"nothing granted")
        return row[0]

    def is_revoked(self, client: str, secret_id: str) -> bool:
        """Whether C{client}'s file of C{secret_id} is revoked (as committed now)."""
        return self._run(lambda c: c.execute(
            "SELECT 1 FROM revocations WHERE client = %s AND secret_id = %s",
            (client, secret_id)).fetchone()) is not None

    # The server's copies of the portknock files, sealed.

    def put_book(self, client: str, secret: bytes, text: str) -> None:
        box = self._need_box()
        sealed = box.seal(client, text.encode("utf-8"))
        self._run(lambda c: c.execute(
            _PUT_BOOK, (client, secret_id(secret), sealed)))

    def register_with_book(self, client: str, knocks: int, secret: bytes, text: str) -> None:
        """
        L{register} and L{put_book} in one transaction: no gateway ever
        sees the new counter without its file, or the reverse.
        """
        sealed = self._need_box().seal(client, text.encode("utf-8"))

        def work(conn):
            with conn.transaction():
                self._register(conn, client, knocks, secret)
                conn.execute(
                    _PUT_BOOK, (client, secret_id(secret), sealed))

        self._run(work)

    def book(self, client: str) -> str | None:
        """The server's copy of C{client}'s file (its text), or C{None}."""
        row = self._run(lambda c: c.execute(
            "SELECT sealed FROM books WHERE client = %s", (client,)).fetchone())
        if row is None:
            return None
        return self._need_box().open(client, row[0]).decode("utf-8")

    def book_clients(self) -> list[str]:
        return [row[0] for row in self._run(lambda c: c.execute(
            "SELECT client FROM books ORDER BY client").fetchall())]

    def has_sealed_state(self) -> bool:
        """Whether the database holds copies sealed under some key already."""
        return self._run(lambda c: c.execute(
            "SELECT EXISTS (SELECT 1 FROM books) "
            "OR EXISTS (SELECT 1 FROM meta WHERE key = 'key_check')").fetchone()[0])

    def check_key(self) -> None:
        """
        Refuse a C{database-key-file} that is not the fleet's: the database
        keeps a check value (an HMAC of a constant under the key), written
        by the first user of a key while no copy exists yet, or once a copy
        opens with it.
        """
        import hmac

        box = self._need_box()
        mine = box.check_value()
        row = self._run(lambda c: c.execute(
            "SELECT value FROM meta WHERE key = 'key_check'").fetchone())
        if row is None:
            clients = self.book_clients()
            if clients and not any(self._opens(client) for client in clients):
                raise StateError(
                    f"database-key-file opens none of the server's copies in {self.path}: "
                    f"it is not this fleet's key")
            self._run(lambda c: c.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', %s) "
                "ON CONFLICT (key) DO NOTHING", (mine,)))
            row = self._run(lambda c: c.execute(
                "SELECT value FROM meta WHERE key = 'key_check'").fetchone())
        if not hmac.compare_digest(row[0], mine):
            raise StateError(
                f"database-key-file is not the key of the fleet in {self.path} (its check "
                f"value does not match): copy the fleet's key file to this host")

    def _opens(self, client: str) -> bool:
        try:
            self.book(client)
        except StateError:
            return False
        return True

    def _need_box(self) -> SecretBox:
        if self._box is None:
            raise StateError("database-key-file is needed for the server's copies")
        return self._box

    # Invitations (section 10): the code sealed, bound to its slot and client.

    _INVITATION = ("SELECT slot, client, sealed_code, expires, tries, attempts, used "
                   "FROM invitations")

    def add_invitation(self, client, code, expires, tries, now) -> int:
        box = self._need_box()

        def work(conn):
            with conn.transaction():
                # Commands inviting at once on several hosts take turns.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (INVITATION_LOCK,))
                held = {row[0] for row in conn.execute(
                    "SELECT slot FROM invitations WHERE expires > %s", (now,))}
                slot = free_slot(held)
                sealed = box.seal(client, code.encode("utf-8"), _code_context(slot, client))
                conn.execute(
                    "INSERT INTO invitations (slot, client, sealed_code, expires, tries) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (slot) DO UPDATE SET "
                    "client = excluded.client, sealed_code = excluded.sealed_code, "
                    "expires = excluded.expires, tries = excluded.tries, attempts = 0, "
                    "used = false", (slot, client, sealed, expires, tries))
                return slot

        return self._run(work)

    def _invitation(self, row) -> Invitation:
        slot, client, sealed, expires, tries, attempts, used = row
        code = self._need_box().open(client, sealed, _code_context(slot, client),
                                     what="the invitation code")
        return Invitation(slot, client, code.decode("utf-8"), expires, tries, attempts, used)

    def invitation(self, slot):
        row = self._run(lambda c: c.execute(
            self._INVITATION + " WHERE slot = %s", (slot,)).fetchone())
        return self._invitation(row) if row else None

    def invitations(self):
        rows = self._run(lambda c: c.execute(self._INVITATION + " ORDER BY slot").fetchall())
        return [self._invitation(row) for row in rows]

    def invitation_attempt(self, slot, now):
        """
        One statement: gateways taking tries at once each count (the row
        lock orders them, and each re-checks the condition on the row it
        locked), none past the last; C{None} to every caller whose UPDATE
        changed nothing.
        """
        row = self._run(lambda c: c.execute(
            "UPDATE invitations SET attempts = attempts + 1 "
            "WHERE slot = %s AND NOT used AND attempts < tries AND expires > %s "
            "RETURNING slot, client, sealed_code, expires, tries, attempts, used",
            (slot, now)).fetchone())
        return self._invitation(row) if row else None

    def use_invitation(self, slot, client, code, now) -> bool:
        """
        In one transaction, the row locked: the code is sealed, so it is
        compared here, not in the statement.
        """
        def work(conn):
            with conn.transaction():
                row = conn.execute(
                    self._INVITATION + " WHERE slot = %s AND NOT used AND client = %s "
                    "AND tries > 0 AND expires > %s FOR UPDATE", (slot, client, now)).fetchone()
                if row is None or not hmac.compare_digest(
                        self._invitation(row).code.encode("utf-8"), code.encode("utf-8")):
                    return False
                conn.execute("UPDATE invitations SET used = true WHERE slot = %s", (slot,))
                return True

        return self._run(work)

    # Renewal (section 10): one pending generation per client, its copy sealed.

    def set_pending(self, client, knocks, secret, current_id=None) -> bool:
        """
        The pending generation's counter; a copy kept for another secret is
        dropped (L{add_pending_with_book} keeps both at once).
        """
        return self._run(lambda c: c.execute(
            "INSERT INTO pending (client, knocks, secret_id) SELECT %(client)s, %(knocks)s, "
            "%(new)s WHERE " + _STILL_CURRENT +
            " ON CONFLICT (client) DO UPDATE SET knocks = excluded.knocks, "
            "secret_id = excluded.secret_id, sealed = CASE WHEN "
            "pending.secret_id = excluded.secret_id THEN pending.sealed END",
            {"client": client, "knocks": knocks, "new": secret_id(secret),
             "current": current_id}).rowcount > 0)

    def add_pending_with_book(self, client: str, knocks: int, secret: bytes, text: str,
                              current_id: str | None = None) -> str | None:
        """
        L{set_pending} and the pending file's sealed copy in one statement,
        unless another pending file with its copy is there already (drawn
        meanwhile by another gateway, or thread): the first one drawn is
        kept, so every offer sends the same file.  Returns the text of the
        pending file kept, read under the client's row lock; C{None} if,
        with C{current_id}, the client's current file is no longer that
        one, or is revoked.
        """
        sealed = self._need_box().seal(client, text.encode("utf-8"))
        values = {"client": client, "knocks": knocks, "new": secret_id(secret),
                  "sealed": sealed, "current": current_id}

        def work(conn):
            with conn.transaction():
                # the client's row locked, as register and revoke lock it
                conn.execute("SELECT 1 FROM clients WHERE id = %(client)s FOR UPDATE", values)
                if not conn.execute("SELECT " + _STILL_CURRENT, values).fetchone()[0]:
                    return None, False
                row = conn.execute(
                    "INSERT INTO pending (client, knocks, secret_id, sealed) "
                    "VALUES (%(client)s, %(knocks)s, %(new)s, %(sealed)s) "
                    "ON CONFLICT (client) DO UPDATE SET knocks = excluded.knocks, "
                    "secret_id = excluded.secret_id, sealed = excluded.sealed "
                    "WHERE pending.sealed IS NULL RETURNING client", values).fetchone()
                if row is not None:
                    return sealed, True
                # Another's kept: read under the same lock, so that it cannot
                # have been promoted or dropped in between.
                kept = conn.execute("SELECT sealed FROM pending WHERE client = %(client)s "
                                    "AND sealed IS NOT NULL", values).fetchone()
                return (kept[0] if kept else None), True

        kept, current = self._run(work)
        if not current or kept is None:
            return None
        return text if kept is sealed else self._need_box().open(client, kept).decode("utf-8")

    def pending(self, client):
        row = self._run(lambda c: c.execute(
            "SELECT client, 1, knocks, secret_id FROM pending WHERE client = %s",
            (client,)).fetchone())
        return ClientState(*row) if row else None

    def pending_book(self, client: str) -> str | None:
        """The pending generation's file (its text), or C{None}."""
        row = self._run(lambda c: c.execute(
            "SELECT sealed FROM pending WHERE client = %s AND sealed IS NOT NULL",
            (client,)).fetchone())
        if row is None:
            return None
        return self._need_box().open(client, row[0]).decode("utf-8")

    def promote(self, client, wanted_id) -> bool:
        """
        The pending generation becomes current in one transaction: its
        counter from 1 and its sealed copy in books, for every gateway;
        unless the current file is revoked (the client's row is locked
        first, as L{revoke} locks it, so the two take turns).
        """
        def work(conn):
            with conn.transaction():
                if _revoked_now(conn, client):
                    conn.execute("DELETE FROM pending WHERE client = %s", (client,))
                    return False
                row = conn.execute(
                    "DELETE FROM pending WHERE client = %s AND secret_id = %s "
                    "RETURNING knocks, sealed", (client, wanted_id)).fetchone()
                if row is None:
                    return False
                knocks, sealed = row
                conn.execute(
                    "UPDATE clients SET next_index = 1, knocks = %s, secret_id = %s "
                    "WHERE id = %s", (knocks, wanted_id, client))
                if sealed is not None:
                    conn.execute(
                        _PUT_BOOK, (client, wanted_id, sealed))
                return True

        return self._run(work)

    # Pending closes: each belongs to the gateway that opened the door.

    def add_close(self, due, ip, client, index) -> int:
        return self._run(lambda c: c.execute(
            "INSERT INTO closes (gateway, due, ip, client, knock) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id", (self.gateway, due, ip, client, index)).fetchone()[0])

    def remove_close(self, close_id) -> None:
        self._run(lambda c: c.execute(
            "DELETE FROM closes WHERE id = %s AND gateway = %s", (close_id, self.gateway)))

    def pending_closes(self):
        rows = self._run(lambda c: c.execute(
            "SELECT id, due, ip, client, knock FROM closes WHERE gateway = %s ORDER BY due",
            (self.gateway,)).fetchall())
        return [PendingClose(*row) for row in rows]

    def all_pending_closes(self) -> int:
        return self._run(lambda c: c.execute("SELECT count(*) FROM closes").fetchone()[0])

    # Lockouts: the table is the truth, NOTIFY the fast path.

    # An upsert that keeps the later end and the higher step, and takes a new
    # seq only when it changed something (so the others re-read only that).
    _UPSERT = (
        "INSERT INTO lockouts (key, until, step) VALUES (%s, %s, %s) ON CONFLICT (key) "
        "DO UPDATE SET until = GREATEST(lockouts.until, excluded.until), "
        "step = GREATEST(lockouts.step, excluded.step), seq = nextval('lockouts_seq') "
        "WHERE lockouts.until < excluded.until OR lockouts.step < excluded.step")

    def _upsert(self, cursor, items, lifts_seen: int | None) -> bool:
        """
        Write C{(key, until, step)} C{items}.  With C{lifts_seen} (the seq
        of the last lift the writer's gateway had taken), leave out the keys
        that a later lift covers: a lockout decided before the gateway knew
        of a lift must not bring the lifted lockout back.  Returns whether
        there was such a later lift (the gateway should read the lifts).
        """
        # A lift takes this alone: none commits while we look and write.
        # Each statement sees what was committed before it began (whatever
        # the server's or the role's default): under a snapshot taken at
        # the lock's statement, before its wait, the lift that held the
        # lock would be invisible to the look below.
        cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", (LIFT_LOCK,))
        behind = False
        if lifts_seen is not None:
            lifted = {key for (key,) in cursor.execute(
                "SELECT key FROM lifts WHERE seq > %s", (lifts_seen,)).fetchall()}
            if lifted:
                behind = True
                items = [] if None in lifted else [i for i in items if i[0] not in lifted]
        if items:
            cursor.executemany(self._UPSERT, items)
        return behind

    def set_lockout(self, key, until, lifts_seen: int | None = None) -> bool:
        """One lockout, as L{save_lockouts}; returns whether lifts were missed."""
        def work(conn):
            with conn.transaction():
                with conn.cursor() as cursor:
                    behind = self._upsert(cursor, [(key, until, 0)], lifts_seen)
                conn.execute("SELECT pg_notify(%s, %s)", (LOCKOUT_CHANNEL, f"{until!r} {key}"))
            return behind

        return self._run(work)

    def save_lockouts(self, lockouts, steps=None, lifts_seen: int | None = None) -> bool:
        """
        Every C{{key: until}} of C{lockouts} (with its escalation step from
        C{steps}, if given), in transactions of at most L{MAX_LOCKOUT_BATCH}
        rows, each in key order: two gateways saving overlapping batches
        lock the rows in the same order, so they cannot deadlock.  With
        C{lifts_seen}, the keys lifted after that lift are left out, and
        the answer says whether there were such lifts.
        """
        steps = steps or {}
        items = [(key, until, steps.get(key, 0)) for key, until in sorted(lockouts.items())]
        behind = False
        for start in range(0, len(items), MAX_LOCKOUT_BATCH):
            chunk = items[start:start + MAX_LOCKOUT_BATCH]

            def work(conn, chunk=chunk):
                with conn.transaction():
                    with conn.cursor() as cursor:
                        missed = self._upsert(cursor, chunk, lifts_seen)
                    # One notice a batch: the others read the changed rows.
                    conn.execute("SELECT pg_notify(%s, %s)", (LOCKOUT_CHANNEL, "reread"))
                return missed

            behind = self._run(work) or behind
        return behind

    def lockouts(self, now):
        def work(conn):
            conn.execute("DELETE FROM lockouts WHERE until <= %s", (now,))
            return dict(conn.execute("SELECT key, until FROM lockouts").fetchall())

        return self._run(work)

    def lockouts_since(self, after: int, limit: int) -> list[tuple[int, str, float, int]]:
        """
        C{(seq, key, until, step)} of at most C{limit} rows changed after
        C{after} (a seq), in seq order: the next read starts at the last.
        """
        return self._run(lambda c: c.execute(
            "SELECT seq, key, until, step FROM lockouts WHERE seq > %s ORDER BY seq LIMIT %s",
            (after, limit)).fetchall())

    def prune_lockouts(self, now: float, keep: int = MAX_LOCKOUT_ROWS) -> None:
        """
        Forget the lockouts ended by C{now}, and past C{keep} rows of
        sources those ending soonest (L{IStore.prune_lockouts}).
        """
        def work(conn):
            conn.execute("DELETE FROM lockouts WHERE until <= %s", (now,))
            conn.execute(
                "DELETE FROM lockouts WHERE key <> %s AND key IN (SELECT key FROM lockouts "
                "ORDER BY until DESC OFFSET %s)", (WHOLE_SERVER, keep))
            conn.execute("DELETE FROM lifts WHERE at < %s", (now - LIFT_KEPT,))

        self._run(work)

    def lift_lockouts(self, key: str | None = None) -> None:
        """
        Forget the lockout of C{key} (every lockout with C{None}), and tell
        the other gateways (C{lift KEY} or C{lift}), whose trackers lift it
        too (L{knocker.daemon.fleet.LockoutSync}).
        """
        def work(conn):
            with conn.transaction():
                # Alone: no lockout write is half done (see LIFT_LOCK).
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LIFT_LOCK,))
                if key is None:
                    conn.execute("DELETE FROM lockouts")
                else:
                    conn.execute("DELETE FROM lockouts WHERE key = %s", (key,))
                # The row is what the others act on; the notice only wakes them.
                conn.execute("INSERT INTO lifts (key, at) VALUES (%s, %s)", (key, time.time()))
                conn.execute("SELECT pg_notify(%s, %s)",
                             (LOCKOUT_CHANNEL, lift_notice(key)))

        self._run(work)

    def lifts_since(self, after: int) -> list[tuple[int, str | None]]:
        """C{(seq, key)} of the lifts after seq C{after} (key C{None}: all), in order."""
        return self._run(lambda c: c.execute(
            "SELECT seq, key FROM lifts WHERE seq > %s ORDER BY seq", (after,)).fetchall())

    def last_lift(self) -> int:
        """The seq of the last lift (0 if none)."""
        return self._run(lambda c: c.execute(
            "SELECT coalesce(max(seq), 0) FROM lifts").fetchone()[0])

    # Revocations (the console, knocker revoke): shared by the fleet.

    def revoke(self, client: str) -> None:
        """
        Revoke C{client}'s current file (its pending generation forgotten,
        its unused invitations cancelled), and tell the other gateways
        (C{revoked}): they read the revocations again.
        """
        def work(conn):
            with conn.transaction():
                # The row locked first: a promote in progress ends before
                # this reads the current secret, or sees the revocation.
                conn.execute("SELECT id FROM clients WHERE id = %s FOR UPDATE", (client,))
                conn.execute(
                    "INSERT INTO revocations (client, secret_id) SELECT id, secret_id "
                    "FROM clients WHERE id = %s ON CONFLICT (client) DO UPDATE "
                    "SET secret_id = excluded.secret_id", (client,))
                _cancel_offers(conn, client)
                conn.execute("SELECT pg_notify(%s, %s)", (LOCKOUT_CHANNEL, REVOKED_NOTICE))

        self._run(work)

    def revoked(self) -> dict[str, str]:
        return dict(self._run(lambda c: c.execute(
            "SELECT client, secret_id FROM revocations").fetchall()))


def _cancel_offers(conn, client: str) -> None:
    """C{cancel_offers}, inside the caller's transaction."""
    conn.execute("DELETE FROM pending WHERE client = %s", (client,))
    conn.execute("UPDATE invitations SET tries = 0, attempts = 0 "
                 "WHERE client = %s AND NOT used AND tries > 0", (client,))


#: With C{current}, whether C{client}'s current file is that one and not
#: revoked (C{set_pending} and C{add_pending_with_book}: a file drawn to renew
#: a generation replaced or revoked meanwhile is not kept).
_STILL_CURRENT = (
    "(%(current)s::text IS NULL OR (EXISTS "
    "(SELECT 1 FROM clients WHERE id = %(client)s AND secret_id = %(current)s) "
    "AND NOT EXISTS (SELECT 1 FROM revocations "
    "WHERE client = %(client)s AND secret_id = %(current)s)))"
)


def _revoked_now(conn, client: str) -> bool:
    """Whether C{client}'s current file is revoked, its row locked till the commit."""
    row = conn.execute(
        "SELECT secret_id FROM clients WHERE id = %s FOR UPDATE", (client,)).fetchone()
    return row is not None and conn.execute(
        "SELECT 1 FROM revocations WHERE client = %s AND secret_id = %s",
        (client, row[0])).fetchone() is not None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
