"""The public surface is deliberate: every exported name is listed, documented and typed."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import oxbak
from oxbak import errors


def test_all_is_sorted_and_complete() -> None:
    for name in oxbak.__all__:
        getattr(oxbak, name)  # lazily imported names resolve
    public = {n for n in vars(oxbak) if not n.startswith("_")} - {"annotations", "TYPE_CHECKING"}
    modules = {n for n in public if inspect.ismodule(getattr(oxbak, n))}
    assert set(oxbak.__all__) == (public - modules) | {"__version__"}
    assert oxbak.__all__ == sorted(oxbak.__all__)
    assert dir(oxbak) == oxbak.__all__


def test_every_public_definition_has_a_docstring() -> None:
    for name in oxbak.__all__:
        obj = getattr(oxbak, name)
        if callable(obj):
            assert inspect.getdoc(obj), name


def test_every_error_is_an_oxbak_error_with_an_exit_code() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, oxbak.OxbakError)
        assert cls.exit_code == 1
        assert getattr(oxbak, name) is cls


def test_typed_package() -> None:
    assert (Path(oxbak.__file__).parent / "py.typed").exists()


def test_library_never_prints() -> None:
    src = Path(oxbak.__file__).parent
    for path in src.glob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        calls = {
            n.func.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        assert "print" not in calls, path.name
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "click" not in imports, path.name


def test_third_party_errors_are_caught_in_one_module_each() -> None:
    src = Path(oxbak.__file__).parent
    seams = {"ZstdError": {"compress.py"}, "msgspec.": {"manifest.py", "toc.py", "cli.py"}}
    for needle, allowed in seams.items():
        users = {p.name for p in src.glob("*.py") if needle in p.read_text()}
        assert users <= allowed, (needle, users)
