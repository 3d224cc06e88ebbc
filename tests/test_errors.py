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
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):  # private: local control flow
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception", "Warning")) for b in bases), \
                    f"{path.relative_to(PACKAGE)}: {node.name} belongs in geoseg/errors.py"


def test_every_error_is_a_geoseg_error_and_a_builtin() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
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
