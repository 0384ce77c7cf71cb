"""
The firewall watch: C{on-check} at start, then every C{check-interval}
seconds, so that whatever happens to the firewall around the daemon (a
C{flush ruleset}, C{nft -f /etc/nftables.conf}, C{systemctl restart
nftables}) leaves the protected ports open to everyone for a few seconds
at most.

C{on-check} is run like the other actions (never through a shell, the
C{action-env} environment, killed at C{script-timeout}), with no
arguments, and tells by its exit status:

  - 0: the firewall is in place; nothing is logged;
  - L{RESTORED} (10): it was missing and the program has loaded it again,
    with no door open; the daemon runs on-success again for every door
    open now (L{knocker.daemon.coordinator.KnockServer.reopen_doors});
  - anything else (or killed): the check failed; logged and audited once
    (status C{failed}), tried again every interval, and logged again once
    it works.

C{etc/scripts/nft-check} (C{knocker-nft ensure}) is the one for the
nftables scripts.  Runs never overlap: the next starts C{check-interval}
seconds after the last one ended, or at once after a SIGHUP.
"""

from twisted.logger import Logger

log = Logger()

RESTORED = 10


class FirewallWatch:
    """
    Runs C{program} through C{runner} (L{knocker.daemon.actions.ProcessRunner})
    with C{env}; on L{RESTORED} calls C{restored()}, which returns how many
    doors it opens again.
    """

    def __init__(self, clock, runner, program: str, interval: float, env: dict[str, str],
                 audit, restored):
        self._clock = clock
        self._runner = runner
        self._program = program
        self._interval = interval
        self._env = dict(env)
        self._audit = audit
        self._restored = restored
        self._timer = None
        self._running = False
        self._again = False
        self._stopped = True
        self.failing = False
        self.checks = 0

    def start(self) -> None:
        self._stopped = False
        self.check_now()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def check_now(self) -> None:
        """
        Run the check now (or right after the one running ends).
        """
        if self._stopped:
            return
        if self._running:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._running = True
        d = self._runner.run([self._program], dict(self._env))
        d.addCallback(self._checked)
        d.addErrback(self._broken)

    def _checked(self, result) -> None:
        self._running = False
        self.checks += 1
        if self._stopped:
            return
        if result.exit_code == 0 and not result.timed_out:
            if self.failing:
                self.failing = False
                log.info("on-check {program} succeeds again", program=self._program)
                self._audit.record("firewall", status="ok")
        elif result.exit_code == RESTORED and not result.timed_out:
            self.failing = False
            doors = self._restored()
            log.warn("on-check found the firewall missing and loaded it again; on-success "
                     "runs again for the {doors} open door(s); it said: {out!r} {err!r}",
                     doors=doors, out=result.stdout[-500:], err=result.stderr[-500:])
            self._audit.record("firewall", status="restored", doors=doors,
                               stdout=result.stdout[-2000:], stderr=result.stderr[-2000:])
        elif not self.failing:
            self.failing = True
            log.error("on-check {program} failed: exit {code}{killed}{error}; stdout {out!r} "
                      "stderr {err!r}; trying again every {interval}s",
                      program=self._program, code=result.exit_code,
                      killed=" (killed: timeout)" if result.timed_out else "",
                      error=f" ({result.spawn_error})" if result.spawn_error else "",
                      out=result.stdout[-500:], err=result.stderr[-500:],
                      interval=self._interval)
            self._audit.record("firewall", status="failed", exit_code=result.exit_code,
                               signal=result.signal, timed_out=result.timed_out,
                               stdout=result.stdout[-2000:], stderr=result.stderr[-2000:],
                               **({"error": result.spawn_error} if result.spawn_error else {}))
        self._next()

    def _broken(self, failure) -> None:
        self._running = False
        log.failure("on-check {program}", failure, program=self._program)
        self._next()

    def _next(self) -> None:
        if self._stopped:
            return
        if self._again:
            self._again = False
            self.check_now()
            return
        self._timer = self._clock.callLater(self._interval, self.check_now)
