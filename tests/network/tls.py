"""
A throw-away certificate authority and server certificate for TLS tests, and
the Twisted endpoint strings that use them.

::

    ca = make_ca(directory)
    files = make_server(directory, ca, dns_names=["knock.test"], ips=["127.0.0.1"])
    server = server_endpoint(files, port=0, interface="127.0.0.1")
    #   ssl:0:interface=127.0.0.1:privateKey=…/server.key:certKey=…/server.pem
    client = client_endpoint(files.trust_dir, "knock.test", port, connect_to="127.0.0.1")
    #   tls:host=knock.test:port=…:trustRoots=…/trust:endpoint=tcp\\:127.0.0.1\\:…

Keys are ECDSA P-256 (quick to make); key files are written 0600. The CA's
certificate is written alone into ``trust/`` because the ``tls:`` client
endpoint's ``trustRoots`` takes a directory and trusts every ``*.pem`` in it.
Paths in endpoint strings are quoted, so directories with ``:`` or ``\\`` work.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.endpoints import quoteStringArgument


@dataclass(frozen=True)
class CA:
    """
    A certificate authority: its certificate and key in memory, and where
    they were written.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: str
    key_path: str
    #: a directory holding only the CA certificate (for trustRoots=)
    trust_dir: str


@dataclass(frozen=True)
class ServerFiles:
    """
    Paths of a server certificate and key, and of the trust directory of the
    CA that signed it.
    """

    cert_path: str
    key_path: str
    trust_dir: str


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # also when the file was there already
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(directory: str, name: str = "knocker test CA", basename: str = "ca") -> CA:
    """
    Make a self-signed CA valid from an hour ago for a day, and write
    C{basename}.pem, C{basename}.key (0600) and trust-C{basename}/C{basename}.pem
    into C{directory}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_path = os.path.join(directory, f"{basename}.pem")
    key_path = os.path.join(directory, f"{basename}.key")
    trust_dir = os.path.join(directory, f"trust-{basename}")
    os.makedirs(trust_dir, exist_ok=True)
    _write(cert_path, cert_pem, 0o644)
    _write(key_path, _key_pem(key), 0o600)
    _write(os.path.join(trust_dir, f"{basename}.pem"), cert_pem, 0o644)
    return CA(certificate, key, cert_path, key_path, trust_dir)


def make_server(
    directory: str,
    ca: CA,
    dns_names: Sequence[str] = ("knock.test",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    basename: str = "server",
) -> ServerFiles:
    """
    Make a server certificate signed by C{ca} for C{dns_names} and C{ips}
    (subject alternative names), and write C{basename}.pem (certificate) and
    C{basename}.key (0600) into C{directory}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    common_name = dns_names[0] if dns_names else ips[0]
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, f"{basename}.pem")
    key_path = os.path.join(directory, f"{basename}.key")
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(key_path, _key_pem(key), 0o600)
    return ServerFiles(cert_path, key_path, ca.trust_dir)


def server_endpoint(files: ServerFiles, port: int = 0, interface: str | None = "127.0.0.1") -> str:
    """
    A C{serverFromString} string for a TLS server with C{files}.
    """
    parts = [f"ssl:{port}"]
    if interface is not None:
        parts.append(f"interface={quoteStringArgument(interface)}")
    parts.append(f"privateKey={quoteStringArgument(files.key_path)}")
    parts.append(f"certKey={quoteStringArgument(files.cert_path)}")
    return ":".join(parts)


def client_endpoint(
    trust_dir: str, host: str, port: int, connect_to: str | None = None, timeout: int = 5
) -> str:
    """
    A C{clientFromString} string for a TLS client that trusts the CA
    certificates in C{trust_dir} and checks that the server is C{host}.

    @param connect_to: the address to connect to when it is not C{host}
        (say, C{host} is a name no resolver knows); then C{host} is only the
        name checked against the certificate.
    """
    parts = [
        "tls",
        f"host={quoteStringArgument(host)}",
        f"port={port}",
        f"timeout={timeout}",
        f"trustRoots={quoteStringArgument(trust_dir)}",
    ]
    if connect_to is not None:
        inner = f"tcp:host={quoteStringArgument(connect_to)}:port={port}:timeout={timeout}"
        parts.append(f"endpoint={quoteStringArgument(inner)}")
    return ":".join(parts)
