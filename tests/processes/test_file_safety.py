"""
Unsafe and malformed files, with the real programs: a portknock file open to
group or others, a malformed portknock file (the client's or the server's
copy), a malformed configuration (server or client).  Each is refused with a
message naming the file (and the line, mode or key), a non-zero exit status,
and nothing listening or knocked.

Already covered elsewhere and not repeated here: a group-readable server
copy refused at start (test_daemon), a bad lockout-scope (test_daemon), a
bad knock line found by the client during the handshake (test_integration),
every configuration and knock-file rule one by one (test_config,
test_knockfile), read_private's modes (test_files).
"""

import os

from tests.helpers.processes import (
    Daemon,
    DaemonCase,
    connect_refused,
    free_port,
    knocker,
    write_config,
)


def line_of(path: str, prefix: str) -> int:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.startswith(prefix):
                return number
    raise LookupError(f"no line starting {prefix!r} in {path}")


def rewrite(path: str, old: str, new: str) -> None:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if old not in text:
        raise LookupError(f"{old!r} not in {path}")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text.replace(old, new, 1))


class ClientFileTests(DaemonCase):
    """
    C{knocker knock} with a bad portknock file or configuration, against a
    running daemon that must see nothing of it.
    """

    def setUp(self):
        super().setUp()
        self.configure()
        self.knock_file = self.generate()
        self.start()

    def assertNothingSent(self):
        self.assertEqual([e["event"] for e in self.events()], ["start"])

    def test_knock_refuses_a_readable_file(self):
        """
        Group-readable, world-readable, both: exit 2, the path, the mode
        and the fix in the message, and nothing sent to the server.
        """
        for mode in (0o640, 0o604, 0o644, 0o660):
            os.chmod(self.knock_file, mode)
            result = self.knock(self.knock_file)
            self.assertEqual(result.returncode, 2, f"{mode:04o}: {result.stdout}{result.stderr}")
            self.assertIn(self.knock_file, result.stderr)
            self.assertIn(f"{mode:04o}", result.stderr)
            self.assertIn(f"chmod 600 {self.knock_file}", result.stderr)
        self.assertNothingSent()
        os.chmod(self.knock_file, 0o600)
        self.assertOpens(self.knock_file)

    def test_knock_refuses_a_malformed_header(self):
        """
        A malformed header (a short secret, an unknown key): exit 2, the
        file and the line named, nothing sent.
        """
        secret_line = line_of(self.knock_file, "secret = ")
        with open(self.knock_file, encoding="utf-8") as handle:
            original = handle.read()
        secret = original.split("secret = ", 1)[1].split("\n", 1)[0]
        for old, new, line in [
            (f"secret = {secret}", f"secret = {secret[:-2]}", secret_line),
            ("version = 1", "colour = blue", line_of(self.knock_file, "version = ")),
        ]:
            rewrite(self.knock_file, old, new)
            result = self.knock(self.knock_file)
            self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
            self.assertIn(f"{self.knock_file}, line {line}:", result.stderr)
            rewrite(self.knock_file, new, old)
        self.assertNothingSent()

    def test_knock_refuses_a_bad_configuration(self):
        """
        A client configuration with an unknown key, a bad value or broken
        INI: exit 2, the file and key named with what is allowed, nothing
        sent.
        """
        cases = [
            ("[client]\nserver = tcp:host=127.0.0.1:port=1\ncolour = blue\n",
             ["unknown key 'colour'", "allowed:"]),
            ("[client]\ntimeout = soon\n", ["timeout = 'soon'", "allowed: a number"]),
            ("[client]\nbusy-retries = -1\n", ["busy-retries", "allowed: a whole number"]),
            ("[client\nserver = x\n", ["not a valid INI file"]),
            ("[server]\ncentral = tcp:7000\n", ["unknown section [server]"]),
        ]
        path = os.path.join(self.dir, "client.conf")
        for text, expected in cases:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            result = knocker("knock", "--config", path, "--knock-file", self.knock_file)
            self.assertEqual(result.returncode, 2, f"{text!r}: {result.stdout}{result.stderr}")
            self.assertIn(path, result.stderr)
            for words in expected:
                self.assertIn(words, result.stderr, text)
        self.assertNothingSent()


