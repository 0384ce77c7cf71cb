"""
What the daemon and the commands need of the durable state (docs/spec.md
sections 2 and 7), whatever holds it, and the values that cross it.

Every change is durable when the call returns, so the caller may act on
it: above all, L{IStore.burn} has made the number unusable before anyone
sends GRANT.
"""

import hashlib

from attrs import frozen
from zope.interface import Interface


class StateError(Exception):
    """
    The state cannot be used; the message says why.
    """


def secret_id(secret: bytes) -> str:
    """
    Names a secret without revealing it: which portknock file a counter
    belongs to, so a regenerated file is noticed by a running daemon.
    """
    return hashlib.sha256(b"knocker secret id|" + secret).hexdigest()[:32]


@frozen
class ClientState:
    client: str
    next_index: int
    knocks: int
    secret_id: str

    @property
    def left(self) -> int:
        return self.knocks - self.next_index + 1


@frozen
class PendingClose:
    id: int
    due: float
    ip: str
    client: str
    index: int


class IStore(Interface):
    """
    The server's state: the pool, each client's next knock number, pending
    close actions and lockouts that outlive a restart.
    """

    def close():
        """Let go of the state (the daemon is stopping)."""

    def pool():
        """The pool as a tuple of ports, or C{None} before it is drawn."""

    def set_pool(ports):
        """Keep the pool, once, for good; a second call raises L{StateError}."""

    def register(client, knocks, secret):
        """Start C{client} at knock 1 of C{knocks} of the file with C{secret}."""

    def client(client):
        """C{client}'s L{ClientState}, or C{None}."""

    def clients():
        """Every L{ClientState}, by id."""

    def burn(client, secret_id=None):
        """
        Take C{client}'s next knock number for good and return it, or
        C{None} when every number is used (or, given C{secret_id}, when the
        counter belongs to another secret now); durable before it returns.
        """

    def add_close(due, ip, client, index):
        """Record a pending close; return its id."""

    def remove_close(close_id):
        """Forget a close that has run."""

    def pending_closes():
        """Every L{PendingClose}, soonest first."""

    def set_lockout(key, until):
        """Keep a lockout of C{key} until C{until} (wall time)."""

    def save_lockouts(lockouts, steps=None):
        """
        Keep every C{{key: until}} of C{lockouts}; C{steps} (C{{key:
        step}}), the escalation steps, may be kept too (a fleet's database
        does, for the other gateways).
        """

    def lockouts(now):
        """The lockouts still in force at C{now}: C{{key: until}}."""

    # The operator's changes (the console, knocker unlock and revoke).

    def lift_lockouts(key=None):
        """Forget the lockout of C{key} (every lockout with C{None}), for good."""

    def revoke(client):
        """
        Revoke C{client}'s current file: keep its C{secret_id}, for good (a
        new file, with a new secret, is not revoked).
        """

    def revoked():
        """C{{client: secret_id}} of every revoked file."""
