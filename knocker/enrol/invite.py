"""
C{knocker invite CLIENT}: create the client as C{knocker generate} does
(the server's copy only) and an invitation for it in the state; the code
printed is the only way to its file.
"""

import json
import os
import time

from attrs import frozen

from knocker.enrol.server import TRIES
from knocker.enrol.words import format_code, new_words

DEFAULT_EXPIRES = 3600


@frozen
class Invited:
    code: str
    slot: int
    expires: float
    server_copy: str


def invite_client(config, client: str, knocks: int, ports: int, expires: float = DEFAULT_EXPIRES,
                  force: bool = False) -> Invited:
    """
    @raise knocker.admin.clients.ClientExists: the client is registered
        and C{force} is not set.
    """
    from knocker.admin.clients import generate_client, open_store
    from knocker.admin.owner import StateOwner

    done = generate_client(config, client, knocks, ports, None, force=force)
    words = new_words()
    owner = StateOwner(config.state_dir)
    now = time.time()
    # The state the daemon uses: SQLite in state-dir, or a fleet's database
    # (the code sealed there), so any gateway of the fleet can enrol it.
    store = open_store(config)
    with owner:
        try:
            slot = store.add_invitation(client, words, now + expires, TRIES, now)
        finally:
            store.close()
        if config.audit_log:
            append_event(config.audit_log, "invite", client=client, slot=slot,
                         expires=now + expires)
    return Invited(format_code(slot, words), slot, now + expires, done.server_copy)


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
