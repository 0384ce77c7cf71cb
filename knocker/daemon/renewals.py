"""
Drawing a renewed file (docs/spec.md section 10) without stopping the
daemon.

Drawing and formatting a file takes about 9 ms per 1000 knocks here, so a
client of 100,000 knocks held the reactor for over a second, serving
nobody: a knock in progress could run out of its window and, with
C{lockout-scope = knock}, lock the whole server.  With a store that answers
at once (SQLite, read and written on the reactor), the knocks are drawn on
the reactor in slices of L{BATCH}, each its own turn, and the file is
written in a thread.  A fleet draws in its database threads instead
(L{knocker.enrol.renewal.prepare_offer}, from L{knocker.daemon.fleet}).
"""

import secrets
from datetime import datetime, timezone
from itertools import islice

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Cooperator, SchedulerStopped

from knocker.core.knockgen import (
    check_generation,
    created_stamp,
    draw_knocks,
    header_lines,
    knock_lines,
)
from knocker.enrol.renewal import keep_pending, pending_offer

BATCH = 200
"""Knocks drawn in one turn of the reactor: about 2 ms here."""


class RenewalDraws:
    """
    The file to offer each client: its pending generation's, or one drawn
    a batch a turn (on C{clock}) and written by C{blocking(f, *args)}
    (a thread in the daemon; L{maybeDeferred} by default).  One drawing
    per client at a time: an offer asked for meanwhile gets the same file.
    """

    def __init__(self, store, book, clock, blocking=maybeDeferred):
        self._store, self._book = store, book
        self._blocking = blocking
        self._cooperator = Cooperator(
            terminationPredicateFactory=lambda: _after_one,
            scheduler=lambda step: clock.callLater(0, step),
            started=True,
        )
        self._drawing: dict[str, list[Deferred]] = {}
        self._stopped = False

    def offer(self, client: str, now: float):
        """
        C{(text, new)} of the file to offer C{client}, at once when its
        pending one will do, else a L{Deferred} of it; C{None} (no offer)
        if its file was replaced while the new one was drawn.
        """
        text = pending_offer(self._store, self._book, client)
        if text is not None:
            return text, False
        if client in self._drawing:
            waiting = Deferred()
            self._drawing[client].append(waiting)
            return waiting
        self._drawing[client] = []
        drawn = maybeDeferred(self._draw, client, now)
        drawn.addBoth(self._tell_the_others, client)
        return drawn

    def stop(self) -> None:
        """Abandon every drawing (the daemon stops); their offers are not made."""
        self._stopped = True
        self._cooperator.stop()

    def _draw(self, client: str, now: float) -> Deferred:
        state = self._store.client(client)
        pool = self._store.pool()
        ports = self._book.ports_per_knock(client)
        secret = secrets.token_bytes(32)
        check_generation(client, pool, state.knocks, ports, secret)
        parts = header_lines(client, secret, ports,
                             created_stamp(datetime.fromtimestamp(now, timezone.utc)))
        lines = knock_lines(draw_knocks(pool, ports, secrets.SystemRandom(), state.knocks))
        # The first batch now: a file that small needs no other turn.
        head = len(parts)
        parts.extend(islice(lines, BATCH))
        if len(parts) - head < BATCH:
            done = succeed(None)
        else:
            done = self._cooperator.cooperate(_batches(lines, parts)).whenDone()
        done.addCallback(lambda _: "".join(parts))
        done.addCallback(self._write, client)
        done.addCallback(self._keep, state, secret)
        done.addErrback(self._abandoned)
        return done

    def _abandoned(self, failure):
        """
        A drawing the daemon's stop cut short (in its batches, or while
        its file was written): no offer, nothing to log.
        """
        if self._stopped:
            return None
        failure.trap(SchedulerStopped)
        return None

    def _write(self, text: str, client: str) -> Deferred:
        return self._blocking(self._book.write_pending, client, text).addCallback(
            lambda _: text)

    def _keep(self, text: str, state, secret: bytes):
        # Back on the reactor.
        if self._stopped:
            return None  # the state may be closed by now
        return keep_pending(self._store, self._book, state, secret, text)

    def _tell_the_others(self, result, client: str):
        for waiting in self._drawing.pop(client, []):
            if isinstance(result, tuple):
                waiting.callback((result[0], False))
            else:
                waiting.callback(None)  # a failure is logged once, by the first
        return result


def _after_one() -> bool:
    return True


def _batches(lines, parts: list):
    """Append the rest of C{lines} to C{parts}, L{BATCH} a step."""
    while True:
        before = len(parts)
        parts.extend(islice(lines, BATCH))
        if len(parts) - before < BATCH:
            return
        yield
