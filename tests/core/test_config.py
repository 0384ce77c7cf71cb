"""
Configuration (docs/spec.md section 9): every key parsed, every error names the
source, the key and what is allowed.
"""

import os
import shutil
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.config import (
    CLIENT_KEYS,
    ClientConfig,
    ConfigError,
    load_client_config,
    parse_client_config,
    simple_ini,
)
from knocker.core.serverconfig import (
    SERVER_KEYS,
    ServerConfig,
    admin_endpoint,
    load_server_config,
    parse_server_config,
)

SOURCE = "/etc/knocker/knockserver.conf"
ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "etc")
CSOURCE = "/etc/knocker/knockclient.conf"


def tempdir(case) -> str:
    """
    A fresh folder removed after the test (outside the working directory,
    which under pytest is the repository).
    """
    folder = tempfile.mkdtemp(prefix="knocker-test-")
    case.addCleanup(shutil.rmtree, folder, True)
    return folder


def server(body: str, source=SOURCE, overrides=None) -> ServerConfig:
    return parse_server_config("[server]\n" + body, SOURCE if source is None else source, overrides)


def client(body: str, source=CSOURCE, overrides=None) -> ClientConfig:
    return parse_client_config("[client]\n" + body, source, overrides)


class ServerDefaultsTests(SynchronousTestCase):
    def test_defaults(self):
        config = parse_server_config()
        self.assertEqual(config, ServerConfig())
        self.assertEqual(config.pool_size, 100)
        self.assertEqual(config.pool_range, (10000, 32000))
        self.assertEqual(config.knocks, 1000)
        self.assertEqual(config.ports_per_knock, 6)
        self.assertEqual(config.lockout, 60)
        self.assertEqual(config.lockout_scope, "knock")
        self.assertEqual((config.lockout_memory, config.lockout_max), (3600, 3600))
        self.assertEqual(config.source_prefix6, 64)
        self.assertEqual(config.never_lock, ())
        self.assertEqual(config.max_connections_per_source, 8)
        self.assertEqual(config.max_concurrent, 1)
        self.assertIsNone(config.on_success)
        self.assertIsNone(config.on_close)

    def test_empty_section_is_defaults(self):
        self.assertEqual(server(""), ServerConfig())

    def test_empty_file_is_defaults(self):
        self.assertEqual(parse_server_config("", SOURCE), ServerConfig())

    def test_comments(self):
        config = server("# a comment\n; another\nlockout = 5\n")
        self.assertEqual(config.lockout, 5)

    def test_audit_path_default(self):
        config = server("state-dir = /var/lib/knocker\n")
        self.assertEqual(config.audit_path, "/var/lib/knocker/audit.log")
        config = server("state-dir = /var/lib/knocker\naudit-log = /var/log/knocker.log\n")
        self.assertEqual(config.audit_path, "/var/log/knocker.log")

    def test_frozen(self):
        config = ServerConfig()
        with self.assertRaises(AttributeError):
            config.lockout = 5


