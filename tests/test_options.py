"""One source for predict's options: the API keywords, the CLI options and the job-file schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from geoseg.cli.main import cli
from geoseg.errors import JobError, OptionError
from geoseg.jobs.batch.job import SCHEMA
from geoseg.jobs.batch.load import load_job
from geoseg.options import CRFParams, PredictOptions, VectorOptions, choices, key_of

#: geoseg predict's options that say where things go and how the run is hosted, not how it infers
RUN_OPTIONS = {
    "output",
    "model",
    "workers",
    "scheduler",
    "probabilities",
    "confidence",
    "vector",
    "quicklook",
    "overwrite",
    "quiet",
    "verbose",
    "help",
}


def _options(command: str) -> dict[str, click.Option]:
    cmd = cli.commands[command]
    return {p.name: p for p in cmd.params if isinstance(p, click.Option)}


def test_every_predict_option_is_a_cli_option_with_its_default_and_choices() -> None:
    opts = _options("predict")
    for f in dataclasses.fields(PredictOptions):
        assert f.name in opts, f"geoseg predict has no option for {f.name}"
        if f.name == "crf":
            assert opts["crf"].is_flag and all(
                f"crf_{c.name}" in opts for c in dataclasses.fields(CRFParams)
            )
            continue
        opt = opts[f.name]
        if isinstance(opt.type, click.Choice):
            hint = PredictOptions.__dataclass_fields__[f.name].type
            assert tuple(opt.type.choices) == choices(
                getattr(__import__("geoseg.options").options, hint)
            ), f.name
        got = (
            opt.default
            if not isinstance(f.default, tuple)
            else tuple(float(v) for v in str(opt.default).split(","))
        )
        assert got == f.default or (opt.is_flag and f.default is False), f.name
    for f in dataclasses.fields(VectorOptions):
        assert key_of(f).replace("skip_class", "skip_classes") in opts
    option_fields = (
        {f.name for f in dataclasses.fields(PredictOptions)}
        | {f.name for f in dataclasses.fields(VectorOptions)}
        | {f"crf_{c.name}" for c in dataclasses.fields(CRFParams)}
    )
    assert set(opts) - option_fields <= RUN_OPTIONS, (
        "a predict option that is not in PredictOptions"
    )
    assert {f.name for f in dataclasses.fields(VectorOptions)} <= set(_options("vectorize"))


def test_job_schema_is_derived_from_the_options() -> None:
    assert set(SCHEMA["predict"]) == {f.name for f in dataclasses.fields(PredictOptions)} | {
        "probabilities",
        "confidence",
    }
    assert set(SCHEMA["vector"]) == {key_of(f) for f in dataclasses.fields(VectorOptions)} | {
        "format"
    }
    assert "compile" in SCHEMA["predict"] and "block_size" in SCHEMA["vector"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"tta": "d8"}, "--tta"),
        ({"precision": "fp8"}, "--precision"),
        ({"on_error": "ignore"}, "--on-error"),
        ({"device": "gpu"}, "--device"),
        ({"tile": 0}, "--tile"),
        ({"batch_size": 0}, "--batch-size"),
        ({"scales": []}, "--scales"),
        ({"crf": {"radius": 0}}, "CRF"),
        ({"tiles": 512}, "unknown predict option"),
    ],
)
def test_bad_option_values_are_option_errors(bad: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        PredictOptions.from_keywords(**bad)


def test_job_file_values_are_checked_by_the_options(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(b"")
    job = tmp_path / "job.yaml"
    job.write_text(
        "scenes: [a.tif]\noutput: {folder: out}\npredict: {tta: d8, compile: true}\n"
        "vector: {block_size: 8}\n"
    )
    with pytest.raises(JobError) as err:
        load_job(job)
    assert "predict: unknown --tta 'd8'" in str(
        err.value
    ) and "vector: --block-size must be at least 64" in str(err.value)
    job.write_text(
        "scenes: [a.tif]\noutput: {folder: out}\npredict: {tta: d4, compile: true, crf: true}\n"
        "vector: {block_size: 128, skip_class: [0]}\n"
    )
    assert load_job(job).predict["compile"] is True


def test_vectorize_takes_every_vector_option_with_its_default() -> None:
    import inspect

    from geoseg.vector.vectorize import vectorize

    params = inspect.signature(vectorize).parameters
    for f in dataclasses.fields(VectorOptions):
        assert params[f.name].default == f.default, f.name


def test_every_chip_option_is_a_cli_option_with_its_default() -> None:
    from geoseg.options import ChipOptions

    opts = _options("chip")
    for f in dataclasses.fields(ChipOptions):
        assert f.name in opts, f"geoseg chip has no option for {f.name}"
        assert opts[f.name].default == f.default or (opts[f.name].is_flag and f.default is False), (
            f.name
        )
    assert "--classes" in opts["class_names"].opts and opts["ignore_value"].type.max == 255  # type: ignore[attr-defined]
    assert set(opts) - {f.name for f in dataclasses.fields(ChipOptions)} <= {
        "out_dir",
        "workers",
        "scheduler",
        "help",
    }


def test_chip_options_parse_the_command_line_forms_and_check_ranges() -> None:
    from geoseg.options import ChipOptions

    o = ChipOptions.from_keywords(
        value_map="farmland=1, forest=2", class_names="1=farmland:#e6c84b", bands=[1, 2]
    )
    assert o.value_mapping == {"farmland": 1, "forest": 2} and o.bands == (1, 2)
    assert o.class_spec == {1: ("farmland", (230, 200, 75))}
    for bad, message in [
        ({"ignore_value": 256}, "--ignore-value must be at most 255"),
        ({"size": 4}, "--size must be at least 8"),
        ({"val_fraction": 1.5}, "--val-fraction"),
        ({"sise": 32}, "unknown chip option"),
    ]:
        with pytest.raises(OptionError, match=message):
            ChipOptions.from_keywords(**bad)  # type: ignore[arg-type]


def test_recipe_chip_options_are_checked_at_their_place(tmp_path: Path) -> None:
    from geoseg.jobs.recipe import RecipeError, load_recipe

    job = tmp_path / "job.yaml"
    job.write_text(
        "steps:\n  - chip: {pairs: [[a.tif, b.tif]], out_dir: c, size: big, value_map: 'x=y',"
        " stratify: false, sise: 3}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(job)
    msg = str(err.value)
    for part in (
        "steps[1].chip.size: expected int",
        "steps[1].chip: --value-map value 'y'",
        "steps[1].chip.sise: unknown argument",
    ):
        assert part in msg, msg


def test_every_train_option_but_the_api_only_ones_is_a_cli_option() -> None:
    from geoseg.options import TrainOptions

    opts = _options("train")
    for f in dataclasses.fields(TrainOptions):
        if f.metadata.get("api_only"):
            assert f.name not in opts, f.name
            continue
        assert f.name in opts, f"geoseg train has no option for {f.name}"
        assert opts[f.name].default == f.default or (opts[f.name].is_flag and f.default is False), (
            f.name
        )
    assert (
        "--arch-args" in opts["arch_kwargs"].opts
        and "--class-weights" in opts["class_weighting"].opts
    )
    assert tuple(opts["precision"].type.choices) == ("auto", "fp32", "bf16")  # type: ignore[attr-defined]
    assert set(opts) - {f.name for f in dataclasses.fields(TrainOptions)} <= {
        "output",
        "resume",
        "overwrite",
        "quiet",
        "help",
    }


def test_train_options_parse_the_command_line_forms() -> None:
    from geoseg.options import TrainOptions

    o = TrainOptions.from_keywords(
        arch_kwargs='{"depth": 2}', pretrained_bands="red, green,blue", lr=1
    )
    assert o.architecture_arguments == {"depth": 2} and o.pretrained_band_names == (
        "red",
        "green",
        "blue",
    )
    assert o.lr == 1.0 and TrainOptions(pretrained_bands=["b1"]).pretrained_band_names == ("b1",)  # type: ignore[arg-type]
    for bad, message in [
        ({"arch_kwargs": "{depth"}, "--arch-args is not JSON"),
        ({"arch_kwargs": "[1]"}, "--arch-args: give a JSON object"),
        ({"precision": "fp16"}, "--precision"),
        ({"schedule": "step"}, "--schedule"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"epoch": 3}, "unknown train option"),
    ]:
        with pytest.raises(OptionError, match=message):
            TrainOptions.from_keywords(**bad)  # type: ignore[arg-type]


def test_recipe_train_options_are_checked_at_their_place(tmp_path: Path) -> None:
    from geoseg.jobs.recipe import RecipeError, load_recipe

    job = tmp_path / "job.yaml"
    job.write_text(
        "steps:\n  - train: {chips_dir: c, output: m.pt, lr: fast, schedule: step, arch: unet}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(job)
    msg = str(err.value)
    for part in (
        "steps[1].train.lr: expected int/float",
        "steps[1].train: unknown --schedule 'step'",
    ):
        assert part in msg, msg
