"""
Running the administrator's programs (docs/spec.md section 6).

A program is started directly from an argv list (never through a shell),
with an environment made only of PATH, the names the C{action-env} key
lists (their values taken from the daemon's environment) and, for a
knock's actions, the three C{KNOCKER_*} values; its output captured up to
a bound, and killed if it outlives the timeout.
"""

import fcntl
import os
import signal

from attrs import frozen
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from knocker.daemon.proctree import descendants, kill_if_same

OUTPUT_LIMIT = 64 * 1024
PIPE_GRACE = 0.2  # seconds to collect output after the program exits
EXIT_POLL = 0.05  # seconds between exit checks where there is no pidfd

log = Logger()


@frozen
class ActionResult:
    argv: tuple[str, ...]
    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    spawn_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class ProcessRunner:
    """
    Runs programs with C{os.posix_spawn}, each in a session of its own so
    that a timeout kills it and whatever it started; the reactor watches its
    output pipes and, through a pidfd, its exit.

    Not C{reactor.spawnProcess}: that lists and C{fcntl}s every open
    descriptor at each spawn, which with a pool of 10,000 ports holds the
    reactor for 15 ms per action (0.4 ms with 100; C{posix_spawn} itself
    takes 0.1-0.2 ms), and it can start a session only by exec'ing setsid(1)
    first, another 0.8 ms before the action runs.  Instead every descriptor
    but 0-2 is made close-on-exec once, when the runner is made (see
    L{_no_inherited_descriptors}), and the child gets only the three it is
    given.
    """

    def __init__(self, reactor, timeout: float, use_pidfd: bool = True):
        self._reactor = reactor
        self._timeout = timeout
        self._use_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        # Read once: asking for all 64 dispositions took 0.1 ms of every
        # knock, and nothing in the daemon ignores a signal after it starts.
        self._ignored = ignored_signals()
        _no_inherited_descriptors()

    def run(self, argv: list[str], env: dict[str, str]) -> defer.Deferred:
        """
        @return: a L{Deferred} that fires with an L{ActionResult}, never errs.
        """
        try:
            child = _Child(self._reactor, list(argv), env, self._timeout, self._use_pidfd,
                           self._ignored)
        except Exception as failure:  # OSError, or a bad argv (TypeError)
            return defer.succeed(
                ActionResult(tuple(argv), None, None, False, "", "", spawn_error=str(failure))
            )
        return child.done


def _no_inherited_descriptors() -> None:
    """
    Make every descriptor above 2 open now close-on-exec.  The daemon may
    have inherited some from whatever started it; those it opens itself
    are close-on-exec already (Python's, Twisted's and SQLite's alike).
    """
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            fds = [int(name) for name in os.listdir(directory) if name.isdigit()]
            break
        except OSError:
            continue
    else:  # no listing: try every number the limit allows
        import resource

        fds = range(3, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 20))
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # not open (or the listing's own descriptor, closed by now)


def run_blocking(argv: list[str], env: dict[str, str], timeout: float,
                 runs_as: tuple[int, int] | None = None) -> ActionResult:
    """
    L{_run_blocking}, with SIGCHLD at its default while it runs: ignored
    (as whatever started the daemon may leave it), the kernel reaps the
    program itself, and then its exit status is lost and what it left in
    its process group cannot safely be killed (its group id may be
    anyone's by then).
    """
    restore = None
    try:
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            restore = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread: as it is
        pass
    try:
        return _run_blocking(argv, env, timeout, runs_as)
    finally:
        if restore is not None:
            signal.signal(signal.SIGCHLD, restore)


