"""
C{twistd knockserver}: options and service wiring only.
"""

import os

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
        for key in PROGRAM_KEYS:
            # From where twistd was started (as a file's paths are from its
            # folder): the daemon may run in another (--rundir).
            if key in overrides:
                overrides[key] = os.path.abspath(os.path.expanduser(overrides[key]))
        parent = getattr(self, "parent", None)
        runs_as = self.runs_as = _runs_as(parent)
        try:
            if parent is not None and parent.get("euid") and runs_as is not None:
                # --euid sets the effective ids alone: the real ones stay
                # root's, and a program the daemon starts (bash, through
                # the shipped scripts' knocker-nft) takes them back.
                raise ConfigError("--euid leaves the real user root, and the programs the "
                                  "daemon starts could take it back: use --uid and --gid "
                                  "without --euid")
            if self["config"] is not None:
                check_config_file(self["config"], runs_as)
            self.config = load_server_config(self["config"], overrides)
            check_programs(self.config, runs_as)
        except ConfigError as error:
            raise refused("twistd knockserver", error) from None


PROGRAM_KEYS = ("on-success", "on-close", "on-check")


def _runs_as(twistd_options) -> tuple[int, int] | None:
    """
    C{(uid, gid)} twistd will switch to after reading the options
    (C{--uid}, C{--gid}, else the user's own group), or C{None} if it
    stays this process.
    """
    if twistd_options is None:
        return None
    try:
        uid, gid = twistd_options["uid"], twistd_options["gid"]
    except KeyError:
        return None
    if uid is None:
        return None if gid is None else (os.geteuid(), gid)
    if gid is None:
        import pwd

        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = os.getegid()
    return uid, gid


def check_programs(config, runs_as: tuple[int, int] | None = None) -> None:
    """
    Refuse to start with an action program that is missing, not executable,
    or open to change by anyone but root and the user the daemon runs as;
    or with a state directory open to change by anyone else.
    """
    from knocker.daemon.paths import PathError, check_program, check_state_trusted

    try:
        for key in PROGRAM_KEYS:
            check_program(key, getattr(config, key.replace("-", "_")), runs_as)
        check_state_trusted(config.state_dir, runs_as)
    except PathError as error:
        raise ConfigError(str(error)) from None


def check_config_file(path: str, runs_as: tuple[int, int] | None = None) -> None:
    """
    The configuration names the programs the daemon runs: refuse one that
    anyone but root and the daemon's user could change.  A missing file is
    left to the loader, which says so.
    """
    from knocker.daemon.paths import PathError, check_trusted

    if not os.path.exists(path):
        return
    try:
        check_trusted("--config", path, runs_as)
    except PathError as error:
        raise ConfigError(str(error)) from None


def makeService(options, reactor=None):
    import signal

    # SIGHUP (a reload: logrotate, `systemctl reload nftables`) ends a
    # process that has no handler for it, and the service installs its own
    # only once it has started, a second or so from now: a reload meanwhile
    # would kill a daemon that may have doors to close.  Until then it is
    # noted, and the service does what it asks once it has started.
    reloads: list[int] = []
    signal.signal(signal.SIGHUP, lambda number, frame: reloads.append(number))
    from knocker.daemon.service import KnockServerService

    if reactor is None:
        from twisted.internet import reactor
    twistd = getattr(options, "parent", None)
    daemonizes = twistd is not None and not twistd.get("nodaemon", True)
    return KnockServerService(options.config, reactor, runs_as=getattr(options, "runs_as", None),
                              early_reloads=reloads, daemonizes=daemonizes)
