"""The endpoint and the boto3 client (one per environment), and GDAL's ``/vsis3/`` settings for the
same endpoint."""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from geoseg.errors import OutputError, first_line

#: Seconds to wait for a TCP connection, and attempts per request (the first included): an
#: unreachable endpoint fails in seconds, not after botocore's default of minutes; a
#: ``AWS_MAX_ATTEMPTS`` or ``AWS_RETRY_MODE`` the user set is kept.
CONNECT_TIMEOUT = 3.0


READ_TIMEOUT = 60.0


MAX_ATTEMPTS = 3


def endpoint_setting(env: Mapping[str, str]) -> tuple[str | None, str]:
    """The custom endpoint URL in ``env`` and the variable it came from (None: AWS's own).

    botocore's own order first (``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``), then GDAL's
    ``AWS_S3_ENDPOINT`` (host[:port]) with ``AWS_HTTPS=NO`` meaning plain http."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if env.get(name):
            return env[name].rstrip("/"), name
    host = env.get("AWS_S3_ENDPOINT")
    if host:
        if "://" in host:
            return host.rstrip("/"), "AWS_S3_ENDPOINT"
        https = env.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        return f"{'https' if https else 'http'}://{host.rstrip('/')}", "AWS_S3_ENDPOINT"
    return None, "AWS_ENDPOINT_URL"


def endpoint_url() -> str | None:
    """The custom S3 endpoint the environment names, or None for AWS's own."""
    return endpoint_setting(os.environ)[0]


def _region(env: Mapping[str, str]) -> str | None:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def describe_endpoint(env: Mapping[str, str]) -> str:
    url, _ = endpoint_setting(env)
    return url or f"AWS S3 ({_region(env) or 'default region'})"


_CLIENTS: dict[tuple[tuple[str, str], ...], Any] = {}


_CLIENTS_LOCK = threading.Lock()


def _env_key() -> tuple[tuple[str, str], ...]:
    """What of the environment a client depends on: every AWS_* variable (botocore and GDAL's)."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def s3_client() -> Any:
    """A boto3 S3 client for the current environment, made once per process and environment.

    boto3 clients are thread-safe, so Dask tasks on one worker share it; a changed AWS_*
    variable (a test's, a job's) gets a new one. Timeouts and retries are bounded
    (:data:`CONNECT_TIMEOUT`, :data:`MAX_ATTEMPTS`) so an unreachable endpoint fails in seconds."""
    key = _env_key()
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = _new_client(dict(key))
    return client


def _new_client(env: Mapping[str, str]) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # a runtime dependency: only a broken install gets here
        raise OutputError(
            f"s3:// outputs need boto3 ({first_line(exc)}); pip install boto3"
        ) from exc
    from botocore.exceptions import BotoCoreError

    url, _ = endpoint_setting(env)
    config: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}
    if "AWS_MAX_ATTEMPTS" not in env and "AWS_RETRY_MODE" not in env:
        config["retries"] = {"max_attempts": MAX_ATTEMPTS, "mode": "standard"}
    virtual = env.get("AWS_VIRTUAL_HOSTING", "").upper() in ("TRUE", "YES", "ON", "1")
    if url is not None and not virtual:
        # S3-compatible servers (MinIO, Ceph, moto) name buckets in the path; GDAL does the same
        # with AWS_VIRTUAL_HOSTING=FALSE, which gdal_s3_env sets for them.
        config["s3"] = {"addressing_style": "path"}
    if env.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "ON", "1"):
        from botocore import UNSIGNED

        config["signature_version"] = UNSIGNED
    try:
        session = boto3.session.Session()
        return session.client(
            "s3", endpoint_url=url, region_name=_region(env), config=Config(**config)
        )
    except BotoCoreError as exc:  # a profile that does not exist, a malformed config file
        raise OutputError(
            f"cannot set up the S3 client: {first_line(exc)}; check AWS_PROFILE and the AWS "
            "config files"
        ) from exc
    except ValueError as exc:  # an endpoint that is not a URL
        raise OutputError(
            f"S3 endpoint {url!r} is not a URL ({first_line(exc)}); set "
            f"{endpoint_setting(env)[1]} to http(s)://host:port"
        ) from exc


def gdal_s3_env() -> dict[str, str]:
    """GDAL config options that make ``/vsis3/`` reach the endpoint boto3 uses.

    For ``rasterio.Env(**gdal_s3_env())``: ``AWS_S3_ENDPOINT`` (host:port), ``AWS_HTTPS`` and
    ``AWS_VIRTUAL_HOSTING=FALSE`` for a custom endpoint, ``AWS_REGION``; GDAL reads the
    credentials from the environment itself. An option the user set in the environment is
    left out, so that theirs stays in force."""
    env = os.environ
    options: dict[str, str] = {}
    url, source = endpoint_setting(env)
    if url is not None and source != "AWS_S3_ENDPOINT":
        parsed = urllib.parse.urlsplit(url)
        options["AWS_S3_ENDPOINT"] = (parsed.netloc + parsed.path).rstrip("/")
        options["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = _region(env)
    if region:
        options["AWS_REGION"] = region
    return {k: v for k, v in options.items() if k not in env}
