"""
The knock coroutine shared by C{knocker knock} and C{twistd knockclient}.

The protocol decisions live in L{knocker.handshake.ClientHandshake}; this
module only moves its lines over a Twisted connection, knocks the granted
ports, and turns the server's last word into an L{Outcome} with an exit
status.
"""

import ipaddress
import json
import os
import random
import time
from enum import Enum

from attrs import evolve, frozen
from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from knocker import handshake as hs
from knocker.audit import iso_time
from knocker.files import ensure_private_dir

log = Logger()

BUSY_WAIT_CAP = 30.0


class Outcome(Enum):
    """
    Each way a knock can end, with the exit status C{knocker knock} gives.
    """

    OPEN = (0, "the server opened for us")
    UNREACHABLE = (3, "could not reach the server's central port")
    DENIED = (4, "the server denied the handshake (wrong or unknown client or secret)")
    LOCKED = (5, "the server is locked out after a failed attempt; try later")
    BUSY = (6, "the server stayed busy with another knock; try later")
    EXHAUSTED = (7, "every knock in the portknock file is used; generate a new file")
    WRONG_PORT = (8, "the server saw a wrong port (another party's hit, or a lost connection)")
    TIMEOUT = (9, "the knock did not finish within the server's window")
    LOCKED_OUT = (10, "a failed attempt by someone else locked the server out mid-knock")
    ACTION_FAILED = (11, "the knock was right but the server's on-success program failed")
    SERVER_ERROR = (12, "the server answered ERROR")
    BAD_SERVER = (13, "the server broke the protocol or failed the GRANT check")
    NO_VERDICT = (14, "no verdict: the connection dropped or the client timed out")

    @property
    def exit_code(self) -> int:
        return self.value[0]

    @property
    def meaning(self) -> str:
        return self.value[1]


_FAILS = {
    "wrong-port": Outcome.WRONG_PORT,
    "timeout": Outcome.TIMEOUT,
    "locked-out": Outcome.LOCKED_OUT,
    "action-failed": Outcome.ACTION_FAILED,
}


@frozen
class KnockResult:
    outcome: Outcome
    detail: str = ""
    index: int | None = None
    ports: tuple[int, ...] = ()
    attempts: int = 1
    retry_after: int | None = None

    def message(self) -> str:
        text = f"{self.outcome.name}: {self.outcome.meaning}"
        return f"{text} ({self.detail})" if self.detail else text


class _Lines(LineOnlyReceiver):
    """
    Central-port lines into a queue the coroutine awaits.
    """

    delimiter = b"\n"
    MAX_LENGTH = hs.MAX_LINE

    def __init__(self):
        self.lines = defer.DeferredQueue()
        self.closed = defer.Deferred()

    def lineReceived(self, line):
        self.lines.put(line)

    def lineLengthExceeded(self, line):
        self.lines.put(b"ERROR line-too-long")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lines.put(None)
        self.closed.callback(None)


class _KnockConnection(protocol.Protocol):
    """
    One knock hit: connected, then wait for the server to close.
    """

    def __init__(self):
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(None)


async def knock(reactor, config, knockfile, rng: random.Random | None = None) -> KnockResult:
    """
    Knock once, retrying BUSY up to C{config.busy_retries} times, and log
    the attempt to C{config.log_file}.
    """
    rng = rng or random.SystemRandom()
    started = time.time()
    attempts = 0
    while True:
        attempts += 1
        d = defer.ensureDeferred(_attempt(reactor, config, knockfile))
        d.addTimeout(config.timeout, reactor)
        try:
            result = await d
        except defer.TimeoutError:
            result = KnockResult(Outcome.NO_VERDICT, f"no answer within {config.timeout:g}s")
        result = evolve(result, attempts=attempts)
        if result.outcome is not Outcome.BUSY or attempts > config.busy_retries:
            break
        wait = min(BUSY_WAIT_CAP, result.retry_after * attempts) * rng.uniform(1.0, 1.5)
        log.info("server busy; retrying in {wait:.1f}s", wait=wait)
        await deferLater(reactor, wait)
    _log_attempt(config, knockfile.client, started, result)
    return result


async def _attempt(reactor, config, knockfile) -> KnockResult:
    machine = hs.ClientHandshake(knockfile)
    endpoint = endpoints.clientFromString(reactor, config.server)
    lines = _Lines()
    try:
        connecting = endpoints.connectProtocol(endpoint, lines)
        connecting.addTimeout(config.connect_timeout, reactor)
        await connecting
    except (error.ConnectError, error.DNSLookupError, defer.TimeoutError, OSError) as failure:
        return KnockResult(Outcome.UNREACHABLE, f"{config.server}: {failure}")
    index, ports = None, ()
    try:
        lines.sendLine(machine.hello().line[:-1])
        while True:
            line = await lines.lines.get()
            if line is None:
                return KnockResult(Outcome.NO_VERDICT, "connection closed", index, ports)
            action = machine.receive(line)
            if isinstance(action, hs.SendLine):
                lines.sendLine(action.line[:-1])
            elif isinstance(action, hs.KnockPorts):
                index, ports = action.index, action.ports
                host = lines.transport.getPeer().host
                log.info("granted knock {index}: knocking {host} ports {ports}",
                         index=index, host=host, ports=ports)
                for port in ports:
                    await _hit(reactor, host, port, config.connect_timeout)
            else:
                return _result(action.reply, index, ports)
    except hs.ProtocolError as failure:
        return KnockResult(Outcome.BAD_SERVER, str(failure), index, ports)
    except (error.ConnectError, defer.TimeoutError, OSError) as failure:
        return KnockResult(Outcome.NO_VERDICT, f"knock connection failed: {failure}", index, ports)
    finally:
        if lines.transport is not None:
            lines.transport.loseConnection()


async def _hit(reactor, host: str, port: int, timeout: float) -> None:
    if ipaddress.ip_address(host).version == 6:
        endpoint = endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    connection = await endpoints.connectProtocol(endpoint, _KnockConnection())
    await connection.closed


def _result(reply: hs.Reply, index, ports) -> KnockResult:
    match reply:
        case hs.Open():
            return KnockResult(Outcome.OPEN, "", index, ports)
        case hs.Fail(reason):
            return KnockResult(_FAILS.get(reason, Outcome.BAD_SERVER), reason, index, ports)
        case hs.Busy(seconds):
            return KnockResult(Outcome.BUSY, f"retry after {seconds}s", retry_after=seconds)
        case hs.Locked(seconds):
            return KnockResult(Outcome.LOCKED, f"retry after {seconds}s", retry_after=seconds)
        case hs.Denied():
            return KnockResult(Outcome.DENIED)
        case hs.Exhausted():
            return KnockResult(Outcome.EXHAUSTED)
        case hs.Error(reason):
            return KnockResult(Outcome.SERVER_ERROR, reason, index, ports)
    return KnockResult(Outcome.BAD_SERVER, repr(reply), index, ports)


def _log_attempt(config, client: str, started: float, result: KnockResult) -> None:
    entry = {
        "time": iso_time(started),
        "server": config.server,
        "client": client,
        "index": result.index,
        "ports": list(result.ports),
        "verdict": result.outcome.name.lower(),
        "detail": result.detail,
        "attempts": result.attempts,
        "seconds": round(time.time() - started, 4),
    }
    path = os.path.expanduser(config.log_file)
    try:
        ensure_private_dir(os.path.dirname(os.path.abspath(path)))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as failure:
        log.error("cannot write the client log {path}: {failure}", path=path, failure=failure)
