"""Outputs on S3-protocol object storage (geoseg.objectstore), against a real S3 server (moto's,
on 127.0.0.1; tests/s3server.py): round trips, uploads interrupted midway leave nothing, each
bad setting (unreachable endpoint, missing bucket, refused credentials, existing key) is one
line before any work, and GDAL reads what was uploaded through /vsis3/."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from geoseg.errors import OutputError
from geoseg.objectstore import checks, reads, uploads, urls
from geoseg.objectstore import client as store_client
from tests.conftest import write_raster
from tests.s3server import S3Server, free_port, set_aws_env

MiB = 1024 * 1024


def one_line(exc: pytest.ExceptionInfo[OutputError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def bucket_of(url: str) -> str:
    return urls.split_s3_url(url)[0]


# --- no server needed ----------------------------------------------------------------------


def test_urls() -> None:
    assert urls.is_s3_url("s3://b-1/k/x.tif") and not urls.is_s3_url("/vsis3/b/k")
    assert not urls.is_s3_url(Path("s3:/b/k"))
    assert urls.split_s3_url("s3://bkt/a/b.tif") == ("bkt", "a/b.tif")
    assert urls.split_s3_url("s3://bkt") == ("bkt", "")
    assert urls.to_vsis3("s3://bkt/a/b.tif") == "/vsis3/bkt/a/b.tif"
    assert urls.to_vsis3("/data/x.tif") == "/data/x.tif"
    for bad in (
        "s3://",
        "s3:///key.tif",
        "s3://Bad_Bucket/x.tif",
        "s3://key@bkt/x.tif",
        "s3://bkt/x.tif?versionId=1",
        "/tmp/x.tif",
    ):
        with pytest.raises(OutputError) as exc:
            urls.split_s3_url(bad)
        assert bad in one_line(exc)


def test_gdal_options_follow_the_aws_endpoint_and_keep_the_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_aws_env(monkeypatch, "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert store_client.gdal_s3_env() == {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "eu-central-1",
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://store.example:8443")
    assert store_client.gdal_s3_env()["AWS_S3_ENDPOINT"] == "store.example:8443"
    assert store_client.gdal_s3_env()["AWS_HTTPS"] == "YES"
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "TRUE")  # the user's GDAL setting stays theirs
    assert "AWS_VIRTUAL_HOSTING" not in store_client.gdal_s3_env()
    # GDAL's own options alone also set boto3's endpoint, and GDAL needs nothing more
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_S3_ENDPOINT", "minio.local:9000")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    assert store_client.endpoint_url() == "http://minio.local:9000"
    assert store_client.gdal_s3_env() == {}
    monkeypatch.delenv("AWS_S3_ENDPOINT")
    assert store_client.endpoint_url() is None and store_client.gdal_s3_env() == {}


def test_client_is_made_once_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    set_aws_env(monkeypatch, "http://127.0.0.1:9000")
    client = store_client.s3_client()
    assert store_client.s3_client() is client
    assert client.meta.endpoint_url == "http://127.0.0.1:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9001")
    other = store_client.s3_client()
    assert other is not client and other.meta.endpoint_url == "http://127.0.0.1:9001"


def test_unreachable_endpoint_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    pytest.importorskip("boto3")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    set_aws_env(monkeypatch, endpoint)
    with pytest.raises(OutputError) as exc:
        checks.check_s3_output("s3://bkt/out.tif", overwrite=False)
    message = one_line(exc)
    assert "cannot reach" in message and endpoint in message and "AWS_ENDPOINT_URL" in message
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(OutputError) as exc:
        uploads.upload_file(tmp_path / "x.bin", "s3://bkt/out.tif")
    assert "s3://bkt/out.tif" in one_line(exc) and endpoint in one_line(exc)
    # GDAL's own variables name it too when they set the endpoint
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_S3_ENDPOINT", endpoint.removeprefix("http://"))
    monkeypatch.setenv("AWS_HTTPS", "NO")
    with pytest.raises(OutputError) as exc:
        checks.check_s3_folder("s3://bkt/cells/", overwrite=False, marker="collection.json")
    assert endpoint in one_line(exc) and "AWS_S3_ENDPOINT" in one_line(exc)


# --- against the server --------------------------------------------------------------------


def test_round_trip(s3_bucket: str, s3_server: S3Server, tmp_path: Path) -> None:
    local = tmp_path / "item.json"
    local.write_bytes(b'{"type": "Feature"}')
    url = f"{s3_bucket}/run/item.json"
    assert not reads.exists(url) and reads.read_bytes(url) is None
    uploads.upload_file(local, url, content_type="application/json")
    uploads.put_bytes(f"{s3_bucket}/run/a.txt", b"a")
    uploads.put_bytes(f"{s3_bucket}/other.txt", b"b")
    assert reads.exists(url) and reads.read_bytes(url) == local.read_bytes()
    head = s3_server.client().head_object(Bucket=bucket_of(url), Key="run/item.json")
    assert head["ContentType"] == "application/json"
    assert list(reads.list_keys(f"{s3_bucket}/run/")) == [f"{s3_bucket}/run/a.txt", url]
    reads.delete(url)
    reads.delete(url)  # deleting what is gone is no error
    assert not reads.exists(url) and reads.read_bytes(url) is None
    assert list(reads.list_keys(f"{s3_bucket}/run/")) == [f"{s3_bucket}/run/a.txt"]
    with pytest.raises(OutputError) as exc:
        uploads.upload_file(tmp_path / "missing.tif", url)
    assert one_line(exc).startswith(f"cannot upload {tmp_path / 'missing.tif'} to {url}: ")


def test_multipart_upload_round_trip(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(0).integers(0, 256, 11 * MiB + 123, np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(data)
    monkeypatch.setattr(uploads, "MULTIPART_THRESHOLD", 5 * MiB)
    monkeypatch.setattr(uploads, "PART_SIZE", 5 * MiB)
    url = f"{s3_bucket}/big.bin"
    uploads.upload_file(tmp_path / "big.bin", url)
    assert reads.read_bytes(url) == data
    head = s3_server.client().head_object(Bucket=bucket_of(url), Key="big.bin")
    assert head["ETag"].endswith('-3"'), head["ETag"]  # three parts: a multipart upload indeed
    assert reads.in_progress_uploads(s3_bucket + "/") == []


class FailingReader(io.RawIOBase):
    """``size`` bytes that fail with ``error`` after ``fail_at`` of them were read; records
    the multipart uploads in progress at that moment (so a test knows one had started)."""

    def __init__(
        self, size: int, fail_at: int, error: BaseException, watch: str | None = None
    ) -> None:
        self.data = io.BytesIO(np.random.default_rng(1).integers(0, 256, size, np.uint8).tobytes())
        self.fail_at, self.error, self.watch = fail_at, error, watch
        self.in_progress: list[str] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.data.tell() >= self.fail_at:
            if self.watch:
                self.in_progress = reads.in_progress_uploads(self.watch)
            raise self.error
        n = min(len(buffer), self.fail_at - self.data.tell())
        chunk = self.data.read(n)
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize(
    "error", [OSError("disk read error"), KeyboardInterrupt()], ids=["read-error", "interrupt"]
)
def test_upload_failing_midway_leaves_the_previous_object_and_no_upload(
    s3_bucket: str,
    error: BaseException,
) -> None:
    url = f"{s3_bucket}/out.tif"
    uploads.put_bytes(url, b"previous run")
    reader = FailingReader(20 * MiB, fail_at=12 * MiB, error=error, watch=s3_bucket + "/")
    with pytest.raises(type(error) if isinstance(error, KeyboardInterrupt) else OutputError) as exc:
        uploads.upload_fileobj(io.BufferedReader(reader), url, threshold=5 * MiB, part_size=5 * MiB)
    assert reader.in_progress == [url], "the upload had not started when it failed"
    if isinstance(error, OSError):
        message = one_line(exc)  # type: ignore[arg-type]
        assert url in message and "disk read error" in message
    assert reads.read_bytes(url) == b"previous run"
    assert reads.in_progress_uploads(s3_bucket + "/") == []
    assert list(reads.list_keys(s3_bucket + "/")) == [url]


def test_single_put_failing_midway_leaves_no_object(s3_bucket: str) -> None:
    url = f"{s3_bucket}/item.json"
    reader = FailingReader(1000, fail_at=400, error=OSError("gone"))
    with pytest.raises(OutputError) as exc:
        uploads.upload_fileobj(io.BufferedReader(reader), url)
    assert url in one_line(exc)
    assert list(reads.list_keys(s3_bucket + "/")) == []


def test_part_refused_by_the_store_aborts_the_upload(
    s3_bucket: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store itself failing mid-upload (here: it deletes the upload under us, as a lifecycle
    rule or a second client could) is one line, and nothing appears."""
    url = f"{s3_bucket}/out.tif"
    real = uploads._upload_part
    calls: list[int] = []

    def upload_part(
        client: Any, url: str, bucket: str, key: str, upload_id: str, number: int, *args: Any
    ) -> dict[str, Any]:
        calls.append(number)
        if number == 2:
            s3_server.client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        return real(client, url, bucket, key, upload_id, number, *args)

    monkeypatch.setattr(uploads, "_upload_part", upload_part)
    monkeypatch.setattr(uploads, "PART_THREADS", 1)
    data = bytes(16 * MiB)
    with pytest.raises(OutputError) as exc:
        uploads.upload_fileobj(io.BytesIO(data), url, threshold=5 * MiB, part_size=5 * MiB)
    assert url in one_line(exc)
    assert 2 in calls
    assert not reads.exists(url)
    assert reads.in_progress_uploads(s3_bucket + "/") == []


