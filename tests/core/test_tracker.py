"""
The sequence tracker under a fake clock (docs/spec.md section 5).
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.tracker import GLOBAL, HitVerdict, Policy, Tracker

A, B = "192.0.2.1", "192.0.2.2"
PORTS = (8101, 8102, 8103)


class Recorder:
    """
    Records what the tracker tells its observer.
    """

    def __init__(self):
        self.completed, self.failed, self.lockouts, self.details = [], [], [], []
        self.tracker = None

    def knock_completed(self, slot):
        self.completed.append(slot)

    def knock_failed(self, slot, reason):
        self.failed.append((slot.ip, slot.index, reason))

    def lockout_started(self, lockout):
        self.lockouts.append((lockout.key, lockout.until, lockout.reason, lockout.ip))
        self.details.append(lockout)


def make(scope="global", window=10, lockout=60, slots=1):
    clock = Clock()
    clock.advance(1000)
    seen = Recorder()
    tracker = Tracker(clock, Policy(window, lockout, scope, slots), seen)
    return clock, tracker, seen


class RightKnockTests(SynchronousTestCase):
    def test_ports_in_order_complete(self):
        clock, tracker, seen = make()
        tracker.grant(A, "alice", 1, PORTS)
        outcomes = []
        for port in PORTS:
            clock.advance(1)
            outcomes.append(tracker.hit(A, port))
        self.assertEqual(outcomes, [HitVerdict.PROGRESS, HitVerdict.PROGRESS, HitVerdict.COMPLETE])
        self.assertEqual([s.index for s in seen.completed], [1])
        self.assertEqual((seen.failed, seen.lockouts), ([], []))

    def test_completed_slot_holds_until_released(self):
        """
        While the success action runs, the slot still counts (others get
        BUSY); releasing it frees the server, and the window timer no longer
        fires.
        """
        clock, tracker, seen = make()
        slot = tracker.grant(A, "alice", 1, PORTS)
        for port in PORTS:
            tracker.hit(A, port)
        self.assertEqual(tracker.refusal(B).kind, "busy")
        tracker.release(slot)
        self.assertIsNone(tracker.refusal(B))
        clock.advance(100)
        self.assertEqual((seen.failed, seen.lockouts), ([], []))

    def test_last_hit_just_inside_window(self):
        clock, tracker, seen = make(window=10)
        tracker.grant(A, "alice", 1, PORTS)
        tracker.hit(A, PORTS[0])
        tracker.hit(A, PORTS[1])
        clock.advance(9.999)
        self.assertEqual(tracker.hit(A, PORTS[2]), HitVerdict.COMPLETE)


class WrongKnockTests(SynchronousTestCase):
    def test_wrong_port_fails_and_locks_out(self):
        clock, tracker, seen = make()
        tracker.grant(A, "alice", 1, PORTS)
        tracker.hit(A, PORTS[0])
        self.assertEqual(tracker.hit(A, PORTS[2]), HitVerdict.WRONG_PORT)
        self.assertEqual(seen.failed, [(A, 1, "wrong-port")])
        self.assertEqual([(k, r, ip) for k, _, r, ip in seen.lockouts], [(GLOBAL, "wrong-port", A)])
        self.assertEqual(tracker.refusal(A).kind, "locked")
        self.assertEqual(tracker.refusal(A).retry_after, 60)

    def test_repeated_port_is_wrong(self):
        clock, tracker, seen = make()
        tracker.grant(A, "alice", 1, PORTS)
        tracker.hit(A, PORTS[0])
        self.assertEqual(tracker.hit(A, PORTS[0]), HitVerdict.WRONG_PORT)

    def test_hit_without_slot_locks_out(self):
        clock, tracker, seen = make()
        self.assertEqual(tracker.hit(B, 9999), HitVerdict.NO_SLOT)
        self.assertEqual(seen.lockouts[0][2:], ("no-slot", B))
        self.assertGreater(tracker.locked_for(A), 0)

    def test_hit_after_completion_is_a_failure(self):
        clock, tracker, seen = make(scope="source")
        tracker.grant(A, "alice", 1, PORTS)
        for port in PORTS:
            tracker.hit(A, port)
        self.assertEqual(tracker.hit(A, PORTS[0]), HitVerdict.NO_SLOT)
        self.assertEqual(seen.completed[0].index, 1)
        self.assertEqual(seen.failed, [])

    def test_timeout_fails_and_locks_out(self):
        clock, tracker, seen = make(window=10)
        tracker.grant(A, "alice", 1, PORTS)
        tracker.hit(A, PORTS[0])
        clock.advance(9.9)
        self.assertEqual(seen.failed, [])
        clock.advance(0.1)
        self.assertEqual(seen.failed, [(A, 1, "timeout")])
        self.assertEqual(seen.lockouts[0][2], "timeout")
        self.assertEqual(tracker.hit(A, PORTS[1]), HitVerdict.LOCKED)

    def test_late_hit_at_deadline_is_timeout(self):
        """
        A hit at exactly the deadline is too late even if the timer has not
        run yet.
        """
        clock, tracker, seen = make(window=10)
        slot = tracker.grant(A, "alice", 1, PORTS)
        slot.timer.cancel()
        slot.timer = None
        clock.advance(10)
        self.assertEqual(tracker.hit(A, PORTS[0]), HitVerdict.TIMEOUT)
        self.assertEqual(seen.failed, [(A, 1, "timeout")])


class LockoutTests(SynchronousTestCase):
    def test_lockout_expires(self):
        clock, tracker, seen = make(lockout=60)
        tracker.hit(B, 1)
        clock.advance(59)
        self.assertEqual(tracker.refusal(A).kind, "locked")
        self.assertEqual(tracker.refusal(A).retry_after, 1)
        clock.advance(1)
        self.assertIsNone(tracker.refusal(A))

    def test_hits_during_lockout_do_not_extend_it(self):
        clock, tracker, seen = make(lockout=60)
        tracker.hit(B, 1)
        for _ in range(50):
            clock.advance(1)
            self.assertEqual(tracker.hit(B, 2), HitVerdict.LOCKED)
        self.assertEqual(len(seen.lockouts), 1)
        clock.advance(10)
        self.assertIsNone(tracker.refusal(A))

    def test_denied_handshake_locks_out_once(self):
        clock, tracker, seen = make()
        tracker.failed_attempt(B, "denied")
        tracker.failed_attempt(B, "denied")
        self.assertEqual(len(seen.lockouts), 1)
        self.assertEqual(tracker.refusal(A).kind, "locked")

    def test_global_lockout_ends_open_slots(self):
        """
        scope global: a failure by anyone ends every slot being knocked with
        locked-out.
        """
        clock, tracker, seen = make(scope="global", slots=2)
        tracker.grant(A, "alice", 7, PORTS)
        tracker.hit(A, PORTS[0])
        tracker.hit(B, 4444)
        self.assertEqual(seen.failed, [(A, 7, "locked-out")])
        self.assertEqual(tracker.hit(A, PORTS[1]), HitVerdict.LOCKED)

    def test_source_lockout_spares_others(self):
        clock, tracker, seen = make(scope="source", slots=2)
        tracker.grant(A, "alice", 7, PORTS)
        tracker.hit(A, PORTS[0])
        self.assertEqual(tracker.hit(B, 4444), HitVerdict.NO_SLOT)
        self.assertEqual(seen.lockouts[0][0], B)
        self.assertEqual(tracker.refusal(B).kind, "locked")
        self.assertEqual(tracker.hit(A, PORTS[1]), HitVerdict.PROGRESS)
        self.assertEqual(tracker.hit(A, PORTS[2]), HitVerdict.COMPLETE)
        self.assertEqual(seen.failed, [])

    def test_source_lockout_of_granted_address_ends_its_slot(self):
        clock, tracker, seen = make(scope="source")
        tracker.grant(A, "alice", 3, PORTS)
        tracker.failed_attempt(A, "denied")
        self.assertEqual(seen.failed, [(A, 3, "locked-out")])

    def test_shared_global_lockout_ends_slots_quietly(self):
        """
        A lockout of the whole server from another gateway of the fleet
        ends the knocks here at once (not a timeout that would start a
        lockout of its own) and is not reported as started here.
        """
        clock, tracker, seen = make(scope="knock", slots=2)
        tracker.grant(A, "alice", 7, PORTS)
        tracker.shared_lockout(GLOBAL, clock.seconds() + 30)
        self.assertEqual(seen.failed, [(A, 7, "locked-out")])
        self.assertEqual(seen.lockouts, [], "saved and spread already")
        self.assertEqual(tracker.refusal(B).kind, "locked")
        clock.advance(31)
        self.assertIsNone(tracker.refusal(B))

    def test_shared_source_lockout_ends_only_its_source(self):
        clock, tracker, seen = make(scope="source", slots=2)
        tracker.grant(A, "alice", 7, PORTS)
        tracker.grant(B, "bob", 2, PORTS)
        tracker.shared_lockout(B, clock.seconds() + 30)
        tracker.shared_lockout(A, clock.seconds() - 1)  # over already: nothing
        self.assertEqual(seen.failed, [(B, 2, "locked-out")])
        self.assertEqual(tracker.hit(A, PORTS[0]), HitVerdict.PROGRESS)

    def test_source_lockouts_are_bounded_newest_kept(self):
        """
        A flood from more addresses than the bound: the newest lockouts
        are held, the oldest dropped (those addresses may knock again).
        """
        from knocker.core import tracker as module

        self.patch(module, "MAX_SOURCES", 5)
        clock, tracker, seen = make(scope="source", lockout=60)
        sources = [f"2001:db8:{n:x}::1" for n in range(20)]  # 20 distinct /64s
        for source in sources:
            clock.advance(0.1)
            self.assertEqual(tracker.hit(source, 4444), HitVerdict.NO_SLOT)
        self.assertEqual(sorted(tracker.lockouts()),
                         sorted(f"2001:db8:{n:x}::/64" for n in range(15, 20)))
        self.assertIsNone(tracker.refusal(sources[0]))
        self.assertEqual(tracker.refusal(sources[-1]).kind, "locked")
        self.assertEqual(len(seen.lockouts), 20, "every one was still reported")

    def test_over_the_bound_a_new_lockout_is_held_when_older_ones_escalated(self):
        """
        The table full of sources escalated past a fresh lockout's end: the
        fresh one is still held (one of theirs goes), so a new source
        cannot fail without end behind a lockout that is only reported.
        """
        from knocker.core import tracker as module

        self.patch(module, "MAX_SOURCES", 5)
        clock, tracker, seen = make(scope="source", lockout=60)
        olds = [f"2001:db8:{n:x}::1" for n in range(5)]
        for ip in olds:
            tracker.hit(ip, 4444)  # 60 s
        clock.advance(61)
        for ip in olds:
            tracker.hit(ip, 4444)  # step 1: 120 s
        new = "2001:db8:ffff::1"
        self.assertEqual(tracker.hit(new, 4444), HitVerdict.NO_SLOT)
        self.assertEqual(tracker.refusal(new).kind, "locked")
        for _ in range(10):
            tracker.failed_attempt(new, "denied")
        self.assertEqual(len(seen.lockouts), 11, "locked out once, then refused")
        self.assertEqual(len(tracker.lockouts()), 5, "still within the bound")

    def test_a_stray_hit_does_not_walk_every_open_slot(self):
        """
        With max-concurrent raised and many knocks under way, each stray
        hit from a fresh source (a flood's) starts a lockout that ends that
        source's knocks only: found without a pass over all the slots.
        """
        clock, tracker, seen = make(scope="source", slots=1000)
        for n in range(500):
            tracker.grant(f"2001:db8:{n:x}::1", "alice", n + 1, PORTS)
        keys = tracker.source_of
        calls = []
        tracker.source_of = lambda ip: calls.append(ip) or keys(ip)
        self.assertEqual(tracker.hit("2001:db8:ffff::1", 4444), HitVerdict.NO_SLOT)
        self.assertLess(len(calls), 10, "a source key a slot")
        self.assertEqual(len(tracker.slots()), 500, "nobody else's knock ended")
        # A source holding a slot: its knock ends, and only its.
        tracker.failed_attempt("2001:db8:7::2", "denied")
        self.assertEqual(len(tracker.slots()), 499)
        self.assertEqual(seen.failed[-1], ("2001:db8:7::1", 8, "locked-out"))

    def test_lockouts_end_in_time_order_whatever_the_insertion(self):
        """
        A restored lockout that ends late does not hold back the ones set
        after it that end sooner.
        """
        clock, tracker, seen = make(scope="source", lockout=10)
        tracker.restore_lockout(A, clock.seconds() + 1000)
        tracker.hit(B, 4444)
        clock.advance(11)
        self.assertIsNone(tracker.refusal(B))
        self.assertEqual(tracker.hit(B, 4444), HitVerdict.NO_SLOT, "a new failed attempt")
        self.assertEqual(tracker.refusal(B).kind, "locked")
        self.assertEqual(set(tracker.lockouts()), {A, B})

    def test_a_saved_or_shared_lockout_lasts_no_longer_than_the_policy_allows(self):
        """
        The end of a saved or shared lockout comes from a wall clock (this
        one's before a restart, another gateway's): one a day fast must not
        shut the door for a day.  The whole server's lockout ends within
        C{lockout} from now, a source's within C{lockout-max}.
        """
        for way in ("restore_lockout", "shared_lockout"):
            clock = Clock()
            clock.advance(1000)
            policy = Policy(10, 60, "knock", 1, lockout_max=600)
            tracker = Tracker(clock, policy, Recorder())
            now = clock.seconds()
            getattr(tracker, way)(GLOBAL, now + 86400)
            getattr(tracker, way)(A, now + 86400)
            getattr(tracker, way)(B, now + 30)
            self.assertEqual(tracker.lockouts(), {GLOBAL: now + 60, A: now + 600, B: now + 30},
                             way)
            self.assertEqual(tracker.refusal(A).retry_after, 600)
            self.assertEqual(tracker.refusal(B).retry_after, 60, "the whole server's")
            clock.advance(61)
            self.assertIsNone(tracker.refusal(B))
            self.assertEqual(tracker.refusal(A).retry_after, 600 - 61)
            clock.advance(600)
            self.assertIsNone(tracker.refusal(A))

    def test_a_saved_or_shared_lockout_is_not_held_with_lockout_zero(self):
        """lockout = 0 locks nothing: not what was saved, nor what another gateway says."""
        for scope in ("global", "source"):
            clock, tracker, seen = make(scope=scope, lockout=0)
            for key in (GLOBAL, A):
                tracker.restore_lockout(key, clock.seconds() + 30)
                tracker.shared_lockout(key, clock.seconds() + 86400, 2)
            self.assertEqual(tracker.lockouts(), {}, scope)
            self.assertIsNone(tracker.refusal(A))

    def test_a_shared_lockout_not_held_ends_no_knock(self):
        """
        lockout = 0 here, another gateway's lockout read: nothing is held,
        so the knock in progress goes on rather than end as locked-out
        with a retry that would succeed at once.
        """
        clock, tracker, seen = make(scope="knock", lockout=0)
        tracker.grant(A, "alice", 1, PORTS)
        tracker.shared_lockout(GLOBAL, clock.seconds() + 60)
        tracker.shared_lockout(A, clock.seconds() + 60)
        self.assertEqual(seen.failed, [])
        self.assertEqual(tracker.hit(A, PORTS[0]), HitVerdict.PROGRESS)

    def test_restored_lockout(self):
        clock, tracker, seen = make()
        tracker.restore_lockout(GLOBAL, clock.seconds() + 30)
        tracker.restore_lockout(B, clock.seconds() - 1)
        self.assertEqual(tracker.refusal(A).retry_after, 30)
        self.assertEqual(tracker.lockouts(), {GLOBAL: clock.seconds() + 30})


class SlotTests(SynchronousTestCase):
    def test_one_slot_server_wide_gives_busy(self):
        clock, tracker, seen = make(window=10)
        tracker.grant(A, "alice", 1, PORTS)
        clock.advance(3)
        refusal = tracker.refusal(B)
        self.assertEqual((refusal.kind, refusal.retry_after), ("busy", 7))

    def test_same_address_twice_is_busy(self):
        clock, tracker, seen = make(slots=5)
        tracker.grant(A, "alice", 1, PORTS)
        self.assertEqual(tracker.refusal(A).kind, "busy")
        self.assertIsNone(tracker.refusal(B))

    def test_hits_bound_to_granted_address(self):
        """
        The right ports from another address do not advance the slot.
        """
        clock, tracker, seen = make(scope="source", slots=2)
        tracker.grant(A, "alice", 1, PORTS)
        self.assertEqual(tracker.hit(B, PORTS[0]), HitVerdict.NO_SLOT)
        self.assertEqual(tracker.hit(A, PORTS[0]), HitVerdict.PROGRESS)

    def test_abandoned_slot_frees_without_lockout(self):
        clock, tracker, seen = make()
        slot = tracker.grant(A, "alice", 1, PORTS)
        tracker.abandon(slot)
        self.assertIsNone(tracker.refusal(B))
        clock.advance(100)
        self.assertEqual((seen.failed, seen.lockouts), ([], []))

    def test_grant_while_refused_is_a_bug(self):
        clock, tracker, seen = make()
        tracker.grant(A, "alice", 1, PORTS)
        self.assertRaises(RuntimeError, tracker.grant, B, "bob", 1, PORTS)


def make_policy(**values):
    clock = Clock()
    clock.advance(1000)
    seen = Recorder()
    tracker = Tracker(clock, Policy(**values), seen)
    return clock, tracker, seen


class KnockScopeTests(SynchronousTestCase):
    """
    The default scope: a failed knock shuts the server (the paper's rule);
    any other failure shuts out its source only, so noise cannot close the
    door for everyone.
    """

    def test_default_scope_is_knock(self):
        self.assertEqual(Policy().scope, "knock")

    def test_wrong_port_in_a_slot_locks_everyone(self):
        clock, tracker, seen = make_policy()
        tracker.grant(A, "alice", 1, PORTS)
        self.assertEqual(tracker.hit(A, 9999), HitVerdict.WRONG_PORT)
        self.assertEqual([(d.key, d.scope, d.reason) for d in seen.details],
                         [(GLOBAL, "global", "wrong-port")])
        self.assertEqual(tracker.refusal(B).kind, "locked")

    def test_timeout_in_a_slot_locks_everyone(self):
        clock, tracker, seen = make_policy(window=10)
        tracker.grant(A, "alice", 1, PORTS)
        clock.advance(10)
        self.assertEqual([(d.key, d.reason) for d in seen.details], [(GLOBAL, "timeout")])

    def test_a_timeout_during_a_pool_flood_locks_nobody_out(self):
        """
        A flood past what the daemon takes at once fills the listen queues:
        the client's SYNs wait for their retries and its knock times out.
        That is the flood's doing: the knock fails, and no one is locked
        out (under this scope a flood would otherwise shut the door for
        everyone, again at every retry).
        """
        clock, tracker, seen = make_policy(window=10)
        tracker.grant(A, "alice", 1, PORTS)
        clock.advance(4)
        tracker.flooding()
        clock.advance(6)
        self.assertEqual(seen.failed, [(A, 1, "timeout")])
        self.assertEqual(seen.details, [], "no lockout")
        self.assertIsNone(tracker.refusal(B))
        self.assertIsNone(tracker.refusal(A))
        # A flood that ended before the next knock's window is no excuse.
        clock.advance(1)
        tracker.grant(A, "alice", 2, PORTS)
        clock.advance(10)
        self.assertEqual([(d.key, d.reason) for d in seen.details], [(GLOBAL, "timeout")])

    def test_stray_hit_and_denial_lock_their_source_only(self):
        clock, tracker, seen = make_policy()
        self.assertEqual(tracker.hit(B, 4444), HitVerdict.NO_SLOT)
        tracker.failed_attempt("198.51.100.3", "denied")
        self.assertEqual([(d.key, d.scope) for d in seen.details],
                         [(B, "source"), ("198.51.100.3", "source")])
        self.assertIsNone(tracker.refusal(A))

    def test_a_granted_knock_survives_noise(self):
        clock, tracker, seen = make_policy()
        tracker.grant(A, "alice", 1, PORTS)
        for n, port in enumerate(PORTS):
            tracker.hit(f"203.0.113.{n}", port)  # scanners hit the very ports
            self.assertIn(tracker.hit(A, port), (HitVerdict.PROGRESS, HitVerdict.COMPLETE))
        self.assertEqual([s.index for s in seen.completed], [1])
        self.assertEqual(seen.failed, [])

    def test_global_scope_shuts_on_one_stray_hit(self):
        clock, tracker, seen = make_policy(scope="global")
        tracker.hit(B, 4444)
        self.assertEqual(tracker.refusal(A).kind, "locked")


class EscalationTests(SynchronousTestCase):
    def fail_after_each_lockout(self, tracker, clock, times):
        lengths = []
        for _ in range(times):
            tracker.hit(B, 4444)
            lengths.append(tracker.locked_for(B))
            clock.advance(tracker.locked_for(B) + 1)
        return lengths

    def test_each_further_lockout_doubles_up_to_the_cap(self):
        clock, tracker, seen = make_policy(lockout=60, lockout_max=400)
        self.assertEqual(self.fail_after_each_lockout(tracker, clock, 5), [60, 120, 240, 400, 400])
        self.assertEqual([d.step for d in seen.details], [0, 1, 2, 3, 4])

    def test_memory_forgets(self):
        clock, tracker, seen = make_policy(lockout=60, memory=100)
        tracker.hit(B, 4444)
        clock.advance(60 + 100)
        tracker.hit(B, 4444)
        self.assertEqual(tracker.locked_for(B), 60)

    def test_other_sources_start_at_the_first_step(self):
        clock, tracker, seen = make_policy(lockout=60)
        self.fail_after_each_lockout(tracker, clock, 3)
        tracker.hit(A, 4444)
        self.assertEqual(tracker.locked_for(A), 60)

    def test_global_lockouts_do_not_escalate(self):
        clock, tracker, seen = make_policy(scope="global", lockout=60)
        self.assertEqual(self.fail_after_each_lockout(tracker, clock, 3), [60, 60, 60])


class SourceTests(SynchronousTestCase):
    def test_an_ipv6_prefix_is_one_source(self):
        clock, tracker, seen = make_policy()
        tracker.hit("2001:db8:1:2::5", 4444)
        self.assertEqual(tracker.refusal("2001:db8:1:2:ffff::9").kind, "locked")
        self.assertIsNone(tracker.refusal("2001:db8:1:3::5"))
        self.assertEqual(list(tracker.lockouts()), ["2001:db8:1:2::/64"])

    def test_prefix_length_is_configurable(self):
        clock, tracker, seen = make_policy(prefix6=128)
        tracker.hit("2001:db8::5", 4444)
        self.assertIsNone(tracker.refusal("2001:db8::6"))

    def test_never_lock_starts_no_lockout(self):
        for scope in ("knock", "global", "source"):
            clock, tracker, seen = make_policy(scope=scope, never_lock=("192.0.2.0/28",))
            self.assertEqual(tracker.hit(A, 4444), HitVerdict.NO_SLOT)
            tracker.failed_attempt(A, "denied")
            self.assertEqual((seen.details, tracker.lockouts()), ([], {}), scope)
            tracker.hit("192.0.2.200", 4444)  # outside the network
            self.assertEqual(len(seen.details), 1, scope)

    def test_changes_are_taken_once(self):
        clock, tracker, seen = make_policy()
        tracker.hit(A, 4444)
        tracker.hit(B, 4444)
        self.assertEqual(sorted(key for key, _, _ in tracker.take_changes()), [A, B])
        self.assertEqual(tracker.take_changes(), [])

    def test_lockout_zero_locks_nothing_out(self):
        """
        lockout = 0: a failure is no lockout at all (no event, nothing
        remembered, no knock of the address ended), not one of no seconds.
        """
        for scope in ("knock", "global", "source"):
            clock, tracker, seen = make_policy(scope=scope, lockout=0, max_slots=2)
            tracker.grant(A, "alice", 1, PORTS)
            for _ in range(1000):
                self.assertEqual(tracker.hit(B, 4444), HitVerdict.NO_SLOT)
            tracker.failed_attempt(A, "denied")
            self.assertEqual((seen.details, tracker.lockouts(), seen.failed), ([], {}, []), scope)
            self.assertEqual(len(tracker._forget), 0, "nothing kept for an hour")
            self.assertEqual(tracker.hit(A, PORTS[0]), HitVerdict.PROGRESS)

    def test_never_lock_address_is_spared_its_networks_lockout(self):
        """
        Its /64 locked out by a neighbour's stray hit, a never-lock address
        may still knock (the server's own lockout still applies to it).
        """
        clock, tracker, seen = make_policy(scope="source", never_lock=("2001:db8::5/128",))
        tracker.hit("2001:db8::6", 4444)
        self.assertEqual(list(tracker.lockouts()), ["2001:db8::/64"])
        self.assertIsNotNone(tracker.refusal("2001:db8::7"))
        self.assertIsNone(tracker.refusal("2001:db8::5"))
        # nor is its knock in progress ended by a neighbour's stray hit
        clock.advance(61)  # over; the next stray hit starts another
        tracker.grant("2001:db8::5", "alice", 1, PORTS)
        tracker.hit("2001:db8::6", 4444)
        self.assertEqual(len(seen.details), 2)
        self.assertEqual(seen.failed, [])
        self.assertEqual(tracker.hit("2001:db8::5", PORTS[0]), HitVerdict.PROGRESS)

    def test_sources_locked_out_again_and_again_keep_memory_bounded(self):
        """
        lockout = lockout-max = 60 and an hour's memory: a source locked
        out again each minute leaves an entry a time; they must not pile up
        for the hour.
        """
        clock, tracker, seen = make_policy(scope="source", lockout=60, lockout_max=60)
        sources = [f"198.51.100.{n}" for n in range(100)]
        for _ in range(60):
            for ip in sources:
                tracker.hit(ip, 4444)
            clock.advance(61)
        self.assertEqual(len(seen.details), 6000)
        self.assertLessEqual(len(tracker._forget), 2 * len(sources) + 1024)
        tracker.hit(sources[0], 4444)
        self.assertEqual(seen.details[-1].seconds, 60, "escalation memory kept")
        self.assertGreater(seen.details[-1].step, 0)

    def test_a_saved_or_shared_lockout_of_a_never_lock_address_is_not_held(self):
        """
        Listed in never-lock after its lockout was saved (then a restart),
        or locked out by a gateway whose list differs: not locked here.
        """
        for prefix6, ip in ((64, "192.0.2.10"), (128, "2001:db8::5")):
            clock, tracker, seen = make_policy(scope="source", never_lock=(ip,), prefix6=prefix6)
            tracker.restore_lockout(ip, clock.seconds() + 600)
            tracker.shared_lockout(ip, clock.seconds() + 600)
            self.assertEqual((tracker.locked_for(ip), tracker.refusal(ip)), (0.0, None), ip)

    def test_lift_forgets_the_escalation_of_a_lockout_already_over(self):
        clock, tracker, seen = make_policy(scope="source", lockout=60, lockout_max=3600)
        tracker.hit(A, 4444)
        clock.advance(61)  # over, but remembered for lockout-memory
        self.assertEqual(tracker.lift(), [])
        tracker.hit(A, 4444)
        self.assertEqual(seen.details[-1].seconds, 60, "not doubled")

    def test_lift_one_source_or_all(self):
        clock, tracker, seen = make_policy(scope="source")
        tracker.hit(A, 4444)
        tracker.hit(B, 4444)
        self.assertEqual(tracker.lift(A), [A])
        self.assertIsNone(tracker.refusal(A))
        self.assertEqual(tracker.lift(), [B])
        self.assertEqual(tracker.lockouts(), {})
