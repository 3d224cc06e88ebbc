"""Reading, listing and deleting objects, and the multipart uploads in progress under a prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from geoseg.objectstore.client import s3_client
from geoseg.objectstore.failures import T, call, explain, is_not_found
from geoseg.objectstore.urls import s3_url, split_s3_url


def read_bytes(url: str) -> bytes | None:
    """The object's bytes, or None when there is no object at ``url``."""
    bucket, key = split_s3_url(url)
    client = s3_client()
    return _unless_missing(
        url, lambda: bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    )


def exists(url: str) -> bool:
    """True when there is an object at ``url``."""
    bucket, key = split_s3_url(url)
    return head(s3_client(), url, bucket, key) is not None


def delete(url: str) -> None:
    """Remove the object at ``url`` (nothing happens when there is none)."""
    bucket, key = split_s3_url(url)
    client = s3_client()
    call(url, "delete", lambda: client.delete_object(Bucket=bucket, Key=key))


def list_keys(prefix_url: str) -> Iterator[str]:
    """The ``s3://`` URLs of every object whose key starts with the prefix, in key order."""
    bucket, prefix = split_s3_url(prefix_url)
    client = s3_client()
    pages = iter(client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
    while (page := call(prefix_url, "list", lambda: next(pages, None))) is not None:
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
    while (page := call(prefix_url, "list", lambda: next(pages, None))) is not None:
        found.extend(s3_url(bucket, u["Key"]) for u in page.get("Uploads", ()))
    return found


def head(client: Any, url: str, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's metadata, or None when there is no object at ``key``."""
    return _unless_missing(url, lambda: dict(client.head_object(Bucket=bucket, Key=key)))


def _unless_missing(url: str, request: Callable[[], T]) -> T | None:
    """``request()``'s answer, or None when the store says there is no object at ``url``; any
    other failure is one :func:`~geoseg.objectstore.failures.explain` line."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return request()
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise explain(exc, url, "read") from exc
    except BotoCoreError as exc:
        raise explain(exc, url, "read") from exc