class ServerKeyTests(SynchronousTestCase):
    def test_each_key(self):
        text = "\n".join(
            [
                "central = ssl:7443:privateKey=key.pem",
                "interface = 0.0.0.0",
                "state-dir = /var/lib/knocker",
                "pool-size = 50",
                "pool-range = 20000-20999",
                "knocks = 500",
                "ports-per-knock = 4",
                "knock-window = 30",
                "lockout = 120.5",
                "lockout-scope = source",
                "max-concurrent = 4",
                "max-connections = 200",
                "handshake-timeout = 2.5",
                "on-success = /usr/local/sbin/open-port",
                "on-close = /usr/local/sbin/close-port",
                "open-duration = 600",
                "script-timeout = 20",
                "audit-log = /var/log/knocker/audit.log",
            ]
        )
        config = server(text)
        self.assertEqual(
            config,
            ServerConfig(
                central="ssl:7443:privateKey=key.pem",
                interface="0.0.0.0",
                state_dir="/var/lib/knocker",
                pool_size=50,
                pool_range=(20000, 20999),
                knocks=500,
                ports_per_knock=4,
                knock_window=30,
                lockout=120.5,
                lockout_scope="source",
                max_concurrent=4,
                max_connections=200,
                handshake_timeout=2.5,
                on_success="/usr/local/sbin/open-port",
                on_close="/usr/local/sbin/close-port",
                open_duration=600.0,
                script_timeout=20.0,
                audit_log="/var/log/knocker/audit.log",
            ),
        )
        self.assertIsInstance(config.pool_size, int)
        self.assertIsInstance(config.knock_window, int)
        self.assertIsInstance(config.lockout, float)

    def test_every_documented_key_is_known(self):
        """
        The keys docs/spec.md section 9 names are all accepted.
        """
        for key in [
            "central",
            "interface",
            "state-dir",
            "pool-size",
            "pool-range",
            "knock-window",
            "lockout",
            "lockout-scope",
            "max-concurrent",
            "on-success",
            "on-close",
            "open-duration",
            "script-timeout",
            "audit-log",
        ]:
            self.assertIn(key, SERVER_KEYS)

    def test_ipv6_interface(self):
        self.assertEqual(server("interface = ::\n").interface, "::")

    def test_pool_range_spaces(self):
        self.assertEqual(server("pool-range = 20000 - 20100\n").pool_range, (20000, 20100))

    def test_pool_range_one_port(self):
        config = server("pool-range = 20000-20000\npool-size = 1\nports-per-knock = 1\n")
        self.assertEqual(config.pool_range, (20000, 20000))

    def test_lockout_zero(self):
        self.assertEqual(server("lockout = 0\n").lockout, 0)

    def test_pool_size_fills_range(self):
        config = server("pool-range = 20000-20009\npool-size = 10\n")
        self.assertEqual(config.pool_size, 10)

    def test_ports_per_knock_equal_to_pool_size(self):
        config = server("pool-size = 6\nports-per-knock = 6\n")
        self.assertEqual(config.ports_per_knock, 6)

    def test_value_whitespace(self):
        self.assertEqual(server("lockout =    30   \n").lockout, 30)


