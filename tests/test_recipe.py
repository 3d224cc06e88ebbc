"""Recipes: job files validated before anything runs, then steps run in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoseg.recipe import RecipeError, load_recipe, run_recipe
from tests.conftest import labeled_scene


def test_recipe_problems_are_reported_together(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("bogus: 1\nsteps:\n  - rm: [-rf, /]\n  - train: notalist\n  - chip: ['{nope}/a.tif']\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(job)
    msg = str(err.value)
    for part in ("bogus", "steps[1]: 'rm' is not a recipe command", "steps[2].train", "steps[3].chip: undefined variable(s) ['nope']"):
        assert part in msg


def test_recipe_runs_chip_train_evaluate(tmp_path: Path, dask_client: Any) -> None:
    labeled_scene(tmp_path / "img.tif", tmp_path / "lab.tif", np.random.default_rng(2), 128, 128)
    job = tmp_path / "job.yaml"
    sched = dask_client.scheduler.address
    job.write_text(f"""
variables: {{work: out}}
steps:
  - chip: [img.tif, lab.tif, -o, "{{work}}/chips", --size, "32", --ignore-value, "0", --scheduler, "{sched}"]
  - train: ["{{work}}/chips", -o, "{{work}}/m.pt", --arch, unet, --arch-args, '{{"depth": 1, "base_width": 4}}', --epochs, "1", -q]
  - predict: [img.tif, -o, "{{work}}/c.tif", --model, "{{work}}/m.pt", --scheduler, "{sched}", -q]
  - evaluate: ["{{work}}/c.tif", lab.tif, --ignore-value, "0", --json, "{{work}}/e.json"]
""")
    run_recipe(job, echo=lambda s: None)
    for name in ("chips/chips.json", "m.pt", "c.tif", "e.json"):
        assert (tmp_path / "out" / name).exists(), name
