"""
The console in a real headless Chromium against a real daemon, as an
operator uses it: the login URL that `knocker console` prints, clients with
their knocks left, a lockout lifted with one click (the source gets a
CHALLENGE again, and the audit log says who lifted it), the reports with
their chart, a client invited whose code enrols with `knocker enroll`, a POST without its CSRF token refused, nothing without login.

Screenshots go to tests/screenshots/ (git-ignored).  Skips, saying why,
only when Chromium, its driver or selenium are not installed
(tests/run.sh installs them).
"""

import os
import shutil
import tempfile
import unittest

from tests.helpers.processes import ROOT, knocker
from tests.processes.test_console import ConsoleDaemonCase

CHROMIUM = shutil.which("chromium")
DRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = os.path.join(ROOT, "tests", "screenshots")

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # pragma: no cover
    webdriver = None


def _missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install '.[test]')"
    if CHROMIUM is None or not os.path.exists(DRIVER):
        return "chromium and chromium-driver are not installed (apt-get install chromium " \
               "chromium-driver; tests/run.sh does it as root)"
    return None


@unittest.skipIf(_missing(), _missing())
class BrowserCase(ConsoleDaemonCase):
    """
    A daemon with its console on L{admin}, clients alice and bob, and a
    headless Chromium given L{browser_flags}.
    """

    timeout = 180

    def admin(self) -> str:
        return "tcp:0:interface=127.0.0.1"

    def browser_flags(self) -> tuple[str, ...]:
        return ()

    def setUp(self):
        super().setUp()
        os.environ["SE_OFFLINE"] = "true"  # selenium must not fetch a driver
        self.configure(admin=self.admin(), lockout=600, lockout_scope="source")
        self.alice = self.generate("alice", knocks=10)
        self.generate("bob", knocks=30)
        self.start()
        profile = tempfile.mkdtemp(prefix="knocker-chromium-")
        self.addCleanup(shutil.rmtree, profile, ignore_errors=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--window-size=1100,900", f"--user-data-dir={profile}",
                     *self.browser_flags()):
            options.add_argument(flag)
        self.browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.addCleanup(self.browser.quit)
        os.makedirs(SCREENSHOTS, exist_ok=True)

    def shot(self, name: str) -> None:
        self.browser.save_screenshot(os.path.join(SCREENSHOTS, f"console-{name}.png"))

    def text(self) -> str:
        return self.browser.find_element(By.TAG_NAME, "body").text

    def wait_until(self, condition) -> None:
        """
        A click that loads a page returns before the page is there, and the
        old page can go away between finding an element and reading it:
        Chromium then says "stale element" or, for the same race, "Node with
        given id does not belong to the document" (a bare WebDriverException).
        Both only mean "look again".
        """
        WebDriverWait(self.browser, 10, ignored_exceptions=(StaleElementReferenceException,
                                                            WebDriverException)
                      ).until(lambda browser: condition())

    def wait_for_title(self, title: str) -> None:
        self.wait_until(lambda: self.browser.title.startswith(title))


