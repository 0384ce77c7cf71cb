"""
The central port's places by themselves (L{knocker.daemon.places}): who
gives way to a newcomer when every place is taken.
"""

from unittest import TestCase

from knocker.daemon.places import Places


def anyone(holder) -> bool:
    return True


class PlacesTests(TestCase):
    def fill(self, places: Places, *holders: tuple[str, str]) -> None:
        for source, holder in holders:
            self.assertEqual(places.make_room(source, anyone), (True, None))
            places.add(source, holder)

    def test_limits_while_there_is_room(self):
        places = Places(total=3, per_source=2)
        self.fill(places, ("a", "a1"), ("a", "a2"))
        self.assertEqual(places.make_room("a", anyone), (False, None))
        self.assertEqual(places.make_room("b", anyone), (True, None))
        self.assertEqual((len(places), places.by_source()), (2, {"a": 2}))

    def test_the_busiest_source_gives_its_oldest(self):
        places = Places(total=4, per_source=8)
        self.fill(places, ("a", "a1"), ("b", "b1"), ("b", "b2"), ("b", "b3"))
        self.assertEqual(places.make_room("c", anyone), (True, "b1"))
        self.assertEqual(places.by_source(), {"a": 1, "b": 2})
        places.add("c", "c1")
        self.assertEqual(places.make_room("d", anyone), (True, "b2"))

    def test_among_sources_as_busy_the_first_to_get_there(self):
        places = Places(total=4, per_source=8)
        self.fill(places, ("a", "a1"), ("b", "b1"), ("b", "b2"), ("a", "a2"))
        self.assertEqual(places.make_room("c", anyone), (True, "b1"))

    def test_only_a_source_holding_at_least_what_the_newcomer_will_gives_way(self):
        places = Places(total=4, per_source=8)
        self.fill(places, ("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"))
        self.assertEqual(places.make_room("a", anyone), (False, None))
        self.assertEqual(places.make_room("c", anyone), (True, "a1"))
        places.add("c", "c1")
        # c holds 1 and would hold 2, as b does: b gives way
        self.assertEqual(places.make_room("c", anyone), (True, "b1"))

    def test_only_who_may_give_way(self):
        places = Places(total=3, per_source=8)
        self.fill(places, ("a", "a1"), ("a", "a2"), ("b", "b1"))
        self.assertEqual(places.make_room("c", lambda h: h == "b1"), (True, "b1"))
        places.add("c", "c1")
        self.assertEqual(places.make_room("d", lambda h: False), (False, None))

    def test_a_busier_source_holding_none_that_may_give_way_is_passed_over(self):
        places = Places(total=4, per_source=8)
        self.fill(places, ("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"))
        self.assertEqual(places.make_room("c", lambda h: h.startswith("b")), (True, "b1"))

    def test_a_removed_holder_frees_its_place_once(self):
        places = Places(total=2, per_source=8)
        self.fill(places, ("a", "a1"), ("b", "b1"))
        self.assertTrue(places.remove("a1"))
        self.assertFalse(places.remove("a1"))
        self.assertEqual((len(places), places.by_source()), (1, {"b": 1}))
        self.assertEqual(places.make_room("a", anyone), (True, None))

    def test_only_so_many_are_looked_at(self):
        for scan, found in ((2, (False, None)), (3, (True, "a3"))):
            places = Places(total=3, per_source=8, scan=scan)
            self.fill(places, ("a", "a1"), ("a", "a2"), ("a", "a3"))
            self.assertEqual(places.make_room("b", lambda h: h == "a3"), found, scan)