class ServerFileTests(DaemonCase):
    """
    C{twistd knockserver} with a bad server copy or configuration: it exits
    with a message naming the file, before anything listens.
    """

    def setUp(self):
        super().setUp()
        self.central = free_port()
        self.configure(central=f"tcp:{self.central}:interface=127.0.0.1")
        self.knock_file = self.generate()
        self.copy = os.path.join(self.dir, "state", "clients", "alice.knock")
        self.pool = self.status()["pool"]

    def assertRefusesToStart(self, *expected, config=None):
        daemon = Daemon(config or self.server_conf, self.audit, self.dir)
        try:
            self.assertEqual(daemon.wait_exit(), 1)
        finally:
            daemon.stop()
        log = daemon.log()
        for words in expected:
            self.assertIn(words, log)
        # The problem alone, not after twistd's eighty lines of options.
        self.assertNotIn("--audit-log=", log)
        self.assertTrue(connect_refused(self.central), "the central port is listening")
        self.assertTrue(connect_refused(self.pool[0]), "a pool port is listening")
        self.assertFalse(os.path.exists(self.audit), "the audit log was started")
        return log

    def test_world_readable_server_copy(self):
        """
        The server's copy open to others (0604, 0644): the daemon names the
        file, the mode and the fix, and nothing listens.
        """
        for mode in (0o604, 0o644):
            os.chmod(self.copy, mode)
            self.assertRefusesToStart(self.copy, f"{mode:04o}", f"chmod 600 {self.copy}")

    def test_malformed_server_copy_header(self):
        """
        A malformed header in the server's copy: the daemon names the file
        and the line, and nothing listens.
        """
        line = line_of(self.copy, "ports-per-knock = ")
        rewrite(self.copy, "ports-per-knock = 4", "ports-per-knock = four")
        self.assertRefusesToStart(f"{self.copy}, line {line}:")

    def test_malformed_server_copy_knock_line(self):
        """
        The server reads only the headers at start (see knocker.state.book), so a
        bad line for the knock about to be granted (here a repeated port in
        knock 1) is found at the grant: the client gets ERROR server-error
        (exit 12), the daemon log names the file and the line, and no
        number is burned.
        """
        line = line_of(self.copy, "1 ")
        with open(self.copy, encoding="utf-8") as handle:
            ports = handle.read().split("\n")[line - 1].split(" ")[1]
        first = ports.split(",")[0]
        rewrite(self.copy, f"\n1 {ports}\n", f"\n1 {first},{ports}\n")
        self.start()
        result = self.knock(self.knock_file)
        self.assertEqual(result.returncode, 12, result.stdout + result.stderr)
        self.assertIn("server-error", result.stderr)
        self.assertIn(f"{self.copy}, line {line}:", self.daemon.log())
        self.assertEqual(self.events("grant"), [])
        self.assertEqual(self.status()["clients"][0]["used"], 0)

    def test_malformed_configuration(self):
        """
        Broken INI, an unknown key, a bad number, an unknown section: the
        daemon names the file and the key, and nothing listens.
        """
        central = f"central = tcp:{self.central}:interface=127.0.0.1\n"
        cases = [
            (f"[server]\n{central}pool-size 20\n", ["not a valid INI file"]),
            (f"[server]\n{central}colour = blue\n", ["unknown key 'colour'", "allowed:"]),
            (f"[server]\n{central}lockout = -5\n",
             ["lockout = '-5'", "allowed: a number from 0"]),
            (f"[server]\n{central}max-connections = 0\n",
             ["max-connections = '0'", "allowed: a whole number from 1"]),
            (f"{central}[server]\n", ["File contains no section headers"]),
            (f"[server]\n{central}[extra]\nkey = value\n", ["unknown section [extra]"]),
        ]
        path = os.path.join(self.dir, "bad.conf")
        for text, expected in cases:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            self.assertRefusesToStart(path, *expected, config=path)

    def test_missing_action_program(self):
        """
        An on-success program that does not exist: the daemon names the
        key and the path, and nothing listens.
        """
        missing = os.path.join(self.dir, "no-such-script")
        config = write_config(os.path.join(self.dir, "missing.conf"), "server",
                              central=f"tcp:{self.central}:interface=127.0.0.1",
                              state_dir="state", on_success=missing)
        self.assertRefusesToStart(f"on-success = {missing}", "not an executable file",
                                  config=config)

    def test_action_program_others_can_change(self):
        """
        An on-success program, or the configuration naming it, that anyone
        may write to: whoever did could run code as the daemon (root, in
        the field).  The daemon names the key, the file and the chmod, and
        nothing listens.
        """
        from tests.helpers.processes import write_recorder

        program, _ = write_recorder(self.dir, "on-success")
        config = write_config(os.path.join(self.dir, "loose.conf"), "server",
                              central=f"tcp:{self.central}:interface=127.0.0.1",
                              state_dir="state", on_success=program)
        os.chmod(program, 0o757)
        self.assertRefusesToStart(f"on-success = {program}: anyone can change the file",
                                  f"chmod o-w {program}", config=config)
        os.chmod(program, 0o755)
        os.chmod(config, 0o646)
        self.assertRefusesToStart(f"--config = {config}: anyone can change the file",
                                  f"chmod o-w {config}", config=config)


class ActionProgramTests(DaemonCase):
    def test_action_path_is_a_file_name_not_shell_text(self):
        """
        on-success is run from an argv list, never through a shell: a
        program whose path holds spaces, ';' and '$(...)' runs as itself,
        with exactly [program, client-ip, client-id, knock-number], and
        nothing in its path is executed.
        """
        from tests.helpers.processes import read_lines, write_recorder

        odd = os.path.join(self.dir, "odd dir; touch PWNED $(touch PWNED2) `touch PWNED3`")
        os.makedirs(odd)
        program, out = write_recorder(odd, "on-success; touch PWNED4")
        self.configure(on_success=program)
        knock_file = self.generate()
        self.start()
        self.assertOpens(knock_file)
        [run] = read_lines(out)
        self.assertEqual(run["argv"], [program, "127.0.0.1", "alice", "1"])
        self.assertEqual(run["env"], {"KNOCKER_CLIENT_IP": "127.0.0.1",
                                      "KNOCKER_CLIENT": "alice", "KNOCKER_INDEX": "1"})
        for where in ("/", self.dir, odd):
            self.assertEqual([name for name in os.listdir(where) if name.startswith("PWNED")],
                             [], where)
