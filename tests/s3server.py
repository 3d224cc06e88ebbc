"""A real S3-protocol server for tests: moto's server in a subprocess on 127.0.0.1.

``s3_server`` starts it once per test session, only when a test asks for it, and stops it at
the end; tests skip when moto's server is not installed. ``s3_bucket`` gives each test a fresh
bucket and points the standard AWS variables at the server (never a mocked client: requests
go over HTTP to a process that speaks S3).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: The dummy credentials moto accepts while it does not check them.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

#: Every AWS/GDAL variable that could point a test's client elsewhere; unset by ``s3_bucket``.
_AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING",
    "AWS_NO_SIGN_REQUEST",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_REQUEST_PAYER",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """A running moto server: its endpoint and process."""

    endpoint: str
    process: subprocess.Popen[bytes]
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of the test's own (moto's dummy keys), to set up or look at the server
        behind geoseg's back; made once (a boto3 session loads its models in about a second)."""
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.session.Session().client(
                service,
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
        return self._clients[service]

    def _post(self, path: str, body: bytes) -> None:
        host, port = self.endpoint.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", path, body=body)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, (path, response.status)
        finally:
            conn.close()

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """While inside, the server refuses requests whose keys are not in its IAM (moto's
        ``INITIAL_NO_AUTH_ACTION_COUNT=0``, switched on its running server)."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")


def _start(log: Path) -> S3Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto server exited ({process.returncode}): {log.read_text()[-2000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return S3Server(f"http://127.0.0.1:{port}", process)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(
        f"moto server did not listen on port {port} within 30 s: {log.read_text()[-2000:]}"
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, one per session; skips when moto[server] is missing."""
    for module in ("moto.server", "flask", "boto3"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{module} is not installed (pip install 'moto[server]' boto3)")
    server = _start(tmp_path_factory.mktemp("moto") / "server.log")
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


_BUCKETS = itertools.count()


def set_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point the standard AWS variables at ``endpoint`` with moto's dummy keys, and only there."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    # no ~/.aws files of whoever runs the tests
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://NAME``: a new empty bucket on the test server, the AWS variables pointing there."""
    set_aws_env(monkeypatch, s3_server.endpoint)
    name = f"geoseg-test-{os.getpid()}-{next(_BUCKETS)}"
    s3_server.client().create_bucket(Bucket=name)
    return f"s3://{name}"