class ServerErrorTests(SynchronousTestCase):
    def refused(self, body, *words, source=SOURCE, overrides=None):
        error = self.assertRaises(ConfigError, server, body, source, overrides)
        message = str(error)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_error_is_value_error(self):
        self.assertTrue(issubclass(ConfigError, ValueError))

    def test_a_refused_database_uri_is_not_repeated(self):
        # The message goes to standard error and the journal: not the password.
        for body, why in [("database = postgresq://knocker:topsecretpw@db/knocker\n",
                           "is not allowed"),
                          ("database = postgresql://knocker:topsecretpw@db/k  # fleet\n",
                           "comment after it")]:
            message = self.refused(body, SOURCE, "[server] database = ", why, "not shown")
            self.assertNotIn("topsecretpw", message)
        message = self.refused("", "command line", "not shown",
                               overrides={"database": "mysql://knocker:topsecretpw@db/k"})
        self.assertNotIn("topsecretpw", message)

    def test_a_password_quoted_through_another_key_is_masked(self):
        # A database line indented under lockout (so lockout's value runs
        # on), a URI in a comment after a value, a file with no section
        # header (configparser's message quotes its first line).
        for text in ["[server]\nlockout = 5\n  database = postgresql://k:topsecretpw@db/k\n",
                     "[server]\nlockout = 5 # postgresql://k:topsecretpw@db/k\n",
                     "database = postgresql://k:topsecretpw@db/k?password=topsecretpw\n"]:
            error = self.assertRaises(ConfigError, parse_server_config, text, SOURCE)
            self.assertNotIn("topsecretpw", str(error))
            self.assertIn("postgresql://k:***@db/k", str(error))

    def test_unknown_key(self):
        message = self.refused("lockuot = 5\n", SOURCE, "lockuot", "allowed")
        for key in SERVER_KEYS:
            self.assertIn(key, message)

    def test_keys_are_case_sensitive(self):
        self.refused("Lockout = 5\n", SOURCE, "Lockout", "allowed")

    def test_unknown_section(self):
        error = self.assertRaises(
            ConfigError, parse_server_config, "[server]\n[sever]\nlockout = 5\n", SOURCE
        )
        self.assertIn(SOURCE, str(error))
        self.assertIn("sever", str(error))
        self.assertIn("[server]", str(error))

    def test_client_section_in_server_file(self):
        error = self.assertRaises(
            ConfigError, parse_server_config, "[client]\nserver = tcp:host=a:port=1\n", SOURCE
        )
        self.assertIn(SOURCE, str(error))
        self.assertIn("client", str(error))

    def test_default_section(self):
        """
        A [DEFAULT] section is not [server]: its keys are not silently
        dropped.
        """
        error = self.assertRaises(ConfigError, parse_server_config, "[DEFAULT]\nlockout = 5\n", SOURCE)
        self.assertIn(SOURCE, str(error))
        self.assertIn("DEFAULT", str(error))

    def test_bad_numbers(self):
        for key, bad, allowed in [
            ("pool-size", "many", "whole number from 1 to 30000"),
            ("pool-size", "1.5", "whole number"),
            ("knocks", "ten", "whole number"),
            ("ports-per-knock", "six", "whole number"),
            ("knock-window", "", "whole number"),
            ("lockout", "a minute", "number from 0 to 86400"),
            ("lockout", "nan", "number from 0"),
            ("max-concurrent", "x", "whole number"),
            ("max-connections", "x", "whole number"),
            ("handshake-timeout", "soon", "number"),
            ("open-duration", "forever", "number"),
            ("script-timeout", "x", "number"),
        ]:
            self.refused(f"{key} = {bad}\n", SOURCE, key, repr(bad), "allowed", allowed)

    def test_out_of_range(self):
        for key, bad in [
            ("pool-size", "0"),
            ("pool-size", "30001"),
            ("knocks", "0"),
            ("ports-per-knock", "0"),
            ("ports-per-knock", "65"),
            ("knock-window", "0"),
            ("knock-window", "3601"),
            ("lockout", "-1"),
            ("lockout", "86401"),
            ("lockout", "inf"),
            ("max-concurrent", "0"),
            ("handshake-timeout", "0"),
            ("open-duration", "-5"),
            ("script-timeout", "0"),
        ]:
            self.refused(f"{key} = {bad}\n", SOURCE, key, repr(bad), "allowed", "from")

    def test_bad_lockout_scope(self):
        self.refused("lockout-scope = everyone\n", SOURCE, "lockout-scope", "everyone",
                     "knock", "global", "source")

    def test_never_lock_networks(self):
        config = server("never-lock = 192.0.2.7, 2001:db8::/48 10.0.0.0/8\n")
        self.assertEqual(config.never_lock, ("192.0.2.7/32", "2001:db8::/48", "10.0.0.0/8"))
        self.assertEqual(server("never-lock =\n").never_lock, ())

    def test_bad_never_lock(self):
        self.refused("never-lock = 192.0.2.7, monitoring-host\n", SOURCE, "never-lock",
                     "monitoring-host", "CIDR")

    def test_never_lock_network_with_host_bits_is_refused(self):
        # 192.0.2.10/3, read loosely, is 192.0.0.0/3: an eighth of IPv4 never locked out.
        for typo in ["192.0.2.10/3", "2001:db8::10/12"]:
            self.refused(f"never-lock = 10.0.0.0/8, {typo}\n", SOURCE, "never-lock", typo,
                         "no bits set past the prefix")

    def test_bad_source_prefix6(self):
        self.refused("source-prefix6 = 129\n", SOURCE, "source-prefix6", "1 to 128")

    def test_bad_pool_range(self):
        for bad in ["5-2", "abc", "0-100", "20000-70000", "20000", "20000-", "-5-10", "1,2"]:
            self.refused(f"pool-range = {bad}\n", SOURCE, "pool-range", repr(bad), "allowed", "LOW-HIGH")

    def test_a_comment_after_a_value_is_refused(self):
        """
        configparser keeps it as part of the value: the audit log would be
        written to a file named "audit.log  # rotated daily".
        """
        self.refused("audit-log = /var/log/knocker/audit.log  # rotated daily\n", SOURCE,
                     "audit-log", "has a comment after it", "lines of their own")
        self.refused("state-dir = /var/lib/knocker\t; state\n", SOURCE, "state-dir",
                     "has a comment after it")
        self.refused("lockout = 60 # a minute\n", SOURCE, "lockout", "has a comment after it")
        self.assertEqual(server("audit-log = /var/log/knocker#1/audit.log\n").audit_log,
                         "/var/log/knocker#1/audit.log", "a # inside a path is the path's")

    def test_an_indented_line_is_not_swallowed_by_the_value_above(self):
        self.refused("gateway = gw1\n  lockout = 0\n", SOURCE, "gateway", "more than one line",
                     "at the margin")

    def test_central_or_admin_port_inside_the_pool_range(self):
        self.refused("central = tcp:20005\npool-range = 20000-20009\npool-size = 8\n", SOURCE,
                     "central listens on port 20005", "pool-range = 20000-20009",
                     "move one of them")
        self.refused("admin = tcp:12345:interface=127.0.0.1\n", SOURCE,
                     "admin listens on port 12345", "pool-range = 10000-32000")
        for central in ["tcp:interface=127.0.0.1:port=20001", "tcp:interface=127.0.0.1:20001",
                        "tcp:backlog=5:20001"]:  # every way Twisted reads a port
            self.refused(f"central = {central}\nadmin =\npool-range = 20000-20009\n"
                         "pool-size = 8\n", SOURCE, "central listens on port 20001")
        self.assertEqual(server("central = tcp:0\nadmin =\npool-range = 1-65535\n").central, "tcp:0",
                         "port 0: any free port, none of the pool's")

    def test_pool_size_larger_than_range(self):
        message = self.refused(
            "pool-range = 20000-20009\npool-size = 11\n", SOURCE, "pool-size", "pool-range"
        )
        self.assertIn("10", message)

    def test_default_pool_size_larger_than_range(self):
        """
        The default pool of 100 ports does not fit in a range of 50.
        """
        self.refused("pool-range = 20000-20049\n", SOURCE, "pool-size", "50")

    def test_ports_per_knock_larger_than_pool(self):
        self.refused("pool-size = 5\nports-per-knock = 6\n", SOURCE, "ports-per-knock", "pool-size = 5")

    def test_bad_interface(self):
        self.refused("interface = localhost\n", SOURCE, "interface", "allowed", "address")

    def test_bad_central(self):
        self.refused("central = 7000\n", SOURCE, "central", "allowed", "endpoint")

    def test_empty_path(self):
        self.refused("on-success =\n", SOURCE, "on-success", "allowed")

    def test_a_path_with_a_nul_is_the_keys_error(self):
        """The system cannot take it: named with its key, not 'embedded null byte' later."""
        self.refused("", "on-success", "no NUL", overrides={"on-success": "/bin/a\0b"})
        for key in ("knock-file", "log-file"):
            error = self.assertRaises(ConfigError, client, "", CSOURCE, {key: "/tmp/a\0b"})
            self.assertIn(key, str(error))

    def test_invalid_ini(self):
        for bad in [
            "lockout = 5\n",  # no section
            "[server\nlockout = 5\n",
            "[server]\nlockout\n",  # no value
        ]:
            error = self.assertRaises(ConfigError, parse_server_config, bad, SOURCE)
            self.assertIn(SOURCE, str(error))

    def test_duplicate_key(self):
        self.refused("lockout = 5\nlockout = 6\n", SOURCE, "lockout")

    def test_duplicate_section(self):
        error = self.assertRaises(
            ConfigError, parse_server_config, "[server]\nlockout = 5\n[server]\nknocks = 5\n", SOURCE
        )
        self.assertIn(SOURCE, str(error))


