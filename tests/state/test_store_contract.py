"""
The L{IStore} contract (docs/spec.md sections 2 and 7), run against every
backend: what the daemon relies on, whichever holds the state.
"""

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from knocker.state.interface import (
    SLOTS,
    WHOLE_SERVER,
    ClientState,
    Invitation,  # section 10's part
    IStore,
    PendingClose,
    StateError,
    secret_id,
)
from knocker.state.memory import MemoryStore
from knocker.state.sqlite import SQLiteStore
from tests.helpers import postgres

SECRET = bytes(range(32))
NEW_SECRET = bytes(range(32, 64))


class StoreContract:
    """
    Tests every L{IStore} passes; a subclass supplies C{make_store}.
    """

    # What a second set_pool raises: IStore does not say, and the
    # backends differ.

    def make_store(self):
        raise NotImplementedError

    def setUp(self):
        self.store = self.make_store()

    def test_provides_istore(self):
        self.assertTrue(verifyObject(IStore, self.store))

    def test_verify_can_fail(self):
        """
        verifyObject refuses an object that lacks part of the interface, so
        the check above means something.
        """

        class NoBurn:
            pass

        for name in IStore.names():
            if name != "burn":
                setattr(NoBurn, name, getattr(type(self.store), name))
        self.assertRaises(Invalid, verifyObject, IStore, NoBurn(), tentative=True)

    # The pool.

    def test_pool_none_until_set(self):
        self.assertIsNone(self.store.pool())

    def test_pool_kept_in_order(self):
        self.store.set_pool([9000, 1025, 65535, 4000])
        self.assertEqual(self.store.pool(), (9000, 1025, 65535, 4000))

    def test_pool_is_set_once(self):
        self.store.set_pool((1025, 1026))
        self.assertRaises(StateError, self.store.set_pool, (2000, 2001))
        self.assertEqual(self.store.pool(), (1025, 1026))

    # Clients and their knock numbers.

    def test_unknown_client(self):
        self.assertIsNone(self.store.client("alice"))
        self.assertEqual(self.store.clients(), [])

    def test_register(self):
        self.store.register("alice", 1000, SECRET)
        state = self.store.client("alice")
        self.assertEqual(state, ClientState("alice", 1, 1000, secret_id(SECRET)))
        self.assertEqual(state.left, 1000)

    def test_clients_by_id(self):
        self.store.register("carol", 3, SECRET)
        self.store.register("alice", 5, SECRET)
        self.store.register("bob", 4, NEW_SECRET)
        self.assertEqual([state.client for state in self.store.clients()],
                         ["alice", "bob", "carol"])
        self.assertEqual(self.store.clients()[1], ClientState("bob", 1, 4, secret_id(NEW_SECRET)))

    def test_burn_counts_up_then_none(self):
        self.store.register("alice", 3, SECRET)
        self.assertEqual([self.store.burn("alice") for _ in range(5)], [1, 2, 3, None, None])

    def test_burn_updates_left(self):
        self.store.register("alice", 3, SECRET)
        self.store.burn("alice")
        state = self.store.client("alice")
        self.assertEqual((state.next_index, state.left), (2, 2))
        self.store.burn("alice")
        self.store.burn("alice")
        self.store.burn("alice")  # exhausted: changes nothing
        state = self.store.client("alice")
        self.assertEqual((state.next_index, state.left), (4, 0))

    def test_burn_only_from_the_proven_secrets_counter(self):
        """
        A burn given the secret the client proved takes nothing once the
        client was generated again (another secret, a counter from 1).
        """
        from knocker.state.interface import secret_id

        self.store.register("alice", 3, SECRET)
        proven = self.store.client("alice").secret_id
        self.assertEqual(self.store.burn("alice", proven), 1)
        self.store.register("alice", 3, bytes(32))
        self.assertIsNone(self.store.burn("alice", proven))
        self.assertEqual(self.store.client("alice").next_index, 1, "the new counter untouched")
        self.assertEqual(self.store.burn("alice", secret_id(bytes(32))), 1)

    def test_burn_unknown_client(self):
        self.assertIsNone(self.store.burn("mallory"))
        self.store.register("alice", 3, SECRET)
        self.assertIsNone(self.store.burn("mallory"))
        self.assertIsNone(self.store.client("mallory"), "burning does not create a client")
        self.assertEqual(self.store.burn("alice"), 1, "nor touch another's numbers")

    def test_clients_burn_separately(self):
        self.store.register("alice", 3, SECRET)
        self.store.register("bob", 3, NEW_SECRET)
        self.assertEqual(self.store.burn("alice"), 1)
        self.assertEqual(self.store.burn("alice"), 2)
        self.assertEqual(self.store.burn("bob"), 1)
        self.assertEqual(self.store.client("alice").next_index, 3)
        self.assertEqual(self.store.client("bob").next_index, 2)

    def test_register_again_restarts(self):
        """
        A regenerated file (new secret, maybe a new size) starts at knock 1,
        and its secret id tells the two files apart.
        """
        self.store.register("alice", 2, SECRET)
        self.store.burn("alice")
        self.store.burn("alice")
        self.assertIsNone(self.store.burn("alice"))
        self.store.register("alice", 5, NEW_SECRET)
        state = self.store.client("alice")
        self.assertEqual(state, ClientState("alice", 1, 5, secret_id(NEW_SECRET)))
        self.assertNotEqual(state.secret_id, secret_id(SECRET))
        self.assertEqual(self.store.burn("alice"), 1)
        self.assertEqual(len(self.store.clients()), 1)

    # Pending closes.

    def test_no_pending_closes(self):
        self.assertEqual(self.store.pending_closes(), [])

    def test_add_close(self):
        close_id = self.store.add_close(1030.5, "192.0.2.10", "alice", 7)
        self.assertEqual(
            self.store.pending_closes(), [PendingClose(close_id, 1030.5, "192.0.2.10", "alice", 7)]
        )

    def test_pending_closes_soonest_first(self):
        late = self.store.add_close(3000.0, "192.0.2.1", "alice", 1)
        soon = self.store.add_close(1000.0, "2001:db8::1", "bob", 2)
        middle = self.store.add_close(2000.0, "192.0.2.3", "carol", 3)
        self.assertEqual(len({late, soon, middle}), 3, "each close has its own id")
        pending = self.store.pending_closes()
        self.assertEqual([close.id for close in pending], [soon, middle, late])
        self.assertEqual([close.due for close in pending], [1000.0, 2000.0, 3000.0])
        self.assertEqual(pending[0], PendingClose(soon, 1000.0, "2001:db8::1", "bob", 2))

    def test_remove_close(self):
        first = self.store.add_close(1000.0, "192.0.2.1", "alice", 1)
        second = self.store.add_close(2000.0, "192.0.2.2", "bob", 2)
        self.store.remove_close(first)
        self.assertEqual([close.id for close in self.store.pending_closes()], [second])
        self.store.remove_close(first)  # again: already gone, no harm
        self.assertEqual([close.id for close in self.store.pending_closes()], [second])
        self.store.remove_close(second)
        self.assertEqual(self.store.pending_closes(), [])

    # Lockouts.

    def test_no_lockouts(self):
        self.assertEqual(self.store.lockouts(0.0), {})

    def test_lockouts_in_force(self):
        self.store.set_lockout("*", 1060.0)
        self.store.set_lockout("192.0.2.1", 1030.0)
        self.assertEqual(self.store.lockouts(1000.0), {"*": 1060.0, "192.0.2.1": 1030.0})

    def test_expired_lockouts_dropped(self):
        self.store.set_lockout("*", 1060.0)
        self.store.set_lockout("192.0.2.1", 1030.0)
        self.assertEqual(self.store.lockouts(1030.0), {"*": 1060.0}, "ends at its until")
        self.assertEqual(self.store.lockouts(1059.9), {"*": 1060.0})
        self.assertEqual(self.store.lockouts(1060.0), {})
        self.assertEqual(self.store.lockouts(0.0), {}, "dropped for good, not hidden")

    def test_pruning_forgets_ended_lockouts_and_keeps_the_latest(self):
        self.store.save_lockouts({f"198.51.100.{n}": 1000.0 + n for n in range(10)})
        self.store.prune_lockouts(1004.0)
        self.assertEqual(self.store.lockouts(0.0), {f"198.51.100.{n}": 1000.0 + n
                                                    for n in range(5, 10)}, "ended ones gone")
        self.store.prune_lockouts(0.0, keep=2)
        self.assertEqual(self.store.lockouts(0.0), {"198.51.100.8": 1008.0,
                                                    "198.51.100.9": 1009.0}, "ending last kept")

    def test_pruning_never_pushes_out_the_whole_servers_lockout(self):
        """
        A flood of sources locked out for longer (escalated) than the whole
        server is does not make room by dropping the whole server's row: a
        restart, or another gateway reading the state, would lift it.
        """
        self.store.set_lockout(WHOLE_SERVER, 1060.0)
        self.store.save_lockouts({f"198.51.100.{n}": 2000.0 + n for n in range(5)})
        self.store.prune_lockouts(1000.0, keep=2)
        self.assertEqual(self.store.lockouts(1000.0), {WHOLE_SERVER: 1060.0,
                                                       "198.51.100.3": 2003.0,
                                                       "198.51.100.4": 2004.0})

    def test_pruning_counts_the_whole_servers_lockout_among_those_kept(self):
        """Every store keeps the same rows: the whole server's ending last takes a place."""
        self.store.set_lockout(WHOLE_SERVER, 3000.0)
        self.store.save_lockouts({f"198.51.100.{n}": 2000.0 + n for n in range(5)})
        self.store.prune_lockouts(1000.0, keep=2)
        self.assertEqual(self.store.lockouts(1000.0), {WHOLE_SERVER: 3000.0,
                                                       "198.51.100.4": 2004.0})
        self.store.prune_lockouts(1000.0, keep=0)
        self.assertEqual(self.store.lockouts(1000.0), {WHOLE_SERVER: 3000.0})

    def test_whole_server_is_the_trackers_key(self):
        from knocker.core.tracker import GLOBAL

        self.assertEqual(WHOLE_SERVER, GLOBAL)

    def test_set_lockout_replaces(self):
        self.store.set_lockout("*", 1060.0)
        self.store.set_lockout("*", 1120.0)
        self.assertEqual(self.store.lockouts(1000.0), {"*": 1120.0})
        self.assertEqual(self.store.lockouts(1100.0), {"*": 1120.0})

    # The operator's changes (knocker unlock and revoke, the console).

    def test_lift_one_lockout(self):
        self.store.save_lockouts({"198.51.100.1": 2000.0, "198.51.100.2": 2000.0})
        self.store.lift_lockouts("198.51.100.1")
        self.assertEqual(self.store.lockouts(1000.0), {"198.51.100.2": 2000.0})

    def test_lift_every_lockout(self):
        self.store.set_lockout("*", 2000.0)
        self.store.save_lockouts({"198.51.100.1": 2000.0})
        self.store.lift_lockouts()
        self.assertEqual(self.store.lockouts(1000.0), {})

    def test_revoke(self):
        self.store.register("alice", 3, SECRET)
        self.store.register("bob", 3, SECRET)
        self.assertEqual(self.store.revoked(), {})
        self.store.revoke("alice")
        self.store.revoke("alice")  # twice is once
        self.store.revoke("mallory")  # no such client: nothing
        self.assertEqual(self.store.revoked(), {"alice": secret_id(SECRET)})
        self.assertEqual(self.store.client("alice").left, 3, "the counter is left alone")

    def test_revocation_names_the_file(self):
        self.store.register("alice", 3, SECRET)
        self.store.revoke("alice")
        self.store.register("alice", 3, NEW_SECRET)
        self.assertEqual(self.store.revoked(), {"alice": secret_id(SECRET)},
                         "the old file stays revoked; the new one has another secret")

