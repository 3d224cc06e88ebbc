"""One source for predict's options: the API keywords, the CLI options and the job-file schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from geoseg.jobs.batch import SCHEMA, JobError, load_job
from geoseg.cli.main import cli
from geoseg.errors import OptionError
from geoseg.options import CRFParams, PredictOptions, VectorOptions, choices, key_of

#: geoseg predict's options that say where things go and how the run is hosted, not how it infers
RUN_OPTIONS = {"output", "model", "workers", "scheduler", "probabilities", "confidence", "vector", "quicklook",
               "overwrite", "quiet", "verbose", "help"}


def _options(command: str) -> dict[str, click.Option]:
    cmd = cli.commands[command]
    return {p.name: p for p in cmd.params if isinstance(p, click.Option)}


def test_every_predict_option_is_a_cli_option_with_its_default_and_choices() -> None:
    opts = _options("predict")
    for f in dataclasses.fields(PredictOptions):
        assert f.name in opts, f"geoseg predict has no option for {f.name}"
        if f.name == "crf":
            assert opts["crf"].is_flag and all(f"crf_{c.name}" in opts for c in dataclasses.fields(CRFParams))
            continue
        opt = opts[f.name]
        if isinstance(opt.type, click.Choice):
            hint = PredictOptions.__dataclass_fields__[f.name].type
            assert tuple(opt.type.choices) == choices(getattr(__import__("geoseg.options").options, hint)), f.name
        got = opt.default if not isinstance(f.default, tuple) else tuple(float(v) for v in str(opt.default).split(","))
        assert got == f.default or (opt.is_flag and f.default is False), f.name
    for f in dataclasses.fields(VectorOptions):
        assert key_of(f).replace("skip_class", "skip_classes") in opts
    option_fields = {f.name for f in dataclasses.fields(PredictOptions)} | {
        f.name for f in dataclasses.fields(VectorOptions)} | {f"crf_{c.name}" for c in dataclasses.fields(CRFParams)}
    assert set(opts) - option_fields <= RUN_OPTIONS, "a predict option that is not in PredictOptions"
    assert {f.name for f in dataclasses.fields(VectorOptions)} <= set(_options("vectorize"))


def test_job_schema_is_derived_from_the_options() -> None:
    assert set(SCHEMA["predict"]) == {f.name for f in dataclasses.fields(PredictOptions)} | {"probabilities",
                                                                                             "confidence"}
    assert set(SCHEMA["vector"]) == {key_of(f) for f in dataclasses.fields(VectorOptions)} | {"format"}
    assert "compile" in SCHEMA["predict"] and "block_size" in SCHEMA["vector"]


@pytest.mark.parametrize("bad, message", [
    ({"tta": "d8"}, "--tta"), ({"precision": "fp8"}, "--precision"), ({"on_error": "ignore"}, "--on-error"),
    ({"device": "gpu"}, "--device"), ({"tile": 0}, "--tile"), ({"batch_size": 0}, "--batch-size"),
    ({"scales": []}, "--scales"), ({"crf": {"radius": 0}}, "CRF"), ({"tiles": 512}, "unknown predict option"),
])
def test_bad_option_values_are_option_errors(bad: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        PredictOptions.from_keywords(**bad)


def test_job_file_values_are_checked_by_the_options(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(b"")
    job = tmp_path / "job.yaml"
    job.write_text("scenes: [a.tif]\noutput: {folder: out}\npredict: {tta: d8, compile: true}\n"
                   "vector: {block_size: 8}\n")
    with pytest.raises(JobError) as err:
        load_job(job)
    assert "predict: unknown --tta 'd8'" in str(err.value) and "vector: --block-size must be at least 64" in str(err.value)
    job.write_text("scenes: [a.tif]\noutput: {folder: out}\npredict: {tta: d4, compile: true, crf: true}\n"
                   "vector: {block_size: 128, skip_class: [0]}\n")
    assert load_job(job).predict["compile"] is True


def test_vectorize_takes_every_vector_option_with_its_default() -> None:
    import inspect

    from geoseg.vector.vectorize import vectorize

    params = inspect.signature(vectorize).parameters
    for f in dataclasses.fields(VectorOptions):
        assert params[f.name].default == f.default, f.name