def _run_blocking(argv: list[str], env: dict[str, str], timeout: float,
                  runs_as: tuple[int, int] | None = None) -> ActionResult:
    """
    Run C{argv} to its end outside any reactor (a start that is being
    refused), as L{ProcessRunner} starts a program (its own session, the
    signals this process ignores reset), its output kept as the runner
    keeps it, for the audit log; killed with its session past C{timeout}.

    @param runs_as: C{(uid, gid)} to run it as, when that is not this
        process's (twistd's C{--uid}, which takes effect only after the
        start): never as root in its stead.  Then it is started as twistd
        would have started it, with that user's groups (initgroups), by
        C{subprocess}, which resets only SIGPIPE of the signals ignored.
    """
    _no_inherited_descriptors()  # (subprocess, below, closes them itself)
    if runs_as is not None and runs_as != (os.geteuid(), os.getegid()):
        import pwd
        import subprocess

        try:
            groups = os.getgrouplist(pwd.getpwuid(runs_as[0]).pw_name, runs_as[1])
        except (KeyError, OSError):
            groups = []  # a uid with no name: its own group alone, as initgroups cannot
        try:
            process = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, user=runs_as[0],
                group=runs_as[1], extra_groups=groups)
        except (OSError, ValueError) as error:
            return ActionResult(tuple(argv), None, None, False, "", "", spawn_error=str(error))
        with process.stdout, process.stderr:
            result, status = _collect(tuple(argv), process.pid,
                                      [process.stdout.fileno(), process.stderr.fileno()],
                                      timeout)
        # Reaped here: Popen must not wait for it again, nor warn that it runs.
        process.returncode = status if status < 0 else os.waitstatus_to_exitcode(status)
        return result
    pipes = []
    try:
        for _ in range(2):
            pipes.extend(_pipe())
        (out_r, out_w), (err_r, err_w) = pipes[:2], pipes[2:]
        try:
            pid = _spawn(list(argv), env, out_w, err_w, ignored_signals())
        finally:
            for fd in (out_w, err_w):
                pipes.remove(fd)
                os.close(fd)
        return _collect(tuple(argv), pid, [out_r, err_r], timeout)[0]
    except (OSError, TypeError, ValueError) as error:  # out of descriptors, a bad argv
        return ActionResult(tuple(argv), None, None, False, "", "", spawn_error=str(error))
    finally:
        for fd in pipes:
            os.close(fd)


def _collect(argv: tuple, pid: int, pipes: list[int], timeout: float) -> tuple[ActionResult,
                                                                              int]:
    """
    Wait for C{pid}, reading its stdout and stderr (C{pipes}, left open
    for the caller to close) as L{_Child} does in the reactor: the first
    L{OUTPUT_LIMIT} bytes of each, a kill of its session at C{timeout}, and
    L{PIPE_GRACE} after its exit for a child it left in the background
    holding them.  Returns the result and the raw wait status (-1 if
    another reaped it: SIGCHLD ignored by whatever started the daemon).
    """
    import select
    import time

    kept = {fd: bytearray() for fd in pipes}
    pipes = list(pipes)
    poller = select.poll()
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    status, timed_out, exited_at = None, False, None
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if status is None:
            done, found = _reap_ended(pid)
            if done:
                status, exited_at = found, now
            elif now >= deadline:
                timed_out = True
                refused = kill_session(pid)
                if refused is not None:
                    _say_unkillable(argv, pid, timeout, refused)
                status, exited_at = _wait_for(pid, 0)[1], now
        if status is not None and (not pipes or now - exited_at >= PIPE_GRACE):
            break
        # poll, not select: a daemon with a big pool has descriptors past 1024
        for fd, _event in poller.poll(10):
            data = os.read(fd, 65536)
            if not data:
                pipes.remove(fd)
                poller.unregister(fd)
                continue
            buffer = kept[fd]
            buffer.extend(data[: max(0, OUTPUT_LIMIT - len(buffer))])  # read on, keep the first
    out, err = (bytes(kept[fd]).decode("utf-8", "replace") for fd in kept)
    exited = status >= 0 and os.WIFEXITED(status)
    killed = status >= 0 and os.WIFSIGNALED(status)
    return ActionResult(argv, os.WEXITSTATUS(status) if exited else None,
                        os.WTERMSIG(status) if killed else None, timed_out, out, err), status


def _wait_for(pid: int, options: int) -> tuple[int, int]:
    """C{os.waitpid}, with C{(pid, -1)} when something else reaped it."""
    try:
        return os.waitpid(pid, options)
    except ChildProcessError:
        return pid, -1


def _reap_ended(pid: int) -> tuple[int, int]:
    """
    C{(pid, status)} if the program C{pid} has ended, C{(0, 0)} if it
    runs: as L{_wait_for} with C{WNOHANG}, but before reaping it, kill
    whatever it left running in its process group.  An action is over when
    its program is (later work is on-close's), and until its leader is
    reaped the group's id cannot name anyone else's processes.
    """
    try:
        ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return pid, -1
    if ended is None:
        return 0, 0
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:  # none left
        pass
    return _wait_for(pid, 0)


def script_fields(result: ActionResult) -> dict:
    """A program's result as the audit log's C{script} line gives it."""
    return dict(exit_code=result.exit_code, signal=result.signal, timed_out=result.timed_out,
                stdout=result.stdout[-2000:], stderr=result.stderr[-2000:],
                **({"error": result.spawn_error} if result.spawn_error else {}))


