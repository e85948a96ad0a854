"""``rediss://`` failures are quick and one line: a private redis-server speaking TLS with a
self-signed certificate (made with the ``openssl`` command), and a plain one reached with a
``rediss://`` URL (a handshake that never gets an answer, once a 96 s hang).

Skipped where ``openssl`` is missing or redis-server was built without TLS.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga import Settings
from saga.cli import EXIT_OK, EXIT_UNAVAILABLE
from saga.errors import SagaError, StoreUnavailable
from saga.store import Keyspace
from saga.testing import RedisServer, free_port, worker_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``cert.pem`` and ``key.pem``: a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture(scope="module")
def tls_server(certificate: Path) -> Iterator[tuple[RedisServer, int]]:
    """A private redis-server with a plain port (to see it answer) and a TLS port."""
    port = free_port()
    tls = [
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(certificate / "cert.pem"),
        "--tls-key-file",
        str(certificate / "key.pem"),
        "--tls-auth-clients",
        "no",
    ]
    server = RedisServer(options=tls)
    try:
        server.start()
    except SagaError as exc:  # a build without TLS refuses the options
        server.close()
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    try:
        yield server, port
    finally:
        server.close()


def saga(settings: Settings, url: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m saga --redis-url URL ARGS``; ``timeout`` catches a hang."""
    return subprocess.run(
        [sys.executable, "-m", "saga", "--redis-url", url, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=worker_env(settings),
        timeout=timeout,
    )


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == EXIT_UNAVAILABLE, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_a_certificate_not_trusted_fails_at_once_in_one_line(
    settings: Settings, tls_server: tuple[RedisServer, int], certificate: Path
) -> None:
    _, port = tls_server
    # without the CA: refused, not retried, one line saying how to trust it
    line = one_line(saga(settings, f"rediss://127.0.0.1:{port}/0", "list", timeout=15))
    assert f"TLS to Redis at rediss://127.0.0.1:{port}/0 failed: self" in line and "signed certificate" in line
    assert "ssl_ca_certs" in line
    # with it, the same server answers
    trusted = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certificate / 'cert.pem'}"
    out = saga(settings, trusted, "list", timeout=15)
    assert out.returncode == EXIT_OK, out.stderr
    assert out.stdout == "no runs\n"


@pytest.mark.timeout(45)
def test_a_server_that_never_answers_the_handshake_fails_in_seconds(
    settings: Settings, tls_server: tuple[RedisServer, int]
) -> None:
    plain, _ = tls_server
    url = f"rediss://127.0.0.1:{plain.port}/0"  # a plain port: the TLS handshake gets no answer
    # the CLI: each try waits the connect timeout, not the 10 s read timeout (it took 21 s)
    line = one_line(saga(settings, url, "list", timeout=15))
    assert "no TLS handshake: if that port is not a TLS port, use redis://" in line
    # a worker's store, with 3 retries (it took 40 s; with 8 retries, 96 s): the test's timeout
    keyspace = Keyspace(url, prefix="saga", retries=3, buckets=16)
    with pytest.raises(StoreUnavailable, match="no TLS handshake"):
        keyspace.ping()
