"""
C{twistd knockclient}: knock once, log the outcome, stop the reactor.

twistd itself exits 0 whatever happens (the service cannot set its exit
status); the outcome is in the log.  Use C{knocker knock} where a script
needs the exit status.
"""

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from knocker.core.config import CLIENT_KEYS, ConfigError, load_client_config

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE] [--KEY VALUE ...]"
    longdesc = (
        "Knock once on a knocker server and stop.  Settings come from the "
        "[client] section of --config (see etc/knockclient.conf); any key "
        "can be overridden as --KEY VALUE.  The outcome is logged; twistd "
        "exits 0 regardless, so use 'knocker knock' for an exit status."
    )
    optParameters = [["config", "c", None, "INI file with a [client] section."]] + [
        [key, None, None, f"override '{key}' from the configuration file"] for key in CLIENT_KEYS
    ]

    def postOptions(self):
        from knocker.client.knock import load_knockfile

        overrides = {key: self[key] for key in CLIENT_KEYS if self[key] is not None}
        try:
            self.config = load_client_config(self["config"], overrides)
            self.knockfile = load_knockfile(self.config).load()
        except (ConfigError, ValueError) as error:
            raise usage.UsageError(str(error)) from None


class KnockOnceService(service.Service):
    name = "knockclient"

    def __init__(self, config, knockfile, reactor):
        self._config = config
        self._knockfile = knockfile
        self._reactor = reactor
        self.result = None

    def startService(self):
        service.Service.startService(self)
        from knocker.client.twisted_driver import knock

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
