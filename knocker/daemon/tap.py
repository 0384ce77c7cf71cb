"""
C{twistd knockserver}: options and service wiring only.
"""

from twisted.python import usage

from knocker.core.config import ConfigError, refused
from knocker.core.serverconfig import SERVER_KEYS, load_server_config


class Options(usage.Options):
    synopsis = "[--config FILE] [--KEY VALUE ...]"
    longdesc = (
        "Run the knocker daemon: the central port and the pool of knock and "
        "decoy ports.  Settings come from the [server] section of --config "
        "(see etc/knockserver.conf); any key can be overridden on the command "
        "line as --KEY VALUE.  With no configuration it serves on 127.0.0.1 "
        "with ./knocker-state and a success action that only logs."
    )
    optParameters = [["config", "c", None, "INI file with a [server] section."]] + [
        [key, None, None, f"override '{key}' from the configuration file"] for key in SERVER_KEYS
    ]

    def postOptions(self):
        overrides = {key: self[key] for key in SERVER_KEYS if self[key] is not None}
        try:
            if self["config"] is not None:
                check_config_file(self["config"])
            self.config = load_server_config(self["config"], overrides)
            check_programs(self.config)
        except ConfigError as error:
            raise refused("twistd knockserver", error) from None


def check_programs(config) -> None:
    """
    Refuse to start with an action program that is missing, not executable,
    or open to change by anyone but root and the daemon's user.
    """
    from knocker.daemon.paths import PathError, check_program

    for key, path in (("on-success", config.on_success), ("on-close", config.on_close)):
        try:
            check_program(key, path)
        except PathError as error:
            raise ConfigError(str(error)) from None


def check_config_file(path: str) -> None:
    """
    The configuration names the programs the daemon runs: refuse one that
    anyone but root and the daemon's user could change.  A missing file is
    left to the loader, which says so.
    """
    import os

    from knocker.daemon.paths import PathError, check_trusted

    if not os.path.exists(path):
        return
    try:
        check_trusted("--config", path)
    except PathError as error:
        raise ConfigError(str(error)) from None


def makeService(options, reactor=None):
    from knocker.daemon.service import KnockServerService

    if reactor is None:
        from twisted.internet import reactor
    return KnockServerService(options.config, reactor)