class OverrideTests(SynchronousTestCase):
    def test_override_beats_file(self):
        config = server("lockout = 5\nknocks = 50\n", overrides={"lockout": "7"})
        self.assertEqual(config.lockout, 7)
        self.assertEqual(config.knocks, 50)

    def test_override_without_file(self):
        config = parse_server_config(overrides={"lockout-scope": "source"})
        self.assertEqual(config.lockout_scope, "source")

    def test_bad_override_named_command_line(self):
        error = self.assertRaises(
            ConfigError, server, "lockout = 5\n", SOURCE, {"lockout": "lots"}
        )
        self.assertIn("command line", str(error))
        self.assertIn("lockout", str(error))
        self.assertIn("allowed", str(error))
        self.assertNotIn(SOURCE, str(error))

    def test_unknown_override_named_command_line(self):
        error = self.assertRaises(ConfigError, server, "", SOURCE, {"lockuot": "5"})
        self.assertIn("command line", str(error))
        self.assertIn("lockuot", str(error))

    def test_override_fixes_bad_file_value_not(self):
        """
        A bad value in the file is refused even when the command line gives
        the key again: nothing starts on a bad configuration file.
        """
        error = self.assertRaises(ConfigError, server, "lockout = lots\n", SOURCE, {"lockout": "5"})
        self.assertIn(SOURCE, str(error))

    def test_cross_check_with_override_names_command_line(self):
        """
        When the command line sets pool-size too large for the file's
        pool-range, the error does not blame the file alone.
        """
        error = self.assertRaises(
            ConfigError, server, "pool-range = 20000-20009\n", SOURCE, {"pool-size": "50"}
        )
        self.assertIn("pool-size", str(error))
        self.assertIn("command line", str(error))

    def test_override_relative_path_not_joined_to_file_folder(self):
        config = server("", SOURCE, {"state-dir": "here"})
        self.assertEqual(config.state_dir, "here")


