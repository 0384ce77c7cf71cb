"""
C{twistd knockclient}: knock once, log the outcome, stop the reactor.

twistd itself exits 0 whatever the knock's outcome (the service cannot
set its exit status); the outcome is in the log.  Use C{knocker knock}
where a script needs the exit status.  Settings it cannot knock with end
it at once, with status 1 and the problem on stderr.
"""

import sys

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from knocker.core.config import CLIENT_TABLE, ConfigError, load_client_config, refused

log = Logger()


class Options(usage.Options):
    """
    The same options as C{knocker knock}, read by the same parser
    (L{knocker.client.command.parse_knock_args}); the table below only
    feeds C{--help}.
    """

    synopsis = "[--config FILE] [--KEY VALUE ...]"
    longdesc = (
        "Knock once on a knocker server and stop.  Settings come from the "
        "[client] section of --config (see etc/knockclient.conf); any key "
        "can be overridden as --KEY VALUE.  The outcome is logged; twistd "
        "exits 0 whatever the outcome (1 for settings it cannot use), so use "
        "'knocker knock' for the outcome as an exit status."
    )
    optParameters = [["config", "c", None, "INI file with a [client] section."]] + [
        [key.name, None, None, f"override '{key.name}': {key.allowed}"] for key in CLIENT_TABLE
    ]

    def parseOptions(self, options=None):
        from knocker.client.command import parse_knock_args

        if options is None:
            options = sys.argv[1:]
        if {"-h", "--help"} & set(options):
            return usage.Options.parseOptions(self, ["--help"])
        options = ["--config" if each == "-c" else each for each in options]
        try:
            path, overrides, _ = parse_knock_args(options)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["config"] = path
        self.update(overrides)
        self.postOptions()

    def postOptions(self):
        from knocker.client.command import check_servers, load_knockfile

        overrides = {key.name: self[key.name] for key in CLIENT_TABLE
                     if self.get(key.name) is not None}
        try:
            # As knocker knock: only the usable endpoints, or a clear no.
            self.config = check_servers(load_client_config(self["config"], overrides))
            self.knockfile = load_knockfile(self.config).load()
        except (ConfigError, ValueError) as error:
            raise refused("twistd knockclient", error) from None


class KnockOnceService(service.Service):
    name = "knockclient"

    def __init__(self, config, knockfile, reactor):
        self._config = config
        self._knockfile = knockfile
        self._reactor = reactor
        self.result = None

    def startService(self):
        service.Service.startService(self)
        from knocker.client.resolver import DetachedResolver
        from knocker.client.twisted_driver import knock

        # A lookup that never ends must not hold the reactor's stop (see there).
        self._reactor.installNameResolver(DetachedResolver(self._reactor))
        d = knock(self._reactor, self._config, self._knockfile)
        d.addCallback(self._done)
        d.addErrback(lambda failure: log.failure("knock failed", failure))
        d.addBoth(lambda _: self._reactor.stop())

    def _done(self, result):
        self.result = result
        level = log.info if result.outcome.exit_code == 0 else log.error
        level("knock {index} ({ports}): {message}",
              index=result.index, ports=result.ports, message=result.message())


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    return KnockOnceService(options.config, options.knockfile, reactor)
