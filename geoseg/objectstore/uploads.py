"""Writing objects: one PUT up to :data:`MULTIPART_THRESHOLD` bytes, else a multipart upload
completed only after its last part and aborted on any failure, so an object appears only whole."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import IO, Any

from geoseg.errors import OutputError, first_line
from geoseg.objectstore.client import s3_client
from geoseg.objectstore.failures import call
from geoseg.objectstore.urls import split_s3_url

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
    call(url, "write", lambda: client.put_object(Bucket=bucket, Key=key, Body=data, **extra))


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
    upload = call(
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
        call(
            url,
            "write",
            lambda: client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}, **extra
            ),
        )
    except BaseException:
        # parts still in flight finish (or fail) first, so none lands after the abort
        pool.shutdown(wait=True, cancel_futures=True)
        abort_upload(client, bucket, key, upload_id)
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
    response = call(
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


def abort_upload(client: Any, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload, best effort: the failure being reported is the one that
    matters, and a bucket lifecycle rule (AbortIncompleteMultipartUpload) sweeps what is left."""
    with contextlib.suppress(Exception):  # best effort, see above
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
