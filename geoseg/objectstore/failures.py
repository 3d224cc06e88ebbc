"""A failure of the store as one OutputError line naming the URL and how to fix it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from geoseg.errors import OutputError, first_line
from geoseg.objectstore.client import describe_endpoint, endpoint_setting
from geoseg.objectstore.urls import is_s3_url

T = TypeVar("T")


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


NO_BUCKET = {"NoSuchBucket"}


NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


def error_code(exc: BaseException) -> str:
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
    endpoint = describe_endpoint(env)
    _, variable = endpoint_setting(env)
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
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in NO_BUCKET:
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


def call(url: str, action: str, request: Callable[[], T]) -> T:
    """``request()``, with any botocore error turned into :func:`explain`'s one line."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return request()
    except (BotoCoreError, ClientError) as exc:
        raise explain(exc, url, action) from exc


def is_not_found(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and error_code(exc) in NOT_FOUND
