"""Checks made before any work: the bucket is there and writable, and the output object or folder
is free (or may be replaced)."""

from __future__ import annotations

import os
from typing import Any

from geoseg.errors import OutputError
from geoseg.objectstore.client import describe_endpoint, s3_client
from geoseg.objectstore.failures import NO_BUCKET, NOT_FOUND, call, error_code, explain
from geoseg.objectstore.reads import head
from geoseg.objectstore.uploads import abort_upload
from geoseg.objectstore.urls import s3_url, split_s3_url


def _check_bucket(client: Any, url: str, bucket: str, prefix: str = "") -> dict[str, Any]:
    """The endpoint answers, the bucket exists and the credentials are accepted for it; returns
    the first key under ``prefix`` (as ``list_objects_v2`` does).

    A listing rather than HeadBucket (same permission, s3:ListBucket): a HEAD's answer has no
    body, so a refusal would say "403" where a GET says InvalidAccessKeyId or AccessDenied."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1))
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND | NO_BUCKET:
            raise OutputError(
                f"bucket {bucket} does not exist at {describe_endpoint(os.environ)}; create it "
                f"or fix the URL {url}"
            ) from exc
        raise explain(exc, url, "write") from exc
    except BotoCoreError as exc:
        raise explain(exc, url, "write") from exc


def _check_writable(client: Any, url: str, bucket: str, key: str) -> None:
    """Credentials that may read but not write fail here, not after the work: a multipart
    upload is started at ``key`` and aborted at once, which no reader ever sees."""
    upload = call(url, "write", lambda: client.create_multipart_upload(Bucket=bucket, Key=key))
    abort_upload(client, bucket, key, upload["UploadId"])


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
    if head(client, url, bucket, key) is not None and not overwrite:
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
        if head(client, folder, bucket, prefix + marker) is None:
            raise OutputError(
                f"{what} {folder} holds objects that geoseg did not make (no {marker}); choose an "
                "empty prefix"
            )
        if not (resume or overwrite):
            raise OutputError(f"{what} {folder} exists; pass --overwrite to replace it")
    if probe_write:
        _check_writable(client, folder, bucket, prefix + marker)
    return folder
