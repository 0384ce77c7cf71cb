"""
The coordinator and the central port with a store that answers later, as a
fleet's database does (knocker.daemon.fleet.ThreadedStore): the reply waits
for the lookup and the burn, a store that fails grants nothing, a client
that leaves meanwhile is not left holding a slot.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from knocker.core import handshake as hs
from knocker.state.interface import StateError
from tests.helpers.harness import Harness


class LaterStore:
    """
    The harness's store, its C{client} and C{burn} answering through
    L{Deferred}s: at once (C{held=False}) or when the test fires them.
    """

    def __init__(self, store):
        self._store = store
        self.held = False
        self.waiting: list[tuple[Deferred, object]] = []
        self.broken = False

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _later(self, function, *args):
        if self.broken:
            return fail(StateError("the database is gone"))
        if not self.held:
            return succeed(function(*args))
        d = Deferred()
        self.waiting.append((d, lambda: function(*args)))
        return d

    def release(self):
        """Answer the one call waiting (what it starts waits its turn)."""
        d, work = self.waiting.pop(0)
        d.callback(work())

    def client(self, client):
        return self._later(self._store.client, client)

    def burn(self, client, secret_id=None):
        return self._later(self._store.burn, client, secret_id)


def later_harness(case, **config) -> tuple[Harness, LaterStore]:
    h = Harness(case, **config)
    later = LaterStore(h.store)
    h.server._store = later
    return h, later


class LaterStoreTests(SynchronousTestCase):

    def test_grant_through_deferreds(self):
        h, later = later_harness(self)
        line, proto, transport, nonce = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        self.assertEqual(grant, hs.Grant(1, 10, hs.grant_mac(h.files["alice"].secret, "alice",
                                                              nonce, 1)))
        self.assertEqual(h.store.client("alice").next_index, 2)

    def test_reply_waits_for_the_store(self):
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        self.assertEqual(line, b"", "nothing before the state answered")
        later.release()  # the lookup
        later.release()  # the burn
        self.assertTrue(transport.value().startswith(b"GRANT 1 "))

    def test_store_gone_is_error_no_grant(self):
        h, later = later_harness(self)
        later.broken = True
        line, proto, transport, nonce = h.handshake()
        self.assertEqual(line, b"ERROR server-error\n")
        self.assertEqual(h.store.client("alice").next_index, 1)
        self.assertEqual(h.audit.of("error")[0]["reason"], "state")
        self.assertEqual(h.tracker_lockouts(), {}, "the server's fault locks nobody out")

    def test_other_gateway_burned_meanwhile(self):
        """
        Another gateway took the number read before the burn: this grant
        gets the next one, with that knock's ports.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()  # the lookup read next = 1
        h.store.burn("alice")  # another gateway takes 1
        later.release()
        grant = hs.parse_reply(transport.value().rstrip(b"\n"))
        self.assertEqual(grant.index, 2)
        transport.clear()
        for port in h.files["alice"].knock(2):
            h.hit("192.0.2.10", port)
        self.assertEqual(h.audit.of("open")[0]["index"], 2)

    def test_generated_again_before_the_burn_grants_nothing(self):
        """
        C{knocker generate --force} commits between the lookup and the
        burn: the burn takes no number from the new counter, and no GRANT
        goes out MAC'd with the old secret.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()  # the lookup: the old secret's counter
        h.store.register("alice", 5, bytes(32))  # generated again
        later.release()
        self.assertNotIn(b"GRANT", transport.value())
        self.assertEqual(h.store.client("alice").next_index, 1, "the new counter untouched")

    def test_book_changed_after_the_burn_grants_nothing(self):
        """
        The burn took a number of the proven secret, but the book holds
        another file by now: its ports are not the client's; no GRANT.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()
        h.server._book.held_secret_id = lambda client: "another file"
        later.release()
        self.assertNotIn(b"GRANT", transport.value())
        self.assertEqual(h.audit.of("error")[0]["reason"], "client-file")

    def test_client_gone_before_the_lookup_answered_burns_nothing(self):
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        proto.connectionLost(None)
        later.release()  # the lookup
        self.assertEqual(later.waiting, [], "no burn asked for")
        self.assertEqual(h.store.client("alice").next_index, 1)

    def test_client_left_while_burning(self):
        """
        A client that hangs up before the burn answers is not left with a
        slot that would time out and lock everyone out.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()
        proto.connectionLost(None)
        later.release()
        self.assertEqual(h.audit.of("fail")[0]["reason"], "abandoned")
        h.clock.advance(60)
        self.assertEqual(h.tracker_lockouts(), {})
        self.assertEqual(h.store.client("alice").next_index, 2, "the number stays burned")


class LaterCloseTests(SynchronousTestCase):
    """
    The record of a close before on-success, off the reactor: on-success
    waits for it, and does not run at all if it fails (fail closed).
    """

    def knock_to_completion(self, h):
        line, proto, transport, nonce = h.handshake()
        for port in h.files["alice"].knock(1):
            h.hit("192.0.2.10", port)
        return transport

    def test_on_success_waits_for_the_record(self):
        h, later = later_harness(self, on_close="/bin/true", open_duration=300)
        recorded = []
        real = h.store.add_close

        def add_close(*args):
            d = Deferred()
            recorded.append((d, args))
            return d

        later.add_close = add_close
        h.server.closes._store = later
        transport = self.knock_to_completion(h)
        self.assertEqual(h.runner.calls, [], "no on-success before the close is recorded")
        d, args = recorded.pop()
        d.callback(real(*args))
        self.assertEqual(len(h.runner.calls), 1)
        self.assertTrue(transport.value().endswith(b"OPEN\n"))
        self.assertEqual(len(h.store.pending_closes()), 1)

    def test_record_failed_no_on_success(self):
        h, later = later_harness(self, on_close="/bin/true", open_duration=300)
        later.add_close = lambda *args: fail(StateError("the database is gone"))
        h.server.closes._store = later
        transport = self.knock_to_completion(h)
        self.assertEqual(h.runner.calls, [], "fail closed: no door without its close")
        self.assertIn(b"FAIL action-failed", transport.value())
        self.assertEqual(h.audit.of("error")[-1]["reason"], "state")
        h.clock.advance(1000)
        self.assertEqual(h.runner.calls, [])
