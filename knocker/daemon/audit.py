"""
The audit log (docs/spec.md section 7): one JSON object a line, one line an event.

Whole lines
===========

Each event is written with a single C{write} on a file opened C{O_APPEND},
so nothing is held in a buffer that a flood could grow.  Every line in the
file is whole or absent, wherever it falls:

  - a crash can tear only the line being written; the next open cuts the
    fragment off and keeps it inside an C{audit-repaired} event;
  - a short write (a full filesystem: the kernel wrote part of the line)
    is finished if the rest goes through at once; if not, the file is cut
    back (C{ftruncate}) to its size before the line, found with C{fstat}
    right after the short write (the fd appends, so the fragment is the
    file's last C{written} bytes; an C{fstat} then, rather than a size
    counted since the open, stays right if someone else truncated the
    file meanwhile).  The event is lost and counted in C{dropped}.  If
    even the cut fails, the missing rest of the line is kept (one line at
    most) and written before anything else, so the torn line is completed
    instead of glued to the next one; the event then counts as written
    (it is in the file, whole once the rest goes through), so a hit is
    not also summarised nor an event counted in C{dropped}.  A failed
    C{write} (C{ENOSPC} raised) wrote nothing and needs no repair.

Readers use L{read_audit}, which skips only a torn last line (a crash).

A bound on hit lines
====================

A connect flood must not fill the disk, yet every hit is accounted for.
L{knocker.daemon.hitsummary} holds that accounting: a budget of
C{hit_rate} hit lines a second, and past it per-C{(ip, port)} C{hits}
summaries every 10 seconds, in a bounded table with one C{hits-overflow}
line beyond.  This module writes what it gives, and guards the free space:

  - B{Free space.}  At most once a second (on a hit or a flush), C{statvfs}
    of the log's directory: with less than C{min_free_mib} MiB available
    (C{f_bavail}), no hit line is written; hits are only summarised, with
    the table bound cut to C{LOW_SPACE_KEYS} (100) keys an interval.
    Entering that state writes one C{audit-low-space} event (and a daemon
    log warning), leaving it one C{audit-space-ok} event.  C{min_free_mib}
    0 turns the check off.
  - A hit line whose write fails is summarised instead, and summaries whose
    write fails stay in the (bounded) table for the next flush, so a full
    disk does not lose the count of hits while the process lives.
    L{AuditLog.close} stops the flush timer and writes what is pending,
    all of it at once (the timer's flushes write a slice a turn).

Every hit is therefore in exactly one place: its own C{hit} line, the
C{count} of a C{hits} line, or the C{count} of a C{hits-overflow} line.

The central port's protocol errors (L{AuditLog.protocol_error}: garbage,
timeouts, too many connections; no failed attempt, so no lockout stops a
source sending them) are bounded the same way, with a budget of their own:
an C{error} line, or the count of an C{errors} line (per address, the
reasons as outcomes) or of the C{errors-overflow} line.  So are the LOCKED
answers (L{AuditLog.locked}), which a locked-out source may ask for without
end: a C{locked} line, or the count of the reason C{locked} in those
summaries; and the lockouts of sources (L{AuditLog.lockout}), one per
source, where a flood from fresh addresses (a new IPv6 /64 each time) is
as many sources as hits: a C{lockout} line, or the count of the reason
C{lockout}.  So are the DENIED answers to proofs no file made
(L{AuditLog.denied}, the reason C{denied}) and the enrolments refused
before any try was taken (L{AuditLog.enrol_refused}, C{enrol-refused}),
which a source where lockouts do not hold may ask for without end.  A
lockout of the whole server, and all other events (grant, open, fail,
script, close, start, stop, a denial of a proof made with a real file,
...), are always written one by one, whatever the budget and the free space.
"""

import errno
import json
import os

from twisted.logger import Logger

from knocker.core.isotime import iso_time
from knocker.core.tracker import GLOBAL
from knocker.daemon.hitsummary import SUMMARY_KEYS, HitSummary

log = Logger()