class InvitationContract:
    """
    The invitation part of L{IStore} (docs/spec.md section 10), kept apart
    so a new backend can take it on by itself.
    """

    def test_none_at_first(self):
        self.assertIsNone(self.store.invitation(1))
        self.assertEqual(self.store.invitations(), [])

    def test_add_and_read(self):
        slot = self.store.add_invitation("alice", "crossover-clockwork", 2000.0, 3, 1000.0)
        self.assertIn(slot, SLOTS)
        found = self.store.invitation(slot)
        self.assertEqual(found, Invitation(slot, "alice", "crossover-clockwork", 2000.0, 3, 0, False))
        self.assertEqual(found.state(1999.0), "open")
        self.assertEqual(found.state(2000.0), "expired")
        self.assertEqual(self.store.invitations(), [found])

    def fill_slots(self, now: float, expires: float = 9000.0) -> list[int]:
        """Invitations on every three-digit slot still free at C{now}."""
        held = {i.slot for i in self.store.invitations() if now < i.expires}
        return [self.store.add_invitation("filler", "f", expires, 3, now)
                for _ in range(len(SLOTS) - len(held & set(SLOTS)))]

    def test_slots_are_drawn_among_the_free_three_digit_ones(self):
        """
        Drawn at random, so a stranger sending wrong codes to small numbers
        does not hit (and void) the invitation just made.
        """
        add = self.store.add_invitation
        first = [add("a", "x", 2000.0, 3, 1000.0) for _ in range(3)]
        self.assertEqual(len(set(first)), 3, "distinct")
        self.assertTrue(set(first) <= set(SLOTS))
        self.assertNotEqual(first, [SLOTS[0], SLOTS[1], SLOTS[2]], "not counted up (1 in 7e8)")
        filled = self.fill_slots(1000.0)
        self.assertEqual(sorted(first + filled), list(SLOTS), "every free one, once")
        self.assertGreaterEqual(add("b", "y", 2000.0, 3, 1000.0), 1000, "900 open: four digits")

    def test_a_slot_is_free_again_only_once_expired(self):
        """
        A used or void invitation's code is known to someone (its user, or
        whoever tried it): its number is held until it expires, so that a
        try with that code cannot spend a try of a new invitation.
        """
        add = self.store.add_invitation
        used = add("a", "x", 2000.0, 3, 1000.0)
        voided = add("c", "z", 2000.0, 1, 1000.0)
        expiring = add("b", "y", 1500.0, 3, 1000.0)
        self.assertTrue(self.store.use_invitation(used, "a", "x", 1000.0))
        self.store.invitation_attempt(voided, 1000.0)
        self.assertEqual(self.store.invitation(voided).state(1000.0), "void")
        filled = self.fill_slots(1000.0)
        self.assertEqual(len(filled), len(SLOTS) - 3)
        self.assertEqual(add("e", "v", 3000.0, 3, 1600.0), expiring, "expired: freed")
        self.assertEqual(self.store.invitation(expiring).client, "e")
        self.assertGreaterEqual(add("f", "u", 3000.0, 3, 1600.0), 1000, "used and void: held")
        self.assertIn(add("g", "t", 3000.0, 3, 2000.0), {used, voided}, "freed once expired")

    def test_used_once(self):
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        self.assertTrue(self.store.use_invitation(slot, "alice", "x", 1000.0))
        self.assertFalse(self.store.use_invitation(slot, "alice", "x", 1000.0))
        self.assertEqual(self.store.invitation(slot).state(1000.0), "used")
        self.assertFalse(self.store.use_invitation(99, "alice", "x", 1000.0))

    def test_used_only_by_its_client_before_it_expires(self):
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        self.assertFalse(self.store.use_invitation(slot, "bob", "x", 1000.0), "another client")
        self.assertFalse(self.store.use_invitation(slot, "alice", "x", 2000.0), "expired")
        self.assertFalse(self.store.invitation(slot).used)
        self.assertTrue(self.store.use_invitation(slot, "alice", "x", 1999.0))

    def test_used_only_with_its_own_code(self):
        """
        The slot of an expired invitation is given again, here to the same
        client: an exchange that took a try of the old one (its code) does
        not use the new one.
        """
        old = self.store.add_invitation("alice", "old code", 1500.0, 3, 1000.0)
        self.fill_slots(1000.0)
        new = self.store.add_invitation("alice", "new code", 3000.0, 3, 1600.0)
        self.assertEqual(new, old, "the expired one's slot, given again")
        self.assertFalse(self.store.use_invitation(new, "alice", "old code", 1600.0))
        self.assertFalse(self.store.invitation(new).used)
        self.assertTrue(self.store.use_invitation(new, "alice", "new code", 1600.0))

    def test_tries_run_out(self):
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        self.assertEqual(self.store.invitation_attempt(slot, 1000.0).attempts, 1)
        self.assertEqual(self.store.invitation_attempt(slot, 1000.0).state(1000.0), "open")
        third = self.store.invitation_attempt(slot, 1000.0)
        self.assertEqual((third.attempts, third.state(1000.0)), (3, "void"))
        self.assertIsNone(self.store.invitation_attempt(slot, 1000.0), "no fourth")
        self.assertEqual(self.store.invitation(slot).attempts, 3)
        self.assertTrue(self.store.use_invitation(slot, "alice", "x", 1000.0), "the third try may still succeed")
        self.assertIsNone(self.store.invitation_attempt(42, 1000.0))

    def test_interleaved_attempts_each_learn_whether_they_counted(self):
        """
        Connections that all read the invitation before any takes a try (as
        parallel ENROLLs do): only TRIES of them are told they counted, the
        others get None, whatever they read before.
        """
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        seen = [self.store.invitation(slot) for _ in range(5)]
        self.assertEqual({each.attempts for each in seen}, {0})
        counted = [self.store.invitation_attempt(slot, 1000.0) for _ in seen]
        self.assertEqual([each and each.attempts for each in counted], [1, 2, 3, None, None])
        self.assertEqual(self.store.invitation(slot).attempts, 3)

    def test_no_attempt_once_used_or_expired(self):
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        self.assertIsNone(self.store.invitation_attempt(slot, 2000.0), "expired")
        self.assertEqual(self.store.invitation(slot).attempts, 0)
        self.assertTrue(self.store.use_invitation(slot, "alice", "x", 1000.0))
        self.assertIsNone(self.store.invitation_attempt(slot, 1000.0), "used")
        self.assertEqual(self.store.invitation(slot).attempts, 0)

    def test_a_new_file_cancels_the_unused_invitations(self):
        """
        C{invite --force}, C{generate --force}: an earlier code must not
        fetch the new file, not even from an exchange begun before.
        """
        self.store.register("alice", 3, SECRET)
        first = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        begun = self.store.add_invitation("alice", "y", 2000.0, 3, 1000.0)
        used = self.store.add_invitation("alice", "z", 2000.0, 3, 1000.0)
        other = self.store.add_invitation("bob", "w", 2000.0, 3, 1000.0)
        self.assertIsNotNone(self.store.invitation_attempt(begun, 1000.0))
        self.assertTrue(self.store.use_invitation(used, "alice", "z", 1000.0))
        self.store.register("alice", 3, NEW_SECRET)
        self.assertEqual([self.store.invitation(slot).state(1000.0)
                          for slot in (first, begun, used, other)],
                         ["void", "void", "used", "open"])
        self.assertEqual(self.store.invitation(first).tries - self.store.invitation(first).attempts, 0)
        self.assertIsNone(self.store.invitation_attempt(first, 1000.0))
        self.assertFalse(self.store.use_invitation(begun, "alice", "y", 1000.0), "begun before")
        self.assertTrue(self.store.use_invitation(other, "bob", "w", 1000.0))

    def test_cancelling_offers_before_a_new_copy_is_written(self):
        """
        C{generate --force} cancels what was made for the file it replaces
        before it writes the new server copy: the unused invitations and the
        pending renewal; the counter stays until the new one is registered.
        """
        self.store.register("alice", 3, SECRET)
        self.store.set_pending("alice", 5, NEW_SECRET)
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        other = self.store.add_invitation("bob", "w", 2000.0, 3, 1000.0)
        self.store.cancel_offers("alice")
        self.assertEqual(self.store.invitation(slot).state(1000.0), "void")
        self.assertFalse(self.store.use_invitation(slot, "alice", "x", 1000.0))
        self.assertIsNone(self.store.pending("alice"))
        self.assertEqual(self.store.client("alice").secret_id, secret_id(SECRET))
        self.assertEqual(self.store.invitation(other).state(1000.0), "open")

    def test_revoking_cancels_the_unused_invitations(self):
        self.store.register("alice", 3, SECRET)
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        self.store.revoke("alice")
        self.assertEqual(self.store.invitation(slot).state(1000.0), "void")
        self.assertFalse(self.store.use_invitation(slot, "alice", "x", 1000.0))

    def test_a_cancelled_slot_is_held_until_it_expires(self):
        """So the old code is told void, not tried against the new invitation."""
        self.store.register("alice", 3, SECRET)
        old = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        self.store.register("alice", 3, NEW_SECRET)
        new = self.store.add_invitation("alice", "y", 5000.0, 3, 1000.0)
        self.fill_slots(1000.0)
        self.assertNotEqual(old, new)
        self.assertEqual(self.store.invitation(old).code, "x")
        self.assertEqual(self.store.add_invitation("bob", "z", 5000.0, 3, 2000.0), old, "expired")