class ConsoleBrowserTests(BrowserCase):
    def test_an_operator_session(self):
        self.assertOpens(self.alice)
        self.lock_myself_out(self.alice)
        done = knocker("console", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        url = done.stdout.strip()
        base = url.split("login")[0]

        # Nothing without login.
        self.browser.get(base + "clients")
        self.assertIn("not logged in", self.text())
        self.assertNotIn("alice", self.text())

        # The URL knocker console printed, then Log in.
        self.browser.get(url)
        self.browser.find_element(By.ID, "login").click()
        self.wait_for_title("Overview")
        self.assertIn("Up since", self.text())
        self.shot("overview")

        # Clients and their knocks left.
        self.browser.find_element(By.LINK_TEXT, "Clients").click()
        self.wait_for_title("Clients")
        rows = {row.text.split()[0]: row.text for row in
                self.browser.find_elements(By.CSS_SELECTOR, "tbody tr")}
        self.assertIn("9 of 10", rows["alice"])
        self.assertIn("30 of 30", rows["bob"])
        self.shot("clients")

        # A lockout lifted with one click.
        self.browser.find_element(By.LINK_TEXT, "Lockouts").click()
        self.wait_for_title("Lockouts")
        self.assertIn("127.0.0.1", self.text())
        self.shot("lockouts")
        self.browser.find_element(By.XPATH, "//button[text()='Lift 127.0.0.1']").click()
        self.wait_until(lambda: "Lifted" in self.text())
        self.assertIn("Lifted: 127.0.0.1", self.text())
        self.assertIn("No lockout in force", self.text())
        self.assertOpens(self.alice)  # CHALLENGE, GRANT, OPEN again
        lifted = self.events("admin-lift")
        self.assertEqual((lifted[-1]["lifted"], lifted[-1]["by"]), (["127.0.0.1"], "session"))

        # ... and the audit page shows it.
        self.browser.get(base + "audit?event=admin-lift")
        self.assertIn("1 events match", self.text())
        self.assertIn("admin-lift", self.text())

        # Reports with a chart.
        self.browser.find_element(By.LINK_TEXT, "Reports").click()
        self.wait_for_title("Reports")
        chart = self.browser.find_element(By.CSS_SELECTOR, "svg.chart")
        self.assertGreater(chart.size["width"], 100)
        self.assertTrue(self.browser.find_elements(By.CSS_SELECTOR, "svg.chart rect"))
        self.shot("reports")

        # A POST without its CSRF token, from the console's own page, is refused.
        status = self.browser.execute_async_script(
            "var done = arguments[arguments.length - 1];"
            "fetch('/revoke', {method: 'POST', body: new URLSearchParams({client: 'bob'})})"
            ".then(function (r) { done(r.status); });")
        self.assertEqual(status, 403)
        self.assertNotIn("admin-revoke", [e["event"] for e in self.events()])

        # The overview's last events arrive as they happen (server-sent events).
        self.browser.get(base)
        self.assertNotIn("admin-revoke", self.text())
        done = knocker("revoke", "bob", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.wait_until(
            lambda: "admin-revoke" in self.browser.find_element(By.ID, "events").text)
        live = self.browser.find_element(By.ID, "live")
        self.assertFalse(live.is_displayed())

        # Logged out in another tab: this page's live events end, and it says so.
        overview = self.browser.current_window_handle
        self.browser.switch_to.new_window("tab")
        self.browser.get(base)
        self.browser.find_element(By.XPATH, "//button[text()='Log out']").click()
        self.wait_for_title("Log in")
        self.browser.switch_to.window(overview)
        self.wait_until(lambda: live.is_displayed())
        self.assertIn("Live updates stopped", live.text)
        again = knocker("console", "--config", self.server_conf).stdout.strip()
        self.browser.get(again)  # a login URL serves once: a new one for the rest
        self.browser.find_element(By.ID, "login").click()
        self.wait_for_title("Overview")

        # Invite: the code shown once enrols with the real knocker enroll, and knocks.
        self.browser.get(base + "clients")
        self.browser.find_element(By.ID, "invite-client").send_keys("carol")
        self.browser.find_element(By.NAME, "knocks").send_keys("5")
        self.browser.find_element(By.ID, "invite").click()
        self.wait_for_title("Invitation made")
        code = self.browser.find_element(By.ID, "code").text
        command = self.browser.find_element(By.ID, "command").text
        self.assertEqual(command, f"knocker enroll {code} --server tcp:127.0.0.1:{self.port}")
        self.shot("invited")
        self.assertNotIn(code.split("-", 1)[1], open(self.audit).read(), "no code in the log")
        self.assertEqual(self.events("admin-invite")[-1]["client"], "carol")
        out = os.path.join(self.dir, "carol", "carol.knock")
        os.makedirs(os.path.dirname(out))
        done = knocker(*command.split()[1:], "-o", out)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        knocked = knocker("knock", "--config", out[:-len(".knock")] + ".conf", "--log-file",
                          os.path.join(self.dir, "carol.log"))
        self.assertIn("OPEN", knocked.stdout, knocked.stdout + knocked.stderr)
        # An existing client is refused unless Replace is ticked.
        self.browser.get(base + "clients")
        self.assertIn("Open invitations", self.text())
        self.browser.find_element(By.ID, "invite-client").send_keys("bob")
        self.browser.find_element(By.ID, "invite").click()
        self.wait_for_title("Not invited")
        self.assertIn("exists already", self.text())

        # Narrow screen: the overview still reads.
        self.browser.set_window_size(400, 900)
        self.browser.get(base)
        self.assertIn("Up since", self.text())
        self.shot("overview-narrow")


class ConsoleOverTLSBrowserTests(BrowserCase):
    """
    admin = ssl:, as a console off loopback must be: Chromium trusts the
    test CA's server key alone (--ignore-certificate-errors-spki-list), and
    offers HTTP/2 and HTTP/1.1 over ALPN as it does everywhere.
    """

    def admin(self) -> str:
        from tests.network import tls

        ca = tls.make_ca(self.dir)
        files = tls.make_server(self.dir, ca, dns_names=["console.test"], ips=["127.0.0.1"])
        with open(files.cert_path, "rb") as handle:
            self.spki = _spki_sha256(handle.read())
        return tls.server_endpoint(files, port=0, interface="127.0.0.1")

    def browser_flags(self) -> tuple[str, ...]:
        return (f"--ignore-certificate-errors-spki-list={self.spki}",)

    def test_log_in_lift_and_watch_over_tls(self):
        self.assertOpens(self.alice)
        self.lock_myself_out(self.alice)
        url = knocker("console", "--config", self.server_conf).stdout.strip()
        self.assertTrue(url.startswith("https://127.0.0.1:"), url)
        base = url.split("login")[0]
        self.browser.get(url)
        self.browser.find_element(By.ID, "login").click()
        self.wait_for_title("Overview")
        cookie = self.browser.get_cookies()[0]
        self.assertTrue(cookie["secure"] and cookie["httpOnly"], cookie)
        self.assertEqual(self.browser.execute_script(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol"), "http/1.1")
        # A form POST with its CSRF token, then the live events, over TLS.
        self.browser.find_element(By.LINK_TEXT, "Lockouts").click()
        self.wait_for_title("Lockouts")
        self.browser.find_element(By.XPATH, "//button[text()='Lift 127.0.0.1']").click()
        self.wait_until(lambda: "Lifted: 127.0.0.1" in self.text())
        self.assertEqual(self.events("admin-lift")[-1]["by"], "session")
        self.browser.get(base)
        done = knocker("revoke", "bob", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.wait_until(
            lambda: "admin-revoke" in self.browser.find_element(By.ID, "events").text)


def _spki_sha256(pem: bytes) -> str:
    """Chromium's pin of a certificate: the SHA-256 of its public key, base64."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
