"""
An L{IStore} in memory, for unit tests of everything above the state.
"""

from attrs import evolve
from zope.interface import implementer

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


@implementer(IStore)
class MemoryStore:
    def __init__(self):
        self._pool = None
        self._clients: dict[str, ClientState] = {}
        self._closes: dict[int, PendingClose] = {}
        self._next_close = 1
        self._lockouts: dict[str, float] = {}
        self._invitations: dict[int, Invitation] = {}
        self._pending: dict[str, ClientState] = {}
        self._revoked: dict[str, str] = {}
        self.path = "<memory>"

    def close(self) -> None:
        pass

    def pool(self):
        return self._pool

    def set_pool(self, ports) -> None:
        if self._pool is not None:
            raise StateError("the pool is drawn once and kept")
        self._pool = tuple(ports)

    def register(self, client, knocks, secret) -> None:
        self._clients[client] = ClientState(client, 1, knocks, secret_id(secret))
        self.cancel_offers(client)

    def cancel_offers(self, client) -> None:
        self._pending.pop(client, None)
        for slot, found in self._invitations.items():
            if found.client == client and not found.used and not found.cancelled:
                self._invitations[slot] = evolve(found, tries=0, attempts=0)

    def client(self, client):
        return self._clients.get(client)

    def clients(self):
        return [self._clients[name] for name in sorted(self._clients)]

    def burn(self, client, secret_id=None):
        state = self._clients.get(client)
        if state is None or state.next_index > state.knocks:
            return None
        if secret_id is not None and state.secret_id != secret_id:
            return None
        self._clients[client] = ClientState(
            client, state.next_index + 1, state.knocks, state.secret_id)
        return state.next_index

    def add_close(self, due, ip, client, index) -> int:
        close_id = self._next_close
        self._next_close += 1
        self._closes[close_id] = PendingClose(close_id, due, ip, client, index)
        return close_id

    def remove_close(self, close_id) -> None:
        self._closes.pop(close_id, None)

    def pending_closes(self):
        return sorted(self._closes.values(), key=lambda close: close.due)

    def set_lockout(self, key, until) -> None:
        self._lockouts[key] = until

    def save_lockouts(self, lockouts, steps=None) -> None:
        self._lockouts.update(lockouts)

    def lockouts(self, now):
        self.prune_lockouts(now)
        return dict(self._lockouts)

    def prune_lockouts(self, now, keep=MAX_LOCKOUT_ROWS) -> None:
        # As the SQL does: the C{keep} ending last, counted with the whole
        # server's, which is never dropped.
        kept = sorted(((u, k) for k, u in self._lockouts.items() if u > now), reverse=True)
        self._lockouts = {k: u for n, (u, k) in enumerate(kept) if n < keep or k == WHOLE_SERVER}

    # Invitations.

    def add_invitation(self, client, code, expires, tries, now) -> int:
        held = {i.slot for i in self._invitations.values() if now < i.expires}
        slot = free_slot(held)
        self._invitations[slot] = Invitation(slot, client, code, expires, tries, 0, False)
        return slot

    def invitation(self, slot):
        return self._invitations.get(slot)

    def invitations(self):
        return [self._invitations[slot] for slot in sorted(self._invitations)]

    def invitation_attempt(self, slot, now):
        found = self._invitations.get(slot)
        if found is None or found.state(now) != "open":
            return None
        found = self._invitations[slot] = evolve(found, attempts=found.attempts + 1)
        return found

    def use_invitation(self, slot, client, code, now) -> bool:
        found = self._invitations.get(slot)
        if (found is None or found.used or found.client != client or found.code != code
                or found.cancelled or now >= found.expires):
            return False
        self._invitations[slot] = evolve(found, used=True)
        return True

    # Renewal.

    def set_pending(self, client, knocks, secret, current_id=None) -> bool:
        state = self._clients.get(client)
        if current_id is not None and (state is None or state.secret_id != current_id
                                       or self._revoked.get(client) == current_id):
            return False
        self._pending[client] = ClientState(client, 1, knocks, secret_id(secret))
        return True

    def pending(self, client):
        return self._pending.get(client)

    def promote(self, client, wanted_id) -> bool:
        found = self._pending.get(client)
        if found is None or found.secret_id != wanted_id or client not in self._clients:
            return False
        if self._revoked.get(client) == self._clients[client].secret_id:
            del self._pending[client]
            return False
        self._clients[client] = self._pending.pop(client)
        return True

    def lift_lockouts(self, key=None) -> None:
        if key is None:
            self._lockouts.clear()
        else:
            self._lockouts.pop(key, None)

    def revoke(self, client) -> None:
        state = self._clients.get(client)
        if state is not None:
            self._revoked[client] = state.secret_id
            self.cancel_offers(client)

    def revoked(self):
        return dict(self._revoked)
