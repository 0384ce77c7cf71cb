"""
Configuration (SPEC section 9): INI text in, frozen config out.

L{parse_server_config} and L{parse_client_config} are pure; C{load_*} read
the file.  Command-line overrides go through the same checks as the file, so
every bad key or value is a L{ConfigError} naming where it came from, the
key, and what is allowed.  Relative paths in a file are taken relative to
that file's folder (a daemon's working directory is rarely the operator's);
relative paths on the command line, relative to the working directory.
"""

import configparser
import os
import re
from typing import Callable

from attrs import evolve, frozen

class ConfigError(ValueError):
    """
    A bad configuration; the message names the source, key and what is allowed.
    """


@frozen
class ServerConfig:
    central: str = "tcp:7000:interface=127.0.0.1"
    interface: str = "127.0.0.1"
    state_dir: str = "knocker-state"
    pool_size: int = 100
    pool_range: tuple[int, int] = (10000, 32000)
    knocks: int = 1000
    ports_per_knock: int = 6
    knock_window: int = 10
    lockout: float = 60.0
    lockout_scope: str = "global"
    max_concurrent: int = 1
    max_connections: int = 64
    handshake_timeout: float = 5.0
    on_success: str | None = None
    on_close: str | None = None
    open_duration: float = 300.0
    script_timeout: float = 10.0
    audit_log: str | None = None

    @property
    def audit_path(self) -> str:
        return self.audit_log or os.path.join(self.state_dir, "audit.log")


@frozen
class ClientConfig:
    server: str = "tcp:host=127.0.0.1:port=7000"
    knock_file: str | None = None
    log_file: str = "~/.knocker/client.log"
    timeout: float = 60.0
    connect_timeout: float = 5.0
    busy_retries: int = 3


Parser = Callable[[str], object]


def _number(kind, low, high) -> tuple[Parser, str]:
    allowed = f"a {'whole ' if kind is int else ''}number from {low} to {high}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(allowed) from None
        if not low <= value <= high or value != value:
            raise ValueError(allowed)
        return value

    return parse, allowed


def _choice(*names: str) -> tuple[Parser, str]:
    allowed = "one of " + ", ".join(names)

    def parse(text: str):
        if text not in names:
            raise ValueError(allowed)
        return text

    return parse, allowed


def _port_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"([0-9]{1,5})\s*-\s*([0-9]{1,5})", text)
    if not match:
        raise ValueError("LOW-HIGH, two ports from 1 to 65535 with LOW <= HIGH")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1 <= low <= high <= 65535:
        raise ValueError("LOW-HIGH, two ports from 1 to 65535 with LOW <= HIGH")
    return low, high


def _endpoint(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9]+:\S+", text):
        raise ValueError("a Twisted endpoint string such as tcp:7000")
    return text