def test_checks_pass_and_write_nothing(s3_bucket: str) -> None:
    url = f"{s3_bucket}/out/classes.tif"
    assert checks.check_s3_output(url, overwrite=False) == url
    assert (
        checks.check_s3_folder(f"{s3_bucket}/cells", overwrite=False, marker="collection.json")
        == f"{s3_bucket}/cells/"
    )
    assert list(reads.list_keys(s3_bucket + "/")) == []
    assert reads.in_progress_uploads(s3_bucket + "/") == []


def test_missing_bucket_is_one_line(s3_bucket: str) -> None:
    for check in (
        lambda: checks.check_s3_output("s3://no-such-bucket/out.tif", False),
        lambda: checks.check_s3_folder("s3://no-such-bucket/cells/", False, "m"),
        lambda: uploads.put_bytes("s3://no-such-bucket/out.tif", b"x"),
    ):
        with pytest.raises(OutputError) as exc:
            check()
        message = one_line(exc)
        assert "bucket no-such-bucket does not exist" in message
        assert store_client.endpoint_url() in message  # type: ignore[operator]


def test_existing_key_needs_overwrite(s3_bucket: str, tmp_path: Path) -> None:
    url = f"{s3_bucket}/out.tif"
    uploads.put_bytes(url, b"mine")
    with pytest.raises(OutputError) as exc:
        checks.check_s3_output(url, overwrite=False)
    assert one_line(exc) == f"output {url} exists; pass --overwrite to replace it"
    assert checks.check_s3_output(url, overwrite=True) == url
    with pytest.raises(OutputError) as exc:
        checks.check_s3_output(f"{s3_bucket}/folder/", overwrite=True)
    assert "names a folder" in one_line(exc)
    # the write itself is conditional too: an object that appeared after the checks is kept
    (tmp_path / "new.tif").write_bytes(b"new")
    for threshold in (None, 0):  # one PUT, and a (one-part) multipart upload
        with pytest.raises(OutputError) as exc, open(tmp_path / "new.tif", "rb") as f:
            uploads.upload_fileobj(f, url, overwrite=False, threshold=threshold)
        assert "exists; pass --overwrite" in one_line(exc)
        assert reads.read_bytes(url) == b"mine"
    uploads.upload_file(tmp_path / "new.tif", url, overwrite=True)
    assert reads.read_bytes(url) == b"new"
    assert reads.in_progress_uploads(s3_bucket + "/") == []