class PathTests(SynchronousTestCase):
    def test_relative_paths_against_file_folder(self):
        config = server(
            "state-dir = state\non-success = scripts/open\non-close = ../close\naudit-log = log/audit\n"
        )
        self.assertEqual(config.state_dir, "/etc/knocker/state")
        self.assertEqual(config.on_success, "/etc/knocker/scripts/open")
        self.assertEqual(config.on_close, "/etc/knocker/../close")
        self.assertEqual(config.audit_log, "/etc/knocker/log/audit")

    def test_absolute_paths_kept(self):
        config = server("state-dir = /var/lib/knocker\n")
        self.assertEqual(config.state_dir, "/var/lib/knocker")

    def test_home_expanded(self):
        config = server("state-dir = ~/knocker\n")
        self.assertEqual(config.state_dir, os.path.expanduser("~/knocker"))
        self.assertTrue(os.path.isabs(config.state_dir))

    def test_client_relative_paths(self):
        config = client("knock-file = alice.knock\nlog-file = logs/client.log\n")
        self.assertEqual(config.knock_file, "/etc/knocker/alice.knock")
        self.assertEqual(config.log_file, "/etc/knocker/logs/client.log")

    def test_load_relative_to_file(self):
        folder = tempdir(self)
        path = os.path.join(folder, "knockserver.conf")
        with open(path, "w") as handle:
            handle.write("[server]\nstate-dir = state\n")
        self.assertEqual(load_server_config(path).state_dir, os.path.join(folder, "state"))


class LoadTests(SynchronousTestCase):
    def write(self, name, text):
        folder = tempdir(self)
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path

    def test_load_server(self):
        path = self.write("knockserver.conf", "[server]\nlockout = 9\n")
        self.assertEqual(load_server_config(path).lockout, 9)

    def test_load_server_overrides(self):
        path = self.write("knockserver.conf", "[server]\nlockout = 9\n")
        self.assertEqual(load_server_config(path, {"lockout": "3"}).lockout, 3)

    def test_load_none_is_defaults(self):
        self.assertEqual(load_server_config(None), ServerConfig())
        self.assertEqual(load_client_config(None), ClientConfig())

    def test_load_server_missing(self):
        path = os.path.join(tempdir(self), "nope.conf")
        error = self.assertRaises(ConfigError, load_server_config, path)
        self.assertIn(path, str(error))

    def test_load_client_missing(self):
        path = os.path.join(tempdir(self), "nope.conf")
        error = self.assertRaises(ConfigError, load_client_config, path)
        self.assertIn(path, str(error))

    def test_load_directory(self):
        folder = tempdir(self)
        error = self.assertRaises(ConfigError, load_server_config, folder)
        self.assertIn(folder, str(error))

    def test_load_not_utf8(self):
        path = os.path.join(tempdir(self), "latin1.conf")
        with open(path, "wb") as handle:
            handle.write(b"[server]\nstate-dir = \xff\xfe\n")
        error = self.assertRaises(ConfigError, load_server_config, path)
        self.assertIn(path, str(error))

    def test_a_byte_order_mark_is_no_part_of_the_file(self):
        """
        Some Windows editors write one first: the file reads as without it
        (on the fast path and through configparser alike), and one
        anywhere else is still refused.
        """
        plain = self.write("knockclient.conf", "\ufeff[client]\nserver = tcp:host=a:port=7\n")
        fancy = self.write("knockclient2.conf",
                           "\ufeff[client]\nserver = tcp:host=a:port=7\n    tcp:host=b:port=7\n")
        self.assertEqual(load_client_config(plain).server, "tcp:host=a:port=7")
        self.assertEqual(load_client_config(fancy).server, "tcp:host=a:port=7 tcp:host=b:port=7")
        path = self.write("knockserver.conf", "\ufeff[server]\nlockout = 9\n")
        self.assertEqual(load_server_config(path).lockout, 9)
        inside = self.write("bad.conf", "[server]\n\ufefflockout = 9\n")
        self.assertRaises(ConfigError, load_server_config, inside)

    def test_load_error_names_file(self):
        path = self.write("knockserver.conf", "[server]\nlockout = soon\n")
        error = self.assertRaises(ConfigError, load_server_config, path)
        self.assertIn(path, str(error))
        self.assertIn("lockout", str(error))

    def test_load_client(self):
        path = self.write("knockclient.conf", "[client]\nserver = tcp:host=example.org:port=7000\n")
        self.assertEqual(load_client_config(path).server, "tcp:host=example.org:port=7000")

    def test_load_client_error_names_file(self):
        path = self.write("knockclient.conf", "[client]\nbusy-retries = many\n")
        error = self.assertRaises(ConfigError, load_client_config, path)
        self.assertIn(path, str(error))
        self.assertIn("busy-retries", str(error))