def kill_session(pid: int) -> PermissionError | None:
    """
    Kill a program started in a session of its own, and everything it
    started: its process group, and the descendants that left the group
    with a session of their own (setsid), found first through their
    parent links, which still lead here.

    @return: the refusal, if the program itself could not be killed: it
        made itself another user's (C{sudo} does, as root), and this
        daemon runs as a user of its own.  It runs on until it ends.
    """
    strays = descendants(pid)
    refused = None
    try:
        # The program first, on its own: killing its group succeeds if any
        # member could be killed, and would hide that it could not.
        os.kill(pid, signal.SIGKILL)
    except PermissionError as error:
        refused = error
    except OSError:  # gone already
        pass
    try:
        os.killpg(pid, signal.SIGKILL)  # the session's leader: its group is its pid
    except OSError:  # gone already, or no longer ours to kill
        pass
    for stray, started in strays:
        kill_if_same(stray, started)
    return refused


def _say_unkillable(argv, pid: int, timeout: float, error: PermissionError) -> None:
    log.warn("{program} (pid {pid}) is still running after {timeout}s and cannot be killed "
             "({error}): it made itself another user's (a setuid program, sudo), and this "
             "daemon's user may not kill that user's processes; it is waited for until it ends",
             program=argv[0], pid=pid, timeout=timeout, error=error.strerror)


def ignored_signals() -> list[int]:
    """
    The signals this process ignores (SIGPIPE, at least: Python does), which
    a program it starts must not inherit ignored.
    """
    return [
        number for number in range(1, signal.NSIG)
        if number not in (signal.SIGKILL, signal.SIGSTOP)
        and signal.getsignal(number) == signal.SIG_IGN
    ]


def _spawn(argv: list[str], env: dict[str, str], stdout: int, stderr: int,
           ignored: list[int]) -> int:
    """
    Start C{argv} in a new session with stdin from /dev/null, and the signal
    mask and the C{ignored} dispositions reset.
    """
    return os.posix_spawn(
        argv[0], argv, env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        ],
        setsid=True,
        setsigmask=(),
        setsigdef=ignored,
    )


def _pipe() -> tuple[int, int]:
    """
    A pipe whose ends are not 0-2, so that the child's dup2 onto 1 and 2
    always makes a new, inheritable descriptor.
    """
    ends = list(os.pipe())
    try:
        for i, fd in enumerate(ends):
            if fd < 3:
                ends[i] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                os.close(fd)
    except OSError:
        for fd in ends:
            os.close(fd)
        raise
    return ends[0], ends[1]


@implementer(IReadDescriptor)
class _Watch:
    """
    A descriptor in the reactor that calls C{on_ready} when readable.
    """

    def __init__(self, reactor, fd: int, on_ready):
        self._reactor = reactor
        self.fd = fd
        self._on_ready = on_ready
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "action"

    def doRead(self):
        self._on_ready()

    def close(self) -> None:
        if self.fd >= 0:
            self._reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1

    def connectionLost(self, reason):
        # The reactor dropped us without a doRead (a pipe's writers all
        # gone is a hang-up, not a read): the owner reads the end itself.
        self._on_ready()