def test_folder_not_made_by_geoseg_is_refused_even_with_overwrite(s3_bucket: str) -> None:
    theirs, ours = f"{s3_bucket}/theirs/", f"{s3_bucket}/ours/"
    uploads.put_bytes(theirs + "notes.txt", b"x")
    for overwrite in (False, True):
        with pytest.raises(OutputError) as exc:
            checks.check_s3_folder(theirs, overwrite, marker="collection.json")
        assert one_line(exc) == (
            f"output folder {theirs} holds objects that geoseg did not make "
            "(no collection.json); choose an empty prefix"
        )
    # a prefix is not a folder: s3://b/the does not take in s3://b/theirs/
    assert checks.check_s3_folder(f"{s3_bucket}/the", False, "collection.json")
    uploads.put_bytes(ours + "collection.json", b"{}")
    uploads.put_bytes(ours + "0_0.tif", b"cell")
    assert checks.check_s3_folder(ours, False, "collection.json") == ours  # resumed
    with pytest.raises(OutputError) as exc:
        checks.check_s3_folder(ours, False, "collection.json", resume=False)
    assert "exists; pass --overwrite" in one_line(exc)
    assert checks.check_s3_folder(ours, True, "collection.json", resume=False) == ours


def test_refused_credentials_are_one_line(
    s3_bucket: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the server checking credentials: unknown keys and a wrong secret are refused in one
    line naming the variables; keys it knows (with a policy) pass, so it is the keys refused."""
    iam = s3_server.client("iam")
    keys = {}
    for role, actions in (("writer", '"s3:*"'), ("reader", '["s3:ListBucket", "s3:GetObject"]')):
        user = f"{role}-{bucket_of(s3_bucket)}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName="s3",
            PolicyDocument=(
                '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": '
                + actions
                + ', "Resource": "*"}]}'
            ),
        )
        keys[role] = iam.create_access_key(UserName=user)["AccessKey"]
    url = f"{s3_bucket}/out.tif"
    (tmp_path / "x.tif").write_bytes(b"x")
    refused = (
        ("AKIAUNKNOWNUNKNOWN00", "nope", "InvalidAccessKeyId"),
        (keys["writer"]["AccessKeyId"], "wrong-secret", "SignatureDoesNotMatch"),
        # may read, not write: the checks' write probe finds it out before any work
        (keys["reader"]["AccessKeyId"], keys["reader"]["SecretAccessKey"], "AccessDenied"),
    )
    with s3_server.checking_credentials():
        for key_id, secret, code in refused:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            for action in (
                lambda: checks.check_s3_output(url, overwrite=False),
                lambda: checks.check_s3_folder(s3_bucket + "/cells/", False, "m"),
                lambda: uploads.upload_file(tmp_path / "x.tif", url),
            ):
                with pytest.raises(OutputError) as exc:
                    action()
                message = one_line(exc)
                assert "credentials refused" in message and s3_bucket in message, message
                assert code in message and "AWS_ACCESS_KEY_ID" in message
                assert "AWS_PROFILE" in message
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["writer"]["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["writer"]["SecretAccessKey"])
        assert checks.check_s3_output(url, overwrite=False) == url
        uploads.upload_file(tmp_path / "x.tif", url)
    assert reads.read_bytes(url) == b"x"
    assert reads.in_progress_uploads(s3_bucket + "/") == []


def test_missing_credentials_are_one_line(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata lookup
    with pytest.raises(OutputError) as exc:
        checks.check_s3_output(f"{s3_bucket}/out.tif", overwrite=False)
    assert "no AWS credentials" in one_line(exc) and "AWS_PROFILE" in one_line(exc)


@pytest.fixture
def uploaded_scene(s3_bucket: str, tmp_path: Path) -> tuple[str, np.ndarray]:
    """A small GeoTIFF on the server, and its pixels."""
    array = np.random.default_rng(3).integers(0, 255, (3, 64, 80), np.uint8)
    local = write_raster(tmp_path / "scene.tif", array)
    url = f"{s3_bucket}/scenes/scene.tif"
    uploads.upload_file(local, url, content_type="image/tiff")
    return url, array


@pytest.mark.parametrize("name", [urls.to_vsis3, lambda url: url], ids=["vsis3", "s3-url"])
def test_gdal_reads_an_uploaded_scene(
    uploaded_scene: tuple[str, np.ndarray], name: Callable[[str], str]
) -> None:
    url, array = uploaded_scene
    with rasterio.Env(**store_client.gdal_s3_env()), rasterio.open(name(url)) as src:
        assert src.crs == "EPSG:32633" and src.count == 3
        assert np.array_equal(src.read(), array)


def test_open_scene_reads_vsis3_within_the_gdal_options(
    uploaded_scene: tuple[str, np.ndarray],
) -> None:
    from geoseg.raster.read import open_scene

    url, _ = uploaded_scene
    with rasterio.Env(**store_client.gdal_s3_env()):
        info = open_scene(urls.to_vsis3(url))
    assert (info.width, info.height, info.count, info.dtype) == (80, 64, 3, "uint8")


def test_gdal_options_the_user_set_are_used(
    uploaded_scene: tuple[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL's own AWS_S3_ENDPOINT / AWS_HTTPS / AWS_VIRTUAL_HOSTING, set by the user instead of
    AWS_ENDPOINT_URL, reach the same server for reads and for boto3's writes."""
    url, array = uploaded_scene
    host = store_client.gdal_s3_env()["AWS_S3_ENDPOINT"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_S3_ENDPOINT", host)
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    assert store_client.gdal_s3_env() == {}  # GDAL reads them, and AWS_REGION, itself
    with rasterio.Env(**store_client.gdal_s3_env()), rasterio.open(urls.to_vsis3(url)) as src:
        assert np.array_equal(src.read(), array)
    uploads.put_bytes(url + ".aux.json", b"{}")
    assert reads.exists(url + ".aux.json")
