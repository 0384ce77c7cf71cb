"""
Administration that works on the state directory without a running
daemon: creating the pool, generating clients, reporting status.

Run as root on a state directory that belongs to the daemon's user, the
state is read and written as that user (L{knocker.admin.owner.StateOwner}),
so the server's copies and the database stay the daemon's.
"""

import os
import secrets
import time
from datetime import datetime, timezone

from attrs import frozen

from knocker.admin.owner import StateOwner
from knocker.core.knockfile import KnockFile
from knocker.core.knockgen import format_knockfile, generate
from knocker.core.pool import ensure_pool, keyspace
from knocker.files import (
    commit_private,
    discard_private,
    read_private,
    stage_private,
    write_private,
)
from knocker.state.book import ClientBook
from knocker.state.sqlite import SQLiteStore


@frozen
class Generated:
    knockfile: KnockFile
    output: str
    server_copy: str
    pool_size: int
    ordered: int
    unordered: int


class ClientExists(ValueError):
    """
    The client is registered already; replacing it needs C{force}.
    """


def refuse_existing(existing, client: str, force: bool) -> None:
    """
    @raise ClientExists: C{existing} (C{client}'s state) is not C{None}
        and C{force} is not set.
    """
    if existing is not None and not force:
        raise ClientExists(
            f"client {client!r} exists ({existing.left} of {existing.knocks} knocks "
            f"left); --force replaces its file and secret (the old file stops working)"
        )


def generate_client(config, client: str, knocks: int, ports: int, output: str | None,
                    force: bool = False) -> Generated:
    """
    Make C{client}'s portknock file: write the client's copy at C{output},
    then the server's copy, then register it (a new secret, numbers from
    1), all 0600.  A running daemon picks the new file up at the
    client's next HELLO; the old file stops working.  The state is
    written as its directory's owner (the client's copy as the caller).
    """
    owner = StateOwner(config.state_dir)
    store = open_store(config, create_key=True)
    try:
        with owner:
            refuse_existing(store.client(client), client, force)
            pool = ensure_pool(store, config)
        if ports > len(pool):
            raise ValueError(f"{ports} ports per knock, but the pool holds {len(pool)}")
        kf = generate(
            client, pool, knocks, ports, secrets.SystemRandom(),
            secrets.token_bytes(32), datetime.now(timezone.utc),
        )
        # The client's copy is written first, beside OUTPUT: if it cannot
        # be, nothing changed and the client's old file still works.  It
        # takes OUTPUT's place only once the server knows the new file, so
        # a server step that fails leaves the old one too.  None: no client
        # copy (knocker invite: the client fetches the server's by enrolling).
        if output is not None and (output.endswith(os.sep) or os.path.isdir(output)):
            raise ValueError(f"-o {output}: a folder; name the file, e.g. {client}.knock")
        staged = stage_private(output, format_knockfile(kf)) if output is not None else None
        try:
            server_copy = _register(config, owner, store, client, knocks, kf, pool)
        except BaseException:
            if staged is not None:
                discard_private(staged)
            raise
        if staged is not None:
            try:
                commit_private(staged, output)
            except OSError as error:  # the server has the new file: keep the client's
                raise OSError(f"{output}: {error.strerror}; the new file is kept as "
                              f"{staged}") from None
    finally:
        with owner:
            store.close()
    ordered, unordered = keyspace(len(pool), ports)
    return Generated(kf, output, server_copy, len(pool), ordered, unordered)


