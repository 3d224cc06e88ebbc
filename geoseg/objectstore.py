"""Outputs on S3-protocol object storage: ``s3://`` URLs, one boto3 client per environment, the
checks made before any work, and uploads that make an object visible only once it is complete.

Credentials and the endpoint come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``...), or from GDAL's own ``AWS_S3_ENDPOINT`` /
``AWS_HTTPS``; :func:`gdal_s3_env` points GDAL's ``/vsis3/`` at the same endpoint. Every failure
of the store (unreachable, missing bucket, refused credentials, an error mid-upload) becomes one
:class:`~geoseg.errors.OutputError` line naming the URL and how to fix it. boto3 is imported
only when a client is first needed, so that the CLI starts without it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import IO, Any, TypeVar

from geoseg.errors import OutputError, first_line

T = TypeVar("T")

#: Uploads of up to this many bytes are one PUT (atomic by S3's rules); larger ones are a
#: multipart upload, completed only after every part is in. Measured (benchmarks/objectstore.py,
#: 100 MB to a moto server on loopback, 2 busy cores): one PUT 1.2 s, parts of 8 MiB 1.6 s one at
#: a time and 2.1 s four at a time, 16 MiB x 4 1.7 s; client CPU 0.23-0.45 s in every mode. So
#: loopback shows no speed to gain from parts (the server is the bottleneck); what decides is
#: memory and retries: a PUT holds the whole object (102 MB peak for 100 MB) and is resent whole,
#: parts hold at most PART_THREADS + 1 parts (38 MB at 8 MiB x 4) and are retried alone, and a
#: remote store's per-connection throughput is what parallel parts overcome. Most single cells
#: and STAC items stay one request under 16 MiB; class rasters of whole scenes go in parts.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
#: Part size of a multipart upload (boto3's own default too): small enough to retry cheaply and
#: hold little, large enough that S3's 10,000-part limit is reached only at 78 GiB (beyond it
#: parts grow, when the size is known).
PART_SIZE = 8 * 1024 * 1024
#: Parts sent at once by one upload: enough to fill a link to a remote store whose single stream
#: is latency-bound, few enough that a Dask worker's uploads do not crowd its tasks.
PART_THREADS = 4
#: S3's limits on parts: at least 5 MiB each (but the last), at most 10,000 per upload.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000

#: Seconds to wait for a TCP connection, and attempts per request (the first included): an
#: unreachable endpoint fails in seconds, not after botocore's default of minutes; a
#: ``AWS_MAX_ATTEMPTS`` or ``AWS_RETRY_MODE`` the user set is kept.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 60.0
MAX_ATTEMPTS = 3

#: Error codes that mean the store did not accept who we are (or what they may do).
_REFUSED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AllAccessDisabled",
    "AccountProblem",
    "UnrecognizedClientException",
}
_NO_BUCKET = {"NoSuchBucket"}
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


# --- URLs ----------------------------------------------------------------------------------


def is_s3_url(path: object) -> bool:
    """True for an ``s3://bucket/key`` URL (any string starting with ``s3://``)."""
    return isinstance(path, str) and path.startswith("s3://")


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` as ``(bucket, key)``; the key may be empty (the bucket's root).

    A URL without a bucket, or with a query, fragment or credentials in it, is an OutputError:
    S3 keys are taken literally, so ``s3://b/a?x`` would silently name an odd object."""
    if not is_s3_url(url):
        raise OutputError(f"{url} is not an s3:// URL; give s3://bucket/key")
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise OutputError(f"{url} names no bucket; give s3://bucket/key")
    if "@" in bucket or ":" in bucket or "?" in url or "#" in url:
        raise OutputError(
            f"{url} is not a plain s3://bucket/key URL; give credentials and the endpoint in "
            "AWS_ACCESS_KEY_ID / AWS_ENDPOINT_URL, not in the URL"
        )
    if not (3 <= len(bucket) <= 63) or bucket != bucket.lower() or " " in bucket:
        raise OutputError(
            f"{bucket!r} in {url} is not a valid bucket name (3-63 lowercase letters, digits, "
            "dots and hyphens); fix the URL"
        )
    return bucket, key


def s3_url(bucket: str, key: str) -> str:
    """The ``s3://`` URL of a bucket and key."""
    return f"s3://{bucket}/{key}"


def to_vsis3(url: str) -> str:
    """GDAL's name for an ``s3://`` URL, ``/vsis3/bucket/key``; other paths come back as given."""
    if not is_s3_url(url):
        return url
    bucket, key = split_s3_url(url)
    return f"/vsis3/{bucket}/{key}"


# --- endpoint and client -------------------------------------------------------------------


def _endpoint_setting(env: Mapping[str, str]) -> tuple[str | None, str]:
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
    return _endpoint_setting(os.environ)[0]


def _region(env: Mapping[str, str]) -> str | None:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def _describe_endpoint(env: Mapping[str, str]) -> str:
    url, _ = _endpoint_setting(env)
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

    url, _ = _endpoint_setting(env)
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
            f"{_endpoint_setting(env)[1]} to http(s)://host:port"
        ) from exc


def gdal_s3_env() -> dict[str, str]:
    """GDAL config options that make ``/vsis3/`` reach the endpoint boto3 uses.

    For ``rasterio.Env(**gdal_s3_env())``: ``AWS_S3_ENDPOINT`` (host:port), ``AWS_HTTPS`` and
    ``AWS_VIRTUAL_HOSTING=FALSE`` for a custom endpoint, ``AWS_REGION``; GDAL reads the
    credentials from the environment itself. An option the user set in the environment is
    left out, so that theirs stays in force."""
    env = os.environ
    options: dict[str, str] = {}
    url, source = _endpoint_setting(env)
    if url is not None and source != "AWS_S3_ENDPOINT":
        parsed = urllib.parse.urlsplit(url)
        options["AWS_S3_ENDPOINT"] = (parsed.netloc + parsed.path).rstrip("/")
        options["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = _region(env)
    if region:
        options["AWS_REGION"] = region
    return {k: v for k, v in options.items() if k not in env}


# --- errors --------------------------------------------------------------------------------


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


def explain(exc: BaseException, url: str, action: str) -> OutputError:
    """One OutputError line for a botocore failure while doing ``action`` (a verb) on ``url``.

    Names the endpoint and the variable to fix for an unreachable store, the bucket for a
    missing one, the credential variables for refused credentials."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    env = os.environ
    endpoint = _describe_endpoint(env)
    _, variable = _endpoint_setting(env)
    bucket = url[len("s3://") :].partition("/")[0] if is_s3_url(url) else url
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return OutputError(
            f"cannot {action} {url}: no AWS credentials found ({first_line(exc)}); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return OutputError(
            f"cannot reach the object store at {endpoint} to {action} {url} ({first_line(exc)}); "
            f"check {variable} and that the server is running"
        )
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in _NO_BUCKET:
            return OutputError(
                f"bucket {bucket} does not exist at {endpoint}; create it or fix the URL {url}"
            )
        if code in _REFUSED:
            return OutputError(
                f"cannot {action} {url}: credentials refused by {endpoint} ({code}); check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or AWS_PROFILE, "
                "and that they may write to the bucket"
            )
        if code in _EXISTS:
            return OutputError(f"{url} exists; pass --overwrite to replace it")
        return OutputError(f"cannot {action} {url}: {code}: {first_line(message)}")
    return OutputError(f"cannot {action} {url}: {first_line(exc) or type(exc).__name__}")


def _call(url: str, action: str, request: Callable[[], T]) -> T:
    """``request()``, with any botocore error turned into :func:`explain`'s one line."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return request()
    except (BotoCoreError, ClientError) as exc:
        raise explain(exc, url, action) from exc


def _is_not_found(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and _error_code(exc) in _NOT_FOUND


# --- checks before any work ----------------------------------------------------------------


def _check_bucket(client: Any, url: str, bucket: str, prefix: str = "") -> dict[str, Any]:
    """The endpoint answers, the bucket exists and the credentials are accepted for it; returns
    the first key under ``prefix`` (as ``list_objects_v2`` does).

    A listing rather than HeadBucket (same permission, s3:ListBucket): a HEAD's answer has no
    body, so a refusal would say "403" where a GET says InvalidAccessKeyId or AccessDenied."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1))
    except ClientError as exc:
        if _error_code(exc) in _NOT_FOUND | _NO_BUCKET:
            raise OutputError(
                f"bucket {bucket} does not exist at {_describe_endpoint(os.environ)}; create it "
                f"or fix the URL {url}"
            ) from exc
        raise explain(exc, url, "write") from exc
    except BotoCoreError as exc:
        raise explain(exc, url, "write") from exc


def _head(client: Any, url: str, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's metadata, or None when there is no object at ``key``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(client.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise explain(exc, url, "read") from exc
    except BotoCoreError as exc:
        raise explain(exc, url, "read") from exc


def _check_writable(client: Any, url: str, bucket: str, key: str) -> None:
    """Credentials that may read but not write fail here, not after the work: a multipart
    upload is started at ``key`` and aborted at once, which no reader ever sees."""
    upload = _call(url, "write", lambda: client.create_multipart_upload(Bucket=bucket, Key=key))
    _abort(client, bucket, key, upload["UploadId"])


def check_s3_output(
    url: str,
    overwrite: bool,
    what: str = "output",
    probe_write: bool = True,
) -> str:
    """Fail early, before any work, if the object ``url`` cannot be written; returns ``url``.

    Checks that the endpoint answers, the bucket exists, the credentials are accepted (with
    ``probe_write``, for writing too) and that no object is at the key unless ``overwrite``."""
    bucket, key = split_s3_url(url)
    if not key or key.endswith("/"):
        raise OutputError(f"{what} {url} names a folder; give a file name (s3://bucket/name.tif)")
    client = s3_client()
    _check_bucket(client, url, bucket)
    if _head(client, url, bucket, key) is not None and not overwrite:
        raise OutputError(f"{what} {url} exists; pass --overwrite to replace it")
    if probe_write:
        _check_writable(client, url, bucket, key)
    return url


def check_s3_folder(
    url: str,
    overwrite: bool,
    marker: str,
    resume: bool = True,
    what: str = "output folder",
    probe_write: bool = True,
) -> str:
    """Fail early if the prefix ``url`` (a folder of outputs) cannot be written; returns it
    ending in ``/``.

    Same checks as :func:`check_s3_output`. A prefix that holds objects but none named ``marker``
    was not made by geoseg: an error even with ``overwrite``. One with the marker is geoseg's:
    written into when ``resume`` or ``overwrite``, otherwise an error asking for ``--overwrite``."""
    bucket, key = split_s3_url(url)
    prefix = key if not key or key.endswith("/") else key + "/"
    folder = s3_url(bucket, prefix)
    client = s3_client()
    listing = _check_bucket(client, folder, bucket, prefix)
    if listing.get("Contents"):
        if _head(client, folder, bucket, prefix + marker) is None:
            raise OutputError(
                f"{what} {folder} holds objects that geoseg did not make (no {marker}); choose an "
                "empty prefix"
            )
        if not (resume or overwrite):
            raise OutputError(f"{what} {folder} exists; pass --overwrite to replace it")
    if probe_write:
        _check_writable(client, folder, bucket, prefix + marker)
    return folder


# --- reading and writing objects -----------------------------------------------------------


def put_bytes(
    url: str,
    data: bytes,
    content_type: str | None = None,
    overwrite: bool = True,
) -> None:
    """Write ``data`` as the object ``url`` in one PUT (visible only complete).

    Without ``overwrite`` the PUT is conditional (``If-None-Match: *``): an object that
    appeared since the checks is not replaced."""
    bucket, key = split_s3_url(url)
    client = s3_client()
    extra = _put_args(content_type, overwrite)
    _call(url, "write", lambda: client.put_object(Bucket=bucket, Key=key, Body=data, **extra))


def upload_file(
    local_path: str | os.PathLike[str],
    url: str,
    content_type: str | None = None,
    overwrite: bool = True,
) -> None:
    """Upload a local file to ``url``; the object appears only complete, or not at all.

    Up to :data:`MULTIPART_THRESHOLD` bytes go in one PUT; more in a multipart upload that is
    completed only after its last part and aborted on any failure (an interruption included),
    so neither a partial object nor a dangling upload is left. Any failure is one OutputError
    line naming ``url`` and the cause."""
    try:
        with open(local_path, "rb") as f:
            upload_fileobj(
                f,
                url,
                content_type=content_type,
                overwrite=overwrite,
                size=os.fstat(f.fileno()).st_size,
            )
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot upload {local_path} to {url}: {first_line(exc)}") from exc


def upload_fileobj(
    fileobj: IO[bytes],
    url: str,
    content_type: str | None = None,
    overwrite: bool = True,
    size: int | None = None,
    threshold: int | None = None,
    part_size: int | None = None,
) -> None:
    """Upload what ``fileobj`` reads to ``url``, with :func:`upload_file`'s guarantees.

    ``size`` (when known) lets parts grow to stay within S3's 10,000; ``threshold`` and
    ``part_size`` default to :data:`MULTIPART_THRESHOLD` and :data:`PART_SIZE`."""
    threshold = MULTIPART_THRESHOLD if threshold is None else threshold
    part_size = max(MIN_PART_SIZE, PART_SIZE if part_size is None else part_size)
    if size is not None:
        part_size = max(part_size, -(-size // MAX_PARTS))
    first = _read(fileobj, threshold + 1, url)
    if len(first) <= threshold:
        put_bytes(url, first, content_type=content_type, overwrite=overwrite)
        return
    parts = _parts(fileobj, [first], part_size, url)
    del first  # the parts generator holds the only reference, and drops it once split
    _multipart(parts, url, content_type, overwrite, part_size)


def _read(fileobj: IO[bytes], n: int, url: str) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream)."""
    chunks: list[bytes] = []
    left = n
    while left > 0:
        try:
            chunk = fileobj.read(left)
        except OSError as exc:
            name = getattr(fileobj, "name", "the data")
            raise OutputError(
                f"cannot upload to {url}: reading {name} failed: {first_line(exc)}"
            ) from exc
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _parts(fileobj: IO[bytes], head: list[bytes], part_size: int, url: str) -> Iterator[bytes]:
    """The stream as parts of ``part_size`` bytes (the last shorter), ``head.pop()`` read
    already (popped, so that it is freed once split)."""
    first = head.pop()
    offset = 0
    while len(first) - offset >= part_size:
        yield first[offset : offset + part_size]
        offset += part_size
    rest = first[offset:]
    del first
    while True:
        part = rest + _read(fileobj, part_size - len(rest), url)
        rest = b""
        if not part:
            return
        yield part
        if len(part) < part_size:
            return


def _put_args(content_type: str | None, overwrite: bool) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if content_type:
        extra["ContentType"] = content_type
    if not overwrite:
        extra["IfNoneMatch"] = "*"
    return extra


def _multipart(
    parts: Iterator[bytes],
    url: str,
    content_type: str | None,
    overwrite: bool,
    part_size: int,
) -> None:
    """A multipart upload of ``parts``, :data:`PART_THREADS` at a time; completed only at the
    end, aborted on any failure or interruption."""
    bucket, key = split_s3_url(url)
    client = s3_client()
    create: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    checksum = None
    if getattr(client.meta.config, "request_checksum_calculation", None) == "when_supported":
        # as boto3's own transfers do: each part carries a CRC32 that the store checks, and
        # completing the upload checks every part's
        checksum = "CRC32"
        create["ChecksumAlgorithm"] = checksum
    upload = _call(
        url, "write", lambda: client.create_multipart_upload(Bucket=bucket, Key=key, **create)
    )
    upload_id = upload["UploadId"]
    pool = ThreadPoolExecutor(PART_THREADS, thread_name_prefix="geoseg-s3-part")
    try:
        done: list[dict[str, Any]] = []
        pending: set[Future[dict[str, Any]]] = set()
        for number, data in enumerate(parts, start=1):
            if number > MAX_PARTS:
                raise OutputError(
                    f"cannot upload to {url}: more than {MAX_PARTS} parts of {part_size} bytes"
                )
            pending.add(
                pool.submit(
                    _upload_part, client, url, bucket, key, upload_id, number, data, checksum
                )
            )
            del data
            if len(pending) >= PART_THREADS:  # at most PART_THREADS parts in memory
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                done.extend(f.result() for f in finished)
        finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
        done.extend(f.result() for f in finished)
        done.sort(key=lambda p: int(p["PartNumber"]))
        extra = {"IfNoneMatch": "*"} if not overwrite else {}
        _call(
            url,
            "write",
            lambda: client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}, **extra
            ),
        )
    except BaseException:
        # parts still in flight finish (or fail) first, so none lands after the abort
        pool.shutdown(wait=True, cancel_futures=True)
        _abort(client, bucket, key, upload_id)
        raise
    finally:
        pool.shutdown(wait=True)


def _upload_part(
    client: Any,
    url: str,
    bucket: str,
    key: str,
    upload_id: str,
    number: int,
    data: bytes,
    checksum: str | None,
) -> dict[str, Any]:
    extra = {"ChecksumAlgorithm": checksum} if checksum else {}
    response = _call(
        url,
        "write",
        lambda: client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data, **extra
        ),
    )
    part = {"PartNumber": number, "ETag": response["ETag"]}
    if checksum and f"Checksum{checksum}" in response:
        part[f"Checksum{checksum}"] = response[f"Checksum{checksum}"]
    return part


def _abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload, best effort: the failure being reported is the one that
    matters, and a bucket lifecycle rule (AbortIncompleteMultipartUpload) sweeps what is left."""
    with contextlib.suppress(Exception):  # best effort, see above
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def read_bytes(url: str) -> bytes | None:
    """The object's bytes, or None when there is no object at ``url``."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_url(url)
    client = s3_client()
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        return bytes(response["Body"].read())
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise explain(exc, url, "read") from exc
    except BotoCoreError as exc:
        raise explain(exc, url, "read") from exc


def exists(url: str) -> bool:
    """True when there is an object at ``url``."""
    bucket, key = split_s3_url(url)
    return _head(s3_client(), url, bucket, key) is not None


def delete(url: str) -> None:
    """Remove the object at ``url`` (nothing happens when there is none)."""
    bucket, key = split_s3_url(url)
    client = s3_client()
    _call(url, "delete", lambda: client.delete_object(Bucket=bucket, Key=key))


def list_keys(prefix_url: str) -> Iterator[str]:
    """The ``s3://`` URLs of every object whose key starts with the prefix, in key order."""
    bucket, prefix = split_s3_url(prefix_url)
    client = s3_client()
    pages = iter(client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
    while (page := _call(prefix_url, "list", lambda: next(pages, None))) is not None:
        for item in page.get("Contents", ()):
            yield s3_url(bucket, item["Key"])


def in_progress_uploads(prefix_url: str) -> list[str]:
    """URLs of keys under the prefix with a multipart upload started and neither completed nor
    aborted (what an interrupted upload would leave; none of geoseg's should remain)."""
    bucket, prefix = split_s3_url(prefix_url)
    client = s3_client()
    paginator = client.get_paginator("list_multipart_uploads")
    pages = iter(paginator.paginate(Bucket=bucket, Prefix=prefix))
    found: list[str] = []
    while (page := _call(prefix_url, "list", lambda: next(pages, None))) is not None:
        found.extend(s3_url(bucket, u["Key"]) for u in page.get("Uploads", ()))
    return found