class ClientConfigTests(SynchronousTestCase):
    def test_defaults(self):
        config = parse_client_config()
        self.assertEqual(config, ClientConfig())
        self.assertEqual(config.server, "tcp:host=127.0.0.1:port=7000")
        self.assertIsNone(config.knock_file)

    def test_documented_keys(self):
        for key in ["server", "knock-file", "log-file"]:
            self.assertIn(key, CLIENT_KEYS)

    def test_each_key(self):
        config = client(
            "server = tls:host=knock.example.org:port=7000\n"
            "knock-file = /home/alice/alice.knock\n"
            "log-file = /home/alice/knock.log\n"
            "timeout = 30\n"
            "connect-timeout = 2\n"
            "busy-retries = 0\n"
        )
        self.assertEqual(
            config,
            ClientConfig(
                server="tls:host=knock.example.org:port=7000",
                knock_file="/home/alice/alice.knock",
                log_file="/home/alice/knock.log",
                timeout=30.0,
                connect_timeout=2.0,
                busy_retries=0,
            ),
        )

    def test_unknown_key(self):
        error = self.assertRaises(ConfigError, client, "pool-size = 5\n")
        for word in [CSOURCE, "pool-size", "allowed", "server", "knock-file", "log-file"]:
            self.assertIn(word, str(error))

    def test_server_section_in_client_file(self):
        error = self.assertRaises(ConfigError, parse_client_config, "[server]\nlockout = 5\n", CSOURCE)
        self.assertIn(CSOURCE, str(error))
        self.assertIn("[client]", str(error))

    def test_bad_values(self):
        for key, bad in [
            ("server", "example.org:7000"),
            ("timeout", "0"),
            ("timeout", "x"),
            ("connect-timeout", "0"),
            ("busy-retries", "-1"),
            ("busy-retries", "101"),
            ("knock-file", ""),
        ]:
            error = self.assertRaises(ConfigError, client, f"{key} = {bad}\n")
            for word in [CSOURCE, key, "allowed"]:
                self.assertIn(word, str(error))

    def test_override(self):
        config = client("busy-retries = 5\n", overrides={"busy-retries": "1"})
        self.assertEqual(config.busy_retries, 1)

    def test_bad_override(self):
        error = self.assertRaises(ConfigError, client, "", CSOURCE, {"server": "nowhere"})
        self.assertIn("command line", str(error))
        self.assertIn("server", str(error))


def configparser_values(text: str, section: str):
    """
    What configparser, set up as knocker sets it up, makes of C{text}: the
    section's items, or the exception it raises.
    """
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    parser.optionxform = str
    try:
        parser.read_string(text)
    except configparser.Error as error:
        return error
    if any(name != section for name in parser.sections()):
        return ValueError("another section")
    return dict(parser.items(section)) if parser.has_section(section) else {}


_ini_lines = st.one_of(
    st.sampled_from(["[client]", "[client]  ", "[server]", "[ client ]", "[client] x", " [client]",
                     "[DEFAULT]", "", "   ", "\t", "# comment", "; comment", "  # indented",
                     "#", "server = tcp:host=a:port=1", "timeout=5", "timeout = 5 # not a comment",
                     "  continued", "\tcontinued", "key: value", "TimeOut = 5", "log-file =",
                     "= value", "novalue", "busy-retries = 3 = 4", "a b = c", "timeout = 5\r"]),
    st.builds(lambda key, sep, value: f"{key}{sep}{value}",
              st.text(alphabet="abcdeklt-: \tK0", max_size=8),
              st.sampled_from([" = ", "=", ":", " : ", " =", "= "]),
              st.text(max_size=12)),
    st.text(max_size=20),
)


