"""
The console costs the knock path nothing: `knocker knock` loads none of it,
and a daemon with `admin =` (off) does not load it either.
"""

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.processes import ROOT, environment

HEAVY = ("knocker.console", "prometheus_client", "twisted.web")


def imported(code: str) -> str:
    """
    The import log of C{code}, which must end by printing "done".
    """
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code + "\nprint('done')"],
                          cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip().endswith("done"), done.stdout + done.stderr[-2000:]
    return done.stderr


class ImportTests(SynchronousTestCase):
    def test_knock_loads_no_console(self):
        log = imported("import sys\nfrom knocker.main import main\n"
                       "try:\n    main(['knock', '--help'])\nexcept SystemExit:\n    pass")
        self.assertIn("knocker.client", log, "the probe must see the knock's imports")
        for name in HEAVY:
            self.assertNotIn(name, log)

    def test_daemon_without_console_loads_none(self):
        log = imported(
            "import tempfile\nfrom twisted.internet.testing import MemoryReactorClock\n"
            "from knocker.core.serverconfig import parse_server_config\n"
            "from knocker.daemon.service import KnockServerService\n"
            "d = tempfile.mkdtemp()\n"
            "config = parse_server_config(overrides={'state-dir': d, 'admin': '',\n"
            "    'central': 'tcp:0', 'pool-size': '3', 'ports-per-knock': '2',\n"
            "    'pool-range': '40000-40100'})\n"
            "service = KnockServerService(config, MemoryReactorClock())\n"
            "service.privilegedStartService()\nservice.stopService()\n")
        self.assertIn("knocker.daemon.service", log)
        self.assertNotIn("knocker.console", log)
        self.assertNotIn("prometheus_client", log)
