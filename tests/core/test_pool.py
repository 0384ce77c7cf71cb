"""
The pool of knock ports and the keyspace arithmetic.
"""

from math import comb, perm
from random import Random

from twisted.trial.unittest import SynchronousTestCase

from knocker.core.pool import choose_knock, choose_pool, ensure_pool, keyspace
from knocker.core.serverconfig import parse_server_config
from knocker.state.interface import StateError


class ChoosePoolTests(SynchronousTestCase):
    def test_size_distinct_in_range_sorted(self):
        for seed in range(10):
            pool = choose_pool(100, 10000, 32000, Random(seed))
            self.assertEqual(len(pool), 100)
            self.assertEqual(len(set(pool)), 100)
            self.assertTrue(all(10000 <= port <= 32000 for port in pool))
            self.assertEqual(list(pool), sorted(pool))
            self.assertIsInstance(pool, tuple)

    def test_whole_range(self):
        """
        A pool as large as its range takes every port, both ends included.
        """
        self.assertEqual(choose_pool(11, 20, 30, Random(1)), tuple(range(20, 31)))

    def test_single_port(self):
        self.assertEqual(choose_pool(1, 5000, 5000, Random(1)), (5000,))

    def test_ends_of_range_reachable(self):
        seen = set()
        for seed in range(200):
            seen.update(choose_pool(3, 1, 6, Random(seed)))
        self.assertEqual(seen, {1, 2, 3, 4, 5, 6})

    def test_seed_pins_the_pool(self):
        self.assertEqual(
            choose_pool(100, 10000, 32000, Random(42)), choose_pool(100, 10000, 32000, Random(42))
        )
        self.assertNotEqual(
            choose_pool(100, 10000, 32000, Random(42)), choose_pool(100, 10000, 32000, Random(43))
        )

    def test_too_large(self):
        error = self.assertRaises(ValueError, choose_pool, 12, 20, 30, Random(1))
        self.assertIn("20-30", str(error))

    def test_zero(self):
        self.assertRaises(ValueError, choose_pool, 0, 20, 30, Random(1))

    def test_negative(self):
        self.assertRaises(ValueError, choose_pool, -1, 20, 30, Random(1))

    def test_empty_range(self):
        self.assertRaises(ValueError, choose_pool, 1, 30, 20, Random(1))


class ChooseKnockTests(SynchronousTestCase):
    POOL = tuple(range(10000, 10100, 3))

    def test_distinct_from_pool(self):
        for seed in range(50):
            knock = choose_knock(self.POOL, 6, Random(seed))
            self.assertEqual(len(knock), 6)
            self.assertEqual(len(set(knock)), 6)
            self.assertTrue(set(knock) <= set(self.POOL))

    def test_order_is_random(self):
        """
        Knocks are ordered sequences, not sorted sets.
        """
        knocks = [choose_knock(self.POOL, 6, Random(seed)) for seed in range(50)]
        self.assertTrue(any(list(knock) != sorted(knock) for knock in knocks))

    def test_whole_pool(self):
        knock = choose_knock(self.POOL, len(self.POOL), Random(1))
        self.assertEqual(sorted(knock), list(self.POOL))

    def test_too_many_ports(self):
        self.assertRaises(ValueError, choose_knock, self.POOL, len(self.POOL) + 1, Random(1))

    def test_negative(self):
        self.assertRaises(ValueError, choose_knock, self.POOL, -1, Random(1))


class KeyspaceTests(SynchronousTestCase):
    def test_default(self):
        self.assertEqual(keyspace(100, 6), (858277728000, 1192052400))

    def test_small(self):
        # 4 ports, knocks of 2: 12 ordered pairs, 6 unordered.
        self.assertEqual(keyspace(4, 2), (12, 6))

    def test_matches_math(self):
        for size, ports in [(1, 1), (10, 10), (50, 3), (1000, 8)]:
            self.assertEqual(keyspace(size, ports), (perm(size, ports), comb(size, ports)))

    def test_negative(self):
        self.assertRaises(ValueError, keyspace, 100, -1)
        self.assertRaises(ValueError, keyspace, -1, 6)


class EnsurePoolTests(SynchronousTestCase):
    """
    Two gateways starting at once on a new fleet database both find no
    pool and both draw one; the second to keep it must serve the first's,
    not fail to start.
    """

    def test_a_pool_drawn_meanwhile_by_another_is_the_pool(self):
        theirs = tuple(range(20000, 20100))

        class RacedStore:
            kept = None

            def pool(self):
                return self.kept

            def set_pool(self, ports):
                self.kept = theirs  # the other gateway's insert came first
                raise StateError("the pool is drawn once and kept")

        config = parse_server_config(overrides={"state-dir": "/nonexistent"})
        self.assertEqual(ensure_pool(RacedStore(), config, Random(1)), theirs)

    def test_a_store_that_fails_keeps_failing(self):
        class DownStore:
            def pool(self):
                return None

            def set_pool(self, ports):
                raise StateError("database: gone")

        config = parse_server_config(overrides={"state-dir": "/nonexistent"})
        with self.assertRaises(StateError):
            ensure_pool(DownStore(), config, Random(1))
