"""Untrusted input stays harmless: model files are validated and bounded before anything is
built, and temporary, lock and cache files are created without following symlinks (issue 13)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.errors import CheckpointError, OutputError
from geoseg.fs import folder_lock, write_json_atomic
from geoseg.models.checkpoint import DATA_DIR, save_model
from geoseg.models.load import load_model

BUILTIN = DATA_DIR / "s2-landcover-unet.pt"


def tampered(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The built-in model file with its config changed by ``change``."""
    blob = torch.load(BUILTIN, weights_only=True)
    cfg = json.loads(blob["geoseg"])
    change(cfg)
    path = tmp_path / "tampered.pt"
    torch.save({"geoseg": json.dumps(cfg), "state_dict": blob["state_dict"]}, path)
    return path


def set_class(i: int, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg["classes"][i].__setitem__("value", value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(output_stride=0), "output stride 0 is not 1..1024"),
        (lambda c: c.update(receptive_field=10**9), "receptive field 1000000000 is not -1..8192"),
        (set_class(0, 65535), "class value 65535 out of range"),
        (set_class(0, -1), "class value -1 out of range"),
        (set_class(1, 1), "class value(s) [1] appear more than once"),
        (lambda c: c.update(std=[0.0, 1.0, 1.0, 1.0]), "std holds values <= 0"),
        (
            lambda c: c.update(arch_kwargs={"base_width": 10**6}),
            "base_width=1000000 is out of range",
        ),
        (lambda c: c.update(arch_kwargs={"base_width": 4096}), "weights do not fit"),
        (lambda c: c.update(arch_kwargs={"depth": 60}), "cannot be built"),
        (
            lambda c: c.update(arch_kwargs={"__class__": "os.system"}),
            "unknown argument '__class__'",
        ),
        (lambda c: c.update(output_stride=16), "records output stride 16, but unet-small"),
        (lambda c: c.update(arch="nope"), "unknown architecture 'nope'"),
    ],
)
def test_model_files_are_validated_and_bounded_before_anything_is_built(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = tampered(tmp_path, change)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_a_bad_model_file_in_one_line(tmp_path: Path) -> None:
    model = tampered(tmp_path, lambda c: c.update(output_stride=0))
    scene = DATA_DIR / "sample-s2-brandenburg.tif"
    r = CliRunner().invoke(
        cli, ["predict", str(scene), "-o", str(tmp_path / "o.tif"), "--model", str(model)]
    )
    assert (
        r.exit_code != 0
        and len(r.stderr.strip().splitlines()) == 1
        and "output stride 0" in r.stderr
    )
    assert not (tmp_path / "o.tif").exists()


def test_the_bytes_hashed_are_the_bytes_loaded(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    other = model_factory(in_channels=4, num_classes=3)
    data = other.read_bytes()
    model = load_model(BUILTIN, data=data)  # the file says one thing, the checked bytes another
    assert model.sha256 == hashlib.sha256(data).hexdigest() and model.config.in_channels == 4


def test_worker_model_cache_is_private_and_refuses_swapped_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoseg.dask import plugin as cluster
    from geoseg.prediction import worker_models as worker

    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"geoseg-models-{os.getuid()}"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o777)
    assert worker.model_cache_dir() == shared and stat.S_IMODE(shared.stat().st_mode) == 0o700
    data = BUILTIN.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    cluster.ModelPlugin(sha, data).setup()
    assert (shared / f"{sha}.pt").read_bytes() == data
    (shared / f"{sha}.pt").write_bytes(b"swapped")  # another process changed the cached file
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        worker._load(str(tmp_path / "not-here.pt"), sha, "cpu")
    shared.rename(tmp_path / "elsewhere")
    shared.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="not a folder of this user"):
        worker.model_cache_dir()


def test_temporary_and_lock_files_never_follow_symlinks(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".report.json.part").symlink_to(victim)  # the old fixed temporary name
    write_json_atomic(tmp_path / "report.json", {"a": 1})
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}
    (tmp_path / ".model.pt.part").symlink_to(victim)
    save_model(tmp_path / "model.pt", torch.nn.Conv2d(1, 1, 1), load_model(BUILTIN).config)
    (tmp_path / ".geoseg.lock").symlink_to(victim)
    with pytest.raises(OutputError, match="not a symlink"):
        with folder_lock(tmp_path, exclusive=True):
            pass
    assert victim.read_text() == "precious"
