"""``s3://`` URLs: recognised, split into bucket and key, built, and turned into GDAL's ``/vsis3/``
paths."""

from __future__ import annotations

from geoseg.errors import OutputError


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