MIB = 1024 * 1024

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class AuditLog:
    """
    Append events to C{path} (created 0600).  Time comes from C{wall} (a
    function giving POSIX seconds: the lines' times, the budget, the free
    space's once a second), by default C{clock.seconds}; C{clock} (an
    C{IReactorTime}) also runs the summary flush (C{callLater}).  A daemon
    whose reactor runs on the monotonic clock passes C{wall=time.time}.

    @param hit_rate: hit lines a second written one by one (the config's
        C{audit-hit-rate}); past that, hits are summarised.
    @param min_free_mib: MiB that must stay available on the log's
        filesystem for hit lines to be written (C{audit-min-free}); 0: no
        check.
    @param statvfs: C{os.statvfs}, or a stand-in for tests.
    @param summary_keys: the bound on summarised C{(ip, port)} keys an
        interval.
    """

    def __init__(self, path: str, clock, hit_rate: int = 100, min_free_mib: int = 100,
                 statvfs=os.statvfs, summary_keys: int = SUMMARY_KEYS, wall=None):
        self.path = path
        self._directory = os.path.dirname(os.path.abspath(path))
        self._statvfs = statvfs
        self._now = wall or clock.seconds
        self._hits = HitSummary(clock, self._flush, hit_rate, self._now(), summary_keys)
        self._errors = HitSummary(clock, self._flush, hit_rate, self._now(), summary_keys,
                                  event="errors", key_field=None)
        self._min_free = min_free_mib * MIB
        self._low = False
        self._space_checked = float("-inf")
        self._rest = b""          # the unwritten end of a torn line we could not cut
        self._failing = False
        self.dropped = 0
        self._second = None
        self._prefix = ""
        torn = _cut_torn_tail(path)
        self._fd = os.open(path, _OPEN_FLAGS, 0o600)
        if torn is not None:
            # Keep the fragment as evidence, inside a valid line.
            fragment, size = torn
            self.record("audit-repaired", fragment=fragment.decode("utf-8", "replace"),
                        fragment_bytes=size)
            log.warn("audit log {path} ended in a torn line of {size} bytes (a crash "
                     "mid-write); kept it (its first {kept} bytes) as an audit-repaired event",
                     path=path, size=size, kept=len(fragment))

    # Writing.

    def record(self, event: str, **fields) -> bool:
        """C{event}'s line, always tried; whether it was written."""
        if self._append(self._line(event, fields)):
            return True
        self.dropped += 1
        return False

    def _line(self, event: str, fields: dict) -> bytes:
        entry = {"time": iso_time(self._now()), "event": event}
        entry.update(fields)
        return (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")

    def protocol_error(self, ip: str, reason: str) -> bool:
        """
        A central-port protocol error (C{ERROR <reason>} sent to C{ip}): an
        C{error} line of its own within a budget of C{hit_rate} a second
        (free space allowing), as for hits; past it counted in C{errors}
        summaries, so garbage sent to the central port cannot fill the disk
        either.  Returns whether it got a line of its own (the daemon log
        follows suit).
        """
        return self._within_errors_budget("error", {"ip": ip, "reason": reason}, ip, reason)

    def locked(self, **fields) -> bool:
        """
        A LOCKED answer to a locked-out source (its C{ip} among C{fields}),
        which it may ask for again and again: a C{locked} line within the
        protocol errors' budget (free space allowing), else counted in
        their C{errors} summaries with the reason C{locked}, so a
        locked-out source cannot fill the disk with them.  Returns whether
        it got a line of its own.
        """
        return self._within_errors_budget("locked", fields, fields.get("ip"), "locked")

    def lockout(self, **fields) -> bool:
        """
        A lockout (C{ip}, C{source}, C{scope}, C{reason}, C{seconds},
        C{step}).  The whole server's (C{source} C{*}) is rare and always
        written.  A source's goes through the protocol errors' budget, as
        LOCKED answers do: each fresh address of a flood can earn one,
        so past the budget they are counted in C{errors} summaries under
        the reason C{lockout}.  Returns whether it got a line of its own.
        """
        if fields.get("source") == GLOBAL:
            return self.record("lockout", **fields)
        return self._within_errors_budget("lockout", fields, fields.get("ip"), "lockout")

    def denied(self, **fields) -> bool:
        """
        A DENIED answer to a proof no file of the server made (its C{ip},
        C{client} and C{reason} among C{fields}).  Each is a failed attempt
        and so locks its source out, but not where lockouts do not hold
        (C{lockout = 0}, C{never-lock}, a flood from fresh IPv6 /64s): so
        its line shares the protocol errors' budget, and past it is counted
        in their C{errors} summaries under the reason C{denied}.  Returns
        whether it got a line of its own.
        """
        return self._within_errors_budget("denied", fields, fields.get("ip"), "denied")

    def enrol_refused(self, **fields) -> bool:
        """
        An enrolment refused before any try of an invitation was taken (no
        such invitation, one used, expired or void), which anyone may ask
        for again and again: an C{enrol} line within the protocol errors'
        budget, past it counted under the reason C{enrol-refused}.
        Returns whether it got a line of its own.
        """
        return self._within_errors_budget("enrol", fields, fields.get("ip"), "enrol-refused")

    def server_error(self, reason: str, **fields) -> bool:
        """
        A PROOF answered C{ERROR server-error} for the server's own trouble,
        before its proof could be judged: the state could not be asked
        (reason C{state}: a database down or past its deadline, a damaged
        row), or the client's server copy could not be read (reason
        C{client-file}).  Anyone can send PROOFs, and such an answer locks
        nobody out: an C{error} line within the protocol errors' budget,
        past it counted under its reason.  Returns whether it got a line.
        """
        return self._within_errors_budget("error", {**fields, "reason": reason},
                                          fields.get("ip"), reason)

    def _within_errors_budget(self, event: str, fields: dict, ip, reason: str) -> bool:
        """C{event}'s line if the errors' budget and the free space allow, else its count."""
        now = self._now()
        if not 0.0 <= now - self._space_checked < 1.0:
            self._check_space(now)
        if self._errors.take(now) and self._append(self._line(event, fields)):
            return True
        self._errors.add(ip, None, reason, now)
        return False

    def hit(self, ip: str, src_port: int, port: int, outcome: str) -> None:
        """
        One hit (the hot path): a line of its own while the budget and the
        free space allow, formatted directly (the address comes from the
        kernel, so it needs no escaping) with the time's date part cached
        per second; otherwise counted in the summaries.
        """
        now = self._now()
        hits = self._hits
        if not hits.take(now):
            # over budget, or short of space (no budget then)
            if self._low and not 0.0 <= now - self._space_checked < 1.0:
                self._check_space(now)
                if not self._low:  # space is back, and with it the whole budget
                    return self.hit(ip, src_port, port, outcome)
            # _summarise, inline: one call less a hit in a flood (due here even
            # after a check above, if that check's event failed to write)
            if not 0.0 <= now - self._space_checked < 1.0:
                self._check_space(now)
            hits.add(ip, port, outcome, now)
            return
        second = int(now)
        if second != self._second:
            # at most once a second: the time's date part, and the free space
            self._second = second
            self._prefix = iso_time(second)[:20]
            if not 0.0 <= now - self._space_checked < 1.0:
                self._check_space(now)
                if self._low:  # (which took the budget away)
                    self._summarise(ip, port, outcome, now)
                    return
        micros = int((now - second) * 1e6)
        if micros > 999999:  # (not min(): this is the hot path)
            micros = 999999
        line = (
            f'{{"time":"{self._prefix}{micros:06d}Z","event":"hit","ip":"{ip}",'
            f'"src_port":{src_port},"port":{port},"outcome":"{outcome}"}}\n'
        )
        data = line.encode("ascii")
        if self._failing:  # (also while a torn line's rest is pending)
            if not self._append(data):
                self._summarise(ip, port, outcome, now)
            return
        try:  # _append's fast path, inline
            written = os.write(self._fd, data)
        except OSError as error:
            self._failed(error)
            self._summarise(ip, port, outcome, now)
            return
        if written != len(data) and not self._short_write(data, written):
            self._summarise(ip, port, outcome, now)

    def _append(self, data: bytes) -> bool:
        """
        Write C{data} (one line) whole, or leave the file as it was.
        """
        if self._rest and not self._complete_torn_line():
            return self._failed(OSError(errno.ENOSPC, "torn line still pending"))
        try:
            written = os.write(self._fd, data)
        except OSError as error:
            return self._failed(error)  # nothing was written
        if written != len(data):
            return self._short_write(data, written)
        if self._failing:
            self._failing = False
            log.info("audit log {path} writable again ({n} events lost in all)",
                     path=self.path, n=self.dropped)
        return True

    def _short_write(self, data: bytes, written: int) -> bool:
        error = OSError(errno.ENOSPC, "short write")
        try:
            while written < len(data):
                more = os.write(self._fd, data[written:])
                if more <= 0:
                    break
                written += more
        except OSError as raised:
            error = raised
        if written == len(data):
            return True
        # The file ends in data[:written]: cut it off, or keep the rest.
        try:
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
        except OSError as cut_error:
            self._rest = data[written:]
            log.error("audit log {path}: a line was torn ({error}) and cannot be cut off "
                      "({cut_error}); its rest will be written before the next event",
                      path=self.path, error=error, cut_error=cut_error)
            self._failed(error)
            return True  # committed: in the file, to be completed (not counted twice)
        return self._failed(error)

    def _complete_torn_line(self) -> bool:
        """
        Write the rest of the torn line that could not be cut off, so the
        next event starts on a line of its own.
        """
        try:
            written = os.write(self._fd, self._rest)
        except OSError:
            return False
        self._rest = self._rest[written:]
        return not self._rest

    def _failed(self, error: OSError) -> bool:
        # A full disk must not stop the daemon; say so in the daemon log,
        # once a run of failures, and look at the free space at the next hit.
        self._space_checked = float("-inf")
        if not self._failing:
            self._failing = True
            log.error("audit log {path} write failed ({error}); events are lost (hits "
                      "are counted in summaries) until writes succeed again",
                      path=self.path, error=error)
        return False

    # The summaries, the free space.

    def _summarise(self, ip: str, port: int, outcome: str, now: float) -> None:
        """
        Count a hit in the summaries, after a look at the free space if it
        is due (at once after a failed write).
        """
        if not 0.0 <= now - self._space_checked < 1.0:
            self._check_space(now)
        self._hits.add(ip, port, outcome, now)

    def _flush(self, at_once: bool = False) -> None:
        """
        Write the summaries (the timer's call: a slice a turn; L{close}'s:
        C{at_once}), after a look at the free space if it is due.
        """
        now = self._now()
        if not 0.0 <= now - self._space_checked < 1.0:
            self._check_space(now)
        self._hits.drain(self._write, at_once)
        self._errors.drain(self._write, at_once)

    def _write(self, event: str, fields: dict) -> bool:
        return self._append(self._line(event, fields))

    def _check_space(self, now: float) -> None:
        self._space_checked = now
        if not self._min_free:
            return
        try:
            stat = self._statvfs(self._directory)
        except OSError as error:
            log.warn("audit log {path}: cannot read the free space ({error})",
                     path=self.path, error=error)
            return
        free = stat.f_bavail * stat.f_frsize
        low = free < self._min_free
        if low == self._low:
            return
        self._low = low
        self._hits.set_low(low)
        self._errors.set_low(low)
        fields = {"free_mib": free // MIB, "min_free_mib": self._min_free // MIB}
        if low:
            self.record("audit-low-space", **fields)
            log.warn("audit log {path}: {free} MiB free, under audit-min-free ({min} MiB); "
                     "hits are only counted in summaries until space returns",
                     path=self.path, free=fields["free_mib"], min=fields["min_free_mib"])
        else:
            self.record("audit-space-ok", **fields)
            log.info("audit log {path}: {free} MiB free again; hit lines resume",
                     path=self.path, free=fields["free_mib"])

    # The file.

    def reopen(self) -> bool:
        """
        Switch to a fresh open of C{path}, after logrotate (or anyone) moved
        the file: events go to the new file from the next one on.  If the
        path cannot be opened, keep writing to the old file, say why, and
        return C{False}.
        """
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        except OSError as error:
            log.error("audit log {path} cannot be reopened ({error}); still writing to "
                      "the file opened before", path=self.path, error=error)
            return False
        if self._rest:
            self._complete_torn_line()  # if not, the old file's next open repairs it
            self._rest = b""
        old, self._fd = self._fd, fd
        os.close(old)
        self._space_checked = float("-inf")  # perhaps another filesystem
        self.record("audit-reopened")
        return True

    def close(self) -> None:
        """
        Flush the pending summaries and close the file.
        """
        if self._hits.pending or self._errors.pending:
            self._flush(at_once=True)
        lost = self._hits.close()
        if lost:
            log.error("audit log {path}: {n} summarised hits could not be written",
                      path=self.path, n=lost)
        lost = self._errors.close()
        if lost:
            log.error("audit log {path}: {n} summarised protocol errors could not be written",
                      path=self.path, n=lost)
        if self._rest:
            self._complete_torn_line()
        os.close(self._fd)


#: How much of a torn last line the repair keeps as evidence.
FRAGMENT_KEPT = 4096

_CHUNK = 65536


def _cut_torn_tail(path: str) -> tuple[bytes, int] | None:
    """
    If the log ends without a newline (a crash mid-write), cut the file
    back to its last newline (or to nothing), so that every line stays a
    JSON object, and return the start of what was cut (C{FRAGMENT_KEPT}
    bytes at most: a power loss can leave any amount of zeros) and its
    size.
    """
    try:
        handle = open(path, "r+b")
    except FileNotFoundError:
        return None
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        cut, end = 0, size
        while end > 0:  # back a chunk at a time: memory stays bounded
            start = max(0, end - _CHUNK)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            end = start
        handle.seek(cut)
        fragment = handle.read(FRAGMENT_KEPT)
        handle.truncate(cut)
        return fragment, size - cut


class MemoryAudit:
    """
    An audit sink for tests: the events as dicts, without the time.  It does
    not summarise: every hit is a C{hit} event.
    """

    def __init__(self):
        self.events: list[dict] = []

    def record(self, event: str, **fields) -> None:
        self.events.append({"event": event, **fields})

    def hit(self, ip: str, src_port: int, port: int, outcome: str) -> None:
        self.record("hit", ip=ip, src_port=src_port, port=port, outcome=outcome)

    def protocol_error(self, ip: str, reason: str) -> bool:
        self.record("error", ip=ip, reason=reason)
        return True

    # What the real log bounds by its budget, kept here each time.
    locked = lambda self, **fields: self._kept("locked", fields)  # noqa: E731
    lockout = lambda self, **fields: self._kept("lockout", fields)  # noqa: E731
    denied = lambda self, **fields: self._kept("denied", fields)  # noqa: E731
    enrol_refused = lambda self, **fields: self._kept("enrol", fields)  # noqa: E731
    server_error = lambda self, reason, **fields: self._kept("error", {**fields, "reason": reason})  # noqa: E731,E501

    def _kept(self, event: str, fields: dict) -> bool:
        self.record(event, **fields)
        return True

    def of(self, event: str) -> list[dict]:
        return [entry for entry in self.events if entry["event"] == event]

    def close(self) -> None:
        pass


def read_audit(path: str) -> list[dict]:
    """
    The events in an audit log, skipping a last line torn by a crash.

    @raise ValueError: a line other than the last is not JSON.
    """
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break  # torn by a crash mid-write
            raise ValueError(f"{path}, line {number}: not a JSON object") from None
    return events
