"""Every error class lives in geoseg/errors.py, under one root, and messages are shortened one way."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import geoseg.errors as errors
from geoseg.errors import GeosegError, GeosegWarning, first_line

PACKAGE = Path(errors.__file__).parent


def test_no_exception_class_is_defined_outside_errors_py() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith(
                "_"
            ):  # private: local control flow
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception", "Warning")) for b in bases), (
                    f"{path.relative_to(PACKAGE)}: {node.name} belongs in geoseg/errors.py"
                )


def test_every_error_is_a_geoseg_error_and_a_builtin() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    for cls in classes:
        if issubclass(cls, Warning):
            assert issubclass(cls, GeosegWarning)
            continue
        assert issubclass(cls, GeosegError), cls
        if cls is not GeosegError:
            assert any(issubclass(cls, b) for b in (OSError, ValueError, RuntimeError)), cls


def test_first_line() -> None:
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("\n  \nsecond\nthird")) == "second"
    assert first_line("one\ntwo") == "one" and first_line("") == ""


def test_the_library_never_imports_the_cli() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("geoseg.cli"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("geoseg.cli") for a in node.names), path


def test_no_georef_warning_holds_while_other_threads_leave_it() -> None:
    """Batch scenes and Dask tasks run in threads: one thread leaving the silencer must not lift
    it for another still inside (``warnings.catch_warnings`` restores the whole filter list)."""
    import threading
    import time
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from geoseg.raster.read import _GEOREF_FILTER, no_georef_warning

    raised: list[Warning] = []

    def work() -> None:
        for _ in range(300):
            with no_georef_warning():
                time.sleep(0.0002)
                try:
                    warnings.warn("no geotransform", NotGeoreferencedWarning)
                except NotGeoreferencedWarning as exc:
                    raised.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not raised
        assert _GEOREF_FILTER not in warnings.filters  # lifted once the last thread left


def test_no_georef_warning_leaves_the_callers_own_filter() -> None:
    """Leaving removes geoseg's filter only: a caller's "ignore" for the same warning stays."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from geoseg.raster.read import no_georef_warning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with no_georef_warning():
            pass
        assert ("ignore", None, NotGeoreferencedWarning, None, 0) in warnings.filters