def _register(config, owner, store, client, knocks, kf, pool) -> str:
    """The server's side of a new file: its copy and counter; where the copy is."""
    with owner:
        if config.database:
            # Counter and sealed copy in one transaction, for every gateway.
            store.register_with_book(client, knocks, kf.secret, format_knockfile(kf))
            server_copy = f"{store.path} (sealed with {config.database_key_file})"
        else:
            book = ClientBook(config.state_dir, pool)
            # A daemon reads the server copy as it goes: until the new
            # counter is registered, nothing made for the old file (an
            # invitation's CONFIRM, a renewal's promotion) may meet the
            # new copy.
            store.cancel_offers(client)
            try:
                before = read_private(book.path(client))
            except FileNotFoundError:
                before = ""  # none: none to put back
            except (OSError, ValueError):
                before = None  # damaged (what --force mends): nothing worth putting back
            server_copy = book.add(kf)
            try:
                store.register(client, knocks, kf.secret)
            except BaseException:
                # The counter is the old file's still: so must the copy be,
                # or the old file, which the client keeps, stops working too.
                if before == "":
                    os.unlink(server_copy)
                elif before is not None:
                    write_private(server_copy, before)
                raise
    return server_copy


def open_store(config, create_key: bool = False):
    """
    The state a command works on, as the daemon finds it: the fleet's
    database when C{database} is set, else SQLite in C{state-dir} (opened
    as the directory's owner).
    """
    if config.database:
        return open_database(config, create_key=create_key)
    with StateOwner(config.state_dir):
        return SQLiteStore(config.state_dir)


def open_database(config, create_key: bool = False):
    """
    The fleet's database (C{database}, docs/fleet.md) for a command; with
    C{create_key}, C{database-key-file} is made (0600, 32 random bytes, by
    the caller for the state directory's owner) when it does not exist yet.
    """
    from knocker.state.interface import StateError
    from knocker.state.postgres import PostgresStore, load_key
    from knocker.state.postgres import create_key as make_key

    path = config.database_key_file
    owner = StateOwner(config.state_dir)
    if create_key and path and not os.path.exists(path):
        # A new key only for a new fleet: one made beside existing copies
        # would open none of them.
        probe = PostgresStore(config.database)
        try:
            sealed = probe.has_sealed_state()
        finally:
            probe.close()
        if sealed:
            raise StateError(
                f"database-key-file = {path} does not exist, but {probe.path} already holds "
                f"copies sealed under the fleet's key: copy that key file here "
                f"(a new key would open none of them)")
        # As the caller (its folder is root's as a rule: /etc/knocker), for
        # the state's owner, who reads it below and runs the daemon.
        make_key(path, (owner.uid, owner.gid) if owner.switching else None)
    with owner:
        key = load_key(path)
    store = PostgresStore(config.database, key)
    try:
        store.check_key()
    except StateError as error:
        store.close()
        raise StateError(f"database-key-file = {path}: {error}") from None
    return store


INVITATIONS_SHOWN = 7 * 86400
"""Invitations are listed until this long after they expired: their rows
stay (numbers are reused only when a draw lands on them), so listing all
would grow toward 900 lines."""


def status(config) -> dict:
    """
    What C{knocker status} shows: the pool, each client's knocks left and
    the lockouts in force, read from the state the daemon commits.
    """
    store = open_store(config)
    if config.database:
        return _status(config, store)
    with StateOwner(config.state_dir):
        return _status(config, store)


def _status(config, store) -> dict:
    now = time.time()
    try:
        pool = store.pool() or ()
        revoked = store.revoked()
        return {
            "state_dir": config.state_dir,
            "database": store.path if config.database else None,
            "pool_size": len(pool),
            "pool": list(pool),
            "clients": [
                {"client": c.client, "used": c.next_index - 1, "left": c.left, "knocks": c.knocks,
                 "revoked": revoked.get(c.client) == c.secret_id}
                for c in store.clients()
            ],
            "lockouts": store.lockouts(time.time()),
            "pending_closes": (store.all_pending_closes() if hasattr(store, "all_pending_closes")
                               else len(store.pending_closes())),
            "invitations": [
                {"slot": i.slot, "client": i.client, "state": i.state(now),
                 "expires": i.expires, "tries_left": i.tries - i.attempts}
                for i in store.invitations() if i.expires > now - INVITATIONS_SHOWN
            ],
        }
    finally:
        store.close()
