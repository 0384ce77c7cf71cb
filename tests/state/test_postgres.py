"""
What the PostgreSQL store does beyond the IStore contract
(tests/state/test_store_contract.py runs that): the schema and its
migrations, burns from many threads at once, the sealed server copies and
their key file, closes kept per gateway, a lost connection.
"""

import os
import shutil
import threading
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from knocker.state.interface import StateError
from tests.helpers import postgres

KEY = bytes(range(32))


def postgres_port() -> int:
    """A free loopback port for a cluster of a test's own."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
SECRET = bytes(range(100, 132))


class PostgresStoreTests(SynchronousTestCase):
    skip = postgres.skip_reason()

    def store(self, **kwargs):
        from knocker.state.postgres import PostgresStore

        kwargs.setdefault("key", KEY)
        store = PostgresStore(self.uri, **kwargs)
        self.addCleanup(store.close)
        return store

    def setUp(self):
        self.uri = postgres.database_for(self)

    def test_schema_versioned_and_migrated_once(self):
        from knocker.state.postgres import SCHEMA_VERSION

        first = self.store()
        self.assertEqual(first.schema_version(), SCHEMA_VERSION)
        self.assertEqual(self.store().migrate(), SCHEMA_VERSION, "nothing left to apply")

    def test_newer_schema_refused(self):
        first = self.store()
        first._run(lambda c: c.execute("UPDATE schema_version SET version = 99"))
        error = self.assertRaises(StateError, self.store)
        self.assertIn("schema version 99 is newer", str(error))

    def test_burns_from_many_threads_are_distinct(self):
        store = self.store()
        store.register("alice", 400, SECRET)
        got, lock = [], threading.Lock()

        def burn():
            for _ in range(50):
                number = store.burn("alice")
                with lock:
                    got.append(number)

        threads = [threading.Thread(target=burn) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        numbers = [n for n in got if n is not None]
        self.assertEqual(sorted(numbers), list(range(1, 401)))
        self.assertEqual(got.count(None), 100, "past the end: nothing")

    def test_server_copy_sealed_and_bound_to_its_client(self):
        store = self.store()
        store.register_with_book("alice", 5, SECRET, "the text " + SECRET.hex())
        self.assertEqual(store.book("alice"), "the text " + SECRET.hex())
        raw = store._run(lambda c: c.execute("SELECT sealed FROM books").fetchone()[0])
        self.assertNotIn(SECRET.hex().encode(), bytes(raw))
        store.register("bob", 5, SECRET)
        store._run(lambda c: c.execute(
            "INSERT INTO books SELECT 'bob', secret_id, sealed FROM books WHERE client = 'alice'"))
        error = self.assertRaises(StateError, store.book, "bob")
        self.assertIn("does not open", str(error))
        other = self.store(key=bytes(32))
        self.assertRaises(StateError, other.book, "alice")

    def test_key_check_refuses_another_key(self):
        """
        The first key used leaves a check value; a gateway or a command
        with another key file is refused, naming database-key-file.
        """
        first = self.store()
        first.check_key()
        first.check_key()
        error = self.assertRaises(StateError, self.store(key=bytes(32)).check_key)
        self.assertIn("database-key-file", str(error))

    def test_key_check_without_a_check_value_yet(self):
        """
        Copies sealed before there was a check value: a key that opens
        none of them is refused; the right one records the check.
        """
        store = self.store()
        store.register_with_book("alice", 5, SECRET, "text")
        self.assertRaises(StateError, self.store(key=bytes(32)).check_key)
        store.check_key()
        self.assertRaises(StateError, self.store(key=bytes(32)).check_key)

    def test_an_unopenable_copy_is_skipped_at_load(self):
        """
        One altered copy stops only its client, not the gateway.
        """
        from knocker.daemon.fleet import DatabaseBook

        store = self.store()
        store.register_with_book("alice", 5, SECRET, _knock_text(store, "alice"))
        store.register("bob", 5, SECRET)
        store._run(lambda c: c.execute(
            "INSERT INTO books SELECT 'bob', secret_id, sealed FROM books WHERE client = 'alice'"))
        book = DatabaseBook(store, (20000, 20001, 20002))
        book.load()
        self.assertEqual(book.clients(), ["alice"])
        self.assertEqual([client for client, _ in book.skipped], ["bob"])
        self.flushLoggedErrors()

    def test_a_revoked_file_burns_nothing_on_any_gateway(self):
        """
        A gateway hears of another's revocation by a notice or a re-read,
        seconds later at worst; meanwhile its burn must take nothing, and
        the knock gets no GRANT (ERROR, until the gateway says DENIED).
        """
        from twisted.internet import reactor

        from knocker.daemon.fleet import ThreadedStore

        one, two = self.store(gateway="one"), self.store(gateway="two")
        one.register("alice", 5, SECRET)
        wanted = one.client("alice").secret_id
        self.assertEqual(two.burn("alice", wanted), 1)
        one.revoke("alice")
        self.assertIsNone(two.burn("alice", wanted))
        self.assertEqual(two.client("alice").next_index, 2, "nothing taken")
        threaded = ThreadedStore(two, reactor)
        self.addCleanup(threaded.close)
        error = self.assertRaises(StateError, threaded._burn, "alice", wanted)
        self.assertIn("revoked", str(error))

    def test_a_burn_that_waited_for_a_revoke_grants_nothing(self):
        """
        A burn blocked on a revoke's row lock goes on, once the revoke
        commits, with the snapshot it began with: the revocation must be
        seen all the same (the number taken is spent, nothing granted).
        """
        import threading
        import time

        store = self.store()
        store.register("alice", 5, SECRET)
        wanted = store.client("alice").secret_id
        revoking = store.connect(autocommit=False)
        self.addCleanup(revoking.close)
        revoking.execute("SELECT 1 FROM clients WHERE id = 'alice' FOR UPDATE")
        revoking.execute("INSERT INTO revocations (client, secret_id) VALUES ('alice', %s)",
                         (wanted,))
        outcome = []

        def burn():
            try:
                outcome.append(store.burn("alice", wanted))
            except StateError as error:
                outcome.append(error)

        burning = threading.Thread(target=burn)
        burning.start()
        time.sleep(0.3)  # the burn waits on the row lock
        revoking.commit()
        burning.join(10)
        self.assertIsInstance(outcome[0], StateError, outcome)
        self.assertIn("revoked", str(outcome[0]))

    def test_a_fleets_renewal_is_counted_with_its_copy_alone(self):
        """
        The pending counter is kept with the sealed copy, under the client's
        row lock, and not set again after it: a second, unlocked write made
        a generate --force (or a promotion) committing in between bring back
        a renewal of the replaced file, which a later PROOF then promoted.
        """
        from knocker.daemon.fleet import DatabaseBook
        from knocker.enrol.renewal import prepare_offer

        store = self.store()
        store.set_pool((20000, 20001, 20002))
        store.register_with_book("alice", 5, SECRET, _knock_text(store, "alice"))
        book = DatabaseBook(store, (20000, 20001, 20002))
        book.load()

        def unlocked(*args, **kwargs):
            raise AssertionError("set_pending outside the client's lock")

        self.patch(store, "set_pending", unlocked)
        text, new = prepare_offer(store, book, "alice", 1.8e9)
        self.assertTrue(new)
        pending = store.pending("alice")
        self.assertEqual((pending.secret_id, pending.knocks), (book.pending_id(text), 5))
        self.assertEqual(store.pending_book("alice"), text)

    def test_generate_makes_no_key_beside_existing_copies(self):
        """
        C{knocker generate} creates the key file only for a new fleet: with
        copies already in the database it refuses, naming the key file.
        """
        from knocker.admin.clients import open_database
        from tests.helpers.harness import server_config

        self.store().register_with_book("alice", 5, SECRET, "text")
        base = self.mktemp()
        os.makedirs(base)
        path = os.path.join(base, "fleet.key")
        config = server_config(os.path.join(base, "state"), database=self.uri,
                               database_key_file=path)
        error = self.assertRaises(StateError, open_database, config, create_key=True)
        self.assertIn("database-key-file", str(error))
        self.assertFalse(os.path.exists(path))

    def test_closes_are_the_gateways_own(self):
        one, two = self.store(gateway="one"), self.store(gateway="two")
        close = one.add_close(100.0, "192.0.2.1", "alice", 3)
        self.assertEqual([c.id for c in one.pending_closes()], [close])
        self.assertEqual(two.pending_closes(), [])
        two.remove_close(close)
        self.assertEqual(len(one.pending_closes()), 1, "another gateway cannot remove it")
        self.assertEqual(two.all_pending_closes(), 1)

    def test_one_gateway_of_a_name_at_a_time(self):
        """
        A second gateway given a running one's name would run and delete
        its pending closes: it is refused, naming C{gateway}.
        """
        one = self.store(gateway="gw-1")
        one.hold_gateway()
        two = self.store(gateway="gw-1")
        error = self.assertRaises(StateError, two.hold_gateway)
        self.assertIn("gateway = gw-1", str(error))
        self.store(gateway="gw-2").hold_gateway()
        one.close()
        two.hold_gateway()

    def test_lost_connection_raises_then_reconnects(self):
        store = self.store()
        store.register("alice", 5, SECRET)
        pid = store._run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        admin = self.store()
        admin._run(lambda c: c.execute("SELECT pg_terminate_backend(%s)", (pid,)))
        self.assertRaises(StateError, store.burn, "alice")
        self.assertIsNotNone(store.client("alice"), "the next call connects again")

    def test_the_server_drops_a_vanished_gateway_within_seconds(self):
        """
        Over TCP the server's side of each session has keepalives of its
        own: a gateway whose host lost power (no FIN) would otherwise keep
        its session, and its name's lock, for the system's two hours.
        """
        from knocker.state.postgres import PostgresStore

        cluster = postgres.Cluster(tcp_port=postgres_port())
        self.addCleanup(cluster.destroy)
        cluster.start()
        store = PostgresStore(cluster.tcp_uri(), KEY, statement_timeout_ms=1500)
        self.addCleanup(store.close)
        settings = dict(store._run(lambda c: c.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle', "
            "'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout')").fetchall()))
        self.assertEqual(settings, {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
                                    "tcp_keepalives_count": "2", "tcp_user_timeout": "3000"})

    def test_burn_times_out_rather_than_wait(self):
        """
        A burn stuck behind a lock (a hung transaction, an administrator's
        session) gives up after the timeout with an error, so the gateway
        grants nothing instead of hanging; the number is not taken.
        """
        store = self.store(statement_timeout_ms=200)
        store.register("alice", 5, SECRET)
        holder = store.connect(autocommit=False)
        self.addCleanup(holder.close)
        holder.execute("SELECT * FROM clients WHERE id = 'alice' FOR UPDATE")
        started = time.monotonic()
        self.assertRaises(StateError, store.burn, "alice")
        self.assertLess(time.monotonic() - started, 2)
        holder.rollback()
        self.assertEqual(store.client("alice").next_index, 1)
        self.assertEqual(store.burn("alice"), 1)

    def test_lockouts_keep_the_latest_end(self):
        one, two = self.store(), self.store()
        one.set_lockout("*", 2000.0)
        two.save_lockouts({"*": 1500.0, "192.0.2.1": 1600.0})
        self.assertEqual(one.lockouts(1000.0), {"*": 2000.0, "192.0.2.1": 1600.0})

    def test_lockouts_read_by_seq_with_their_step(self):
        """
        Each change takes a new seq, so a gateway reads only what changed
        since its last read; an upsert that changes nothing takes none.
        """
        one, two = self.store(), self.store()
        one.save_lockouts({"192.0.2.1": 1600.0, "192.0.2.2": 1600.0}, steps={"192.0.2.2": 4})
        rows = two.lockouts_since(0, 100)
        self.assertEqual([(key, until, step) for _, key, until, step in rows],
                         [("192.0.2.1", 1600.0, 0), ("192.0.2.2", 1600.0, 4)])
        last = rows[-1][0]
        two.save_lockouts({"192.0.2.1": 1500.0, "192.0.2.2": 1600.0}, steps={"192.0.2.2": 2})
        self.assertEqual(one.lockouts_since(last, 100), [], "nothing changed")
        two.save_lockouts({"192.0.2.2": 1600.0}, steps={"192.0.2.2": 5})
        self.assertEqual([row[1:] for row in one.lockouts_since(last, 100)],
                         [("192.0.2.2", 1600.0, 5)])
        self.assertEqual(len(one.lockouts_since(0, 1)), 1, "at most limit rows")

    def test_big_batch_saved_whole_and_table_bounded(self):
        """
        Past MAX_LOCKOUT_BATCH keys the batch is saved in several
        transactions, none dropped; pruning bounds the table.
        """
        from knocker.state import postgres

        store = self.store()
        self.patch(postgres, "MAX_LOCKOUT_BATCH", 1000)
        store.save_lockouts({f"198.51.100.{n}/{n}": 2000.0 + n for n in range(2500)})
        self.assertEqual(len(store.lockouts(1000.0)), 2500)
        store.prune_lockouts(2100.0, keep=1000)
        left = store.lockouts(1000.0)
        self.assertEqual(len(left), 1000)
        self.assertEqual(min(left.values()), 3500.0, "the soonest to end went first")

    def test_lift_and_revoke_tell_the_other_gateways(self):
        """
        The console's changes are NOTIFYd on the lockouts' channel, in the
        transaction that makes them: "lift KEY", "lift" (every one),
        "revoked"; a revocation names the file by its digest, never a secret.
        """
        from knocker.state.postgres import LOCKOUT_CHANNEL

        one, two = self.store(), self.store()
        listener = one.connect()
        self.addCleanup(listener.close)
        listener.execute(f"LISTEN {LOCKOUT_CHANNEL}")
        one.save_lockouts({"192.0.2.1": 2000.0, "192.0.2.2": 2000.0})
        one.set_lockout("*", 2000.0)
        two.lift_lockouts("192.0.2.1")
        two.lift_lockouts("*")
        self.assertEqual(one.lockouts(1000.0), {"192.0.2.2": 2000.0})
        two.lift_lockouts()
        self.assertEqual(one.lockouts(1000.0), {})
        two.register("alice", 5, SECRET)
        two.revoke("alice")
        two.revoke("nobody")
        notices = [n.payload for n in listener.notifies(timeout=1, stop_after=8)]
        self.assertEqual(notices[-5:], ["lift 192.0.2.1", "lift *", "lift", "revoked",
                                        "revoked"])
        self.assertEqual(list(one.revoked()), ["alice"])
        rows = one._run(lambda c: c.execute("SELECT * FROM revocations").fetchall())
        self.assertNotIn(SECRET.hex(), repr(rows))
        # The lifts are rows too, which the others act on (a notice can come
        # from any role that may connect): in order, after a seq.
        first = one.lifts_since(0)
        self.assertEqual([key for _, key in first], ["192.0.2.1", "*", None])
        self.assertEqual(one.last_lift(), first[-1][0])
        self.assertEqual(one.lifts_since(first[0][0]), first[1:])
        one.prune_lockouts(time.time() + 2 * 3600)
        self.assertEqual(one.lifts_since(0), [], "pruned after an hour")

    def test_a_write_sent_before_a_lift_does_not_bring_it_back(self):
        """
        A gateway's lockout writes name the last lift it had read.  One sent
        before it heard of a lift and committed after (another gateway
        lifted meanwhile) leaves out what that lift covers; what it decided
        after reading the lift, and what no lift covers, are written.
        """
        one, two = self.store(), self.store()
        self.assertFalse(one.save_lockouts({"192.0.2.1": 2000.0, "192.0.2.2": 2000.0},
                                           lifts_seen=0), "no lift missed")
        seen = one.last_lift()
        two.lift_lockouts("192.0.2.1")
        missed = one.save_lockouts({"192.0.2.1": 2100.0, "192.0.2.3": 2100.0}, lifts_seen=seen)
        self.assertTrue(missed, "the writer is told it missed a lift (it reads them then)")
        self.assertEqual(two.lockouts(1000.0), {"192.0.2.2": 2000.0, "192.0.2.3": 2100.0})
        self.assertFalse(one.save_lockouts({"192.0.2.1": 2200.0}, lifts_seen=one.last_lift()))
        self.assertEqual(two.lockouts(1000.0)["192.0.2.1"], 2200.0, "decided after the lift")
        # Every lockout lifted at once: the server's lockout too.
        seen = one.last_lift()
        two.lift_lockouts()
        self.assertTrue(one.set_lockout("*", 2300.0, lifts_seen=seen))
        self.assertTrue(one.save_lockouts({"192.0.2.4": 2300.0}, lifts_seen=seen))
        self.assertEqual(two.lockouts(1000.0), {})
        self.assertFalse(one.set_lockout("*", 2300.0))  # a writer that names no lift: as before
        self.assertEqual(two.lockouts(1000.0), {"*": 2300.0})

    def test_a_write_waiting_for_a_lift_sees_it_whatever_the_default_isolation(self):
        """
        A database whose default is REPEATABLE READ: a write that waited
        for a lift to commit must still see the lift's row (its snapshot
        would otherwise predate the wait) and leave the key out.
        """
        import psycopg

        from knocker.state.postgres import LIFT_LOCK

        admin = psycopg.connect(self.uri, autocommit=True)
        self.addCleanup(admin.close)
        name = admin.execute("SELECT current_database()").fetchone()[0]
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_isolation '
                      f"TO 'repeatable read'")
        store = self.store()
        seen = store.last_lift()
        lifting = psycopg.connect(self.uri)
        self.addCleanup(lifting.close)
        lifting.execute("SELECT pg_advisory_xact_lock(%s)", (LIFT_LOCK,))
        lifting.execute("INSERT INTO lifts (key, at) VALUES ('192.0.2.5', 0)")
        answers = []
        writing = threading.Thread(target=lambda: answers.append(
            store.save_lockouts({"192.0.2.5": 2000.0, "192.0.2.6": 2000.0}, lifts_seen=seen)))
        writing.start()
        writing.join(0.5)
        self.assertTrue(writing.is_alive(), "the write waits for the lift")
        lifting.commit()
        writing.join(10)
        self.assertEqual(answers, [True], "it saw the lift")
        self.assertEqual(store.lockouts(1000.0), {"192.0.2.6": 2000.0})

    def test_a_lift_waits_for_a_lockout_write_under_way(self):
        """
        A lift and a lockout write never interleave: one begun before the
        lift's row existed could otherwise not see it, and commit after it.
        """
        import psycopg

        from knocker.state.postgres import LIFT_LOCK

        store = self.store()
        writing = psycopg.connect(self.uri)
        self.addCleanup(writing.close)
        writing.execute("SELECT pg_advisory_xact_lock_shared(%s)", (LIFT_LOCK,))
        lifting = threading.Thread(target=store.lift_lockouts, args=("192.0.2.9",))
        lifting.start()
        lifting.join(0.5)
        self.assertTrue(lifting.is_alive(), "the lift did not wait for the write")
        self.assertEqual(store.lifts_since(0), [], "nor is its row there yet")
        writing.commit()
        lifting.join(10)
        self.assertFalse(lifting.is_alive())
        self.assertEqual([key for _, key in store.lifts_since(0)], ["192.0.2.9"])


def _knock_text(store, client):
    """A portknock file for C{client} whose knocks use pool ports 20000-20002."""
    import random
    from datetime import datetime, timezone

    from knocker.core.knockgen import format_knockfile, generate

    kf = generate(client, (20000, 20001, 20002), 5, 2, random.Random(1), SECRET,
                  datetime(2026, 1, 1, tzinfo=timezone.utc))
    return format_knockfile(kf)


class UnverifiedTLSTests(SynchronousTestCase):
    skip = postgres.skip_reason()

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k not in ("PGHOST", "PGSSLMODE")})

    def test_a_remote_database_without_a_checked_certificate_is_named(self):
        from knocker.state.postgres import unverified_tls

        for uri in ("postgresql://knocker@db.example.org/knocker",
                    "postgresql://knocker@db.example.org/knocker?sslmode=require",
                    "postgresql://knocker@10.0.0.5,db2.example.org/knocker?sslmode=prefer",
                    "host=db.example.org dbname=knocker"):
            warning = unverified_tls(uri)
            self.assertIsNotNone(warning, uri)
            self.assertIn("sslmode=verify-full", warning)
        self.assertIn("sslmode=require", unverified_tls(
            "postgresql://db.example.org/knocker?sslmode=require"))

    def test_checked_or_local_links_are_not(self):
        from knocker.state.postgres import unverified_tls

        for uri in ("postgresql://knocker@db.example.org/knocker?sslmode=verify-full",
                    "postgresql://knocker@db.example.org/knocker?sslmode=verify-ca",
                    "postgresql://knocker@localhost/knocker",
                    "postgresql://knocker@127.0.0.1:5433/knocker",
                    "postgresql:///knocker?host=/run/postgresql",
                    "host=/tmp/pg dbname=knocker"):
            self.assertIsNone(unverified_tls(uri), uri)


class RedactTests(SynchronousTestCase):
    skip = postgres.skip_reason()

    def test_passwords_masked_wherever_given(self):
        from knocker.state.postgres import redact

        for uri in ("postgresql://knocker:hunter22@db/knocker",
                    "postgresql://knocker@db/knocker?password=hunter22&sslmode=require",
                    "postgresql://knocker@db/knocker?sslmode=require&sslpassword=hunter22",
                    "postgresql://knocker@db/knocker?PASSWORD=hunter22",
                    "postgresql://knocker@db/knocker?pass%77ord=hunter22",
                    "postgresql://knocker:hunter%2022@db/knocker"):
            shown = redact(uri)
            self.assertNotIn("hunter", shown, uri)
            self.assertIn("db/knocker", shown)

    def test_unparsable_uri_masked_and_parse_error_withheld(self):
        from knocker.state.postgres import PostgresStore, redact

        uri = "postgresql://knocker:hunter 22@db:notaport/knocker?password=hunter33&bogus=1"
        self.assertNotIn("hunter", redact(uri))
        error = self.assertRaises(StateError, PostgresStore, uri, key=KEY)
        self.assertNotIn("hunter", str(error))
        self.assertIn("parses", str(error))


class Section10Tests(SynchronousTestCase):
    """
    Invitations and pending generations in PostgreSQL: sealed at rest, the
    schema migrated from version 1, a promotion moving the copy.
    """

    skip = postgres.skip_reason()

    def setUp(self):
        self.uri = postgres.database_for(self)

    def store(self, **kwargs):
        return PostgresStoreTests.store(self, **kwargs)

    def dumped(self, store) -> bytes:
        """Every row of every table, as bytes (what a dump holds)."""
        def work(conn):
            tables = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            return b"".join(repr(conn.execute(f"SELECT * FROM {t}").fetchall()).encode()
                            for t in tables)

        return store._run(work)

    def test_migrated_from_version_one(self):
        from knocker.state.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore

        old = PostgresStore(self.uri, KEY, migrate=False)
        self.addCleanup(old.close)
        old._run(lambda c: c.execute(
            "CREATE TABLE schema_version (version integer NOT NULL);"
            "INSERT INTO schema_version VALUES (1);" + MIGRATIONS[0] +
            "INSERT INTO clients VALUES ('alice', 1, 5, 'x');"))
        store = self.store()
        self.assertEqual(store.schema_version(), SCHEMA_VERSION)
        self.assertEqual(store.client("alice").knocks, 5, "kept across the migration")
        self.assertIsNone(store.pending("alice"))
        self.assertEqual(store.invitations(), [])

    #: Schema 2 as the enrol branch had it before the fleet's fixes took
    #: number 2 (docs: knocker/state/postgres.py, migration 2).
    ENROL_SCHEMA_2 = """
    CREATE TABLE invitations (
        slot integer PRIMARY KEY, client text NOT NULL, sealed_code bytea NOT NULL,
        expires double precision NOT NULL, tries integer NOT NULL,
        attempts integer NOT NULL DEFAULT 0, used boolean NOT NULL DEFAULT false);
    CREATE TABLE pending (
        client text PRIMARY KEY REFERENCES clients (id) ON DELETE CASCADE,
        knocks integer NOT NULL, secret_id text NOT NULL, sealed bytea);
    """

    def at_version_two(self, second: str):
        from knocker.state.postgres import MIGRATIONS, PostgresStore

        old = PostgresStore(self.uri, KEY, migrate=False)
        self.addCleanup(old.close)
        old._run(lambda c: c.execute(
            "CREATE TABLE schema_version (version integer NOT NULL);"
            "INSERT INTO schema_version VALUES (2);" + MIGRATIONS[0] + second))
        return old

    def check_whole_schema(self):
        from knocker.state.postgres import SCHEMA_VERSION

        store = self.store()
        self.assertEqual(store.schema_version(), SCHEMA_VERSION)
        store.register_with_book("alice", 5, SECRET, "current " + SECRET.hex())
        slot = store.add_invitation("alice", "crossover-clockwork-lantern", 2000.0, 3, 1000.0)
        self.assertEqual(store.invitation(slot).client, "alice")
        store.add_pending_with_book("alice", 7, bytes(32), "pending")
        self.assertEqual(store.pending("alice").knocks, 7)
        store.save_lockouts({"192.0.2.1": 1600.0}, steps={"192.0.2.1": 3})
        self.assertIn(("192.0.2.1", 1600.0, 3),
                      [row[1:] for row in store.lockouts_since(0, 10)])
        return store

    def test_migrated_from_the_fleets_version_two(self):
        from knocker.state.postgres import MIGRATIONS

        old = self.at_version_two(MIGRATIONS[1])
        old._run(lambda c: c.execute(
            "INSERT INTO lockouts (key, until, step) VALUES ('*', 1500.0, 2)"))
        store = self.check_whole_schema()
        self.assertEqual(store.lockouts(1000.0)["*"], 1500.0, "kept across the migration")

    def test_migrated_from_the_consoles_version_three(self):
        """
        The console's branch had revocations as version 3, on a schema
        without invitations and pending; and migration 3 alone once took
        such a database to 4.  From either, the whole schema.
        """
        from knocker.state.postgres import MIGRATIONS

        for version in (3, 4):
            old = self.at_version_two(MIGRATIONS[1] + MIGRATIONS[3])
            old._run(lambda c, version=version: c.execute(
                f"UPDATE schema_version SET version = {version};"
                "INSERT INTO revocations VALUES ('carol', 'z')"))
            store = self.check_whole_schema()
            self.assertEqual(store.revoked(), {"carol": "z"}, "kept across the migration")
            store._run(lambda c: c.execute(
                "DROP TABLE schema_version, meta, clients, books, closes, lockouts, invitations,"
                " pending, revocations, lifts CASCADE; DROP SEQUENCE lockouts_seq"))

    def test_migrated_from_enrolments_version_two(self):
        old = self.at_version_two(self.ENROL_SCHEMA_2)
        old._run(lambda c: c.execute(
            "INSERT INTO lockouts (key, until) VALUES ('*', 1500.0);"
            "INSERT INTO clients VALUES ('bob', 1, 5, 'x');"
            "INSERT INTO pending (client, knocks, secret_id) VALUES ('bob', 9, 'y')"))
        store = self.check_whole_schema()
        self.assertEqual(store.pending("bob").knocks, 9, "kept across the migration")
        self.assertEqual(store.lockouts(1000.0)["*"], 1500.0)
        self.assertEqual(len(store.lockouts_since(0, 10)), 2, "the old row has a seq too")

    def test_code_and_pending_copy_sealed(self):
        store = self.store()
        code = "crossover-clockwork-zulu"
        store.register_with_book("alice", 5, SECRET, "current " + SECRET.hex())
        slot = store.add_invitation("alice", code, 2000.0, 3, 1000.0)
        new = bytes(range(200, 232))
        store.add_pending_with_book("alice", 7, new, "pending " + new.hex())
        dump = self.dumped(store)
        for secret in (code.encode(), SECRET.hex().encode(), new.hex().encode(), SECRET, new):
            self.assertNotIn(secret, dump)
        self.assertEqual(store.invitation(slot).code, code)
        self.assertEqual(store.pending_book("alice"), "pending " + new.hex())
        other = self.store(key=bytes(32))
        self.assertRaises(StateError, other.invitation, slot)
        store._run(lambda c: c.execute("UPDATE invitations SET client = 'bob'"))
        error = self.assertRaises(StateError, store.invitation, slot)
        self.assertIn("does not open", str(error))

    def test_promote_moves_the_sealed_copy(self):
        from knocker.state.interface import secret_id

        one, two = self.store(), self.store()
        one.register_with_book("alice", 5, SECRET, "current")
        new = bytes(range(200, 232))
        one.add_pending_with_book("alice", 7, new, "renewed")
        self.assertTrue(two.promote("alice", secret_id(new)))
        self.assertEqual(one.book("alice"), "renewed")
        self.assertEqual(one.client("alice").secret_id, secret_id(new))
        self.assertIsNone(one.pending_book("alice"))
        self.assertFalse(one.promote("alice", secret_id(new)), "once, across gateways")

    def test_the_first_pending_file_drawn_is_kept(self):
        """Two gateways drawing a renewal at once: both offer the first one."""
        from knocker.state.interface import secret_id

        one, two = self.store(), self.store()
        one.register("alice", 5, SECRET)
        first, second = bytes(range(200, 232)), bytes(range(150, 182))
        self.assertEqual(one.add_pending_with_book("alice", 7, first, "first"), "first")
        self.assertEqual(two.add_pending_with_book("alice", 7, second, "second"), "first")
        self.assertEqual(two.pending("alice").secret_id, secret_id(first))

    def test_a_pending_file_for_a_replaced_or_revoked_file_is_not_kept(self):
        """
        Drawn for the file C{current_id} names, but it was generated again,
        or revoked, meanwhile: neither counter nor sealed copy is kept.
        """
        from knocker.state.interface import secret_id

        store = self.store()
        store.register("alice", 5, SECRET)
        old = secret_id(SECRET)
        store.register("alice", 5, bytes(range(50, 82)))  # generate --force
        self.assertIsNone(store.add_pending_with_book("alice", 7, bytes(range(200, 232)),
                                                      "renewed", old))
        self.assertIsNone(store.pending("alice"))
        self.assertIsNone(store.pending_book("alice"))
        store.register("alice", 5, SECRET)
        store.revoke("alice")
        self.assertIsNone(store.add_pending_with_book("alice", 7, bytes(range(200, 232)),
                                                      "renewed", old))
        self.assertIsNone(store.pending("alice"))

    def test_set_pending_for_another_secret_drops_the_copy(self):
        store = self.store()
        store.register("alice", 5, SECRET)
        new = bytes(range(200, 232))
        store.add_pending_with_book("alice", 7, new, "renewed")
        store.set_pending("alice", 7, new)
        self.assertEqual(store.pending_book("alice"), "renewed", "the same generation")
        store.set_pending("alice", 7, SECRET)
        self.assertIsNone(store.pending_book("alice"))

    def test_attempts_from_many_threads_stop_at_the_tries(self):
        store = self.store()
        slot = store.add_invitation("alice", "x", 2000.0, 3, 1000.0)
        counted = []

        def attempt():
            found = store.invitation_attempt(slot, 1000.0)
            counted.append(found and found.attempts)

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(sorted(counted, key=str), [1, 2, 3] + [None] * 5,
                         "each of the three tries told to one caller, None to the rest")
        self.assertEqual(store.invitation(slot).attempts, 3)


class KeyFileTests(SynchronousTestCase):
    skip = postgres.skip_reason()

    def test_created_0600_and_read_back(self):
        from knocker.state.postgres import create_key, load_key

        path = os.path.join(self.mktemp() + "-dir", "fleet.key")
        os.makedirs(os.path.dirname(path))
        create_key(path)
        key = load_key(path)
        self.assertEqual(len(key), 32)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(load_key(path), key)

    def test_a_command_as_root_makes_it_in_roots_folder_for_the_daemons_user(self):
        """
        The documented place, /etc/knocker/fleet.key: a folder of root's,
        which the state's owner (the daemon's user) cannot write to.  A
        command run as root makes the key there, the state owner's, so the
        daemon can read it (before: made as the state's owner, refused).
        """
        import pwd
        import tempfile

        from knocker.admin.clients import open_database
        from tests.helpers.harness import server_config

        if os.geteuid() != 0:
            raise SkipTest("handing the state to another user takes root (CI runs as root)")
        nobody = pwd.getpwnam("nobody")
        etc = tempfile.mkdtemp(prefix="knocker-etc-")
        self.addCleanup(shutil.rmtree, etc)
        os.chmod(etc, 0o755)
        state = os.path.join(tempfile.mkdtemp(prefix="knocker-state-"), "state")
        self.addCleanup(shutil.rmtree, os.path.dirname(state))
        os.mkdir(state, 0o700)
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        key_file = os.path.join(etc, "fleet.key")
        config = server_config(state, database=postgres.database_for(self),
                               database_key_file=key_file, gateway="gw1")
        open_database(config, create_key=True).close()
        info = os.stat(key_file)
        self.assertEqual((info.st_uid, info.st_gid, info.st_mode & 0o777),
                         (nobody.pw_uid, nobody.pw_gid, 0o600))
        self.assertEqual(os.stat(etc).st_uid, 0, "the folder stays root's")
        open_database(config).close()  # and read back as the state's owner

    def test_refused_when_others_can_read_or_missing(self):
        from knocker.state.postgres import load_key

        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(KEY.hex())
        os.chmod(path, 0o644)
        self.assertIn("chmod 600", str(self.assertRaises(StateError, load_key, path)))
        self.assertRaises(StateError, load_key, path + "-missing")
        self.assertRaises(StateError, load_key, None)

    def test_not_a_key(self):
        from knocker.state.postgres import load_key

        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("short\n")
        os.chmod(path, 0o600)
        self.assertIn("hex digits", str(self.assertRaises(StateError, load_key, path)))