class RenewalContract:
    """
    The pending generations of L{IStore} (docs/spec.md section 10).
    """

    def test_none_pending_at_first(self):
        self.store.register("alice", 9, SECRET)
        self.assertIsNone(self.store.pending("alice"))
        self.assertFalse(self.store.promote("alice", secret_id(NEW_SECRET)))

    def test_promote_makes_it_current_from_one(self):
        self.store.register("alice", 9, SECRET)
        for _ in range(6):
            self.store.burn("alice")
        self.store.set_pending("alice", 12, NEW_SECRET)
        self.assertEqual(self.store.pending("alice"),
                         ClientState("alice", 1, 12, secret_id(NEW_SECRET)))
        self.assertEqual(self.store.client("alice").next_index, 7, "current untouched")
        self.assertFalse(self.store.promote("alice", secret_id(SECRET)), "only the pending one")
        self.assertTrue(self.store.promote("alice", secret_id(NEW_SECRET)))
        self.assertEqual(self.store.client("alice"),
                         ClientState("alice", 1, 12, secret_id(NEW_SECRET)))
        self.assertIsNone(self.store.pending("alice"))
        self.assertFalse(self.store.promote("alice", secret_id(NEW_SECRET)), "once")

    def test_set_pending_only_for_the_current_file_when_asked(self):
        """
        A file drawn to renew one generation is not kept once the client
        was generated again meanwhile (nor for a client that is gone).
        """
        self.store.register("alice", 9, SECRET)
        self.assertFalse(self.store.set_pending("alice", 9, NEW_SECRET,
                                                current_id=secret_id(NEW_SECRET)))
        self.assertIsNone(self.store.pending("alice"))
        self.assertFalse(self.store.set_pending("nobody", 9, NEW_SECRET,
                                                current_id=secret_id(SECRET)))
        self.assertIsNone(self.store.pending("nobody"))
        self.assertTrue(self.store.set_pending("alice", 9, NEW_SECRET,
                                               current_id=secret_id(SECRET)))
        self.assertEqual(self.store.pending("alice").secret_id, secret_id(NEW_SECRET))
        self.assertTrue(self.store.set_pending("alice", 5, NEW_SECRET,
                                               current_id=secret_id(SECRET)))
        self.assertEqual(self.store.pending("alice").knocks, 5, "replaced, when current")

    def test_set_pending_not_for_a_revoked_file_when_asked(self):
        self.store.register("alice", 9, SECRET)
        self.store.revoke("alice")
        self.assertFalse(self.store.set_pending("alice", 9, NEW_SECRET,
                                                current_id=secret_id(SECRET)))
        self.assertIsNone(self.store.pending("alice"))

    def test_set_pending_replaces(self):
        self.store.register("alice", 9, SECRET)
        self.store.set_pending("alice", 9, NEW_SECRET)
        self.store.set_pending("alice", 5, SECRET)
        self.assertEqual(self.store.pending("alice").knocks, 5)

    def test_revoking_forgets_pending(self):
        self.store.register("alice", 9, SECRET)
        self.store.set_pending("alice", 9, NEW_SECRET)
        self.store.revoke("alice")
        self.assertIsNone(self.store.pending("alice"))
        self.assertFalse(self.store.promote("alice", secret_id(NEW_SECRET)))
        self.assertEqual(self.store.client("alice").secret_id, secret_id(SECRET))

    def test_no_promotion_while_revoked(self):
        """A renewal drawn as the revocation came is dropped, not promoted."""
        self.store.register("alice", 9, SECRET)
        self.store.revoke("alice")
        self.store.set_pending("alice", 9, NEW_SECRET)
        self.assertFalse(self.store.promote("alice", secret_id(NEW_SECRET)))
        self.assertIsNone(self.store.pending("alice"))
        self.assertEqual(self.store.client("alice").secret_id, secret_id(SECRET))
        self.assertEqual(self.store.revoked(), {"alice": secret_id(SECRET)})

    def test_register_forgets_pending(self):
        self.store.register("alice", 9, SECRET)
        self.store.set_pending("alice", 9, NEW_SECRET)
        self.store.register("alice", 9, SECRET)
        self.assertIsNone(self.store.pending("alice"))


