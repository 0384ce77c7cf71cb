"""
Running the administrator's programs (SPEC section 6).

A program is started directly from an argv list (never through a shell),
with a small fixed environment, its output captured up to a bound, and
killed if it outlives the timeout.
"""

import os
import signal

from attrs import frozen
from twisted.internet import defer, error, protocol

OUTPUT_LIMIT = 64 * 1024
PIPE_GRACE = 0.2  # seconds to collect output after the program exits
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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


def action_env(ip: str, client: str, index: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "KNOCKER_CLIENT_IP": ip,
        "KNOCKER_CLIENT": client,
        "KNOCKER_INDEX": str(index),
    }


class _Capture(protocol.ProcessProtocol):
    def __init__(self, reactor, argv, timeout):
        self.done = defer.Deferred()
        self.pid = None
        self._reactor = reactor
        self._argv = argv
        self._out = {1: bytearray(), 2: bytearray()}
        self._timed_out = False
        self._exit = None
        self._grace = None
        self._timer = reactor.callLater(timeout, self._kill)

    def childDataReceived(self, fd, data):
        buffer = self._out.get(fd)
        if buffer is not None and len(buffer) < OUTPUT_LIMIT:
            buffer.extend(data[: OUTPUT_LIMIT - len(buffer)])

    def processExited(self, reason):
        # The program is done; a child it left in the background may still
        # hold our pipes.  Take what is already written, then stop reading.
        self._exit = reason.value
        self._grace = self._reactor.callLater(PIPE_GRACE, self._close_pipes)

    def _close_pipes(self):
        if self.transport is not None:
            self.transport.loseConnection()

    def _kill(self):
        self._timed_out = True
        pid = self.pid  # recorded at spawn: the transport forgets it once reaped
        if pid is not None:
            try:
                # The program runs in its own session (see ProcessRunner), so
                # this also ends whatever it started in the background.
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        # A child that escaped the group may still hold our pipes open; do
        # not wait for it.
        if self.transport is not None:
            self.transport.loseConnection()

    def processEnded(self, reason):
        for timer in (self._timer, self._grace):
            if timer is not None and timer.active():
                timer.cancel()
        value = self._exit if self._exit is not None else reason.value
        self.done.callback(
            ActionResult(
                argv=tuple(self._argv),
                exit_code=getattr(value, "exitCode", None),
                signal=getattr(value, "signal", None),
                timed_out=self._timed_out,
                stdout=self._out[1].decode("utf-8", "replace"),
                stderr=self._out[2].decode("utf-8", "replace"),
            )
        )


class ProcessRunner:
    """
    Runs programs with the reactor's process support, each in a session of
    its own (through setsid(1), which execs in place: the argv the program
    sees is unchanged) so that a timeout kills it and its children.
    """

    def __init__(self, reactor, timeout: float):
        self._reactor = reactor
        self._timeout = timeout
        import shutil

        setsid = shutil.which("setsid")
        self._prefix = [setsid] if setsid else []

    def run(self, argv: list[str], env: dict[str, str]) -> defer.Deferred:
        """
        @return: a L{Deferred} that fires with an L{ActionResult}, never errs.
        """
        capture = _Capture(self._reactor, argv, self._timeout)
        try:
            command = self._prefix + list(argv)
            self._reactor.spawnProcess(
                capture, command[0], args=command, env=env, path=None,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception as failure:  # OSError, or a bad argv (TypeError)
            capture._timer.cancel()
            return defer.succeed(
                ActionResult(tuple(argv), None, None, False, "", "", spawn_error=str(failure))
            )
        capture.pid = capture.transport.pid
        capture.transport.closeStdin()
        return capture.done


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


