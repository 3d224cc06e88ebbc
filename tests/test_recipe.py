"""Recipes: job files validated before anything runs, then steps run in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoseg.jobs.recipe import RecipeError, load_recipe, run_recipe
from tests.conftest import labeled_scene


def test_recipe_problems_are_reported_together(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "bogus: 1\nsteps:\n  - rm: [-rf, /]\n  - train: notalist\n"
        "  - chip: {pairs: [['{nope}/a.tif', b.tif]], out_dir: c}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(job)
    msg = str(err.value)
    for part in (
        "bogus",
        "steps[1]: 'rm' is not a recipe step",
        "steps[2].train",
        "steps[3].chip: undefined variable(s) ['nope']",
    ):
        assert part in msg


def test_recipe_runs_chip_train_evaluate(tmp_path: Path, dask_client: Any) -> None:
    labeled_scene(tmp_path / "img.tif", tmp_path / "lab.tif", np.random.default_rng(2), 128, 128)
    job = tmp_path / "job.yaml"
    sched = dask_client.scheduler.address
    job.write_text(f"""
variables: {{work: out, epochs: "1"}}
steps:
  - chip: {{pairs: [[img.tif, lab.tif]], out_dir: "{{work}}/chips", size: 32, ignore_value: 0, scheduler: "{sched}"}}
  - train: {{chips_dir: "{{work}}/chips", output: "{{work}}/m.pt", arch: unet,
             arch_kwargs: {{depth: 1, base_width: 4}}, epochs: "{{epochs}}"}}
  - predict: {{scene: img.tif, output: "{{work}}/c.tif", model: "{{work}}/m.pt", scheduler: "{sched}", tta: flip}}
  - evaluate: {{prediction: "{{work}}/c.tif", reference: lab.tif, ignore_value: 0, json_path: "{{work}}/e.json"}}
""")
    run_recipe(job, echo=lambda s: None)
    for name in ("chips/chips.json", "m.pt", "c.tif", "e.json"):
        assert (tmp_path / "out" / name).exists(), name


def test_a_bad_last_step_fails_before_the_first_step_runs(tmp_path: Path) -> None:
    """Every step is checked first: a typo or a bad option value in the last step stops the
    recipe before the chips (or a long training) are made; the error is a GeosegError."""
    labeled_scene(tmp_path / "img.tif", tmp_path / "lab.tif", np.random.default_rng(2), 64, 64)
    job = tmp_path / "job.yaml"
    job.write_text("""
steps:
  - chip: {pairs: [[img.tif, lab.tif]], out_dir: chips, size: 32}
  - train: {chips_dir: chips, output: m.pt, arch: no-such-net, epochs: many}
  - predict: {scene: img.tif, output: c.tif, tta: d8}
  - evaluate: {prediction: c.tif, referense: lab.tif}
""")
    with pytest.raises(RecipeError) as err:
        run_recipe(job, echo=lambda s: None)
    msg = str(err.value)
    for part in (
        "steps[2].train.arch",
        "steps[2].train.epochs: expected int",
        "steps[3].predict: unknown --tta 'd8'",
        "steps[4].evaluate.referense: unknown argument",
        "steps[4].evaluate.reference: required",
    ):
        assert part in msg, part
    assert not (tmp_path / "chips").exists()
