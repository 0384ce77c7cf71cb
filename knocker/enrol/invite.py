"""
C{knocker invite CLIENT} and the console's Invite: create the client as
C{knocker generate} does (the server's copy only) and an invitation for
it in the state; the code shown is the only way to its file.

L{check_invite} and L{open_invitation} are shared by both;
L{invite_client} works on the state directory (the command),
L{invite_in} on the running daemon's own store and book (the console),
so the daemon serves the new client's file at once.
"""

import json
import math
import os
import secrets
import time
from datetime import datetime, timezone

from attrs import frozen

from knocker.enrol.server import TRIES
from knocker.enrol.words import format_code, new_words

DEFAULT_EXPIRES = 3600
MAX_EXPIRES = 30 * 86400
"""The longest an invitation may stay open (30 days): a code is for handing
over a file now, and a bound keeps every expiry a time that can be shown."""


@frozen
class Invited:
    code: str
    slot: int
    expires: float
    server_copy: str


def check_invite(client: str, expires: float) -> None:
    """
    Called before anything changes, so a refused invitation leaves no
    client behind.

    @raise ValueError: C{client} is not a valid id, or C{expires} is not
        a number of seconds above 0 and at most L{MAX_EXPIRES} (the
        message says which, and names the value).
    """
    from knocker.core.knockfile import valid_client_id

    if not valid_client_id(client):
        raise ValueError(f"client id {client!r} must match [a-z0-9][a-z0-9_.-]{{0,63}}")
    if not (math.isfinite(expires) and 0 < expires <= MAX_EXPIRES):
        raise ValueError(f"--expires is {expires:g} seconds: it must be more than 0 and at "
                         f"most {MAX_EXPIRES} (30 days)")


def open_invitation(store, client: str, expires: float, now: float,
                    server_copy: str) -> Invited:
    """An invitation for C{client} in C{store}, open C{expires} seconds."""
    words = new_words()
    slot = store.add_invitation(client, words, now + expires, TRIES, now)
    return Invited(format_code(slot, words), slot, now + expires, server_copy)


def invite_client(config, client: str, knocks: int, ports: int, expires: float = DEFAULT_EXPIRES,
                  force: bool = False) -> Invited:
    """
    @raise knocker.admin.clients.ClientExists: the client is registered
        and C{force} is not set.
    """
    from knocker.admin.clients import generate_client, open_store
    from knocker.admin.owner import StateOwner

    check_invite(client, expires)
    done = generate_client(config, client, knocks, ports, None, force=force)
    owner = StateOwner(config.state_dir)
    now = time.time()
    # The state the daemon uses: SQLite in state-dir, or a fleet's database
    # (the code sealed there), so any gateway of the fleet can enrol it.
    store = open_store(config)
    with owner:
        try:
            invited = open_invitation(store, client, expires, now, done.server_copy)
        finally:
            store.close()
        if config.audit_log:
            append_event(config.audit_log, "invite", client=client, slot=invited.slot,
                         expires=invited.expires)
    return invited


def invite_in(store, book, client: str, knocks: int, ports: int, expires: float,
              force: bool, now: float) -> Invited:
    """
    L{invite_client} inside the daemon: C{store} and C{book} are its own
    (SQLite and L{knocker.state.book.ClientBook}, or a fleet's
    L{knocker.state.postgres.PostgresStore} and
    L{knocker.daemon.fleet.DatabaseBook}, called from a database thread).
    Blocking: L{draw_file}, then L{keep_invited}.

    The caller has passed C{client} and C{expires} through L{check_invite}
    (L{knocker.daemon.coordinator.KnockServer.invite} does, for every store).

    @raise knocker.admin.clients.ClientExists: the client is registered
        and C{force} is not set.
    @raise ValueError: more C{ports} a knock than the pool holds.
    """
    from knocker.admin.clients import refuse_existing

    refuse_existing(store.client(client), client, force)  # before the work of drawing
    kf = draw_file(client, store.pool() or (), knocks, ports)
    return keep_invited(store, book, kf, expires, force, now)


def draw_file(client: str, pool, knocks: int, ports: int):
    """
    A new portknock file for C{client} (CPU only, no state: a thread may
    draw it; a million knocks take seconds).

    @raise ValueError: more C{ports} a knock than C{pool} holds, or no knock.
    """
    from knocker.core.knockgen import generate

    if not 0 < ports <= len(pool):
        raise ValueError(f"{ports} ports per knock, but the pool holds {len(pool)}")
    if knocks < 1:
        raise ValueError("knocks must be at least 1")
    return generate(client, tuple(pool), knocks, ports, secrets.SystemRandom(),
                    secrets.token_bytes(32), datetime.now(timezone.utc))


def keep_invited(store, book, kf, expires: float, force: bool, now: float) -> Invited:
    """
    C{kf} registered in C{store} and C{book} (replacing the client only
    with C{force}, checked again: it may have been made meanwhile), and an
    invitation for it.
    """
    from knocker.admin.clients import refuse_existing
    from knocker.core.knockgen import format_knockfile

    client = kf.client
    refuse_existing(store.client(client), client, force)
    if hasattr(store, "register_with_book"):
        # A fleet: counter and sealed copy in one transaction, every gateway.
        store.register_with_book(client, len(kf.knocks), kf.secret, format_knockfile(kf))
        book.refresh(client)
    else:
        # As generate_client does (there another process may take a CONFIRM
        # in between; here the reactor cannot, but the order is one).
        store.cancel_offers(client)
        book.add(kf)
        store.register(client, len(kf.knocks), kf.secret)
    return open_invitation(store, client, expires, now, book.path(client))


def append_event(path: str, event: str, **fields) -> None:
    """
    One audit line from a command, appended in one write as the daemon
    does (L{knocker.daemon.audit}), so the two never tear each other's.
    """
    from knocker.core.isotime import iso_time

    line = json.dumps({"time": iso_time(time.time()), "event": event, **fields},
                      separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)