class SimpleIniTests(SynchronousTestCase):
    """
    The fast reader of plain INI files on the knock path gives what
    configparser gives, or declines (then configparser decides).
    """

    @given(lines=st.lists(_ini_lines, max_size=8))
    @settings(max_examples=3000, deadline=None)
    def test_agrees_with_configparser_or_declines(self, lines):
        text = "\n".join(lines)
        fast = simple_ini(text, "client")
        if fast is None:
            return
        full = configparser_values(text, "client")
        self.assertFalse(isinstance(full, Exception), f"accepted what configparser refuses: {text!r}")
        self.assertEqual(fast, full, repr(text))

    def test_the_shipped_examples_take_the_fast_path(self):
        for name, section in (("knockclient.conf", "client"), ("knockserver.conf", "server")):
            with open(os.path.join(ETC, name)) as handle:
                text = handle.read()
            self.assertEqual(simple_ini(text, section), configparser_values(text, section), name)


class AdminKeyTests(SynchronousTestCase):
    """
    The console's endpoint: on by default on loopback, off when empty, and
    refused off loopback unless it is TLS.
    """

    def test_default_is_loopback(self):
        self.assertEqual(parse_server_config().admin, "tcp:8750:interface=127.0.0.1")

    def test_empty_turns_it_off(self):
        self.assertIsNone(server("admin =\n").admin)
        self.assertIsNone(server("", overrides={"admin": ""}).admin)

    def test_loopback_tcp(self):
        self.assertEqual(server("admin = tcp:0:interface=127.0.0.1\n").admin,
                         "tcp:0:interface=127.0.0.1")
        self.assertEqual(server("admin = tcp6:8750:interface=\\:\\:1\n").admin,
                         "tcp6:8750:interface=\\:\\:1")

    def test_tls_anywhere(self):
        text = "admin = ssl:8750:interface=0.0.0.0:privateKey=k.pem\n"
        self.assertEqual(server(text).admin, text[8:-1])

    def test_plain_tcp_off_loopback_refused(self):
        for value in ("tcp:8750:interface=0.0.0.0", "tcp:8750", "tcp:8750:interface=192.0.2.1",
                      "tcp6:8750:interface=\\:\\:", "unix:/tmp/admin.sock"):
            error = self.assertRaises(ConfigError, server, f"admin = {value}\n")
            self.assertIn("admin", str(error))
            self.assertIn("ssl:", str(error))

    def test_checked_as_twisted_reads_it(self):
        """
        Twisted's endpoint parser drops a backslash before any character,
        keeps the last of an option given twice and takes a bare value for
        the address: the check reads it the same way, so what it allows
        binds where it says, and a spelling that binds every address in
        plain HTTP is refused.
        """
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactor

        def bound(value):
            reactor = MemoryReactor()
            serverFromString(reactor, value).listen(Factory())
            return reactor.tcpServers[0][3]

        for value in ("tcp:0:interface=127.0.0.1", "tcp:0:interface=12\\7.0.0.1:backlog=5",
                      "tcp6:8750:interface=\\:\\:1"):
            self.assertEqual(server(f"admin = {value}\n").admin, value)
            self.assertEqual(admin_endpoint(value)[1], bound(value))
        for value in ("tcp:0:interface=127.0.0.1:\\interface=0.0.0.0",
                      "tcp:0:interface=127.0.0.1:inter\\face=0.0.0.0",
                      "tcp:0:interface=127.0.0.1:interface=0.0.0.0",
                      "tcp:0:0.0.0.0", "tcp:0:"):
            self.assertIn(bound(value), ("0.0.0.0", ""), value)
            error = self.assertRaises(ConfigError, server, f"admin = {value}\n")
            self.assertIn("admin", str(error))
            self.assertIn("each option once, as NAME=VALUE", str(error))
        error = self.assertRaises(ConfigError, server, "admin = tcp:0:interface=127.0.0.1\\\n")
        self.assertIn("admin", str(error))
