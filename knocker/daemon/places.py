"""
The central port's places: how many each source holds, and which
connection gives way to a newcomer when every place is taken
(docs/spec.md section 5).

Pure bookkeeping: a holder is any hashable object, and the caller says
which holders may give way.
"""

from collections.abc import Callable, Hashable

_NONE = object()

SCAN = 1024
"""At most this many holders are looked at for one that may give way, so
that an accept costs a bounded time however many places there are."""


class Places:
    """
    Up to C{total} places, at most C{per_source} of them held by one source.

    When all are taken, a newcomer still gets one if a source holding at
    least as many as the newcomer's source then will has a holder that may
    give way: the busiest such source gives up its oldest such holder.  So
    a few sources holding every place cannot keep a new source out, while
    one source can never push out another as busy as itself.
    """

    def __init__(self, total: int, per_source: int, scan: int = SCAN):
        self.total = total
        self.per_source = per_source
        self.scan = scan
        self._held: dict[Hashable, dict[Hashable, None]] = {}  # source -> holders, oldest first
        self._source_of: dict[Hashable, Hashable] = {}
        self._holding: dict[int, dict[Hashable, None]] = {}  # n -> the sources holding n

    def __len__(self) -> int:
        return len(self._source_of)

    def holders(self) -> list:
        """Every holder of a place."""
        return list(self._source_of)

    def held_by(self, source: Hashable) -> int:
        return len(self._held.get(source, ()))

    def by_source(self) -> dict[Hashable, int]:
        """How many places each source holds."""
        return {source: len(holders) for source, holders in self._held.items()}

    def make_room(self, source: Hashable,
                  may_give_way: Callable[[Hashable], bool]) -> tuple[bool, Hashable | None]:
        """
        Whether a newcomer from C{source} may have a place, and the holder
        that gave way for it (C{None} if none had to).  That holder has
        lost its place already; the caller tells it and then L{add}s the
        newcomer.
        """
        held = self.held_by(source)
        if held >= self.per_source:
            return False, None
        if len(self) < self.total:
            return True, None
        victim = self._victim(held + 1, may_give_way)
        if victim is None:
            return False, None
        self.remove(victim)
        return True, victim

    def _victim(self, needed: int, may_give_way) -> Hashable | None:
        looked = 0
        for count in sorted((n for n in self._holding if n >= needed), reverse=True):
            for source in self._holding[count]:
                for holder in self._held[source]:
                    if may_give_way(holder):
                        return holder
                    looked += 1
                    if looked >= self.scan:
                        return None
        return None

    def add(self, source: Hashable, holder: Hashable) -> None:
        holders = self._held.setdefault(source, {})
        self._move(source, len(holders), len(holders) + 1)
        holders[holder] = None
        self._source_of[holder] = source

    def remove(self, holder: Hashable) -> bool:
        """Free C{holder}'s place; C{False} if it held none (any more)."""
        source = self._source_of.pop(holder, _NONE)
        if source is _NONE:
            return False
        holders = self._held[source]
        del holders[holder]
        self._move(source, len(holders) + 1, len(holders))
        if not holders:
            del self._held[source]
        return True

    def _move(self, source: Hashable, was: int, now: int) -> None:
        if was:
            sources = self._holding[was]
            del sources[source]
            if not sources:
                del self._holding[was]
        if now:
            self._holding.setdefault(now, {})[source] = None
