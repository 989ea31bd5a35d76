"""A test PKI made with openssl: CAs, and certificates they sign (for TLS
brokers, TLS gateways and client certificates). Standard library only, so
that other suites (python/tests, node/test through serve_brokers.py) use it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr}")


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN=Telegraphy test {name}", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


def sign(d: Path, ca: tuple[Path, Path], name: str, san: str, usage: str) -> tuple[Path, Path]:
    """A certificate for `san` (`DNS:localhost`) signed by `ca`: (certificate, key)."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


def broker_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for `localhost` only (not 127.0.0.1), a
    client certificate, and another CA that signed none of them."""
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d, "ca")
    other, _ = make_ca(d, "other-ca")
    server = sign(d, ca, "server", "DNS:localhost", "serverAuth")
    client = sign(d, ca, "client", "DNS:telegraphy-client", "clientAuth")
    return {"ca": ca[0], "other_ca": other, "cert": server[0], "key": server[1],
            "client_cert": client[0], "client_key": client[1]}
