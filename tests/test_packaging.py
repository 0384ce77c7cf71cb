"""
What `pip install .` puts on a machine: every package of the source tree.
A package left out of setup.cfg works in the tree (tests import it from
there) and fails only once installed, as `knocker enroll` did.
"""

import configparser
import os

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackagingTests(TestCase):
    def test_every_package_is_installed(self):
        config = configparser.ConfigParser()
        config.read(os.path.join(ROOT, "setup.cfg"))
        listed = set(config["options"]["packages"].split())
        found = set()
        for folder, _, files in os.walk(os.path.join(ROOT, "knocker")):
            if "__init__.py" in files:
                found.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
        self.assertEqual(found - listed, set(), "packages missing from setup.cfg")
        self.assertEqual({p for p in listed if p.startswith("knocker")} - found, set(),
                         "setup.cfg lists packages that do not exist")