class _Child:
    """
    One running program: its output collected up to L{OUTPUT_LIMIT} a
    stream, its exit status, and a kill at the timeout.  C{done} fires once
    it has exited and its pipes are closed (or L{PIPE_GRACE} after it
    exited, when a child it left in the background still holds them).
    """

    def __init__(self, reactor, argv, env, timeout, use_pidfd, ignored):
        self.done = defer.Deferred()
        self._reactor = reactor
        self._argv = tuple(argv)
        self._timeout = timeout
        self._status = None
        self._timed_out = False
        self._grace = None
        out_r, out_w = _pipe()
        try:
            err_r, err_w = _pipe()
        except OSError:
            os.close(out_r)
            os.close(out_w)
            raise
        try:
            self.pid = _spawn(argv, env, out_w, err_w, ignored)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._stdout, self._stderr = bytearray(), bytearray()
        self._pipes = []
        self._exit_watch = self._poll = self._timer = None
        try:
            for fd, buffer in ((out_r, self._stdout), (err_r, self._stderr)):
                os.set_blocking(fd, False)
                self._pipes.append(_Watch(reactor, fd, lambda fd=fd, b=buffer: self._read(fd, b)))
            self._timer = reactor.callLater(timeout, self._kill)
            pidfd = None
            if use_pidfd:
                try:
                    pidfd = os.pidfd_open(self.pid)
                except OSError:  # a kernel or sandbox without pidfds
                    pass
            if pidfd is not None:
                try:
                    self._exit_watch = _Watch(reactor, pidfd, self._reap)
                except BaseException:
                    os.close(pidfd)
                    raise
            else:
                self._poll = reactor.callLater(EXIT_POLL, self._reap)
        except BaseException:
            self._abandon(out_r, err_r)
            raise

    def _abandon(self, *fds):
        """
        Watching the program failed after it started (the reactor refused a
        descriptor, say): kill it and let go of everything, so the caller's
        "could not start" is true.
        """
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        watched = {watch.fd for watch in self._pipes}
        for watch in self._pipes + [self._exit_watch]:
            if watch is not None:
                watch.close()
        for fd in fds:
            if fd not in watched:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for timer in (self._timer, self._poll):
            if timer is not None and timer.active():
                timer.cancel()
        try:
            os.waitpid(self.pid, 0)  # killed: at once
        except ChildProcessError:
            pass

    def _read(self, fd, buffer):
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            # Read past the limit too, so the program never blocks on a
            # full pipe; keep only the first OUTPUT_LIMIT bytes.
            buffer.extend(data[: max(0, OUTPUT_LIMIT - len(buffer))])
            return
        self._close_pipe(fd)
        self._finish()

    def _close_pipe(self, fd):
        for watch in self._pipes:
            if watch.fd == fd:
                watch.close()
                self._pipes.remove(watch)
                return

    def _reap(self):
        self._poll = None
        pid, status = self._wait()
        if pid == 0:
            if self._exit_watch is None:
                self._poll = self._reactor.callLater(EXIT_POLL, self._reap)
            return
        self._exited(status)

    def _wait(self) -> tuple[int, int]:
        """
        C{(pid, status)} if the program has ended (status -1 if someone
        else reaped it), C{(0, 0)} if it still runs; what it left in its
        group is killed as it is reaped.
        """
        return _reap_ended(self.pid)

    def _exited(self, status: int) -> None:
        self._status = status
        if self._exit_watch is not None:
            self._exit_watch.close()
        for timer in (self._timer, self._poll):
            if timer is not None and timer.active():
                timer.cancel()
        # A child it left in the background may still hold our pipes: take
        # what is already written, then stop reading.
        self._grace = self._reactor.callLater(PIPE_GRACE, self._close_pipes)
        self._finish()

    def _close_pipes(self):
        for watch in list(self._pipes):
            self._close_pipe(watch.fd)
        self._finish()

    def _kill(self):
        pid, status = self._wait()
        if pid:
            # It ended in time, and the reactor had not yet said so.
            self._exited(status)
            return
        self._timed_out = True
        refused = kill_session(self.pid)
        if refused is not None:
            _say_unkillable(self._argv, self.pid, self._timeout, refused)
        # Anything that escaped the group may hold our pipes; do not wait.
        self._close_pipes()

    def _finish(self):
        if self._status is None or self._pipes or self.done.called:
            return
        for timer in (self._timer, self._grace):
            if timer is not None and timer.active():
                timer.cancel()
        status = self._status
        exited = status >= 0 and os.WIFEXITED(status)
        killed = status >= 0 and os.WIFSIGNALED(status)
        self.done.callback(
            ActionResult(
                argv=self._argv,
                exit_code=os.WEXITSTATUS(status) if exited else None,
                signal=os.WTERMSIG(status) if killed else None,
                timed_out=self._timed_out,
                stdout=self._stdout.decode("utf-8", "replace"),
                stderr=self._stderr.decode("utf-8", "replace"),
            )
        )


class MemoryRunner:
    """
    A runner for tests: records each call and answers with results the test
    gives, at once or when the test fires C{pending}.
    """

    def __init__(self, exit_code: int = 0, hold: bool = False):
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.exit_code = exit_code
        self.hold = hold
        self.pending: list[tuple[defer.Deferred, list[str]]] = []

    def run(self, argv, env):
        self.calls.append((list(argv), dict(env)))
        d = defer.Deferred()
        if self.hold:
            self.pending.append((d, list(argv)))
        else:
            d.callback(ActionResult(tuple(argv), self.exit_code, None, False, "", ""))
        return d

    def finish(self, exit_code: int = 0) -> None:
        d, argv = self.pending.pop(0)
        d.callback(ActionResult(tuple(argv), exit_code, None, False, "", ""))