def _address(text: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("an IPv4 or IPv6 address such as 0.0.0.0 or ::") from None
    return text


def _text(text: str) -> str:
    if not text:
        raise ValueError("a non-empty value")
    return text


_PATH = (_text, "a path")
_SERVER_KEYS: dict[str, tuple[str, tuple[Parser, str], bool]] = {
    # key: (attribute, (parser, what is allowed), is a path)
    "central": ("central", (_endpoint, "a Twisted server endpoint string such as tcp:7000"), False),
    "interface": ("interface", (_address, "an IPv4 or IPv6 address"), False),
    "state-dir": ("state_dir", _PATH, True),
    "pool-size": ("pool_size", _number(int, 1, 30000), False),
    "pool-range": ("pool_range", (_port_range, "LOW-HIGH"), False),
    "knocks": ("knocks", _number(int, 1, 1_000_000), False),
    "ports-per-knock": ("ports_per_knock", _number(int, 1, 64), False),
    "knock-window": ("knock_window", _number(int, 1, 3600), False),
    "lockout": ("lockout", _number(float, 0, 86400), False),
    "lockout-scope": ("lockout_scope", _choice("global", "source"), False),
    "max-concurrent": ("max_concurrent", _number(int, 1, 10000), False),
    "max-connections": ("max_connections", _number(int, 1, 100000), False),
    "handshake-timeout": ("handshake_timeout", _number(float, 0.1, 300), False),
    "on-success": ("on_success", _PATH, True),
    "on-close": ("on_close", _PATH, True),
    "open-duration": ("open_duration", _number(float, 0, 31_536_000), False),
    "script-timeout": ("script_timeout", _number(float, 0.1, 3600), False),
    "audit-log": ("audit_log", _PATH, True),
}
_CLIENT_KEYS: dict[str, tuple[str, tuple[Parser, str], bool]] = {
    "server": ("server", (_endpoint, "a Twisted client endpoint string such as tcp:host=example.org:port=7000"), False),
    "knock-file": ("knock_file", _PATH, True),
    "log-file": ("log_file", _PATH, True),
    "timeout": ("timeout", _number(float, 1, 3600), False),
    "connect-timeout": ("connect_timeout", _number(float, 0.1, 300), False),
    "busy-retries": ("busy_retries", _number(int, 0, 100), False),
}
SERVER_KEYS = tuple(_SERVER_KEYS)
CLIENT_KEYS = tuple(_CLIENT_KEYS)


def parse_server_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ServerConfig:
    config = _parse(text, source, "server", _SERVER_KEYS, ServerConfig(), overrides)
    if overrides and {"pool-size", "pool-range", "ports-per-knock"} & set(overrides):
        source = "command line" if source == "<defaults>" else f"{source} and command line"
    low, high = config.pool_range
    if config.pool_size > high - low + 1:
        raise ConfigError(
            f"{source}: [server] pool-size = {config.pool_size} does not fit in "
            f"pool-range = {low}-{high}; allowed: at most {high - low + 1}"
        )
    if config.ports_per_knock > config.pool_size:
        raise ConfigError(
            f"{source}: [server] ports-per-knock = {config.ports_per_knock} is more "
            f"than pool-size = {config.pool_size}"
        )
    return config


def parse_client_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ClientConfig:
    return _parse(text, source, "client", _CLIENT_KEYS, ClientConfig(), overrides)


def load_server_config(path: str | None, overrides: dict[str, str] | None = None) -> ServerConfig:
    return parse_server_config(*_read(path), overrides=overrides)


def load_client_config(path: str | None, overrides: dict[str, str] | None = None) -> ClientConfig:
    return parse_client_config(*_read(path), overrides=overrides)


def _read(path: str | None) -> tuple[str, str]:
    if path is None:
        return "", "<defaults>"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), path
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error}") from None


def _parse(text, source, section, keys, defaults, overrides):
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive: "Lockout" is a typo
    try:
        parser.read_string(text, source=source)
    except configparser.Error as error:
        raise ConfigError(f"{source}: not a valid INI file: {error}") from None
    extra = [name for name in parser.sections() if name != section]
    if extra:
        raise ConfigError(
            f"{source}: unknown section [{extra[0]}]; allowed: [{section}]"
        )
    base = os.path.dirname(os.path.abspath(source)) if source != "<defaults>" else None
    values = {}
    if parser.has_section(section):
        for key, raw in parser.items(section):
            values[key] = _value(source, section, keys, key, raw.strip(), base)
    for key, raw in (overrides or {}).items():
        values[key] = _value("command line", section, keys, key, raw.strip(), None)
    return evolve(defaults, **{keys[key][0]: value for key, value in values.items()})


def _value(source, section, keys, key, raw, base):
    if key not in keys:
        raise ConfigError(
            f"{source}: [{section}] unknown key {key!r}; allowed: {', '.join(keys)}"
        )
    _, (parse, allowed), is_path = keys[key]
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(
            f"{source}: [{section}] {key} = {raw!r} is not allowed; allowed: {allowed}"
        ) from None
    if is_path:
        value = os.path.expanduser(value)
        if base is not None and not os.path.isabs(value):
            value = os.path.join(base, value)
    return value

