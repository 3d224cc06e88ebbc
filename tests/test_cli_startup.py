"""The CLI answers at once: --help imports neither torch nor dask, and 'geoseg models' lists the
built-in architectures from measurements checked here (timings: benchmarks/cli_startup.py)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.models.measured import DEFAULTS, measure

HEAVY = ("torch", "torchvision", "dask", "distributed", "rasterio")


def test_help_of_every_command_imports_no_heavy_library() -> None:
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom geoseg.cli.main import cli\n"
        "for args in [['--help']] + [[c, '--help'] for c in cli.commands]:\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_models_lists_defaults_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.models.measured

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("measured an architecture at its default arguments")

    monkeypatch.setattr(geoseg.models.measured, "measure", refuse)
    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0, r.output
    assert (
        "unet-small           8        46    0.48M" in r.output and "s2-landcover-unet" in r.output
    )
    from geoseg.models import list_models

    assert {a.name for a in list_models()} == set(DEFAULTS), (
        "a registered architecture has no measured entry"
    )


@pytest.mark.parametrize(
    "arch",
    [
        "unet-small",  # the cheap one by default; the others (seconds to minutes each) with -m slow
        *[pytest.param(a, marks=pytest.mark.slow) for a in sorted(DEFAULTS) if a != "unet-small"],
    ],
)
def test_measured_table_matches_the_measurement(arch: str) -> None:
    assert measure(arch) == DEFAULTS[arch]