class DurableContract:
    """
    What a store on disk keeps when it is closed and opened again
    (C{reopen}): the memory store has no such thing.
    """

    def test_invitation_kept_across_reopening(self):
        slot = self.store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        self.store.invitation_attempt(slot, 1000.0)
        store = self.reopen()
        self.assertEqual(store.invitation(slot), Invitation(slot, "alice", "x", 2000.0, 3, 1, False))

    def test_revocation_survives_reopening(self):
        self.store.register("alice", 3, SECRET)
        self.store.revoke("alice")
        store = self.reopen()
        self.assertEqual(store.revoked(), {"alice": secret_id(SECRET)})


class MemoryStoreContractTests(StoreContract, InvitationContract, RenewalContract,
                               SynchronousTestCase):

    def make_store(self):
        return MemoryStore()


class SQLiteStoreContractTests(StoreContract, InvitationContract, RenewalContract,
                               DurableContract, SynchronousTestCase):

    def make_store(self):
        state_dir = self.mktemp()
        store = SQLiteStore(state_dir)
        self.addCleanup(store.close)
        self.assertTrue(os.path.exists(os.path.join(state_dir, "state.sqlite")))
        self.state_dir = state_dir
        return store

    def reopen(self):
        self.store.close()
        store = self.store = SQLiteStore(self.state_dir)
        self.addCleanup(store.close)
        return store



class PostgresStoreContractTests(StoreContract, InvitationContract, RenewalContract,
                                 DurableContract, SynchronousTestCase):
    """
    The same contract on a real PostgreSQL (tests/helpers/postgres.py):
    one database per test.
    """

    skip = postgres.skip_reason()

    def make_store(self):
        from knocker.state.postgres import PostgresStore

        self.uri = postgres.database_for(self)
        store = PostgresStore(self.uri, key=bytes(32), gateway="g1")
        self.addCleanup(store.close)
        return store

    def reopen(self):
        from knocker.state.postgres import PostgresStore

        self.store.close()
        store = self.store = PostgresStore(self.uri, key=bytes(32), gateway="g1")
        self.addCleanup(store.close)
        return store
